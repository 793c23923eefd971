"""k-fold cross-validation (issue 23): ``data.split.folds`` / ``data.split.fold`` / ``data.split.fold_seed``.

Sections:
  1. the split: nnU-Net's folds (scikit-learn's KFold, shuffled, over the sorted ids), the test split fixed
  2. bad fold options: one line each, before training
  3. what a run records: splits.json, a resumed run of before the options existed
  4. segbench-table --cv on hand-made fold runs (pooling, completeness, seeds)
  5. acceptance (slow): a 5-fold sweep on the phantom, every labelled non-test case validated exactly once,
     and the pooled table
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import time
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml

from helpers import cli, console, run_phantom
from segbench.data.datamodule import SegDataModule, resolve_split
from segbench.data.folds import NNUNET_SEED, kfold_case_ids, kfold_indices
from segbench.data.sources import NiftiFolderSource
from segbench.errors import ConfigError, DataError
from segbench.report import table as table_cli

IDS = [f"{i:04d}" for i in range(1, 21)]
PHANTOM_SPLIT = {"train": 14, "val": 2, "test": 4}


# ============================================================================ 1. the split
@pytest.mark.parametrize("n,k", [(5, 5), (6, 5), (16, 5), (18, 5), (20, 3), (7, 2), (100, 10)])
def test_folds_partition_the_items_in_kfold_sizes(n, k):
    folds = kfold_indices(n, k, NNUNET_SEED)
    assert len(folds) == k
    # KFold's sizes: n // k each, the first n % k folds one larger
    assert [len(f) for f in folds] == [n // k + (i < n % k) for i in range(k)]
    flat = [i for f in folds for i in f]
    assert sorted(flat) == list(range(n)) and len(set(flat)) == n   # disjoint, and their union is everything
    assert all(f == sorted(f) for f in folds)                        # KFold.split yields sorted indices


def test_folds_equal_scikit_learns_kfold():
    sklearn = pytest.importorskip("sklearn.model_selection")
    for n, k, seed in [(16, 5, 12345), (18, 5, 12345), (20, 4, 0), (9, 3, 7), (100, 5, 12345)]:
        expected = [sorted(int(i) for i in val) for _, val in
                    sklearn.KFold(n_splits=k, shuffle=True, random_state=seed).split(np.arange(n))]
        assert kfold_indices(n, k, seed) == expected, (n, k, seed)


def test_folds_follow_numpys_seeded_shuffle_as_kfold_does():
    """Without scikit-learn: KFold(3, shuffle=True, random_state=0) on 10 items shuffles ``arange(10)`` with
    ``RandomState(0)`` ([2, 8, 4, 9, 1, 6, 7, 3, 0, 5]) and cuts it 4 / 3 / 3."""
    order = np.arange(10)
    np.random.RandomState(0).shuffle(order)
    assert order.tolist() == [2, 8, 4, 9, 1, 6, 7, 3, 0, 5]
    assert kfold_indices(10, 3, 0) == [[2, 4, 8, 9], [1, 6, 7], [0, 3, 5]]


def test_folds_are_over_the_sorted_ids_as_nnunet_does():
    """nnU-Net's do_split: ``generate_crossval_split(np.sort(identifiers), seed=12345, n_splits=5)``: the
    order in which the cases are listed does not matter."""
    pool = [f"case_{i:02d}" for i in range(17)]
    folds = kfold_case_ids(pool, 5)
    assert kfold_case_ids(list(reversed(pool)), 5) == folds
    assert kfold_case_ids([pool[i] for i in np.random.default_rng(1).permutation(17)], 5) == folds
    expected = [[pool[i] for i in fold] for fold in kfold_indices(17, 5, 12345)]  # index i = i-th sorted id
    assert folds == expected


def test_a_fold_validates_one_fold_and_trains_on_the_others_with_the_test_split_fixed():
    plain = resolve_split(IDS, PHANTOM_SPLIT)
    pool = plain["train"] + plain["val"]
    seen = Counter()
    for k in range(5):
        cv = resolve_split(IDS, {**PHANTOM_SPLIT, "folds": 5, "fold": k, "fold_seed": 12345})
        assert cv["test"] == plain["test"]                              # the test split stays
        assert cv["val"] == cv["folds"][k]
        assert cv["train"] == sorted(set(pool) - set(cv["val"]))      # the other folds, sorted
        assert not set(cv["train"]) & set(cv["val"]) and not set(cv["test"]) & (set(cv["train"]) | set(cv["val"]))
        assert cv["folds"] == kfold_case_ids(pool, 5, 12345) and cv["fold"] == k and cv["fold_seed"] == 12345
        seen.update(cv["val"])
    assert seen == Counter(pool)                                        # every pool case validated exactly once


def test_the_folds_are_seeded():
    spec = {**PHANTOM_SPLIT, "folds": 4, "fold": 0}
    default = resolve_split(IDS, spec)
    assert default["fold_seed"] == NNUNET_SEED                         # nnU-Net's seed when none is given
    assert resolve_split(IDS, {**spec, "fold_seed": 12345}) == default
    assert resolve_split(IDS, {**spec, "fold_seed": 1})["folds"] != default["folds"]


def test_the_pool_is_what_the_split_spec_resolves_to():
    """ratios / seed / subset (AbdomenCT-1K's protocol) and id lists (Synapse's fixed split, no val) decide the
    pool and the test cases exactly as without folds."""
    spec = {"ratios": [6, 1, 3], "seed": 1234, "subset": 15}
    plain = resolve_split(IDS, spec)
    cv = resolve_split(IDS, {**spec, "folds": 3, "fold": 2, "fold_seed": 12345})
    assert cv["test"] == plain["test"] and sorted(cv["train"] + cv["val"]) == sorted(plain["train"] + plain["val"])
    synapse = {"train": IDS[:12], "val": [], "test": IDS[12:]}
    cv = resolve_split(IDS, {**synapse, "folds": 4, "fold": 1})
    assert cv["test"] == IDS[12:] and sorted(cv["train"] + cv["val"]) == IDS[:12] and len(cv["val"]) == 3


def test_without_folds_the_split_is_unchanged():
    plain = resolve_split(IDS, PHANTOM_SPLIT)
    assert resolve_split(IDS, {**PHANTOM_SPLIT, "folds": None, "fold": None, "fold_seed": 12345}) == plain
    assert set(plain) == {"train", "val", "test"}


# ============================================================================ 2. bad fold options
BAD = [
    ({"folds": 1, "fold": 0}, ConfigError, r"^data\.split\.folds=1 is not a number of folds; pass an integer >= 2"),
    ({"folds": 0, "fold": 0}, ConfigError, r"^data\.split\.folds=0 is not a number of folds"),
    ({"folds": 2.5, "fold": 0}, ConfigError, r"^data\.split\.folds=2\.5 is not a number of folds"),
    ({"folds": "5", "fold": 0}, ConfigError, r"^data\.split\.folds='5' is not a number of folds"),
    ({"folds": True, "fold": 0}, ConfigError, r"^data\.split\.folds=True is not a number of folds"),
    ({"folds": 5}, ConfigError, r"^data\.split\.folds=5 needs data\.split\.fold=<k>, the validation fold \(0\.\.4;"),
    ({"folds": 5, "fold": 5}, ConfigError, r"^data\.split\.fold=5 is not a fold of data\.split\.folds=5; pass an "
                                          r"integer in 0\.\.4 \(0-based\)"),
    ({"folds": 5, "fold": -1}, ConfigError, r"^data\.split\.fold=-1 is not a fold of data\.split\.folds=5"),
    ({"folds": 5, "fold": 1.0}, ConfigError, r"^data\.split\.fold=1\.0 is not a fold"),
    ({"folds": 5, "fold": "a"}, ConfigError, r"^data\.split\.fold='a' is not a fold"),
    ({"fold": 2}, ConfigError, r"^data\.split\.fold=2 needs data\.split\.folds=<K>, the number of folds"),
    ({"folds": 5, "fold": 0, "fold_seed": "x"}, ConfigError, r"^data\.split\.fold_seed='x' must be an integer >= 0"),
    ({"folds": 17, "fold": 0}, DataError, r"^data\.split\.folds=17 but the train \+ val cases hold only 16 case\(s\) "
                                         r"to cross-validate; pass data\.split\.folds <= 16"),
]


@pytest.mark.parametrize("options,error,message", BAD, ids=[str(b[0]) for b in BAD])
def test_bad_fold_options_are_refused_in_one_line(options, error, message):
    with pytest.raises(error, match=message) as info:
        resolve_split(IDS, {**PHANTOM_SPLIT, **options})
    assert "\n" not in str(info.value)


def test_the_data_module_refuses_bad_fold_options_when_it_is_built():
    """Before any case is read: the options are checked where the config builds the data module."""
    with pytest.raises(ConfigError, match=r"data\.split\.fold=3 needs data\.split\.folds"):
        SegDataModule(source=None, class_names=["background", "a"], split={**PHANTOM_SPLIT, "fold": 3},
                      cache_dir=None)


def test_a_bad_fold_option_stops_segbench_train_with_one_line(tmp_path):
    proc = cli("segbench.train", "data.split.folds=5", f"paths.data_dir={tmp_path / 'data'}", "num_threads=1",
               f"hydra.run.dir={tmp_path / 'out'}", timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "segbench-train: error: data.split.folds=5 needs data.split.fold=<k>, the validation fold (0..4;")
    assert not (tmp_path / "data" / "phantom").exists()   # refused before the phantom is generated
    assert not (tmp_path / "out" / "checkpoints").exists()


# ============================================================================ 3. what a run records
def test_splits_json_records_the_folds(blob_dataset, tmp_path):
    dm = SegDataModule(source=NiftiFolderSource(blob_dataset, num_classes=3), class_names=["bg", "a", "b"],
                       split={"train": 2, "val": 1, "test": 1, "folds": 3, "fold": 1, "fold_seed": 12345},
                       cache_dir=None, img_size=32, batch_size=4)
    dm._resolve_splits()
    dm.write_splits(tmp_path / "splits.json")
    splits = json.loads((tmp_path / "splits.json").read_text())
    assert set(splits) == {"train", "val", "test", "folds", "fold", "fold_seed"}
    assert splits["folds"] == kfold_case_ids(["0001", "0002", "0003"], 3, 12345)
    assert splits["fold"] == 1 and splits["fold_seed"] == 12345
    assert splits["val"] == splits["folds"][1] and splits["test"] == ["0004"]
    # without folds, splits.json is what it always was
    dm = SegDataModule(source=NiftiFolderSource(blob_dataset, num_classes=3), class_names=["bg", "a", "b"],
                       split={"train": 2, "val": 1, "test": 1, "folds": None, "fold": None, "fold_seed": 12345},
                       cache_dir=None)
    dm._resolve_splits()
    dm.write_splits(tmp_path / "plain.json")
    assert json.loads((tmp_path / "plain.json").read_text()) == {"train": ["0001", "0002"], "val": ["0003"],
                                                                 "test": ["0004"]}


def test_a_run_written_before_the_fold_options_existed_is_the_same_config(tmp_path):
    """A run directory whose ``data.split`` lacks folds / fold / fold_seed resumes (or is found finished) under
    today's defaults, which is what it did; a fold set now is another config."""
    from omegaconf import OmegaConf

    from segbench.runtime.rundir import _check_same_config

    old = {"data": {"name": "phantom", "split": {"train": 14, "val": 2, "test": 4}}, "seed": 1}
    (tmp_path / "run.json").write_text(json.dumps({"status": "interrupted", "config": old}))
    now = {"data": {"name": "phantom", "pipeline": "auto", "device_cache_gb": "auto",
                    "split": {"folds": None, "fold": None, "fold_seed": 12345, "train": 14, "val": 2, "test": 4}},
           "seed": 1}
    _check_same_config(tmp_path, OmegaConf.create(now), "an unfinished run")
    now["data"]["split"].update(folds=5, fold=0)
    with pytest.raises(ConfigError, match=r"another config \(data\.split\.folds: None -> 5; data\.split\.fold"):
        _check_same_config(tmp_path, OmegaConf.create(now), "an unfinished run")


