"""A run directory's life: its status file, resuming it after a kill, never training it twice.

Every run writes ``run.json`` next to ``results/`` when it starts and rewrites it (atomically)
as it goes, so a listing of a sweep directory shows what finished::

    {"status": "running" | "done" | "failed" | "interrupted", "attempt": 2, "epoch": 41,
     "started": "...", "updated": "...", "host": "...", "pid": 1234, "resumed_from": ".../last.ckpt",
     "init_from": ".../stage1/checkpoints/best-epoch041.ckpt",   # whose network weights it started from
     "devices": {"CUDA_VISIBLE_DEVICES": "1", "slot": 1},   # what the job was given (hydra/launcher=gpus)
     "overrides": ["loss=afw_dice", "seed=2"], "mean_dsc": 0.79, "error": "...", "wall_time_s": 812.4,
     "config": {...}}            # the unresolved config of the first attempt

Running ``segbench-train`` again into the same directory (``run_name=<name>``, the same multirun
job, a Slurm requeue) looks at what is there:

* ``results/summary.json``: the run finished; it is not trained again (its summary is returned);
* ``checkpoints/last.ckpt`` and no summary: the run was cut short; it resumes from ``last.ckpt``;
* otherwise it starts from scratch (and so does ``resume=false``, which first removes the
  directory's ``last.ckpt`` and results).

Both continuations first check that the config is the one the directory was started with
(:data:`VOLATILE_KEYS` may differ), so a resumed run is the run it claims to be.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError
from ..files import atomic_write_text

RUN_FILE = "run.json"
LAST_CHECKPOINT = Path("checkpoints") / "last.ckpt"
SUMMARY = Path("results") / "summary.json"
ERROR = Path("results") / "error.json"

#: config keys that may differ between attempts of one run: where files live, how many threads,
#: the run's name and the resume switches themselves
VOLATILE_KEYS = ("run_name", "paths", "num_threads", "resume", "ckpt_path", "optimized_metric")
#: config keys recorded but not compared between attempts: the experiment trackers (``logger``) record a run and
#: change nothing in it, so an interrupted run may resume with another one (``logger=mlflow`` added to a rerun)
UNCOMPARED_KEYS = ("logger",)
#: data keys added after runs were written, with the value that gives what those runs did: a directory whose
#: config lacks them holds a run of that value (it resumes, or is found finished, under today's default)
ADDED_DATA_DEFAULTS = {"pipeline": "auto", "device_cache_gb": "auto"}
#: the same for keys added to ``data.split`` (k-fold cross-validation, off: :mod:`segbench.data.folds`)
ADDED_SPLIT_DEFAULTS = {"folds": None, "fold": None, "fold_seed": 12345}
#: the same for top-level keys (``init_from``: :mod:`segbench.runtime.init_from`) and keys of ``test``
ADDED_TOP_DEFAULTS = {"init_from": None}
ADDED_TEST_DEFAULTS = {"postprocess": "none"}


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def has_run_file(path: Path) -> bool:
    """Does ``path`` hold a run's ``run.json`` (a run that started)?"""
    return (Path(path) / RUN_FILE).is_file()


def is_run_dir(path: Path) -> bool:
    """Is ``path`` a run directory: results, an error, ``run.json`` or Hydra's saved config?"""
    path = Path(path)
    return ((path / SUMMARY).is_file() or (path / ERROR).is_file() or has_run_file(path)
            or (path / ".hydra" / "config.yaml").is_file())


