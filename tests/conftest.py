"""Shared fixtures: tiny NIfTI datasets written in the raw BTCV layout."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest


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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread is faster, and fair to a CPU shared with other jobs.
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def blob_dataset(tmp_path: Path) -> Path:
    root = tmp_path / "blobs"
    for i in range(1, 5):
        write_case(root, f"{i:04d}", *blob_case(i))
    return root


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """One tiny phantom cache shared by the end-to-end tests of a session."""
    return tmp_path_factory.mktemp("data")


#: set by the README's test command (.ci/run): a Slurm test cluster that cannot start fails the tests
REQUIRE_SLURM = "SEGBENCH_REQUIRE_SLURM"
SLURM_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "slurm_cluster.sh"


@pytest.fixture(scope="session")
def slurm_cluster():
    """A single-node Slurm cluster with accounting on this machine (scripts/slurm_cluster.sh), for the
    session; stopped at its end unless it was running before. Needs root and apt (or Slurm installed).
    Without them the Slurm tests are skipped -- or fail, with the reason, under SEGBENCH_REQUIRE_SLURM=1."""

    def unavailable(reason: str):
        if os.environ.get(REQUIRE_SLURM) == "1":
            pytest.fail(f"{REQUIRE_SLURM}=1 and no Slurm test cluster: {reason}", pytrace=False)
        pytest.skip(f"no Slurm test cluster: {reason}")

    if os.geteuid() != 0:
        unavailable("scripts/slurm_cluster.sh installs and runs Slurm's daemons, which needs root")
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        unavailable("Slurm is not installed and there is no apt-get to install it")
    was_running = subprocess.run([str(SLURM_SCRIPT), "status"], capture_output=True).returncode == 0
    start = time.monotonic()
    proc = subprocess.run([str(SLURM_SCRIPT), "start"], capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        unavailable(f"scripts/slurm_cluster.sh start failed: {(proc.stderr or proc.stdout).strip()[-500:]}")
    print(f"\nSlurm test cluster: {proc.stdout.strip().splitlines()[0]} ({time.monotonic() - start:.0f} s)")
    yield
    if not was_running:
        subprocess.run([str(SLURM_SCRIPT), "stop"], capture_output=True, timeout=300)
