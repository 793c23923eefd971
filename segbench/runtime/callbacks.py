"""Every callback of a run, Lightning's and Hydra's, in one place.

Lightning callbacks (``build_trainer`` adds the last four itself: exact resume, the run index and a sound
run depend on them, so they are not in the callbacks config):

* :class:`BestAndLastCheckpoint`: the best checkpoint by the monitored metric, and ``last.ckpt`` after every
  epoch (``configs/callbacks/default.yaml``);
* :class:`RandomStateCheckpoint`: seeds the augmentation, saves and restores every generator
  (:mod:`segbench.runtime.seeding`);
* :class:`EpochStatus`: keeps ``run.json`` current (:mod:`segbench.runtime.rundir`);
* :class:`StopOnNonFiniteLoss`: stops a run whose loss is not finite (:mod:`segbench.runtime.nonfinite`);
* :class:`EpochLine`: one line per epoch when the output is not a terminal (:mod:`segbench.runtime.console`).

Hydra callbacks (``configs/hydra/default.yaml``):

* :class:`CheckOutputDir`: the run or sweep directory must be writable, checked before Hydra creates it;
* :class:`SweepReport`: a sweep with a job that did not finish exits 1 and names each such job
  (:mod:`segbench.runtime.sweep`).

Lightning 2.6's ``ModelCheckpoint(monitor=..., save_last=True)`` rewrites ``last.ckpt`` only in the
steps where it also saved a new best, so an interrupted run could resume from an old epoch; a second,
unmonitored callback for ``last.ckpt`` fixes that but makes Lightning warn on every
``trainer.test(ckpt_path="best")`` ("multiple ModelCheckpoint callbacks"). :class:`BestAndLastCheckpoint`
is one callback that does both.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_warn

from ..errors import NonFiniteLossError, output_dir_problem
from . import sweep
from .nonfinite import LossWatch
from .rundir import update_status
from .seeding import generator_states, restore_generator_states, seed_transforms

log = logging.getLogger("segbench")


# -- Lightning callbacks -------------------------------------------------------------------------------------
class BestAndLastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` (``save_last=True``) is written after every epoch
    whether or not the monitored metric improved.

    Args:
        last_every_n_train_steps: also write ``last.ckpt`` every N optimiser steps (a kill then loses
            less than an epoch; a resume from mid-epoch is not bit-identical). ``None``: epochs only.
        **kwargs: :class:`~pytorch_lightning.callbacks.ModelCheckpoint`'s options.
    """

    def __init__(self, last_every_n_train_steps: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        if last_every_n_train_steps is not None and int(last_every_n_train_steps) < 1:
            raise ValueError(f"callbacks.model_checkpoint.last_every_n_train_steps must be >= 1 or null, "
                             f"got {last_every_n_train_steps}")
        self.last_every_n_train_steps = None if last_every_n_train_steps is None else int(last_every_n_train_steps)

    def _save_last_now(self, trainer: pl.Trainer) -> None:
        # _should_skip_saving_checkpoint: not fitting, sanity check, or this step saved already (a new best
        # and its last.ckpt were just written by ModelCheckpoint itself)
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        n = self.last_every_n_train_steps
        if n and trainer.global_step % n == 0:
            self._save_last_now(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_now(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_now(trainer)


class RandomStateCheckpoint(pl.Callback):
    """Seed the training transforms when a fit starts; save / restore every generator with checkpoints
    (:mod:`segbench.runtime.seeding`).

    Args:
        seed: the run's ``seed``; rank ``r`` seeds its transforms with ``seed + 1_000_003 * r``.
    """

    def __init__(self, seed: int):
        self.seed = int(seed)
        self._trainer: pl.Trainer | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer
        if stage == "fit":
            seed_transforms(self._train_set(), self.seed, trainer.global_rank)

    def _train_set(self) -> Any:
        return getattr(getattr(self._trainer, "datamodule", None), "train_set", None)

    def state_dict(self) -> dict[str, Any]:
        return generator_states(self._train_set()) if self._trainer else generator_states(None)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning loads callback states after ``setup`` and before it builds the optimisers, which
        # may already draw the first data loader iterator (``estimated_stepping_batches``): restore now
        if self._trainer is not None and self._trainer.state.fn == "fit":  # not when testing a checkpoint
            if not restore_generator_states(state_dict, self._train_set()):
                # another transform pipeline than the one checkpointed: seed it afresh
                seed_transforms(self._train_set(), self.seed, self._trainer.global_rank)
                rank_zero_warn("the checkpoint's augmentation random states do not match this run's transforms; "
                               "they are seeded afresh, so the resumed run is not bit-identical")


class EpochStatus(pl.Callback):
    """Keeps ``run.json``'s ``epoch`` (epochs completed) current, on rank 0 (:mod:`segbench.runtime.rundir`)."""

    def __init__(self, output_dir: Path):
        self.output_dir = Path(output_dir)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank == 0 and not trainer.sanity_checking:
            update_status(self.output_dir, epoch=trainer.current_epoch + 1, max_epochs=trainer.max_epochs)


class StopOnNonFiniteLoss(pl.Callback):
    """Raise :class:`NonFiniteLossError` within a few steps of a non-finite training loss (module docstring)."""

    def __init__(self):
        self._buffer: torch.Tensor | None = None
        self._event = None

    @staticmethod
    def _watch(pl_module: pl.LightningModule) -> LossWatch | None:
        watch = getattr(pl_module, "loss_watch", None)
        return watch if watch is not None and watch.first_step is not None else None

    def _raise(self, watch: LossWatch, step: int, pl_module: pl.LightningModule) -> None:
        extra = {}
        try:
            extra = {k: float(v) for k, v in pl_module.loss_fn.log_values().items()}
        except Exception:  # noqa: BLE001 - the message must not fail
            pass
        raise NonFiniteLossError(watch.message(step, extra))

    def _check_now(self, pl_module: pl.LightningModule) -> None:
        watch = self._watch(pl_module)
        if watch is not None:
            step = int(watch.first_step.cpu())  # a point that synchronises anyway
            if step >= 0:
                self._raise(watch, step, pl_module)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        watch = self._watch(pl_module)
        if watch is None:
            return
        if watch.first_step.device.type != "cuda":
            step = int(watch.first_step.numpy())  # host memory already: nothing to wait for
            if step >= 0:
                self._raise(watch, step, pl_module)
            return
        # GPU: read the copy queued earlier once it has landed, then queue the next one; never wait
        if self._event is not None and self._event.query():
            step = int(self._buffer.numpy())
            if step >= 0:
                self._raise(watch, step, pl_module)
            self._event = None
        if self._event is None:
            if self._buffer is None:
                self._buffer = torch.empty((), dtype=torch.int64, pin_memory=True)
            self._buffer.copy_(watch.first_step, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.training or trainer.state.fn == "fit":
            self._check_now(pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_now(pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_now(pl_module)


class EpochLine(pl.Callback):
    """One line per epoch on rank 0 (printed and logged), used instead of the progress bar when the output
    is not a terminal::

        epoch 3/7: train/loss 0.5123, val/dice 0.7311 (41.2 s)
    """

    keys = ("train/loss_epoch", "val/loss", "val/dice")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.monotonic()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_rank != 0 or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        values = ", ".join(f"{k.removesuffix('_epoch')} {float(metrics[k]):.4f}" for k in self.keys if k in metrics)
        log.info("epoch %d/%d: %s (%.1f s)", trainer.current_epoch + 1, trainer.max_epochs, values or "-",
                 time.monotonic() - getattr(self, "start", time.monotonic()))


# -- Hydra callbacks ---------------------------------------------------------------------------------------------
class CheckOutputDir(HydraCallback):
    """A Hydra callback: the run (or sweep) directory must be creatable and writable, else one line and exit 1.

    Hydra creates the directory itself before any segbench code runs, so without this check a
    read-only disk or a file in the way surfaces as Hydra's traceback of ``mkdir``.
    """

    def _check(self, config, key: str) -> None:
        try:
            folder = Path(str(OmegaConf.select(config, key)))
        except Exception:  # noqa: BLE001 - an interpolation only the job can resolve: Hydra reports it
            return
        problem = output_dir_problem(folder)
        if problem is not None:
            print(f"segbench-{OmegaConf.select(config, 'task_name', default='train')}: error: {problem}",
                  file=sys.stderr)
            sys.exit(1)

    def on_run_start(self, config, **kwargs) -> None:
        self._check(config, "hydra.run.dir")

    def on_multirun_start(self, config, **kwargs) -> None:
        self._check(config, "hydra.sweep.dir")


class SweepReport(HydraCallback):
    """At the end of a multirun: exit 1 naming every job that did not finish, with its error."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        message = sweep.unfinished_report(sweep_dir) if sweep_dir.is_dir() else None
        if message:
            # Hydra turns a callback's exception into a warning: the exit status is set here
            print(message, file=sys.stderr)
            raise SystemExit(1)