# ============================================================================ 4. segbench-table --cv
ORGANS = ["liver", "pancreas"]
POOL = [f"{i:04d}" for i in range(1, 12)]   # 11 cases: 5 folds of 3, 2, 2, 2, 2
TEST = ["0012", "0013"]


def dsc_of(case: str, organ: str, seed: int) -> float:
    """Known numbers: every case, organ and seed its own DSC (pancreas absent from both masks in case 0005)."""
    if case == "0005" and organ == "pancreas":
        return float("nan")
    return 0.5 + 0.03 * int(case) + (0.1 if organ == "liver" else -0.05) + 0.01 * seed


def write_rows(path: Path, cases: list[str], seed: int, conventions=("default", "transunet")) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case", "organ", "label", "dsc", "hd95", "hd", "assd", "nsd", "gt_voxels", "pred_voxels",
                         "status", "convention", "hd_unit"])
        for case in cases:
            for convention in conventions:
                for label, organ in enumerate(ORGANS, start=1):
                    dsc = dsc_of(case, organ, seed)
                    hd95 = 100 * (1 - dsc) * (3 if convention == "transunet" else 1)
                    status = "both_empty" if math.isnan(dsc) else "ok"
                    writer.writerow([case, organ, label, f"{dsc:.6g}", f"{hd95:.6g}", f"{hd95:.6g}", f"{hd95:.6g}",
                                     f"{dsc:.6g}", 10, 10, status, convention,
                                     "voxels" if convention == "transunet" else "mm"])