def read_status(output_dir: Path) -> dict[str, Any] | None:
    path = Path(output_dir) / RUN_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def update_status(output_dir: Path, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into ``run.json`` (written through a temporary file and a rename)."""
    status = read_status(output_dir) or {}
    status.update(fields, updated=_now())
    atomic_write_text(Path(output_dir) / RUN_FILE, json.dumps(status, indent=2, default=str))
    return status


def comparable_config(cfg: DictConfig) -> dict[str, Any]:
    """The config as written (interpolations unresolved: machine-independent), minus :data:`VOLATILE_KEYS`."""
    container = OmegaConf.to_container(cfg, resolve=False)
    return {k: v for k, v in container.items() if k not in VOLATILE_KEYS}


def with_added_defaults(config: dict[str, Any], new: dict[str, Any] | None = None) -> dict[str, Any]:
    """``config`` (a run directory's, as written) with :data:`ADDED_DATA_DEFAULTS` and :data:`ADDED_SPLIT_DEFAULTS`
    where it lacks them, and :data:`ADDED_TOP_DEFAULTS` / :data:`ADDED_TEST_DEFAULTS` where it lacks them and
    ``new`` (the config it is compared with) has them."""
    new = new or {}
    config = {**config, **{k: v for k, v in ADDED_TOP_DEFAULTS.items() if k not in config and k in new}}
    if isinstance(config.get("test"), dict) and isinstance(new.get("test"), dict):
        test = config["test"]
        config["test"] = {**test, **{k: v for k, v in ADDED_TEST_DEFAULTS.items() if k not in test
                                     and k in new["test"]}}
    data = config.get("data")
    if not isinstance(data, dict):
        return config
    data = {**data, **{k: v for k, v in ADDED_DATA_DEFAULTS.items() if k not in data}}
    if isinstance(data.get("split"), dict):
        split = data["split"]
        data["split"] = {**split, **{k: v for k, v in ADDED_SPLIT_DEFAULTS.items() if k not in split}}
    return {**config, "data": data}


def config_changes(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ, as ``key: old -> new``."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in list(old) + [k for k in new if k not in old]:
            out += config_changes(old.get(key, "<absent>"), new.get(key, "<absent>"), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old} -> {new}"]


def _check_same_config(output_dir: Path, cfg: DictConfig, what: str) -> None:
    status = read_status(output_dir)
    if not status or "config" not in status:
        return  # a directory from before run.json existed: nothing to compare with
    from .trust import current_targets

    new = comparable_config(cfg)
    old = with_added_defaults(current_targets(status["config"]), new)
    changes = config_changes(*({k: v for k, v in c.items() if k not in UNCOMPARED_KEYS} for c in (old, new)))
    if changes:
        shown = "; ".join(changes[:3]) + (f"; and {len(changes) - 3} more" if len(changes) > 3 else "")
        raise ConfigError(f"{output_dir} holds {what} with another config ({shown}); choose another run_name "
                          "(or hydra.run.dir), or pass resume=false to train this directory from scratch")


def finished_summary(output_dir: Path, cfg: DictConfig) -> dict[str, Any] | None:
    """The summary of a finished run of this config in ``output_dir`` (None: not finished / ``resume=false``)."""
    path = Path(output_dir) / SUMMARY
    if not cfg.get("resume", True) or not path.is_file():
        return None
    _check_same_config(output_dir, cfg, "a finished run")
    return json.loads(path.read_text())


def resume_checkpoint(output_dir: Path, cfg: DictConfig) -> Path | None:
    """The checkpoint an unfinished run of this config in ``output_dir`` resumes from, if any.

    ``checkpoints/last.ckpt`` when it loads (:func:`segbench.runtime.checkpoint.check_training_checkpoint`:
    ``weights_only=True``, a complete training state). For a corrupt one (a full disk, a kill during a
    write by an older segbench) the newest sound checkpoint of ``checkpoints/`` (by training step) is
    used instead, with one line saying so; with none, the run starts over (and :func:`start` removes
    the corrupt file). The choice depends on the files only, and nothing is moved here, so every DDP
    rank, which each run this, makes the same one; the corrupt ``last.ckpt`` is overwritten by the
    next checkpoint.
    """
    from .checkpoint import check_training_checkpoint, load_checkpoint

    path = Path(output_dir) / LAST_CHECKPOINT
    if not cfg.get("resume", True) or not path.is_file() or (Path(output_dir) / SUMMARY).is_file():
        return None
    _check_same_config(output_dir, cfg, "an unfinished run")
    problem = check_training_checkpoint(path)
    if problem is None:
        return path
    candidates = []
    for other in sorted(path.parent.glob("*.ckpt")):
        if other != path and check_training_checkpoint(other) is None:
            candidates.append((int(load_checkpoint(other).get("global_step", 0)), other.stat().st_mtime, other))
    if candidates:
        best = max(candidates, key=lambda c: c[:2])[2]
        print(f"{problem}; skipping it: resuming from {best.name}, the newest sound checkpoint")
        return best
    print(f"{problem}; no other sound checkpoint: training starts over")
    return None


def start(output_dir: Path, cfg: DictConfig, overrides: list[str] | None, resumed_from: Path | None,
          init_from: Path | None = None) -> None:
    """Record an attempt's start (status ``running``) and clear what an earlier attempt left that no longer
    holds: its error, and -- when this attempt starts from scratch (``resume=false``) -- its last checkpoint
    and results, so that neither a later resume nor a report can pick them up. ``init_from``: the checkpoint
    whose network weights a fresh attempt starts from (``init_from``; kept by the attempts that resume)."""
    previous = read_status(output_dir) or {}
    left_over = [ERROR] if resumed_from else [ERROR, LAST_CHECKPOINT, SUMMARY, Path("results") / "per_case.csv"]
    for path in left_over:
        (Path(output_dir) / path).unlink(missing_ok=True)
    fresh = resumed_from is None or "config" not in previous
    from .runinfo import assigned_devices

    fields: dict[str, Any] = {"status": "running", "attempt": int(previous.get("attempt", 0)) + 1,
                              "host": socket.gethostname(), "pid": os.getpid(), "devices": assigned_devices(),
                              "output_dir": str(output_dir),
                              "resumed_from": str(resumed_from) if resumed_from else None, "epoch": None}
    if fresh:
        fields.update(started=_now(), overrides=overrides, config=comparable_config(cfg))
    if resumed_from is None:
        fields["init_from"] = str(init_from) if init_from else None
    for key in ("error", "mean_dsc", "wall_time_s"):
        previous.pop(key, None)
    atomic_write_text(Path(output_dir) / RUN_FILE, json.dumps({**previous, **fields, "updated": _now()},
                                                              indent=2, default=str))
