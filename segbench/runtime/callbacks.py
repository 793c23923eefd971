"""The run's one checkpoint callback: the best checkpoint by the monitored metric, and ``last.ckpt``.

Lightning 2.6's ``ModelCheckpoint(monitor=..., save_last=True)`` rewrites ``last.ckpt`` only in the
steps where it also saved a new best, so an interrupted run could resume from an old epoch; a second,
unmonitored callback for ``last.ckpt`` fixes that but makes Lightning warn on every
``trainer.test(ckpt_path="best")`` ("multiple ModelCheckpoint callbacks"). :class:`BestAndLastCheckpoint`
is one callback that does both.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint


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
