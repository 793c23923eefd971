"""Reading and checking 3D cases.

Inside segbench a volume is a numpy array in ``(Z, Y, X)`` axis order (slice,
row, column) with its voxel spacing ``(sz, sy, sx)`` in mm in the same order.
NIfTI files store ``(X, Y, Z)``; :func:`load_nifti_case` transposes and keeps
the original affine so predictions can be written back in the input's space.

Orientation. Scanners store volumes axially, sagittally, coronally or with permuted axes; the
affine says which. The data module brings every case to one canonical orientation at load
(:func:`to_canonical`): array axes ``(X, Y, Z)`` running to patient Left, Posterior, Superior
(:data:`CANONICAL`, DICOM's patient system, nibabel axis codes ``LPS``; the closest such axes of an
oblique affine, as nibabel's ``as_closest_canonical`` does for RAS). So ``(Z, Y, X)`` slices are
axial, shown in the radiological convention, for every scanner. ``Volume.affine`` stays the input's
own affine, and :func:`save_nifti_label` writes a (canonical) prediction back in the input's own
orientation, so it overlays its input voxel for voxel.
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
class Grid:
    """A scan's own voxel grid in the canonical orientation: where its prediction is written and, with
    ``metrics.grid=original``, where it is scored (``label``: its label map on that grid, when loaded)."""

    shape: tuple[int, ...]
    spacing: tuple[float, float, float]
    affine: np.ndarray
    label: np.ndarray | None = None


@dataclass
class Volume:
    """One loaded case: HU image, integer label map, spacing and affine.

    ``normalized=True`` marks an image that is already in [0, 1] (TransUNet's windowed npz/h5 files,
    per-case normalised MR, the preprocessing cache), so the data module skips the HU window.

    ``spacing_known=False`` marks a case whose files carry no voxel spacing (TransUNet's npz/h5 Synapse
    files): ``spacing`` is then a stand-in (1 per axis unless configured), and every distance measured
    on it counts voxels, not mm; the evaluation labels its HD unit ``voxels`` accordingly.
    """

    case_id: str
    image: np.ndarray                  # float32 HU, (Z, Y, X); [0, 1] when normalized
    label: np.ndarray | None           # uint8 class ids, (Z, Y, X)
    spacing: tuple[float, float, float]  # (sz, sy, sx) mm
    affine: np.ndarray = field(default_factory=lambda: np.eye(4))
    normalized: bool = False
    spacing_known: bool = True
    #: the scan's own grid, when preprocessing resampled the case (``data.target_spacing`` / ``target_shape``)
    original: Grid | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.image.shape)


#: the canonical orientation of segbench's arrays (nibabel axis codes of the X, Y, Z voxel axes)
CANONICAL = ("L", "P", "S")


def _to_canonical_ornt(affine: np.ndarray) -> np.ndarray:
    """nibabel orientation transform from the voxel axes of ``affine`` to :data:`CANONICAL`."""
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    return ornt_transform(io_orientation(np.asarray(affine, dtype=np.float64)), axcodes2ornt(CANONICAL))


def _reorient_zyx(array: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    from nibabel.orientations import apply_orientation

    return np.ascontiguousarray(apply_orientation(array.transpose(2, 1, 0), ornt).transpose(2, 1, 0))


def to_canonical(vol: Volume) -> Volume:
    """``vol`` with image, label and spacing in :data:`CANONICAL` orientation (the affine is kept: the input's).

    ``(Z, Y, X)`` arrays are ``(X, Y, Z)`` voxel axes of ``vol.affine`` transposed; a volume already
    canonical (identity transform) is returned unchanged, bit for bit.
    """
    ornt = _to_canonical_ornt(vol.affine)
    if np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]):
        return vol
    spacing_xyz = np.asarray(vol.spacing[::-1], dtype=np.float64)
    canonical_xyz = np.empty(3)
    canonical_xyz[ornt[:, 0].astype(int)] = spacing_xyz
    return Volume(vol.case_id, _reorient_zyx(vol.image, ornt),
                  None if vol.label is None else _reorient_zyx(vol.label, ornt),
                  tuple(float(v) for v in canonical_xyz[::-1]), vol.affine, vol.normalized, vol.spacing_known)


def from_canonical(array_zyx: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """A canonical ``(Z, Y, X)`` array back in the voxel order of ``affine`` (the inverse of :func:`to_canonical`)."""
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    back = ornt_transform(axcodes2ornt(CANONICAL), io_orientation(np.asarray(affine, dtype=np.float64)))
    return _reorient_zyx(array_zyx, back)


def _read_nifti(path: Path):
    import nibabel as nib

    if not path.is_file():
        raise DataError(f"missing file {path}; check data.root or regenerate the dataset")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for truncated / corrupt files
        raise DataError(f"cannot read {path} ({type(exc).__name__}: {exc}); the file is corrupt or truncated, "
                        "replace it (phantom: delete it and it is regenerated)") from None
    if data.ndim != 3:
        raise DataError(f"{path} holds a {data.ndim}D array {data.shape}; expected a 3D volume")
    return img, data


#: the fix :func:`apply_label_map` names for ids beyond the classes (a run's data config)
LABEL_MAP_FIX = ("map the dataset's ids to classes with data.source.label_map={raw_id: class_id} "
                 "(data=nifti_folder), or fix data.num_classes")


def apply_label_map(label: np.ndarray, label_map: dict[int, int] | None, source: Path | str,
                    num_classes: int, fix: str = LABEL_MAP_FIX) -> np.ndarray:
    """Map raw label ids to class ids (unmapped ids -> 0) and check the range (``fix``: what the error
    says to do about ids beyond the classes)."""
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
        raise DataError(f"{source} holds label id(s) {bad.tolist()} outside 0..{num_classes - 1}; {fix}")
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
    """Write a canonical (Z, Y, X) label map as NIfTI with ``affine``, the input's own, in the input's own
    orientation (:func:`from_canonical`), so it overlays the input (atomic: tmp file then rename)."""
    import nibabel as nib

    from ..files import replace_atomically

    label = from_canonical(label, affine)
    out = nib.Nifti1Image(np.ascontiguousarray(label.transpose(2, 1, 0)).astype(np.uint8), affine)
    out.set_qform(affine, code=1)
    out.set_sform(affine, code=1)
    replace_atomically(path, lambda temporary: nib.save(out, str(temporary)))


def write_prediction(directory: Path, case_id: str, label: np.ndarray, affine: np.ndarray) -> Path:
    """Write one test case's predicted ``(Z, Y, X)`` label map as ``<directory>/<case_id>.nii.gz``.

    The one place predictions are written (training's test and ``segbench-eval``): on the input's
    voxel grid with the input's affine, as nnU-Net does, so it opens over the image in 3D Slicer or
    ITK-SNAP. Returns the file's path.
    """
    path = Path(directory) / f"{case_id}.nii.gz"
    save_nifti_label(path, label, affine)
    return path
