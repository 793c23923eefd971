"""A Lightning callback the Slurm tests add to a job (``+callbacks.pause=...``) to hold it at a known point.

At the start of epoch ``epoch`` (after the previous epoch's ``checkpoints/last.ckpt`` was written) rank 0
appends the Slurm job id to ``marker`` and sleeps up to ``seconds``: long enough for the test to cancel,
preempt or time out the job there. ``once``: only the first attempt pauses (a requeued or resumed
attempt finds the marker and goes on), so the run then ends as one never held.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytorch_lightning as pl


class PauseAtEpoch(pl.Callback):
    def __init__(self, epoch: int, marker: str, seconds: float = 300.0, once: bool = True) -> None:
        self.epoch, self.marker, self.seconds, self.once = int(epoch), Path(marker), float(seconds), bool(once)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch != self.epoch or trainer.global_rank != 0 or (self.once and self.marker.exists()):
            return
        with self.marker.open("a") as fh:
            fh.write(f"{os.environ.get('SLURM_JOB_ID')}\n")
        end = time.monotonic() + self.seconds
        while time.monotonic() < end:
            time.sleep(0.2)
