"""The tasks behind the commands: ``segbench-train`` checks, builds, fits, tests, writes the results contract
and records in the run directory whatever happens (:func:`train_task`); ``segbench-eval`` scores a checkpoint
on its run's test split (:func:`evaluate_checkpoint`).

A run directory read by ``segbench-eval`` may come from someone else: its config may only instantiate
segbench, torch optimiser and Lightning classes (:mod:`segbench.runtime.trust`; ``trusted_modules=[mylab.losses]``
admits your own), and the checkpoint is read with ``weights_only=True`` and checked against the model the
config builds (:mod:`segbench.runtime.checkpoint`) before anything is tested.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from ..config import PROJECT_ROOT
from ..errors import (
    USER_ERRORS,
    CheckpointError,
    ConfigError,
    DataError,
    SegbenchError,
    first_line,
    report_error,
    unwrap,
)
from ..files import atomic_write_text
from .checks import NO_CHECKPOINT, check_run_config, test_checkpoint

log = logging.getLogger("segbench")


def run(cfg: DictConfig, output_dir: Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Fit (unless ``trainer.max_epochs=0``) and test; returns the summary written to results/.

    A directory that holds an unfinished run of this config (``checkpoints/last.ckpt``, no
    ``results/summary.json``) is resumed from its last checkpoint; one that holds a finished run
    is not trained again (:mod:`segbench.runtime.rundir`; ``resume=false`` starts over).
    Under DDP every rank runs this; rank 0 alone writes ``run.json``, ``splits.json`` and results.
    """
    import pytorch_lightning as pl
    import torch

    from ..metrics.results import format_table
    from . import rundir
    from .build import build, build_trainer
    from .console import device_line, report
    from .distributed import one_run_directory
    from .runinfo import device_description, git_revision, package_versions

    start = time.time()
    check_run_config(cfg, output_dir)
    ckpt = test_checkpoint(cfg)
    finished = rundir.finished_summary(output_dir, cfg)
    if finished is not None:
        print(f"{output_dir} holds a finished run of this config (results/summary.json): not trained again; "
              "resume=false retrains it")
        return finished
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    datamodule, module = build(cfg)
    trainer = build_trainer(cfg, output_dir)
    main_rank = trainer.global_rank == 0
    if main_rank:
        log.info(device_line(trainer))  # for Lightning's device banner (segbench.runtime.console)
    resume_from = cfg.get("ckpt_path") or rundir.resume_checkpoint(output_dir, cfg)
    if resume_from:  # loads (weights_only=True), holds a training state, fits this model: or one line
        from .checkpoint import check_matches, check_training_checkpoint, load_checkpoint

        problem = check_training_checkpoint(resume_from)
        if problem:
            raise CheckpointError(problem)
        check_matches(load_checkpoint(resume_from), module, resume_from)
    init_from = init_line = None
    if cfg.get("init_from") and not resume_from:  # another run's network weights; a resumed run has its own
        from .init_from import load_initial_weights, resolve

        init_from = resolve(cfg.init_from)
        init_line = load_initial_weights(init_from, module, cfg)
    if main_rank:
        rundir.start(output_dir, cfg, overrides, resume_from, init_from=init_from)
    if resume_from:
        print(f"resuming from {resume_from}" + (f" (the run started from init_from={cfg.init_from}; its own "
                                                "checkpoint is continued, init_from is not read again)"
                                                if cfg.get("init_from") else ""))
    if init_line and main_rank:
        report(init_line)
    datamodule.prepare_data()
    datamodule.setup("fit")
    # pre-flight: every case of every split read and checked before the first step (segbench.data)
    datamodule.preflight()
    if main_rank:
        datamodule.write_splits(output_dir / "splits.json")

    from .checkpoint import weights_only_kwargs
    from .loggers import close, log_config, where

    config = OmegaConf.to_container(cfg, resolve=True)
    if main_rank:
        log_config(trainer.loggers, config)  # every logger gets the run's resolved config
    try:
        with one_run_directory(output_dir):
            if cfg.trainer.max_epochs == 0:
                ckpt = None  # "no training": evaluate the initial weights
            else:
                trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume_from) if resume_from else None,
                            **weights_only_kwargs(trainer.fit))
                if not getattr(trainer.checkpoint_callback, "best_model_path", ""):
                    ckpt = None  # no validation split: test the final weights
            if cfg.test.get("save_predictions"):
                module.prediction_dir = output_dir / "predictions"
            trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False,
                         **weights_only_kwargs(trainer.test))
            # k-fold cross-validation: the fold's validation cases, scored like the test cases by the same weights
            cv = (score_fold(trainer, module, datamodule, ckpt, output_dir, cfg) if "folds" in datamodule.splits
                  else None)
        tracked = [line for line in map(where, trainer.loggers) if line] if main_rank else []
    finally:
        close(trainer.loggers)  # a tracker's run ends with this run, also when it failed
    for line in tracked:  # where each experiment tracker (but TensorBoard) has the run
        log.info(line)

    best_val = getattr(trainer.checkpoint_callback, "best_model_score", None)
    extra = {
        "run": {"output_dir": str(output_dir), "git": git_revision(PROJECT_ROOT), "versions": package_versions(),
                "device": device_description(), "wall_time_s": round(time.time() - start, 1),
                "world_size": trainer.world_size, "resumed_from": str(resume_from) if resume_from else None,
                # the checkpoint whose network weights the run started from (init_from), also when it resumed since
                "init_from": str(init_from) if init_from else (rundir.read_status(output_dir) or {}).get("init_from")
                if cfg.get("init_from") else None,
                "best_val_dice": float(best_val) if best_val is not None else None,
                "checkpoint": ckpt and getattr(trainer.checkpoint_callback, "best_model_path", None),
                "tested": "best validation epoch" if ckpt else
                ("initial weights" if cfg.trainer.max_epochs == 0 else "last epoch")},
        "splits": datamodule.splits,
    }
    if not main_rank:
        return module.evaluator.summary()
    if cv is not None:  # written first: results/summary.json marks the run finished
        extra["cv"] = write_fold_results(cv, output_dir, datamodule.splits, config, extra)
    summary = module.evaluator.write(output_dir / "results", config=config, extra=extra)
    rundir.update_status(output_dir, status="done", mean_dsc=summary.get("mean_dsc"),
                         wall_time_s=extra["run"]["wall_time_s"])
    tail = fold_line(extra["cv"], output_dir) if cv is not None else ""
    report(format_table(summary) + f"\nresults: {output_dir / 'results'}" + tail)
    return summary


