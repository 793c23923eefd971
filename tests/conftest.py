"""Shared fixtures: tiny NIfTI datasets written in the raw BTCV layout, the session's phantom and smoke run,
the Slurm test cluster. Plain helpers (commands, dataset writers) are in ``helpers.py``."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

# re-exported: ``from conftest import blob_case, write_case`` keeps working
from helpers import blob_case, cli, write_case  # noqa: F401 - re-exported for the test files


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


@pytest.fixture(scope="session")
def smoke_run(phantom_dir, tmp_path_factory) -> Path:
    """One finished ``segbench-train debug=smoke num_threads=1`` run directory on the session's phantom, shared
    by every test that needs a trained run (checkpoints, results, .hydra). Read it, or copy it before changing
    anything in it; a rerun of the same command over a copy (``hydra.run.dir=<copy>``) resumes it."""
    run = tmp_path_factory.mktemp("smoke") / "run"
    proc = cli("segbench.train", "debug=smoke", "num_threads=1", f"paths.data_dir={phantom_dir}",
               f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


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
