"""k-fold cross-validation (issue 23): ``data.split.folds`` / ``data.split.fold`` / ``data.split.fold_seed``.

Sections:
  1. the split: nnU-Net's folds (scikit-learn's KFold, shuffled, over the sorted ids), the test split fixed
  2. bad fold options: one line each, before training
  3. what a run records: splits.json, a resumed run of before the options existed
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from helpers import cli
from segbench.data.datamodule import SegDataModule, resolve_split
from segbench.data.folds import NNUNET_SEED, kfold_case_ids, kfold_indices
from segbench.data.sources import NiftiFolderSource
from segbench.errors import ConfigError, DataError

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