def fold_line(record: dict[str, Any], output_dir: Path) -> str:
    """The console's line on a fold run's validation cases (after the test split's table)."""
    dsc = record.get("mean_dsc")
    shown = "-" if dsc is None or dsc != dsc else f"{100 * dsc:.2f} %"
    return (f"\ncross-validation, fold {record['fold']} of {record['folds']}: mean DSC {shown} over its "
            f"{len(record['cases'])} validation case(s): {output_dir / CV_RESULTS}")


#: where a fold run of a k-fold cross-validation writes the scores of its validation cases, and their predictions
CV_RESULTS, CV_PREDICTIONS = Path("results") / "cv", "predictions_cv"


def score_fold(trainer, module, datamodule, ckpt: str | None, output_dir: Path, cfg: DictConfig):
    """A fold run's cross-validation pass: ``trainer.test`` once more, on the fold's validation cases
    (``data.split.fold``), with the weights the test split was scored with (``ckpt``) and a fresh evaluator:
    whole cases, every metric and convention, exactly as the test cases. Returns that evaluator (its rows:
    every validation case, once); predictions go to ``predictions_cv/`` when ``test.save_predictions``.

    (The fold ensemble on the test split -- the K fold models' probabilities averaged -- is not built yet;
    each fold run's ``predictions/`` and ``results/`` hold its own model's test split.)"""
    from .checkpoint import weights_only_kwargs

    evaluator, prediction_dir = module.evaluator, module.prediction_dir
    module.evaluator = evaluator.empty_copy()
    module.prediction_dir = output_dir / CV_PREDICTIONS if cfg.test.get("save_predictions") else None
    try:
        with datamodule.scoring("val"):
            trainer.test(module, datamodule=datamodule, ckpt_path=ckpt, verbose=False,
                         **weights_only_kwargs(trainer.test))
        return module.evaluator
    finally:
        module.evaluator, module.prediction_dir = evaluator, prediction_dir


