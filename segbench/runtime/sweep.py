"""The end of a sweep: which jobs did not finish and why, and a non-zero exit when any did not.

A job of a multirun that fails records it in its run directory (``results/error.json``, ``run.json``
status ``failed``; :mod:`segbench.runtime.rundir`) and the sweep goes on with the other jobs, whatever the
launcher (``basic`` in this process, ``local`` / ``gpus`` / ``slurm`` through submitit, where the launcher
also marks a job that Slurm ended without a result -- cancelled, out of time -- or whose process died).
When the sweep is over, :class:`SweepReport` (a Hydra callback, ``configs/hydra/default.yaml``) reads every
job's ``run.json`` and, when any job did not end ``done``, stops ``segbench-train -m`` with exit status 1 and
one line per such job::

    segbench-train: error: 1 of 4 jobs did not finish (sweep: outputs/multirun/2026-12-03_10-00-00):
      job 2 (loss=ce_dice seed=1): failed: loss 'ce_dice' has no option 'gamma'; its options are: ...

Running the same command again (same ``hydra.sweep.dir``) retrains only those jobs: finished ones are
not trained again, interrupted ones resume from their ``checkpoints/last.ckpt``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..files import find_dirs
from .rundir import has_run_file, read_status

#: statuses of a job that ended well (a job found finished and not retrained keeps ``done``)
FINISHED = ("done",)


def job_statuses(sweep_dir: Path) -> dict[Path, dict[str, Any]]:
    """``run.json`` of every job directory at or below ``sweep_dir`` (not submitit's own folder), in job order."""
    return {job: read_status(job) or {"status": "unreadable run.json"}
            for job in find_dirs(sweep_dir, has_run_file)}


def describe_job(job_dir: Path, sweep_dir: Path, status: dict[str, Any]) -> str:
    """``job 2 (loss=ce_dice seed=1): failed: <the error's first line>``."""
    name = str(job_dir.relative_to(sweep_dir))
    overrides = " ".join(o for o in status.get("overrides") or [] if not o.startswith(("hydra.", "paths.")))
    error = status.get("error") or {"running": "stopped while running (killed, or its node failed)",
                                    "interrupted": "interrupted"}.get(status.get("status"), "")
    state = status.get("status", "unknown")
    what = f"{state}: {error}" if error and not error.startswith(state) else (error or state)
    return f"job {name}" + (f" ({overrides})" if overrides else "") + f": {what}"


def job_directory(hydra_context: Any, config: Any, overrides: Sequence[str], idx: int) -> Path:
    """Where job ``idx`` of a sweep with these overrides runs (``hydra.sweep.dir/hydra.sweep.subdir``), as a
    launcher computes it before the job starts; the default layout (``<sweep dir>/<idx>``) for overrides
    the config cannot take."""
    from omegaconf import open_dict

    sweep_dir = Path(str(config.hydra.sweep.dir))
    try:
        cfg = hydra_context.config_loader.load_sweep_config(config, list(overrides))
        with open_dict(cfg.hydra.job):
            cfg.hydra.job.num = idx
        return sweep_dir / str(cfg.hydra.sweep.subdir)
    except Exception:  # noqa: BLE001 - an override the config cannot take: the default layout
        return sweep_dir / str(idx)


def unfinished_report(sweep_dir: Path) -> str | None:
    """The message for the jobs of ``sweep_dir`` that did not end ``done`` (None when all did)."""
    statuses = job_statuses(sweep_dir)
    bad = [(d, s) for d, s in statuses.items() if s.get("status") not in FINISHED]
    if not bad:
        return None
    lines = [describe_job(d, Path(sweep_dir), s) for d, s in bad]
    head = f"{len(bad)} of {len(statuses)} jobs did not finish (sweep: {sweep_dir})"
    if len(lines) == 1:
        return f"segbench-train: error: {head}: {lines[0]}"
    return "\n  ".join([f"segbench-train: error: {head}:", *lines])
