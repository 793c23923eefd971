"""A Lightning callback the Slurm tests add to a job (``+callbacks.pause=...``) to hold it at a known point.

At the start of epoch ``epoch`` (after the previous epoch's ``checkpoints/last.ckpt`` was written) rank 0
appends the Slurm job's id to the file ``<marker_dir>/<name>`` and sleeps up to ``seconds``: long enough for the test to cancel,
preempt or time out the job there. ``once``: only the first attempt pauses (a requeued or resumed
attempt finds the marker and goes on), so the run then ends as one never held. ``name`` tells the jobs
of one sweep apart; a job named ``never`` is never held (the uninterrupted reference).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytorch_lightning as pl


class PauseAtEpoch(pl.Callback):
    def __init__(self, epoch: int, marker_dir: str, name: str = "held", seconds: float = 300.0,
                 once: bool = True) -> None:
        self.epoch, self.name, self.seconds, self.once = int(epoch), name, float(seconds), bool(once)
        self.marker = Path(marker_dir) / name

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if (trainer.current_epoch != self.epoch or trainer.global_rank != 0 or self.name == "never"
                or (self.once and self.marker.exists())):
            return
        array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
        with self.marker.open("a") as fh:  # the job as scancel and submitit name it: <array>_<task> or <id>
            fh.write(f"{array}_{task}\n" if array else f"{os.environ.get('SLURM_JOB_ID')}\n")
        end = time.monotonic() + self.seconds
        while time.monotonic() < end:
            time.sleep(0.2)