def write_fold_results(cv, output_dir: Path, splits: dict[str, Any], config: dict, extra: dict) -> dict[str, Any]:
    """``results/cv/per_case.csv`` and ``summary.json`` of a fold's validation cases (the results contract of
    :mod:`segbench.metrics.results`); returns what the run's own ``summary.json`` records of them."""
    folds, fold = len(splits["folds"]), splits["fold"]
    record = {"folds": folds, "fold": fold, "fold_seed": splits["fold_seed"], "cases": list(splits["val"]),
              "scored": f"the validation cases of fold {fold} of {folds}, with the weights the test split was "
                        "scored with",
              "results": str(CV_RESULTS)}
    summary = cv.write(output_dir / CV_RESULTS, config=config, extra={**extra, "cv": record})
    return {**record, "mean_dsc": summary.get("mean_dsc"), "mean_hd95": summary.get("mean_hd95")}


#: what a sweeper can optimise (``optimized_metric``): the test split's mean DSC, or the best validation Dice
OBJECTIVES = {"mean_dsc": lambda summary: summary.get("mean_dsc"),
              "val/dice": lambda summary: (summary.get("run") or {}).get("best_val_dice")}


def objective(summary: dict[str, Any], metric: str) -> float | None:
    """The number returned to the sweeper (None when the run has no such number, e.g. no validation split)."""
    value = OBJECTIVES[metric](summary)
    return float(value) if value is not None else None


def train_task(cfg: DictConfig, output_dir: Path, overrides: list[str], multirun: bool) -> float | None:
    """:func:`run`, with every failure recorded in the run directory (``results/error.json``, ``run.json``
    status ``failed`` or ``interrupted``), and the number the sweeper optimises returned.

    A user error is one line and exit status 1; in a sweep a failed job returns None and the sweep goes
    on (:class:`~segbench.runtime.callbacks.SweepReport` names it at the end).
    """
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    from . import rundir

    metric = cfg.get("optimized_metric", "mean_dsc")
    try:
        if metric not in OBJECTIVES:
            raise ConfigError(f"optimized_metric={metric!r} is unknown; choose one of {', '.join(OBJECTIVES)}")
        summary = run(cfg, output_dir, overrides=overrides)
    except Exception as exc:  # noqa: BLE001 - every failure is recorded; user errors are one line
        from .slurm import explain_stop

        user_error = isinstance(exc, USER_ERRORS)
        exc = explain_stop(unwrap(exc))  # the root cause, not a wrapper's message (MONAI's, submitit's)
        user_error = user_error or isinstance(exc, SegbenchError)
        if user_error:
            report_error(exc, "segbench-train")
        else:
            traceback.print_exc()
        if rank_zero_only.rank == 0:
            record_failure(output_dir, exc, overrides)
        if multirun:
            return None  # a failed job is recorded in its own directory; the sweep goes on
        if user_error:
            sys.exit(1)
        raise
    except BaseException:  # killed by Ctrl-C, or by a Slurm time limit / preemption (submitit requeues)
        if rank_zero_only.rank == 0 and rundir.has_run_file(output_dir):
            rundir.update_status(output_dir, status="interrupted")
        raise
    return objective(summary, metric)


def record_failure(output_dir: Path, exc: BaseException, overrides: list[str]) -> None:
    """``results/error.json`` and ``run.json`` status ``failed``, when the run directory can be written."""
    from . import rundir
    from .runinfo import assigned_devices

    try:
        atomic_write_text(output_dir / "results" / "error.json",
                          json.dumps({"error": str(exc), "type": getattr(exc, "type_name", type(exc).__name__)}))
        rundir.update_status(output_dir, status="failed", overrides=overrides, error=first_line(exc),
                             devices=assigned_devices())
    except OSError:
        pass  # the run directory cannot be written (the error above says so): nothing to record in


