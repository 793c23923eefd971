"""The cache on disk: one folder per spec with the cases as NIfTI files (raw BTCV layout) and
``dataset.json``, written atomically and under a lock, so concurrent callers generate each case once."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from segbench import SYNAPSE_ORGANS
from segbench.files import TEMPORARY_PREFIX, replace_atomically

from .case import generate_case
from .spec import GENERATOR_VERSION, PhantomSpec, case_seed

try:  # POSIX advisory locks; without them (Windows) concurrent generators are not serialised
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None


def _image_path(folder: Path, number: int) -> Path:
    return folder / "img" / f"img{number:04d}.nii.gz"


def _label_path(folder: Path, number: int) -> Path:
    return folder / "label" / f"label{number:04d}.nii.gz"


def nifti_affine(shape_zyx: Sequence[int], spacing_zyx: Sequence[float]) -> np.ndarray:
    """The affine written for a (Z, Y, X) array: diag(-sx, -sy, sz) (RAS world; columns run to the
    patient's left, rows to the back, slices up, as DICOM LPS data converted to NIfTI), origin
    such that the image centre is the scanner isocentre in-plane and the top slice is at z = 0."""
    (n_z, n_y, n_x), (sz, sy, sx) = shape_zyx, spacing_zyx
    affine = np.diag([-sx, -sy, sz, 1.0])
    affine[:3, 3] = [(n_x - 1) / 2 * sx, (n_y - 1) / 2 * sy, -(n_z - 1) * sz]
    return affine


def _save_nifti(path: Path, array_zyx: np.ndarray, spacing_zyx: Sequence[float], dtype) -> None:
    import nibabel as nib

    affine = nifti_affine(array_zyx.shape, spacing_zyx)
    image = nib.Nifti1Image(array_zyx.astype(dtype, copy=False).transpose(2, 1, 0), affine)
    image.set_data_dtype(dtype)
    image.set_qform(affine, code=1)  # 1 = scanner coordinates, as converted DICOM
    image.set_sform(affine, code=1)
    image.header.set_zooms(tuple(float(s) for s in spacing_zyx[::-1]))
    image.header.set_xyzt_units("mm")
    replace_atomically(path, lambda temporary: nib.save(image, str(temporary)))


def _read_case_geometry(path: Path) -> tuple[list[float], list[int]]:
    """(spacing [sz, sy, sx], shape [Z, Y, X]) from a NIfTI header."""
    import nibabel as nib

    header = nib.load(str(path)).header
    return [float(z) for z in header.get_zooms()[:3][::-1]], [int(n) for n in header.get_data_shape()[:3][::-1]]


def _is_complete(folder: Path, spec: PhantomSpec) -> bool:
    """dataset.json records this spec and every case file exists (files are written atomically,
    so an existing file is complete)."""
    try:
        record = json.loads((folder / "dataset.json").read_text())
    except (OSError, ValueError):
        return False
    if record.get("spec") != spec.as_dict() or record.get("generator_version") != GENERATOR_VERSION:
        return False
    return all(_image_path(folder, n).is_file() and _label_path(folder, n).is_file()
               for n in range(1, spec.num_cases + 1))


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    """Block until this process holds an exclusive lock on ``path`` (one generator per cache folder)."""
    with open(path, "a+") as handle:
        if fcntl is not None:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def ensure_phantom(root: str | Path, spec: PhantomSpec, progress: bool = True) -> Path:
    """Make sure ``root/<spec.key()>/`` holds every case; generate what is missing; return that folder.

    Layout: ``img/img0001.nii.gz``, ``label/label0001.nii.gz``, ... and ``dataset.json`` (name, spec,
    labels, cases with id, image, label, spacing [sz, sy, sx] and shape [Z, Y, X]). Files are written
    under temporary names and renamed, and dataset.json is written last, so an interrupted run
    leaves complete files only and the next call generates just the missing cases. Concurrent
    callers (a Hydra sweep) serialise on the lock file ``root/<key>.lock``.
    """
    root = Path(root)
    folder = root / spec.key()
    if _is_complete(folder, spec):
        return folder
    for sub in ("img", "label"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(root / f"{spec.key()}.lock"):
        if _is_complete(folder, spec):  # another process finished it while we waited for the lock
            return folder
        for sub in ("img", "label"):  # left by a killed generator; no one else writes while we hold the lock
            for stale in (folder / sub).glob(f"{TEMPORARY_PREFIX}*"):
                stale.unlink(missing_ok=True)
        numbers = range(1, spec.num_cases + 1)
        missing = [n for n in numbers if not (_image_path(folder, n).is_file() and _label_path(folder, n).is_file())]
        if missing and progress:
            from rich.progress import track

            missing = track(missing, description=f"phantom {spec.key()}: generating {len(missing)} case(s)")
        for number in missing:
            image, label, spacing = generate_case(case_seed(spec.seed, number), spec)
            if not _image_path(folder, number).is_file():
                _save_nifti(_image_path(folder, number), image, spacing, np.int16)
            if not _label_path(folder, number).is_file():
                _save_nifti(_label_path(folder, number), label, spacing, np.uint8)
        cases = []
        for number in numbers:
            spacing, shape = _read_case_geometry(_image_path(folder, number))
            cases.append({"id": f"{number:04d}", "image": f"img/img{number:04d}.nii.gz",
                          "label": f"label/label{number:04d}.nii.gz", "spacing": spacing, "shape": shape})
        record = {
            "name": "segbench-phantom",
            "description": "Procedural abdominal CT phantom (portal venous phase), 8 Synapse organs, raw BTCV layout",
            "generator_version": GENERATOR_VERSION,
            "key": spec.key(),
            "spec": spec.as_dict(),
            "labels": {"0": "background", **{str(k): v for k, v in SYNAPSE_ORGANS.items()}},
            "num_cases": spec.num_cases,
            "cases": cases,
        }
        replace_atomically(folder / "dataset.json",
                            lambda temporary: temporary.write_text(json.dumps(record, indent=2) + "\n"))
    return folder
