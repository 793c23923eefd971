"""A run killed mid-epoch and started again with the same command ends exactly as if never interrupted.

Why the equality is exact (segbench/runtime/seeding.py, segbench/runtime/rundir.py): ``checkpoints/last.ckpt`` is written
after every epoch with the weights, optimiser, schedule, loop counters and the state of every random
generator training draws from (Python, NumPy, torch, the augmentation transforms); the rerun finds it in
its run directory and restores all of it before the first batch, so the remaining epochs draw the same
batches, augmentations and updates. On a CPU with one thread every operation is deterministic, so the
final weights and metrics are bit-identical. (The work of the killed epoch is lost and redone.)
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from helpers import KILLER, console, script

pytestmark = pytest.mark.slow  # 4 training runs of 3 epochs



def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def test_sigkill_mid_epoch_then_the_same_command_resumes_to_identical_results(phantom_dir, tmp_path):
    env = {**os.environ, "SEGBENCH_OUTPUT_DIR": str(tmp_path / "outputs")}
    # 3 epochs of 3 batches; the augmentation is on (flips, rotations: debug=smoke keeps the data config's)
    common = ["debug=smoke", "num_threads=1", f"paths.data_dir={phantom_dir}"]
    args = [*common, "trainer.max_epochs=3"]
    killer = tmp_path / "kill_mid_epoch.py"
    killer.write_text(KILLER)

    # 1. killed at batch 1 of epoch 1 (the second epoch): last.ckpt holds the end of epoch 0
    proc = script(killer, *args, "run_name=interrupted", env={**env, "SEGBENCH_KILL_AT": "1,1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    run_dir = tmp_path / "outputs" / "train" / "interrupted"
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "running" and status["epoch"] == 1  # what an index of the sweep shows
    assert not (run_dir / "results" / "summary.json").exists()
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 0
    after_epoch0 = weights(run_dir / "checkpoints" / "last.ckpt")

    # 2. the same command again: resumes into the same directory and finishes
    proc = console("train", *args, "run_name=interrupted", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming from {run_dir}/checkpoints/last.ckpt" in proc.stdout
    status = json.loads((run_dir / "run.json").read_text())
    assert (status["status"], status["attempt"], status["epoch"]) == ("done", 2, 3)
    assert status["resumed_from"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert sorted(p.name for p in (tmp_path / "outputs" / "train").iterdir()) == ["interrupted"]

    # 3. an uninterrupted run of the same config
    proc = console("train", *args, "run_name=uninterrupted", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    other = tmp_path / "outputs" / "train" / "uninterrupted"

    resumed, straight = weights(run_dir / "checkpoints" / "last.ckpt"), weights(other / "checkpoints" / "last.ckpt")
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in resumed)  # bit-identical final weights
    assert not all(torch.equal(resumed[k], after_epoch0[k]) for k in resumed)  # ...after two more epochs
    assert (run_dir / "results" / "per_case.csv").read_text() == (other / "results" / "per_case.csv").read_text()
    a = json.loads((run_dir / "results" / "summary.json").read_text())
    b = json.loads((other / "results" / "summary.json").read_text())
    for key in ("mean_dsc", "mean_hd95", "per_class"):
        assert a[key] == b[key]
    assert a["run"]["best_val_dice"] == b["run"]["best_val_dice"]

    # 4. a finished run is not trained again; another config in its directory is refused
    proc = console("train", *args, "run_name=uninterrupted", env=env)
    assert proc.returncode == 0 and "holds a finished run of this config" in proc.stdout
    assert json.loads((other / "run.json").read_text())["attempt"] == 1
    proc = console("train", *common, "trainer.max_epochs=4", "run_name=uninterrupted", env=env)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        f"segbench-train: error: {other} holds a finished run with another config (trainer.max_epochs: 3 -> 4); "
        "choose another run_name (or hydra.run.dir), or pass resume=false to train this directory from scratch")
