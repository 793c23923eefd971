"""Run and split bookkeeping: the four seeded bugs the suite used to miss, each caught here.

* a case in both the validation and the test split (``resolve_split``);
* ``resume=false`` over a finished run must retrain, not return the old summary (``rundir.finished_summary``);
* the test split is scored with the best-by-validation checkpoint, not the last weights (``train.run``);
* the config-change check sees a key only the new config has (``rundir.config_changes``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from helpers import script
from segbench.data.datamodule import resolve_split
from segbench.errors import ConfigError, DataError
from segbench.runtime.rundir import _check_same_config, config_changes

CASES = [f"{i:04d}" for i in range(1, 11)]


# -- splits ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("split, message", [
    ({"train": ["0001", "0002"], "val": ["0003", "0004"], "test": ["0004", "0005"]},
     r"case\(s\) \['0004'\] are in both val and test"),
    ({"train": ["0001", "0002"], "val": ["0003"], "test": ["0002", "0005"]},
     r"case\(s\) \['0002'\] are in both train and test"),
    ({"train": ["0001", "0002"], "val": ["0002"], "test": ["0005"]},
     r"case\(s\) \['0002'\] are in both train and val"),
    ({"train": ["0001"], "val": ["0003"], "test": ["0005", "0005"]},
     r"data\.split\.test lists case\(s\) \['0005'\] more than once"),
])
def test_a_case_in_two_splits_is_refused(split, message):
    with pytest.raises(DataError, match=message):
        resolve_split(CASES, split)


def test_disjoint_explicit_splits_pass():
    split = {"train": ["0001", "0002"], "val": ["0003"], "test": ["0004", "0005"]}
    assert resolve_split(CASES, split) == split


# -- the config-change check -------------------------------------------------------------------------------
def test_the_config_change_check_sees_a_key_only_the_new_config_has(tmp_path):
    old = {"loss": {"name": "dice"}, "seed": 1}
    new = {"loss": {"name": "dice", "gamma": 0.5}, "seed": 1, "extra": True}
    assert config_changes(old, new) == ["loss.gamma: <absent> -> 0.5", "extra: <absent> -> True"]
    assert config_changes(new, old) == ["loss.gamma: 0.5 -> <absent>", "extra: True -> <absent>"]
    # through the check a rerun makes: the run directory recorded the old config
    (tmp_path / "run.json").write_text(json.dumps({"status": "interrupted", "config": old}))
    with pytest.raises(ConfigError, match=r"holds an unfinished run with another config \(loss\.gamma: <absent> -> "
                                          r"0\.5; extra: <absent> -> True\)"):
        _check_same_config(tmp_path, OmegaConf.create(new), "an unfinished run")
    _check_same_config(tmp_path, OmegaConf.create(old), "an unfinished run")  # the same config passes


def test_a_run_written_before_data_pipeline_existed_is_the_same_config_under_its_default(tmp_path):
    """A directory whose config lacks ``data.pipeline`` / ``data.device_cache_gb`` (written before they
    existed) trained as ``auto`` does: it resumes under the default; another value is refused."""
    old = {"data": {"name": "phantom", "batch_size": 8}, "seed": 1}
    (tmp_path / "run.json").write_text(json.dumps({"status": "interrupted", "config": old}))
    now = {"data": {"name": "phantom", "batch_size": 8, "pipeline": "auto", "device_cache_gb": "auto"}, "seed": 1}
    _check_same_config(tmp_path, OmegaConf.create(now), "an unfinished run")
    now["data"]["pipeline"] = "device"
    with pytest.raises(ConfigError, match=r"another config \(data\.pipeline: auto -> device\)"):
        _check_same_config(tmp_path, OmegaConf.create(now), "an unfinished run")


# -- which weights the test split is scored with; resume=false ---------------------------------------------
RIGGED = '''
"""segbench-train whose validation Dice is 1 at epoch 0 and 0 after (so epoch 0 is the best by validation),
and which saves the weights the test split is scored with to $TEST_WEIGHTS."""
import os, sys
import torch
import segbench.module as module
import segbench.train as train


def rigged_validation_end(self):
    self.log("val/dice", torch.tensor(1.0 if self.current_epoch == 0 else 0.0), prog_bar=True)


def record_test_weights(self):
    self.evaluator.rows.clear()
    torch.save({k: v.detach().clone() for k, v in self.state_dict().items()}, os.environ["TEST_WEIGHTS"])


module.SegModule.on_validation_epoch_end = rigged_validation_end
module.SegModule.on_test_epoch_start = record_test_weights
sys.argv[0] = "segbench-train"
train.main()
'''


@pytest.fixture(scope="module")
def rigged_run(phantom_dir, tmp_path_factory) -> tuple[Path, Path, Path, list[str]]:
    base = tmp_path_factory.mktemp("bookkeeping")
    rigged = base / "rigged_train.py"
    rigged.write_text(RIGGED)
    run = base / "run"
    args = ["debug=smoke", "trainer.max_epochs=2", "num_threads=1", f"paths.data_dir={phantom_dir}",
            f"hydra.run.dir={run}"]
    proc = script(rigged, *args, env={**os.environ, "TEST_WEIGHTS": str(base / "test_weights.pt")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run, rigged, base / "test_weights.pt", args


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # trains 2 epochs
def test_the_test_split_is_scored_with_the_best_validation_checkpoint(rigged_run):
    run, _, test_weights, _ = rigged_run
    tested = torch.load(test_weights, weights_only=True)
    best = torch.load(run / "checkpoints" / "best-epoch000.ckpt", weights_only=True)["state_dict"]
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert not same_weights(best, last)  # epoch 1 moved the weights
    assert same_weights(tested, best)
    summary = json.loads((run / "results" / "summary.json").read_text())
    assert summary["run"]["checkpoint"].endswith("best-epoch000.ckpt")
    assert summary["run"]["best_val_dice"] == 1.0


@pytest.mark.slow  # trains 2 epochs twice
def test_resume_false_retrains_a_finished_run(rigged_run, tmp_path):
    run, rigged, _, args = rigged_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    args = [a if not a.startswith("hydra.run.dir=") else f"hydra.run.dir={copy}" for a in args]
    old_last = (copy / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    # without resume=false the finished run is returned as it is
    proc = script(rigged, *args, env={**os.environ, "TEST_WEIGHTS": str(tmp_path / "w0.pt")})
    assert proc.returncode == 0 and "not trained again" in proc.stdout
    assert not (tmp_path / "w0.pt").exists()
    # with resume=false it is trained and tested again, from scratch
    proc = script(rigged, *args, "resume=false", env={**os.environ, "TEST_WEIGHTS": str(tmp_path / "w1.pt")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "not trained again" not in proc.stdout
    assert (tmp_path / "w1.pt").exists()  # the test split was scored again
    assert (copy / "checkpoints" / "last.ckpt").stat().st_mtime_ns != old_last
    status = json.loads((copy / "run.json").read_text())
    # attempt 1 trained it, the rerun without resume=false started nothing, resume=false is attempt 2
    assert status["status"] == "done" and status["resumed_from"] is None and status["attempt"] == 2
