"""End to end through the real command line: train + test on a tiny phantom, eval, bad input."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from helpers import blob_case, cli, write_case

ORGANS = ["spleen", "kidney_r", "kidney_l", "gallbladder", "liver", "stomach", "aorta", "pancreas"]


def read_rows(path: Path) -> list[dict]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_smoke_run_writes_the_results_contract(smoke_run):
    all_rows = read_rows(smoke_run / "results" / "per_case.csv")
    assert list(all_rows[0]) == ["case", "organ", "label", "dsc", "hd95", "hd", "assd", "nsd", "gt_voxels",
                                 "pred_voxels", "status", "convention", "hd_unit"]
    # every test pass scores both conventions: the run's own (default, mm) first, then transunet (voxels)
    assert [(r["convention"], r["hd_unit"]) for r in all_rows] == [("default", "mm")] * 8 + [("transunet", "voxels")] * 8
    rows = all_rows[:8]
    transunet = all_rows[8:]
    assert [r["organ"] for r in transunet] == ORGANS and [r["dsc"] for r in transunet] == [r["dsc"] for r in rows]
    # debug=smoke tests one case: one row per organ, labels 1..8 in Synapse order
    assert [r["organ"] for r in rows] == ORGANS
    assert [int(r["label"]) for r in rows] == list(range(1, 9))
    summary = json.loads((smoke_run / "results" / "summary.json").read_text())
    assert summary["convention"] == "default" and summary["hd_unit"] == "mm"
    assert summary["conventions"] == ["default", "transunet"]
    assert summary["by_convention"]["default"]["mean_dsc"] == summary["mean_dsc"]
    assert summary["by_convention"]["transunet"]["hd_unit"] == "voxels"
    # the phantom's voxels are not 1 mm: HD95 in voxels (medpy, pooled) differs from the mm one
    assert summary["by_convention"]["transunet"]["mean_hd95"] != summary["mean_hd95"]
    assert list(summary["per_class"]) == ORGANS
    for r in rows:
        dsc = float(r["dsc"])
        assert 0.0 <= dsc <= 1.0
        # the phantom holds every organ in every case, so no row may be excluded
        assert int(r["gt_voxels"]) > 0 and not math.isnan(float(r["hd95"]))
        assert summary["per_class"][r["organ"]]["dsc"] == pytest.approx(dsc, abs=1e-5)
    # mean over organs of the (single-case) per-organ values
    assert summary["mean_dsc"] == pytest.approx(np.mean([float(r["dsc"]) for r in rows]), abs=1e-5)
    assert summary["mean_hd95"] == pytest.approx(np.mean([float(r["hd95"]) for r in rows]), rel=1e-5)
    assert summary["config"]["loss"]["name"] == "ce_dice"
    assert summary["run"]["versions"]["torch"]
    assert (smoke_run / "checkpoints" / "last.ckpt").is_file()
    assert list((smoke_run / "tensorboard").glob("events.out.tfevents.*"))
    splits = json.loads((smoke_run / "splits.json").read_text())
    assert splits == {"train": ["0001"], "val": ["0002"], "test": ["0003"]}
    # the test case's prediction, by default, on its image's grid (tests/test_predictions.py: oblique affines)
    assert [p.name for p in (smoke_run / "predictions").iterdir()] == ["0003.nii.gz"]


def test_eval_rescores_a_checkpoint_under_another_convention(smoke_run, phantom_dir, tmp_path):
    out = tmp_path / "eval"
    proc = cli("segbench.eval", f"ckpt_path={smoke_run}/checkpoints/last.ckpt", "metrics.convention=transunet",
               f"paths.data_dir={phantom_dir}", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "results" / "summary.json").read_text())
    assert summary["convention"] == "transunet" and summary["hd_unit"] == "voxels"
    rows = read_rows(out / "results" / "per_case.csv")
    # transunet is the run's own now: its rows first; default is scored too
    assert [r["convention"] for r in rows] == ["transunet"] * 8 + ["default"] * 8


@pytest.mark.slow  # trains 2 epochs, then evaluates
def test_test_checkpoint_last_scores_the_final_epoch(phantom_dir, tmp_path):
    """test.checkpoint=last (Table 1's protocol) scores the weights of the last epoch, not the best validation
    epoch's: the run's per-case DSC equals a re-evaluation of checkpoints/last.ckpt, row for row."""
    run, again = tmp_path / "run", tmp_path / "eval"
    proc = cli("segbench.train", "debug=smoke", "trainer.max_epochs=2", "test.checkpoint=last", "num_threads=1",
               f"paths.data_dir={phantom_dir}", f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "results" / "summary.json").read_text())
    assert summary["run"]["tested"] == "last epoch" and summary["run"]["checkpoint"] is None
    proc = cli("segbench.eval", f"ckpt_path={run}/checkpoints/last.ckpt", f"paths.data_dir={phantom_dir}",
               f"hydra.run.dir={again}")
    assert proc.returncode == 0, proc.stderr[-3000:]

    def dsc(path):
        return {(r["case"], r["organ"], r["convention"]): r["dsc"] for r in read_rows(path / "results" / "per_case.csv")}

    assert dsc(run) == dsc(again)


def test_unknown_loss_option_is_one_line(phantom_dir, tmp_path):
    proc = cli("segbench.train", "debug=smoke", "loss=ce", "+loss.gamma=2", f"paths.data_dir={phantom_dir}",
               f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("segbench-train: error: loss 'ce' has no option 'gamma'; its options are: ")
    assert "class_weights" in last
    assert "Traceback" not in proc.stderr


def test_unknown_group_option_lists_the_valid_ones(tmp_path):
    proc = cli("segbench.train", "loss=no_such_loss", f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode != 0
    assert "Could not find 'loss/no_such_loss'" in proc.stderr and "ce_dice" in proc.stderr


@pytest.mark.slow  # a CLI run (tests/test_bad_input.py's fast cases cover the kind)
def test_missing_data_directory(tmp_path):
    proc = cli("segbench.train", "debug=smoke", "data=nifti_folder", f"data.root={tmp_path}/nowhere",
               f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"segbench-train: error: data directory {tmp_path}/nowhere/img not found; set data.root=")


@pytest.mark.slow  # a CLI run (as above)
def test_label_ids_out_of_range_stop_before_training(tmp_path):
    root = tmp_path / "ds"
    for i in range(1, 4):
        image, label = blob_case(i, num_classes=3)
        write_case(root, f"{i:04d}", image, np.where(label == 2, 12, label))
    proc = cli("segbench.train", "debug=smoke", "data=nifti_folder", f"data.root={root}",
               f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert "label0001.nii.gz holds label id(s) [12] outside 0..8" in last
    assert not (tmp_path / "run" / "checkpoints").exists()
