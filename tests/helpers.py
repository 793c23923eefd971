"""Plain helpers shared by the test modules (the fixtures are in ``conftest.py``).

``tests/`` is on ``sys.path`` while pytest runs (no ``__init__.py``: pytest's default import mode
prepends the test directory), so a test module imports these with ``from helpers import ...``.

The commands run in subprocesses that inherit this process's environment unless a test passes its
own: ``PYTHONPATH`` (a checkout under test) reaches them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np


# -- commands ----------------------------------------------------------------------------------------------
def cli(module: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
        timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` (e.g. ``segbench.train``), stdout / stderr captured as text.

    Captured: they are pipes, as in a redirected run or a Slurm job. ``env`` is the whole environment
    of the command (default: this process's); ``timeout`` makes a command that hangs fail the test."""
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=cwd)


def console(tool: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: int = 600) -> subprocess.CompletedProcess:
    """The installed console script ``segbench-<tool>`` (``train``, ``eval``, ``table``, ``figures``), as a user
    types it; otherwise like :func:`cli`."""
    exe = shutil.which(f"segbench-{tool}")
    assert exe, "install the package (pip install -e .) for the console scripts"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


def script(path: Path, *args: str, env: dict[str, str] | None = None,
           timeout: int = 600) -> subprocess.CompletedProcess:
    """``python <path> <args>``: a test's own wrapper of a command (e.g. a rigged ``segbench-train``)."""
    return subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


# -- tiny datasets in the raw BTCV layout ------------------------------------------------------------------
def write_case(root: Path, case_id: str, image: np.ndarray, label: np.ndarray,
               spacing=(5.0, 0.8, 0.8), label_affine=None) -> None:
    """Write (Z, Y, X) arrays as img/imgXXXX.nii.gz + label/labelXXXX.nii.gz (nibabel order X, Y, Z)."""
    sz, sy, sx = spacing
    affine = np.diag([-sx, -sy, sz, 1.0])
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "label").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image.transpose(2, 1, 0).astype(np.int16), affine), root / "img" / f"img{case_id}.nii.gz")
    nib.save(nib.Nifti1Image(label.transpose(2, 1, 0).astype(np.uint8),
                             affine if label_affine is None else label_affine),
             root / "label" / f"label{case_id}.nii.gz")


def blob_case(seed: int, shape=(12, 64, 64), num_classes: int = 3):
    """An image whose HU encodes the label (class k -> 100 * k HU over a -500 HU background)."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.uint8)
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    for k in range(1, num_classes):
        # class k lives in its own vertical band of the image, so blobs never overlap
        band = shape[2] // (num_classes - 1)
        cy, cx = rng.integers(16, shape[1] - 16), (k - 1) * band + band // 2
        label[((y - cy) ** 2 + (x - cx) ** 2 < (5 + 2 * k) ** 2) & (z >= 0)] = k
    image = np.where(label > 0, 100 * label.astype(np.int16), -500).astype(np.int16)
    return image, label


# -- DICOM ---------------------------------------------------------------------------------------------------
def write_dicom(path: Path, stored: np.ndarray, position_z: float, instance: int, modality="CT",
                intercept: float = -1024.0, spacing=(2.5, 0.7, 0.9)) -> None:
    """One single-frame DICOM slice (stored values, a rescale intercept for CT) at ``position_z`` mm along an
    axial series with ``spacing`` ``(sz, sy, sx)`` mm."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

    sop = CTImageStorage if modality == "CT" else MRImageStorage
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop, meta.MediaStorageSOPInstanceUID, modality
    ds.Rows, ds.Columns = stored.shape
    ds.PixelSpacing = [spacing[1], spacing[2]]      # row spacing (sy), column spacing (sx)
    ds.SliceThickness = spacing[0]
    ds.ImagePositionPatient = [-20.0, -15.0, position_z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.InstanceNumber = instance
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if modality == "CT":
        ds.RescaleSlope, ds.RescaleIntercept = 1, intercept
    ds.PixelData = stored.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


# -- a run killed outright -----------------------------------------------------------------------------------
#: ``python <file> <overrides>``: segbench-train that SIGKILLs itself at the start of batch BATCH of epoch EPOCH
#: (``SEGBENCH_KILL_AT=EPOCH,BATCH``), as a preempted job dies: no handler runs (the resume tests)
KILLER = '''
"""segbench-train that SIGKILLs itself at the start of batch BATCH of epoch EPOCH (SEGBENCH_KILL_AT=EPOCH,BATCH)."""
import os, signal, sys
import pytorch_lightning as pl
import segbench.runtime.build as build
import segbench.train as train

EPOCH, BATCH = (int(v) for v in os.environ["SEGBENCH_KILL_AT"].split(","))


class KillMidEpoch(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == EPOCH and batch_idx == BATCH:
            os.kill(os.getpid(), signal.SIGKILL)


build_trainer = build.build_trainer


def build_trainer_that_kills(cfg, output_dir):
    trainer = build_trainer(cfg, output_dir)
    trainer.callbacks.append(KillMidEpoch())
    return trainer


build.build_trainer = build_trainer_that_kills  # segbench.runtime.task.run looks it up there at each run
sys.argv[0] = "segbench-train"
train.main()
'''


def run_phantom(run_dir: Path) -> Path:
    """The phantom folder (``<data_dir>/phantom/<key>``, with ``img/`` and ``label/``) a run trained on: the session's
    data folder holds the phantoms of several tests, so it is named by the run's own spec
    (``results/summary.json``'s resolved config)."""
    import json

    from segbench.data.phantom import PhantomSpec

    config = json.loads((Path(run_dir) / "results" / "summary.json").read_text())["config"]
    spec = {k: v for k, v in config["data"]["phantom"].items() if v is not None}
    if spec.get("slice_thickness"):
        spec["slice_thickness"] = tuple(spec["slice_thickness"])
    return Path(config["data"]["source"]["root"]) / PhantomSpec(**spec).key()
