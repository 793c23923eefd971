"""Multi-GPU (DDP) runs with one run directory per job and every test case scored once.

Lightning's DDP launcher starts ranks 1..N-1 by running the command line again. Under Hydra it
re-runs ``sys.argv`` with ``hydra.run.dir=<hydra.run.dir>`` added: in a multirun that starts the
whole sweep again in every child, and ``hydra.run.dir`` is not the job's directory (nor is a
timestamp resolved a second later). :func:`one_run_directory` makes each child run exactly this
job instead::

    python -m segbench.train <this job's overrides> hydra.run.dir=<this job's directory> \\
        hydra.mode=RUN hydra.output_subdir=null

Ranks that a cluster starts itself (one Slurm task per GPU under ``hydra/launcher=slurm``,
torchrun) each compose the job on their own: the jobs of a multirun have fixed directories; a
single run started that way needs ``run_name=<name>`` so that every rank agrees on the directory.

The test set is split over the ranks by Lightning's ``DistributedSampler``, which pads the last
round by repeating cases; :func:`gather_rows` collects every rank's per-case rows and keeps one
row per (case, organ), so rank 0 writes the same results a single process would.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

#: what Lightning's launcher puts into the environment of the process that starts the ranks
LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


def child_command(overrides: list[str], output_dir: Path, local_rank: int) -> tuple[list[str], str]:
    """The command (and working directory) that starts rank ``local_rank`` of this job."""
    from hydra.utils import get_original_cwd

    command = [sys.executable, "-m", "segbench.train", *overrides, f'hydra.run.dir="{output_dir}"',
               "hydra.mode=RUN", "hydra.output_subdir=null", f"hydra.job.name=train_rank{local_rank}"]
    return command, get_original_cwd()


@contextlib.contextmanager
def one_run_directory(output_dir: Path) -> Iterator[None]:
    """While fitting / testing: DDP children started by Lightning run this job in ``output_dir``.

    Afterwards a process that started ranks gives back its process group and the launcher's
    environment variables, so that the next job of a sweep in the same process starts its own.
    """
    from hydra.core.hydra_config import HydraConfig
    from pytorch_lightning.strategies.launchers import subprocess_script

    env_before = {key: os.environ.get(key) for key in LAUNCHER_ENV}
    original = getattr(subprocess_script, "_hydra_subprocess_cmd", None)
    patch = original is not None and HydraConfig.initialized()
    if patch:
        overrides = [str(o) for o in HydraConfig.get().overrides.task]
        subprocess_script._hydra_subprocess_cmd = lambda local_rank: child_command(overrides, output_dir, local_rank)
    try:
        yield
    finally:
        if patch:
            subprocess_script._hydra_subprocess_cmd = original
        if env_before["LOCAL_RANK"] is None and os.environ.get("LOCAL_RANK") is not None:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()
            for key, value in env_before.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


def gather_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every rank's per-case rows, one per (case, organ, convention) (the sampler's padding repeats cases)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return rows
    parts: list[list[dict[str, Any]] | None] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, rows)
    unique: dict[tuple, dict[str, Any]] = {}
    for part in parts:
        for row in part or []:
            unique.setdefault((row["case"], row["label"], row.get("convention")), row)
    return list(unique.values())