# -- segbench-eval ---------------------------------------------------------------------------------------------
def training_config(cfg: DictConfig) -> DictConfig:
    """The config of the run that wrote ``cfg.ckpt_path`` (``<run>/.hydra/config.yaml``, or
    ``train_config``), with this evaluation's ``metrics``, ``test``, ``data`` and ``paths`` on top, checked
    against the trust allowlist (:mod:`segbench.runtime.trust`) before anything is built."""
    if OmegaConf.is_missing(cfg, "ckpt_path") or not cfg.ckpt_path:
        raise ConfigError(NO_CHECKPOINT)
    ckpt = Path(cfg.ckpt_path)
    if not ckpt.is_file():
        raise DataError(f"checkpoint {ckpt} not found; pass ckpt_path=<run>/checkpoints/last.ckpt")
    path = Path(cfg.train_config) if cfg.train_config else ckpt.resolve().parent.parent / ".hydra" / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"training config {path} not found; pass train_config=<run>/.hydra/config.yaml")
    from .trust import checked_config, load_run_config

    train_cfg = load_run_config(path, "; pass train_config=<run>/.hydra/config.yaml")
    if not isinstance(train_cfg, DictConfig):
        raise ConfigError(f"training config {path} is not a mapping; pass train_config=<run>/.hydra/config.yaml")
    with open_dict(train_cfg):
        # this evaluation's metrics options on top of the run's (which keep e.g. metrics.report_convention)
        train_cfg.metrics = OmegaConf.merge(train_cfg.get("metrics") or {}, cfg.metrics)
        train_cfg.test = cfg.test
        train_cfg.data = OmegaConf.merge(train_cfg.data, cfg.data) if "data" in train_cfg else cfg.data
        # paths are re-resolved for this machine / this evaluation's run directory
        train_cfg.paths = cfg.paths
    return checked_config(train_cfg, cfg.get("trusted_modules") or (), source=f"training config {path}")


def evaluate_checkpoint(cfg: DictConfig, output_dir: Path) -> dict:
    """``segbench-eval``'s task: score ``cfg.ckpt_path`` on its run's test split, write the results contract
    into ``output_dir`` and print the per-organ table."""
    import pytorch_lightning as pl

    from ..metrics.results import format_table
    from .build import build
    from .checkpoint import check_matches, load_checkpoint, safe_checkpoint_io, weights_only_kwargs
    from .console import EVAL_CALLBACKS_HINT, device_line, interactive, report
    from .runinfo import device_description, git_revision, package_versions

    start = time.time()
    train_cfg = training_config(cfg)
    checkpoint = load_checkpoint(cfg.ckpt_path)  # weights_only=True: no pickle payload runs
    datamodule, module = build(train_cfg)
    check_matches(checkpoint, module, cfg.ckpt_path)
    del checkpoint
    if cfg.test.get("save_predictions"):
        module.prediction_dir = output_dir / "predictions"
    trainer = pl.Trainer(**OmegaConf.to_container(cfg.trainer), logger=False, enable_checkpointing=False,
                         default_root_dir=str(output_dir), enable_model_summary=False,
                         enable_progress_bar=interactive(), plugins=[safe_checkpoint_io()])
    if trainer.global_rank == 0:
        log.info(device_line(trainer))  # for Lightning's device banner (segbench.runtime.console)
    datamodule.prepare_data()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=EVAL_CALLBACKS_HINT)  # testing needs no training callbacks
        trainer.test(module, datamodule=datamodule, ckpt_path=str(cfg.ckpt_path), verbose=False,
                     **weights_only_kwargs(trainer.test))
    extra = {"run": {"output_dir": str(output_dir), "checkpoint": str(Path(cfg.ckpt_path).resolve()),
                     "git": git_revision(PROJECT_ROOT), "versions": package_versions(),
                     "device": device_description(), "wall_time_s": round(time.time() - start, 1)},
             "splits": datamodule.splits}
    summary = module.evaluator.write(output_dir / "results", config=OmegaConf.to_container(train_cfg, resolve=True),
                                     extra=extra)
    report(format_table(summary) + f"\nresults: {output_dir / 'results'}")
    return summary


def remove_if_empty(output_dir: Path) -> None:
    """Remove a failed evaluation's directory when it holds nothing but Hydra's own files (the composed
    config and the log), and the folders above it that this leaves empty (``outputs/eval``)."""
    import shutil

    output_dir = Path(output_dir)
    if not output_dir.is_dir() or any(p.name not in (".hydra", "eval.log") for p in output_dir.iterdir()):
        return
    shutil.rmtree(output_dir, ignore_errors=True)
    for parent in list(output_dir.parents)[:2]:  # outputs/eval, outputs
        try:
            parent.rmdir()  # only when empty
        except OSError:
            break
