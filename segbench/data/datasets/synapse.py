"""Synapse multi-organ CT (BTCV, MICCAI 2015 "Multi-Atlas Labeling Beyond the Cranial Vault").

Two layouts are read, both giving the 8 organs of TransUNet's protocol (class ids 1..8:
spleen, kidney_r, kidney_l, gallbladder, liver, stomach, aorta, pancreas):

* ``raw`` - the BTCV NIfTI release: ``RawData/Training/img/img00XX.nii.gz`` and
  ``RawData/Training/label/label00XX.nii.gz`` with the 13 BTCV labels, mapped by
  :data:`BTCV_TO_SYNAPSE` (the 5 other organs become background). Images are HU.
* ``transunet`` - TransUNet's preprocessed copy: ``train_npz/caseXXXX_sliceYYY.npz`` (arrays
  ``image``, ``label``, one axial slice each) and ``test_vol_h5/caseXXXX.npy.h5`` (datasets
  ``image``, ``label`` of shape (D, 512, 512)), listed by ``lists_Synapse/train.txt`` and
  ``test_vol.txt``. Images are already clipped to [-125, 275] HU and scaled to [0, 1], so they
  load as ``Volume.normalized`` and the HU window is skipped. These files carry no voxel
  spacing: unless the file holds a ``spacing`` entry (``scripts/prepare_synapse.py`` writes one),
  the case loads with ``Volume.spacing_known=False`` and a stand-in spacing of 1 per axis, so
  distances count voxels, like TransUNet's HD95, and every result says "voxels", not "mm".
  ``default_spacing`` (mm) instead declares the spacing of such files, which are then in mm.
  Arrays are read as (slice, row, column) = (Z, Y, X) as stored.

:func:`convert_btcv` (``scripts/prepare_synapse.py``) writes the second layout from the first.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ...errors import ConfigError, DataError
from ...files import natural_key, replace_atomically
from ..sources import NiftiFolderSource
from ..volume import CaseRef, Volume, apply_label_map, load_nifti_case
from .common import check_label_values, first_dir, integral_label, listed_path, require_root

log = logging.getLogger("segbench.data")

#: BTCV label id -> Synapse class id (TransUNet's 8 organs, PROTOCOL.md B). The other BTCV ids
#: (5 esophagus, 9 inferior vena cava, 10 portal/splenic vein, 12/13 adrenal glands) become background.
BTCV_TO_SYNAPSE = {1: 1, 2: 2, 3: 3, 4: 4, 6: 5, 7: 6, 8: 7, 11: 8}
BTCV_NUM_LABELS = 14  # background + 13 organs
SYNAPSE_CLASSES = ["background", "spleen", "kidney_r", "kidney_l", "gallbladder", "liver", "stomach", "aorta",
                   "pancreas"]
#: TransUNet's fixed split (PROTOCOL.md B)
SYNAPSE_TRAIN = ["0005", "0006", "0007", "0009", "0010", "0021", "0023", "0024", "0026", "0027", "0028", "0030",
                 "0031", "0033", "0034", "0037", "0039", "0040"]
SYNAPSE_TEST = ["0001", "0002", "0003", "0004", "0008", "0022", "0025", "0029", "0032", "0035", "0036", "0038"]

RAW_DIRS = ("RawData/Training", "Training", "RawData", "")
LAYOUT_HELP = ("TransUNet's train_npz/caseXXXX_sliceYYY.npz + test_vol_h5/caseXXXX.npy.h5, or raw BTCV "
               "RawData/Training/img/imgXXXX.nii.gz + label/labelXXXX.nii.gz")
SLICE_RE = re.compile(r"^case(\d+)_slice(\d+)$")
VOL_RE = re.compile(r"^case(\d+)$")


class SynapseSource:
    """Synapse / BTCV in either layout (see the module docstring).

    Args:
        root: the dataset folder (holding ``train_npz/`` + ``test_vol_h5/``, or ``RawData/``).
        layout: ``auto`` (whichever is present, TransUNet's first), ``transunet`` or ``raw``.
        lists_dir: TransUNet's ``lists_Synapse`` folder (``train.txt``, ``test_vol.txt``); default
            ``<root>/lists_Synapse`` when it exists, else the folders are scanned.
        default_spacing: ``[sz, sy, sx]`` mm of TransUNet files without a ``spacing`` entry, when you know
            it; ``None`` (default): unknown, distances in voxels (``Volume.spacing_known=False``).
        num_classes: 9 (background + 8 organs).
    """

    def __init__(self, root: str | Path, layout: str = "auto", lists_dir: str | Path | None = None,
                 default_spacing: Sequence[float] | None = None, num_classes: int = 9):
        if layout not in ("auto", "transunet", "raw"):
            raise ConfigError(f"data.source.layout must be auto, transunet or raw, got {layout!r}")
        if default_spacing is not None and (len(default_spacing) != 3
                                            or min(float(s) for s in default_spacing) <= 0):
            raise ConfigError(f"data.source.default_spacing must be 3 positive numbers, got {list(default_spacing)}")
        self.root = Path(root)
        self.layout = layout
        self.lists_dir = None if lists_dir is None else Path(lists_dir)
        self.default_spacing = None if default_spacing is None else tuple(float(s) for s in default_spacing)
        self.num_classes = int(num_classes)
        self._slices: dict[str, list[Path]] = {}
        self._warned_spacing = False

    def prepare(self) -> None:
        """Nothing to generate: check the folder exists."""
        require_root(self.root, "Synapse", LAYOUT_HELP)

    # -- layout ----------------------------------------------------------------------------------------------
    def resolved_layout(self) -> str:
        require_root(self.root, "Synapse", LAYOUT_HELP)
        if self.layout != "auto":
            return self.layout
        if (self.root / "train_npz").is_dir() or (self.root / "test_vol_h5").is_dir():
            return "transunet"
        if first_dir(self.root, RAW_DIRS, "img") is not None:
            return "raw"
        raise DataError(f"{self.root} holds neither Synapse layout; expected {LAYOUT_HELP}")

    def _raw(self) -> NiftiFolderSource:
        base = first_dir(self.root, RAW_DIRS, "img")
        if base is None:
            raise DataError(f"no img/ folder under {self.root} (looked in {', '.join(d or '.' for d in RAW_DIRS)}); "
                            "set data.root to the BTCV folder holding RawData/Training/img and label")
        return NiftiFolderSource(base, num_classes=BTCV_NUM_LABELS)

    def cases(self) -> list[CaseRef]:
        if self.resolved_layout() == "raw":
            return self._raw().cases()
        return self._transunet_cases()

    def _transunet_cases(self) -> list[CaseRef]:
        npz_dir, h5_dir = self.root / "train_npz", self.root / "test_vol_h5"
        lists = self.lists_dir or (self.root / "lists_Synapse")
        if self.lists_dir is not None and not lists.is_dir():
            raise DataError(f"data.source.lists_dir {lists} not found; point it at TransUNet's lists_Synapse/ "
                            "or set it to null to scan train_npz/ and test_vol_h5/")
        slices: dict[str, list[Path]] = {}
        volumes: dict[str, Path] = {}
        if lists.is_dir() and (lists / "train.txt").is_file():
            names = [n for n in (lists / "train.txt").read_text().split() if n]
            paths = [listed_path(npz_dir, n, lists / "train.txt", ".npz") for n in names]
            missing = [p for p in paths if not p.is_file()]
            if missing:
                raise DataError(f"{lists / 'train.txt'} lists {len(missing)} slice(s) that are missing, e.g. "
                                f"{missing[0]}; restore them or regenerate with scripts/prepare_synapse.py")
        else:
            paths = sorted(npz_dir.glob("*.npz")) if npz_dir.is_dir() else []
        for path in paths:
            match = SLICE_RE.match(path.stem)
            if not match:
                raise DataError(f"{path} is not named caseXXXX_sliceYYY.npz; TransUNet's train_npz holds only slices")
            slices.setdefault(match.group(1), []).append(path)
        if lists.is_dir() and (lists / "test_vol.txt").is_file():
            for name in (n for n in (lists / "test_vol.txt").read_text().split() if n):
                path = listed_path(h5_dir, name, lists / "test_vol.txt", ".npy.h5")
                if not path.is_file():
                    raise DataError(f"{lists / 'test_vol.txt'} lists {name} but {path} is missing")
                volumes[self._vol_id(path.name[: -len(".npy.h5")], path)] = path
        elif h5_dir.is_dir():
            for path in sorted(h5_dir.glob("*.npy.h5")):
                volumes[self._vol_id(path.name[: -len(".npy.h5")], path)] = path
        self._slices = {c: sorted(p, key=lambda q: int(SLICE_RE.match(q.stem).group(2))) for c, p in slices.items()}
        refs = [CaseRef(c, path, path) for c, path in volumes.items()]
        # a case in both folders is read from its whole volume
        refs += [CaseRef(c, npz_dir, None) for c in self._slices if c not in volumes]
        if not refs:
            raise DataError(f"no TransUNet files in {npz_dir} or {h5_dir}; expected {LAYOUT_HELP}")
        return sorted(refs, key=lambda r: natural_key(r.case_id))

    @staticmethod
    def _vol_id(name: str, path: Path) -> str:
        match = VOL_RE.match(name)
        if not match:
            raise DataError(f"{path} is not named caseXXXX.npy.h5")
        return match.group(1)

    def case_files(self, ref: CaseRef) -> list[Path]:
        if ref.label is None and ref.case_id in self._slices:
            return self._slices[ref.case_id]
        return [ref.image] + ([ref.label] if ref.label is not None and ref.label != ref.image else [])

    # -- loading ---------------------------------------------------------------------------------------------
    def load(self, ref: CaseRef) -> Volume:
        if Path(ref.image).name.endswith(".nii.gz") or Path(ref.image).suffix == ".nii":
            vol = load_nifti_case(ref, 256)
            check_label_values(vol.label, range(BTCV_NUM_LABELS), ref.label, "BTCV's ids 0..13")
            vol.label = apply_label_map(vol.label, BTCV_TO_SYNAPSE, ref.label, self.num_classes)
            return vol
        if str(ref.image).endswith(".h5"):
            image, label, spacing = self._read_h5(Path(ref.image))
        else:
            image, label, spacing = self._read_npz_slices(ref.case_id)
        check_label_values(label, range(self.num_classes), ref.label or ref.image,
                           f"the Synapse classes 0..{self.num_classes - 1}")
        spacing_known = spacing is not None or self.default_spacing is not None
        if spacing is None:
            spacing = self.default_spacing or (1.0, 1.0, 1.0)
            if not self._warned_spacing:
                if spacing_known:
                    log.info("Synapse (TransUNet layout): the files carry no voxel spacing; using "
                             "data.source.default_spacing=%s mm", list(spacing))
                else:
                    log.info("Synapse (TransUNet layout): the files carry no voxel spacing; distances are in "
                             "voxels, as TransUNet's (data.source.default_spacing=[sz,sy,sx] declares it in mm)")
                self._warned_spacing = True
        sz, sy, sx = spacing
        # the arrays are as TransUNet stored them, rows to posterior, columns to patient left: the canonical
        # orientation (segbench.data.volume.CANONICAL), which this affine states
        return Volume(ref.case_id, image, label.astype(np.uint8), (sz, sy, sx), np.diag([-sx, -sy, sz, 1.0]),
                      normalized=True, spacing_known=spacing_known)

    def _checked_image(self, image: np.ndarray, path: Path) -> np.ndarray:
        image = np.asarray(image, dtype=np.float32)
        finite = image[np.isfinite(image)]  # NaN / inf are counted and refused by the data module
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if low < -1e-3 or high > 1 + 1e-3:
            raise DataError(f"{path} holds image values in [{low:g}, {high:g}]; TransUNet's files are windowed to "
                            "[0, 1] (use layout raw for HU volumes)")
        return np.clip(image, 0.0, 1.0)

    def _read_h5(self, path: Path):
        import h5py

        try:
            with h5py.File(path, "r") as fh:
                if "image" not in fh or "label" not in fh:
                    raise DataError(f"{path} lacks the 'image' and 'label' datasets of TransUNet's test_vol_h5 files")
                image, label = fh["image"][()], fh["label"][()]
                spacing = fh.attrs.get("spacing")
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - h5py raises many types for a corrupt file
            raise DataError(f"cannot read {path} ({type(exc).__name__}: {exc}); the file is corrupt or truncated, "
                            "replace it") from None
        if image.ndim != 3:
            raise DataError(f"{path} holds a {image.ndim}D image {image.shape}; expected (D, H, W)")
        if label.shape != image.shape:
            raise DataError(f"{path}: label shape {label.shape} differs from image shape {image.shape}")
        spacing = None if spacing is None else tuple(float(s) for s in spacing)
        return self._checked_image(image, path), integral_label(label, path), spacing

    def _read_npz_slices(self, case_id: str):
        paths = self._slices.get(case_id)
        if not paths:
            raise DataError(f"no train_npz slices for case {case_id} under {self.root / 'train_npz'}")
        images, labels, spacing = [], [], None
        for path in paths:
            try:
                with np.load(path, allow_pickle=False) as data:
                    if "image" not in data or "label" not in data:
                        raise DataError(f"{path} lacks the 'image' and 'label' arrays of TransUNet's train_npz files")
                    image, label = data["image"], data["label"]
                    if "spacing" in data:
                        spacing = tuple(float(s) for s in data["spacing"])
            except DataError:
                raise
            except Exception as exc:  # noqa: BLE001 - numpy's npz reader raises many types for a corrupt file
                raise DataError(f"cannot read {path} ({type(exc).__name__}: {exc}); the file is corrupt or "
                                "truncated, replace it") from None
            if image.ndim != 2:
                raise DataError(f"{path} holds a {image.ndim}D image {image.shape}; expected one (H, W) slice")
            if label.shape != image.shape:
                raise DataError(f"{path}: label shape {label.shape} differs from image shape {image.shape}")
            if images and image.shape != images[0].shape:
                raise DataError(f"{path} has shape {image.shape} but {paths[0].name} has {images[0].shape}")
            images.append(self._checked_image(image, path))
            labels.append(integral_label(label, path))
        numbers = [int(SLICE_RE.match(p.stem).group(2)) for p in paths]
        if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
            log.warning("Synapse case %s: train_npz slice numbers are not contiguous (%d slices from %d to %d); "
                        "stacked in order", case_id, len(numbers), numbers[0], numbers[-1])
        return np.stack(images), np.stack(labels), spacing


# -- raw BTCV -> TransUNet layout ----------------------------------------------------------------------------
def convert_btcv(raw_dir: str | Path, out_dir: str | Path, train_ids: Sequence[str] = SYNAPSE_TRAIN,
                 test_ids: Sequence[str] = SYNAPSE_TEST, window: Sequence[float] = (-125, 275),
                 overwrite: bool = False, progress: bool = True) -> dict[str, int]:
    """Write TransUNet's preprocessed layout from raw BTCV (see ``scripts/prepare_synapse.py``).

    Train cases become one ``train_npz/caseXXXX_sliceYYY.npz`` per axial slice, test cases one
    ``test_vol_h5/caseXXXX.npy.h5`` volume; images clipped to ``window`` HU and scaled to [0, 1],
    labels mapped to the 8 organs, both stored as float32 like TransUNet's files, plus a
    ``spacing`` entry ((sz, sy, sx) mm; TransUNet's loader ignores it). Every file is written to a
    temporary name and renamed, so an interrupted run leaves no partial file; a rerun skips the
    files already there (``overwrite`` rewrites them). The list files are written last.
    """
    import h5py
    from tqdm.auto import tqdm

    from ..datamodule import window_hu

    src = SynapseSource(raw_dir, layout="raw")
    refs = {r.case_id: r for r in src.cases()}
    train_ids = [str(c).zfill(4) for c in train_ids]
    test_ids = [str(c).zfill(4) for c in test_ids]
    missing = [c for c in train_ids + test_ids if c not in refs]
    if missing:
        raise DataError(f"{raw_dir} lacks case(s) {missing}; the Synapse split needs img{missing[0]}.nii.gz "
                        "and its label")
    out = Path(out_dir)
    for sub in ("train_npz", "test_vol_h5", "lists_Synapse"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    slice_names: list[str] = []
    written = 0
    jobs = [(c, "train") for c in train_ids] + [(c, "test") for c in test_ids]
    for case_id, part in tqdm(jobs, desc="prepare_synapse", unit="case", disable=not progress):
        if part == "train":
            import nibabel as nib

            depth = nib.load(str(refs[case_id].image)).shape[2]  # header only: the slice count
            names = [f"case{case_id}_slice{z:03d}" for z in range(depth)]
            slice_names += names
            todo = [z for z, n in enumerate(names) if overwrite or not (out / "train_npz" / f"{n}.npz").exists()]
            if not todo:
                continue
            vol = src.load(refs[case_id])
            image = window_hu(vol.image, window)
            spacing = np.asarray(vol.spacing, np.float64)
            for z in todo:
                def write(tmp, image_z=image[z], label_z=vol.label[z], spacing=spacing):
                    with open(tmp, "wb") as fh:
                        np.savez_compressed(fh, image=image_z, label=label_z.astype(np.float32), spacing=spacing)
                replace_atomically(out / "train_npz" / f"{names[z]}.npz", write)
                written += 1
        else:
            path = out / "test_vol_h5" / f"case{case_id}.npy.h5"
            if path.exists() and not overwrite:
                continue
            vol = src.load(refs[case_id])

            def write(tmp, vol=vol):
                with h5py.File(tmp, "w") as fh:
                    fh.create_dataset("image", data=window_hu(vol.image, window), compression="gzip")
                    fh.create_dataset("label", data=vol.label.astype(np.float32), compression="gzip")
                    fh.attrs["spacing"] = np.asarray(vol.spacing, np.float64)
            replace_atomically(path, write)
            written += 1
    lists = out / "lists_Synapse"
    replace_atomically(lists / "train.txt", lambda tmp: tmp.write_text("\n".join(slice_names) + "\n"))
    test_list = "\n".join(f"case{c}" for c in test_ids) + "\n"
    replace_atomically(lists / "test_vol.txt", lambda tmp: tmp.write_text(test_list))
    return {"train_slices": len(slice_names), "test_volumes": len(test_ids), "files_written": written}
