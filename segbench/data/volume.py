"""Reading and checking 3D cases.

Inside segbench a volume is a numpy array in ``(Z, Y, X)`` axis order (slice,
row, column) with its voxel spacing ``(sz, sy, sx)`` in mm in the same order.
NIfTI files store ``(X, Y, Z)``; :func:`load_nifti_case` transposes and keeps
the original affine so predictions can be written back in the input's space.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError


@dataclass(frozen=True)
class CaseRef:
    """Where one case lives on disk."""

    case_id: str
    image: Path
    label: Path | None = None


@dataclass
class Volume:
    """One loaded case: HU image, integer label map, spacing and affine.

    ``normalized=True`` marks an image that is already in [0, 1] (TransUNet's windowed npz/h5 files,
    per-case normalised MR, the preprocessing cache), so the data module skips the HU window.
    """

    case_id: str
    image: np.ndarray                  # float32 HU, (Z, Y, X); [0, 1] when normalized
    label: np.ndarray | None           # uint8 class ids, (Z, Y, X)
    spacing: tuple[float, float, float]  # (sz, sy, sx) mm
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    normalized: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape)


def _read_nifti(path: Path):
    import nibabel as nib

    if not path.is_file():
        raise DataError(f"missing file {path}; check data.root or regenerate the dataset")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for truncated / corrupt files
        raise DataError(f"cannot read {path} ({type(exc).__name__}: {exc}); the file is corrupt or truncated, "
                        "replace it (phantom: delete it and it is regenerated)") from None
    if data.ndim != 3:
        raise DataError(f"{path} holds a {data.ndim}D array {data.shape}; expected a 3D volume")
    return img, data


def apply_label_map(label: np.ndarray, label_map: dict[int, int] | None, source: Path | str,
                    num_classes: int) -> np.ndarray:
    """Map raw label ids to class ids (unmapped ids -> 0) and check the range."""
    ids = np.unique(label)
    if label_map is not None:
        lut = np.zeros(int(max(ids.max(), max(label_map))) + 1, dtype=np.uint8)
        for raw, cls in label_map.items():
            lut[int(raw)] = int(cls)
        if ids.min() < 0:
            raise DataError(f"{source} holds negative label id {ids.min()}")
        label = lut[label.astype(np.int64)]
        ids = np.unique(label)
    bad = ids[(ids < 0) | (ids >= num_classes)]
    if bad.size:
        raise DataError(f"{source} holds label id(s) {bad.tolist()} outside 0..{num_classes - 1}; "
                        "map the dataset's ids to classes with data.source.label_map={raw_id: class_id} "
                        "(data=nifti_folder), or fix data.num_classes")
    return label.astype(np.uint8)


def load_nifti_case(ref: CaseRef, num_classes: int, label_map: dict[int, int] | None = None) -> Volume:
    """Load a NIfTI image/label pair and check that they belong together."""
    img, data = _read_nifti(Path(ref.image))
    spacing = tuple(float(z) for z in img.header.get_zooms()[:3])[::-1]
    if min(spacing) <= 0:
        raise DataError(f"{ref.image} has non-positive voxel spacing {spacing}")
    image = data.transpose(2, 1, 0).astype(np.float32)
    label = None
    if ref.label is not None:
        limg, ldata = _read_nifti(Path(ref.label))
        if ldata.shape != data.shape:
            raise DataError(f"{ref.label} has shape {ldata.shape} but its image {ref.image.name} has {data.shape}")
        if not np.allclose(limg.affine, img.affine, atol=1e-3):
            raise DataError(f"{ref.label} and {ref.image.name} have different affines; the label does not "
                            "belong to the image (resample it onto the image grid)")
        if not np.allclose(ldata, np.round(ldata)):
            raise DataError(f"{ref.label} holds non-integer values; expected a label map")
        label = apply_label_map(ldata.transpose(2, 1, 0).astype(np.int64), label_map, ref.label, num_classes)
    return Volume(ref.case_id, np.ascontiguousarray(image),
                  None if label is None else np.ascontiguousarray(label), spacing, img.affine)


def save_nifti_label(path: Path, label: np.ndarray, affine: np.ndarray) -> None:
    """Write a (Z, Y, X) label map as NIfTI with ``affine`` (atomic: tmp file then rename)."""
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = nib.Nifti1Image(np.ascontiguousarray(label.transpose(2, 1, 0)).astype(np.uint8), affine)
    out.set_qform(affine, code=1)
    out.set_sform(affine, code=1)
    tmp = path.with_name(f".{path.name}.tmp.nii.gz")
    nib.save(out, str(tmp))
    tmp.replace(path)


def write_prediction(directory: Path, case_id: str, label: np.ndarray, affine: np.ndarray) -> Path:
    """Write one test case's predicted ``(Z, Y, X)`` label map as ``<directory>/<case_id>.nii.gz``.

    The one place predictions are written (training's test and ``segbench-eval``): on the input's
    voxel grid with the input's affine, as nnU-Net does, so it opens over the image in 3D Slicer or
    ITK-SNAP. Returns the file's path.
    """
    path = Path(directory) / f"{case_id}.nii.gz"
    save_nifti_label(path, label, affine)
    return path
