"""CHAOS (ISBI 2019, "Combined Healthy Abdominal Organ Segmentation"): DICOM series + PNG masks.

Layout (the training set, ``CHAOS_Train_Sets.zip``)::

    Train_Sets/CT/<id>/DICOM_anon/*.dcm              Train_Sets/CT/<id>/Ground/liver_GT_###.png
    Train_Sets/MR/<id>/T2SPIR/DICOM_anon/*.dcm       Train_Sets/MR/<id>/T2SPIR/Ground/*.png
    Train_Sets/MR/<id>/T1DUAL/DICOM_anon/InPhase/*.dcm, .../OutPhase/*.dcm   + T1DUAL/Ground/*.png

Masks: CT liver only (0 / 255); MR grey levels liver 63, right kidney 126, left kidney 189,
spleen 252 (the challenge's ranges 55-70, 110-135, 175-200, 240-255 are accepted), mapped
to class ids 1..4 (CT: liver = 1).

Geometry comes from the DICOM headers: in-plane spacing from ``PixelSpacing`` (row spacing,
column spacing) = (sy, sx); slices are ordered by their position along the slice normal
(``ImagePositionPatient`` projected on the cross product of the ``ImageOrientationPatient``
cosines; ``InstanceNumber`` when positions are missing), and sz is the median gap between
those positions (``SpacingBetweenSlices`` / ``SliceThickness`` without positions). Unevenly
spaced or duplicated slices are an error.

Mask / slice order: the k-th mask in natural file-name order belongs to the k-th DICOM file
in natural file-name order (``liver_GT_000.png`` <-> ``i0000,0000b.dcm``; MR masks share the
DICOM file stems). Masks are paired with their files *before* the slices are sorted by
position, so a file numbering that runs against the patient axis (the usual reason the
"PNG order looks reversed") moves image and mask together. ``mask_order`` checks that
pairing: ``auto`` (default) also scores the reversed pairing by how homogeneous the image is
inside each organ (within-organ intensity variance over total variance: organs are
homogeneous, a mask on the wrong slices covers fat, bowel and bone) and takes the reversed
pairing only when it fits clearly better (score below half), logging a warning naming the
case; ``filename`` / ``reversed`` force one pairing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...errors import ConfigError, DataError
from ...files import natural_key
from ..preprocess import normalize_percentile
from ..volume import CaseRef, Volume
from .common import require_root

log = logging.getLogger("segbench.data")

CT_CLASSES = ["background", "liver"]
MR_CLASSES = ["background", "liver", "kidney_r", "kidney_l", "spleen"]
#: PNG grey-level ranges (inclusive) -> class id
CT_LEVELS = {1: (255, 255)}
MR_LEVELS = {1: (55, 70), 2: (110, 135), 3: (175, 200), 4: (240, 255)}
SEQUENCES = {"T2SPIR": ("T2SPIR/DICOM_anon", "T2SPIR/Ground"),
             "T1DUAL_InPhase": ("T1DUAL/DICOM_anon/InPhase", "T1DUAL/Ground"),
             "T1DUAL_OutPhase": ("T1DUAL/DICOM_anon/OutPhase", "T1DUAL/Ground")}
LAYOUT = "Train_Sets/CT/<id>/DICOM_anon/*.dcm + Ground/*.png (MR: Train_Sets/MR/<id>/T2SPIR/...)"
REVERSED_MARGIN = 0.5


@dataclass
class DicomSeries:
    """A sorted DICOM series: image (Z, Y, X), spacing (sz, sy, sx), affine, and the sort order."""

    image: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    order: np.ndarray  # order[k] = index (in the given file list) of the k-th slice along the normal


def read_dicom_series(paths: Sequence[Path], rescale: bool = True) -> DicomSeries:
    """Read single-frame DICOM files of one series and sort them along the slice normal.

    Intensities are ``pixel * RescaleSlope + RescaleIntercept`` (HU for CT) when ``rescale``.
    The affine maps (x=column, y=row, z=slice) indices to RAS mm (DICOM's LPS with x, y negated).
    """
    import pydicom

    if not paths:
        raise DataError("empty DICOM series")
    pixels, positions, instances = [], [], []
    ref = first = None
    for path in paths:
        try:
            ds = pydicom.dcmread(str(path))
            arr = ds.pixel_array
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types for a corrupt file
            raise DataError(f"cannot read {path} ({type(exc).__name__}: {exc}); the DICOM file is corrupt or "
                            "truncated, replace it") from None
        if arr.ndim != 2:
            raise DataError(f"{path} holds a {arr.ndim}D pixel array {arr.shape}; expected one 2D slice")
        if "PixelSpacing" not in ds:
            raise DataError(f"{path} has no PixelSpacing; segbench needs the voxel spacing from the DICOM header")
        spacing = (float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1]))
        orient = tuple(float(v) for v in ds.get("ImageOrientationPatient", (1, 0, 0, 0, 1, 0)))
        if ref is None:
            ref = (arr.shape, spacing, orient, path)
        elif arr.shape != ref[0] or not np.allclose(spacing, ref[1], atol=1e-4) or \
                not np.allclose(orient, ref[2], atol=1e-3):
            raise DataError(f"{path} has shape {arr.shape}, PixelSpacing {spacing}, orientation {orient} but "
                            f"{ref[3].name} has {ref[0]}, {ref[1]}, {ref[2]}: not one series")
        image = arr.astype(np.float32)
        if rescale:
            slope = float(ds.get("RescaleSlope", 1) or 1)
            image = image * slope + float(ds.get("RescaleIntercept", 0) or 0)
        pixels.append(image)
        ipp = ds.get("ImagePositionPatient")
        positions.append(None if ipp is None else np.array([float(v) for v in ipp]))
        instances.append(ds.get("InstanceNumber"))
        if first is None:
            first = ds
    shape, (sy, sx), orient, _ = ref
    row_dir, col_dir = np.array(orient[:3]), np.array(orient[3:])
    normal = np.cross(row_dir, col_dir)
    where = paths[0].parent
    if all(p is not None for p in positions):
        along = np.array([float(p @ normal) for p in positions])
        order = np.argsort(along, kind="stable")
        gaps = np.diff(along[order])
        if len(paths) > 1:
            if gaps.min() < 1e-3:
                raise DataError(f"{where}: two slices share position {along[order][np.argmin(gaps)]:.2f} mm along the "
                                "slice normal (duplicated file or two series in one folder)")
            sz = float(np.median(gaps))
            if np.abs(gaps - sz).max() > 0.05 * sz + 0.01:
                raise DataError(f"{where}: slice gaps vary from {gaps.min():.3f} to {gaps.max():.3f} mm (missing "
                                "slices?); segbench needs evenly spaced slices")
        else:
            sz = float(first.get("SpacingBetweenSlices", first.get("SliceThickness", 1.0)) or 1.0)
        origin = positions[order[0]]
    else:
        if any(i is None for i in instances):
            raise DataError(f"{where}: slices lack ImagePositionPatient and InstanceNumber; cannot order them")
        order = np.argsort(np.array([int(i) for i in instances]), kind="stable")
        thickness = first.get("SpacingBetweenSlices", first.get("SliceThickness"))
        if thickness is None:
            raise DataError(f"{where}: no ImagePositionPatient, SpacingBetweenSlices or SliceThickness; "
                            "the slice spacing is unknown")
        sz = float(thickness)
        origin = np.zeros(3)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * sx   # column index runs along the row direction cosine
    affine[:3, 1] = col_dir * sy
    affine[:3, 2] = normal * sz
    affine[:3, 3] = origin
    affine[:2] *= -1  # LPS -> RAS
    image = np.stack([pixels[i] for i in order])
    return DicomSeries(np.ascontiguousarray(image), (sz, sy, sx), affine, order)


def read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            mask = np.asarray(img)
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for a corrupt file
        raise DataError(f"cannot read {path} ({type(exc).__name__}: {exc}); the PNG is corrupt or truncated") from None
    if mask.ndim == 3:  # grey stored as RGB(A)
        if not (mask[..., :3] == mask[..., :1]).all():
            raise DataError(f"{path} is a colour image; CHAOS masks are grey-level PNGs")
        mask = mask[..., 0]
    if mask.shape != shape:
        raise DataError(f"{path} has shape {mask.shape} but its DICOM slice has {shape}")
    return mask


def levels_to_classes(masks: np.ndarray, levels: dict[int, tuple[int, int]], where: Path | str) -> np.ndarray:
    out = np.zeros(masks.shape, np.uint8)
    known = masks == 0
    for cls, (lo, hi) in levels.items():
        hit = (masks >= lo) & (masks <= hi)
        out[hit] = cls
        known |= hit
    if not known.all():
        bad = np.unique(masks[~known])[:8].tolist()
        allowed = ", ".join(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in levels.values())
        raise DataError(f"{where} holds mask grey level(s) {bad} outside the dataset's set (0, {allowed})")
    return out


def mask_fit(image: np.ndarray, label: np.ndarray) -> float:
    """Within-organ intensity variance over total variance (0 = every organ perfectly homogeneous)."""
    fg = label > 0
    if not fg.any():
        return 0.0
    within = sum(float(image[label == k].var()) * int((label == k).sum()) for k in np.unique(label[fg]))
    return within / int(fg.sum()) / (float(image.var()) + 1e-6)


class ChaosSource:
    """CHAOS CT or MR training cases (see the module docstring).

    Args:
        root: the folder holding ``Train_Sets/`` (or ``Train_Sets`` itself).
        modality: ``CT`` (liver) or ``MR`` (liver, kidneys, spleen).
        sequence: MR only: ``T2SPIR``, ``T1DUAL_InPhase`` or ``T1DUAL_OutPhase``.
        mask_order: ``auto``, ``filename`` or ``reversed`` (how masks pair with DICOM files).
        percentiles: MR intensity normalisation: clip to these case percentiles, scale to [0, 1].
    """

    def __init__(self, root: str | Path, modality: str = "CT", sequence: str = "T2SPIR", mask_order: str = "auto",
                 percentiles: Sequence[float] = (0.5, 99.5)):
        modality = str(modality).upper()
        if modality not in ("CT", "MR"):
            raise ConfigError(f"data.source.modality must be CT or MR, got {modality!r}")
        if modality == "MR" and sequence not in SEQUENCES:
            raise ConfigError(f"data.source.sequence must be one of {sorted(SEQUENCES)}, got {sequence!r}")
        if mask_order not in ("auto", "filename", "reversed"):
            raise ConfigError(f"data.source.mask_order must be auto, filename or reversed, got {mask_order!r}")
        self.root = Path(root)
        self.modality = modality
        self.sequence = sequence if modality == "MR" else None
        self.mask_order = mask_order
        self.percentiles = tuple(float(p) for p in percentiles)
        self.levels = CT_LEVELS if modality == "CT" else MR_LEVELS
        self.class_names = CT_CLASSES if modality == "CT" else MR_CLASSES

    def prepare(self) -> None:
        require_root(self.root, "CHAOS", LAYOUT)

    def _base(self) -> Path:
        require_root(self.root, "CHAOS", LAYOUT)
        for base in (self.root / "Train_Sets", self.root / "CHAOS_Train_Sets" / "Train_Sets", self.root):
            if (base / self.modality).is_dir():
                return base / self.modality
        raise DataError(f"no {self.modality}/ folder in {self.root} or {self.root / 'Train_Sets'}; set data.root to "
                        f"the unpacked CHAOS_Train_Sets (expected {LAYOUT})")

    def _dirs(self, case_dir: Path) -> tuple[Path, Path]:
        if self.modality == "CT":
            return case_dir / "DICOM_anon", case_dir / "Ground"
        image_dir, mask_dir = SEQUENCES[self.sequence]
        return case_dir / image_dir, case_dir / mask_dir

    def cases(self) -> list[CaseRef]:
        base = self._base()
        refs = []
        for case_dir in sorted((d for d in base.iterdir() if d.is_dir()), key=lambda d: natural_key(d.name)):
            image_dir, mask_dir = self._dirs(case_dir)
            if not image_dir.is_dir():
                raise DataError(f"{image_dir} not found; each CHAOS case needs its DICOM series there ({LAYOUT})")
            if not mask_dir.is_dir():
                raise DataError(f"{mask_dir} not found; CHAOS training cases need their Ground/*.png masks")
            refs.append(CaseRef(case_dir.name, image_dir, mask_dir))
        if not refs:
            raise DataError(f"no case folders in {base}; set data.root to the unpacked CHAOS_Train_Sets ({LAYOUT})")
        return refs

    def case_files(self, ref: CaseRef) -> list[Path]:
        return self._files(ref.image, ".dcm") + self._files(ref.label, ".png")

    @staticmethod
    def _files(folder: Path, suffix: str) -> list[Path]:
        return sorted((p for p in Path(folder).iterdir() if p.suffix.lower() == suffix and p.is_file()),
                      key=lambda p: natural_key(p.name))

    def load(self, ref: CaseRef) -> Volume:
        dicoms, pngs = self._files(ref.image, ".dcm"), self._files(ref.label, ".png")
        if not dicoms:
            raise DataError(f"no .dcm files in {ref.image}")
        if len(pngs) != len(dicoms):
            raise DataError(f"{ref.label} holds {len(pngs)} mask(s) but {ref.image} has {len(dicoms)} DICOM slices; "
                            "every slice needs its mask")
        series = read_dicom_series(dicoms, rescale=True)
        masks = np.stack([read_mask(p, series.image.shape[1:]) for p in pngs])  # file order
        label_files = levels_to_classes(masks, self.levels, ref.label)
        by_filename = label_files[series.order]            # mask k follows DICOM file k
        by_reversed = label_files[::-1][series.order]      # mask k follows DICOM file N-1-k
        label = by_reversed if self.mask_order == "reversed" else by_filename
        if self.mask_order == "auto":
            fit_file, fit_rev = mask_fit(series.image, by_filename), mask_fit(series.image, by_reversed)
            if fit_rev < REVERSED_MARGIN * fit_file:
                log.warning("CHAOS %s case %s: the masks fit the slices in reversed file order (organ "
                            "inhomogeneity %.3f vs %.3f by file name); using reversed order "
                            "(data.source.mask_order=filename to refuse)", self.modality, ref.case_id, fit_rev,
                            fit_file)
                label = by_reversed
        reversed_files = len(dicoms) > 1 and np.array_equal(series.order, np.arange(len(dicoms))[::-1])
        log.debug("CHAOS %s case %s: DICOM file order %s the slice positions", self.modality, ref.case_id,
                  "runs against" if reversed_files else "follows")
        return self.normalize(Volume(ref.case_id, series.image.astype(np.float32), label, series.spacing,
                                     series.affine))

    @property
    def intensity_normalization(self) -> str:
        """How a scan's intensities reach [0, 1]: the HU window for CT, the case's percentiles for MR."""
        return "HU window" if self.modality == "CT" else f"case percentiles {list(self.percentiles)}"

    def normalize(self, vol: Volume) -> Volume:
        """An MR scan clipped to its percentiles and scaled to [0, 1] (``normalized``); CT is left in HU."""
        if self.modality == "MR":
            vol.image = normalize_percentile(vol.image, *self.percentiles).astype(np.float32)
            vol.normalized = True
        return vol