def summary_of(path: Path, config: dict, splits: dict, cases: list[str], seed: int) -> dict:
    by_convention = {}
    for convention, unit, scale in (("default", "mm", 1), ("transunet", "voxels", 3)):
        per_class = {}
        for organ in ORGANS:
            values = [dsc_of(c, organ, seed) for c in cases]
            values = [v for v in values if not math.isnan(v)]
            per_class[organ] = {"dsc": float(np.mean(values)), "hd95": float(np.mean([100 * (1 - v) * scale
                                                                                       for v in values]))}
        by_convention[convention] = {"convention": convention, "convention_description": f"{convention}: fixture",
                                     "hd_unit": unit, "per_class": per_class,
                                     "mean_dsc": float(np.mean([p["dsc"] for p in per_class.values()])),
                                     "mean_hd95": float(np.mean([p["hd95"] for p in per_class.values()]))}
    summary = {**by_convention["default"], "conventions": ["default", "transunet"], "by_convention": by_convention,
               "num_cases": len(cases), "config": config, "splits": splits, "run": {}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary))
    return summary


def write_fold_run(run_dir: Path, fold: int, seed: int = 1, loss: str = "ce_dice", folds: int = 5,
                   error: str | None = None) -> Path:
    """A fold run as segbench writes it: results/ (its test split) and results/cv/ (its validation fold)."""
    fold_lists = kfold_case_ids(POOL, folds, 12345)
    split_cfg = {"train": 9, "val": 2, "test": 2, "folds": folds, "fold": fold, "fold_seed": 12345}
    config = {"seed": seed, "loss": {"name": loss}, "metrics": {"convention": "default"},
              "data": {"name": "synthetic", "root": str(run_dir), "split": split_cfg}}
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"data.split.fold={fold}", f"seed={seed}"]))
    if error is not None:
        (run_dir / "results").mkdir()
        (run_dir / "results" / "error.json").write_text(json.dumps({"error": error, "type": "ValueError"}))
        return run_dir
    val = fold_lists[fold]
    splits = {"train": sorted(set(POOL) - set(val)), "val": val, "test": TEST, "folds": fold_lists, "fold": fold,
              "fold_seed": 12345}
    write_rows(run_dir / "results" / "per_case.csv", TEST, seed)
    summary_of(run_dir / "results" / "summary.json", config, splits, TEST, seed)
    write_rows(run_dir / "results" / "cv" / "per_case.csv", val, seed)
    summary_of(run_dir / "results" / "cv" / "summary.json", config, splits, val, seed)
    return run_dir


