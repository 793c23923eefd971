"""The end of a sweep: which jobs did not finish and why, and a non-zero exit when any did not.

A job of a multirun that fails records it in its run directory (``results/error.json``, ``run.json``
status ``failed``; :mod:`segbench.runtime.rundir`) and the sweep goes on with the other jobs, whatever the
launcher (``basic`` in this process, ``local`` / ``slurm`` through submitit, where the launcher also
marks a job that Slurm ended without a result: cancelled, out of time). When the sweep is over,
:class:`SweepReport` (a Hydra callback, ``configs/hydra/default.yaml``) reads every job's ``run.json``
and, when any job did not end ``done``, stops ``segbench-train -m`` with exit status 1 and one line
per such job::

    segbench-train: error: 1 of 4 jobs did not finish (sweep: outputs/multirun/2026-12-03_10-00-00):
      job 2 (loss=ce_dice seed=1): failed: loss 'ce_dice' has no option 'gamma'; its options are: ...

Running the same command again (same ``hydra.sweep.dir``) retrains only those jobs: finished ones are
not trained again, interrupted ones resume from their ``checkpoints/last.ckpt``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from .rundir import RUN_FILE, read_status

#: statuses of a job that ended well (a job found finished and not retrained keeps ``done``)
FINISHED = ("done",)


def _natural_key(path: Path) -> list:
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", str(path))]


def job_statuses(sweep_dir: Path) -> dict[Path, dict[str, Any]]:
    """``run.json`` of every job directory below ``sweep_dir`` (not submitit's own folder), in job order."""
    sweep_dir = Path(sweep_dir)
    found = {}
    for path in sorted(sweep_dir.rglob(RUN_FILE), key=_natural_key):
        if ".submitit" in path.relative_to(sweep_dir).parts:
            continue
        found[path.parent] = read_status(path.parent) or {"status": "unreadable run.json"}
    return found


def describe_job(job_dir: Path, sweep_dir: Path, status: dict[str, Any]) -> str:
    """``job 2 (loss=ce_dice seed=1): failed: <the error's first line>``."""
    name = str(job_dir.relative_to(sweep_dir))
    overrides = " ".join(o for o in status.get("overrides") or [] if not o.startswith(("hydra.", "paths.")))
    error = status.get("error") or {"running": "stopped while running (killed, or its node failed)",
                                    "interrupted": "interrupted"}.get(status.get("status"), "")
    state = status.get("status", "unknown")
    what = f"{state}: {error}" if error and not error.startswith(state) else (error or state)
    return f"job {name}" + (f" ({overrides})" if overrides else "") + f": {what}"


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


class SweepReport(Callback):
    """At the end of a multirun: exit 1 naming every job that did not finish, with its error."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        message = unfinished_report(sweep_dir) if sweep_dir.is_dir() else None
        if message:
            # Hydra turns a callback's exception into a warning: the exit status is set here
            print(message, file=sys.stderr)
            raise SystemExit(1)