def pooled_numbers(seed: int) -> list[float]:
    """mean DSC, mean HD95 and the per-organ DSC of the pooled validation cases (means over cases per organ,
    the excluded case left out, then over organs), computed from the known numbers."""
    per_organ = {o: [dsc_of(c, o, seed) for c in POOL] for o in ORGANS}
    dsc = {o: np.nanmean(v) for o, v in per_organ.items()}
    hd95 = {o: np.nanmean([100 * (1 - x) for x in v]) for o, v in per_organ.items()}
    return [np.mean(list(dsc.values())), np.mean(list(hd95.values())), *dsc.values()]


def md_rows(markdown: str) -> list[list[str]]:
    lines = [ln for ln in markdown.splitlines() if ln.startswith("| ")]
    return [[c.strip().replace("**", "") for c in ln.strip().strip("|").split(" | ")] for ln in lines]


def table(capsys, *argv) -> tuple[str, str]:
    assert table_cli.main([str(a) for a in argv]) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_the_cv_table_pools_the_folds_into_one_row(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for fold in range(5):
        write_fold_run(sweep / str(fold), fold)
    out, err = table(capsys, sweep, "--cv", "--decimals", "4", "--out", tmp_path / "report")
    rows = md_rows(out)
    assert rows[0] == ["Method", "n", "DSC", "HD95 (mm)", "liver", "pancreas"]
    expected = [f"{v:.4f}" for v in pooled_numbers(1)]
    assert rows[1:] == [["ce_dice", "1", *expected]]                   # one row, every pool case once
    assert "5-fold CV, 11 cases" in out and "the test split is not in these numbers" in out
    frame = pd.read_csv(tmp_path / "report" / "table.csv")
    assert len(frame) == 1 and frame.loc[0, "cv"] == "5-fold CV, 11 cases" and frame.loc[0, "n_runs"] == 1
    assert frame.loc[0, "runs"].split(";") == [str(sweep / str(f)) for f in range(5)]
    assert frame.loc[0, "mean_dsc"] == pytest.approx(pooled_numbers(1)[0], abs=1e-6)
    latex = (tmp_path / "report" / "table.tex").read_text()
    assert "5-fold CV, 11 cases" in latex and "ce\\_dice & 1 &" in latex
    # the other convention, as for any table: HD95 in voxels, 3x
    out, _ = table(capsys, sweep, "--cv", "--decimals", "4", "--convention", "transunet", "--out", tmp_path / "r2")
    assert md_rows(out)[1][3] == f"{3 * pooled_numbers(1)[1]:.4f}"
    # without --cv the same runs are 5 runs of one row, scored on the test split
    out, _ = table(capsys, sweep, "--decimals", "4", "--out", tmp_path / "r3")
    assert md_rows(out)[1][1] == "5" and "fold CV" not in out


def test_seeds_of_a_cv_are_pooled_separately_and_averaged_as_runs(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    job = 0
    for seed in (1, 2):
        for fold in range(5):
            write_fold_run(sweep / str(job), fold, seed=seed)
            job += 1
    out, _ = table(capsys, sweep, "--cv", "--decimals", "4", "--out", tmp_path / "report")
    rows = md_rows(out)
    cells = [f"{np.mean(v):.4f} ± {np.std(v, ddof=1):.4f}" for v in zip(pooled_numbers(1), pooled_numbers(2))]
    assert rows[1:] == [["ce_dice", "2", *cells]]
    assert "over the 2 pooled cross-validations (seeds) of each row" in out


def test_pooled_rows_are_compared_over_the_pooled_cases(tmp_path, capsys):
    """--baseline pairs the pooled cases of two cross-validations (one per loss), as it pairs test cases."""
    sweep = tmp_path / "sweep"
    job = 0
    for loss in ("ce_dice", "dice"):
        for fold in range(5):
            write_fold_run(sweep / str(job), fold, loss=loss, seed=1 if loss == "ce_dice" else 2)
            job += 1
    table(capsys, sweep, "--cv", "--baseline", "ce_dice", "--out", tmp_path / "report")
    frame = pd.read_csv(tmp_path / "report" / "table.csv").set_index("label")
    assert list(frame.index) == ["ce_dice", "dice"]
    assert frame.loc["dice", "n_pairs"] == len(POOL)          # every pooled case paired once
    assert frame.loc["dice", "p_value"] < 0.01                # the seed offset shifts every case the same way


def test_a_missing_fold_makes_a_failed_row_that_names_it(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for fold in (0, 1, 2, 4):
        write_fold_run(sweep / str(fold), fold)
    write_fold_run(sweep / "3", 3, error="training loss is not finite at step 1")
    out, err = table(capsys, sweep, "--cv", "--out", tmp_path / "report")
    failed = [r for r in md_rows(out)[1:] if r[2].startswith("failed:")]
    assert len(failed) == 2 and not [r for r in md_rows(out)[1:] if not r[2].startswith("failed:")]
    assert any("training loss is not finite" in r[2] for r in failed)          # the fold's own failure
    assert any("incomplete 5-fold cross-validation: fold(s) 3 missing" in r[2] for r in failed)
    assert "warning: incomplete 5-fold cross-validation: fold(s) 3 missing (no finished run; folds 0, 1, 2, 4" in err


def test_cv_refusals_are_one_line(tmp_path, capsys):
    def refused(*argv) -> str:
        with pytest.raises(SystemExit) as info:
            table_cli.main([str(a) for a in argv])
        assert info.value.code == 2
        line = capsys.readouterr().err.strip()
        assert "\n" not in line
        return line

    plain = tmp_path / "plain"
    write_fold_run(plain / "0", 0)
    cfg = yaml.safe_load((plain / "0" / ".hydra" / "config.yaml").read_text())
    summary = json.loads((plain / "0" / "results" / "summary.json").read_text())
    for run in (cfg, summary["config"]):
        run["data"]["split"].update(folds=None, fold=None)
    (plain / "0" / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    (plain / "0" / "results" / "summary.json").write_text(json.dumps(summary))
    assert re.search(r"--cv: none of the runs is a fold of a cross-validation \(data\.split\.folds is not set\)",
                     refused(plain, "--cv", "--out", tmp_path / "r"))
    # the same fold twice (two sweeps given)
    a, b = tmp_path / "a", tmp_path / "b"
    for fold in range(5):
        write_fold_run(a / str(fold), fold)
    write_fold_run(b / "0", 0)
    assert "fold 0 of one cross-validation has 2 finished runs" in refused(a, b, "--cv", "--out", tmp_path / "r")
    # a fold run without its validation scores (results/cv)
    for path in (a / "2" / "results" / "cv").iterdir():
        path.unlink()
    assert "is fold 2 of a 5-fold cross-validation but has no results/cv/summary.json" in refused(
        a, "--cv", "--out", tmp_path / "r")


def test_runs_that_are_not_folds_are_left_out_with_a_warning(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for fold in range(5):
        write_fold_run(sweep / str(fold), fold)
    other = write_fold_run(tmp_path / "other" / "0", 0, loss="dice")
    cfg = yaml.safe_load((other / ".hydra" / "config.yaml").read_text())
    cfg["data"]["split"].update(folds=None, fold=None)
    summary = json.loads((other / "results" / "summary.json").read_text())
    summary["config"] = cfg
    (other / "results" / "summary.json").write_text(json.dumps(summary))
    out, err = table(capsys, sweep, tmp_path / "other", "--cv", "--out", tmp_path / "report")
    assert [r[0] for r in md_rows(out)[1:]] == ["ce_dice"]
    assert "--cv: 1 run(s) without data.split.folds left out" in err


# ============================================================================ 5. acceptance
@pytest.mark.slow  # a 5-job sweep (15-30 s on 2 shared cores, generating the 7-case phantom included)
def test_a_5_fold_sweep_on_the_phantom_validates_every_case_once_and_pools(phantom_dir, tmp_path):
    sweep = tmp_path / "sweep"
    env = {**os.environ, "SEGBENCH_OUTPUT_DIR": str(tmp_path / "outputs")}
    start = time.monotonic()
    proc = console("train", "-m", "debug=smoke", "data.phantom.num_cases=7", "data.split.train=5",
                   "data.split.val=1", "data.split.test=1", "data.split.folds=5", "data.split.fold=0,1,2,3,4",
                   "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "num_threads=1",
                   f"hydra.sweep.dir={sweep}", f"paths.data_dir={phantom_dir}", env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(re.findall(r"cross-validation, fold \d of 5: mean DSC .* over its \d validation case\(s\)",
                          proc.stdout)) == 5
    jobs = [sweep / str(j) for j in range(5)]
    splits = [json.loads((job / "splits.json").read_text()) for job in jobs]
    ids = sorted({c for s in splits[0]["folds"] for c in s} | set(splits[0]["test"]))
    assert len(ids) == 7
    plain = resolve_split(ids, {"train": 5, "val": 1, "test": 1})
    pool = plain["train"] + plain["val"]
    seen = Counter()
    for fold, (job, split) in enumerate(zip(jobs, splits)):
        assert split["fold"] == fold and split["fold_seed"] == 12345
        assert split["folds"] == splits[0]["folds"] == kfold_case_ids(pool, 5, 12345)
        assert split["test"] == plain["test"]                           # the test split of the run without folds
        assert split["val"] == split["folds"][fold]
        frame = pd.read_csv(job / "results" / "cv" / "per_case.csv", dtype={"case": str})
        assert set(frame["convention"]) == {"default", "transunet"}     # scored as the test split is
        cases = sorted(set(frame["case"]))
        assert cases == sorted(split["val"])
        seen.update(cases)
        cv_summary = json.loads((job / "results" / "cv" / "summary.json").read_text())
        assert cv_summary["cv"]["fold"] == fold and cv_summary["num_cases"] == len(cases)
        assert sorted(p.name for p in (job / "predictions_cv").iterdir()) == [f"{c}.nii.gz" for c in cases]
        summary = json.loads((job / "results" / "summary.json").read_text())
        assert summary["cv"]["results"] == "results/cv" and summary["splits"]["folds"] == split["folds"]
        assert sorted(set(pd.read_csv(job / "results" / "per_case.csv", dtype={"case": str})["case"])) == \
            plain["test"]
    # every labelled non-test case validated exactly once
    assert seen == Counter(set(ids) - set(plain["test"]))
    sweep_s = time.monotonic() - start

    proc = console("table", str(sweep), "--cv", "--decimals", "4", "--out", str(tmp_path / "report"), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "5-fold CV, 6 cases" in proc.stdout
    rows = md_rows(proc.stdout)
    assert len(rows) == 2 and rows[1][:2] == ["ce_dice", "1"]
    pooled = pd.concat([pd.read_csv(job / "results" / "cv" / "per_case.csv", dtype={"case": str}) for job in jobs])
    pooled = pooled[pooled["convention"] == "default"]
    per_organ = pooled.groupby("organ", sort=False)[["dsc", "hd95"]].mean()
    assert rows[1][2].split(" ")[0] == f"{per_organ['dsc'].mean():.4f}"
    frame = pd.read_csv(tmp_path / "report" / "table.csv")
    assert len(frame) == 1 and frame.loc[0, "cv"] == "5-fold CV, 6 cases"
    assert frame.loc[0, "mean_dsc"] == pytest.approx(per_organ["dsc"].mean(), abs=1e-6)
    # the fold ensemble on the test split: the 5 fold models' softmax averaged, scored like a run, then reused
    proc = console("table", str(sweep), "--cv", "--cv-ensemble", "--decimals", "4", "--out",
                   str(tmp_path / "ensemble"), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "scoring the test split with the 5-fold ensemble" in proc.stdout
    assert "5-fold ensemble, test split of 1 cases" in proc.stdout
    (target,) = (sweep / "cv_ensemble").iterdir()
    ensemble = json.loads((target / "results" / "summary.json").read_text())
    assert len(ensemble["run"]["ensemble"]) == 5 and ensemble["splits"]["test"] == plain["test"]
    (case,) = plain["test"]
    root = run_phantom(jobs[0])
    truth = np.asarray(nib.load(root / "label" / f"label{case}.nii.gz").dataobj)
    pred = np.asarray(nib.load(target / "predictions" / f"{case}.nii.gz").dataobj)
    rows = pd.read_csv(target / "results" / "per_case.csv", dtype={"case": str})
    for _, row in rows[rows["convention"] == "default"].iterrows():   # DSC by hand on the files
        k = int(row["label"])
        both = (pred == k).sum() + (truth == k).sum()
        if both:
            assert row["dsc"] == pytest.approx(2 * ((pred == k) & (truth == k)).sum() / both, rel=1e-5, abs=1e-6)
    again = console("table", str(sweep), "--cv", "--cv-ensemble", "--out", str(tmp_path / "ensemble"), timeout=120)
    assert again.returncode == 0 and "scoring the test split" not in again.stdout   # reused, not scored again
    print(f"\n5-fold sweep {sweep_s:.1f} s, with the tables {time.monotonic() - start:.1f} s")
