"""Class-aware sampling (``data.class_aware_sampling``, segbench/data/sampling.py): the configured share of every
batch is drawn around a chosen class, uniformly over the present classes, weighted to rare ones or from a list;
seeded from ``(seed, rank, epoch)``, so a resumed run draws the batches of the uninterrupted one; the same on the
loader path, the device path and in 3D; bad values refused in one line; off (fraction 0) builds the loaders of
a run without it.

The statistics (1,000 batches each, 4 binomial standard deviations):

* Forced samples per batch are not random: the first ``n`` samples of a run hold ``floor(f * n)`` of them, so
  over 1,000 batches of ``B`` their share is ``f`` to within ``1 / (1000 B)``, and every forced sample holds its
  class (augmentation off in these tests: a rotation can turn a small organ out of a slice's corner).
* The share of samples that hold a chosen class ``c`` is then ``f + (1 - f) p``, ``p`` the share among the rest
  of the batch, which is drawn as without class-aware sampling. In 2D, ``p`` is known exactly: the rest are
  the first items of each epoch's random order of the training slices, so each is a slice holding ``c`` with
  probability ``p`` = (training slices holding ``c``) / (training slices). The measured share's error is that
  of the rest alone: at most ``sqrt(p (1 - p) / N_rest) * N_rest / N`` (binomial; without replacement within an
  epoch it is smaller), with ``N = 1000 B`` samples of which ``N_rest = N - floor(f N)``.
* In 3D the rest's rate is the patch sampler's (``RandCropByPosNegLabeld``), not known in closed form: it is
  measured over 1,000 batches with class-aware sampling off, and the share with it on must be
  ``f + (1 - f) p_off`` within 4 standard deviations of the difference of the two binomial estimates.
* With ``uniform`` / ``rare`` the forced samples' classes follow the configured probabilities: each class's
  count within 4 binomial standard deviations of ``n_forced * w_c``.
"""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import RandomSampler

from helpers import KILLER, cli, script, write_case
from segbench.data import NiftiFolderSource, PatchDataModule, SegDataModule
from segbench.data.datamodule3d import ClassAwarePatchDataset, PatchDataset
from segbench.data.sampling import ClassAwareSampler, ClassAwareSampling, ForcedPatch, parse_classes
from segbench.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["background", "big", "small", "middle", "absent"]
OFF_AUG = {"flip_prob": 0.0, "rotate_prob": 0.0, "rotate_range_deg": 0}
BATCHES = 1000
SIGMAS = 4.0


def organ_cases(root: Path, cases: int = 2, depth: int = 20, size: int = 32) -> Path:
    """Cases whose classes have known slice counts: ``big`` (1) in every slice, ``small`` (2) in slices 5-7,
    ``middle`` (3) in slices 0-9; ``absent`` (4) nowhere. Class 2's natural share of the slices: 3 / 20."""
    yy, xx = np.mgrid[:size, :size]
    for case in range(1, cases + 1):
        label = np.zeros((depth, size, size), np.uint8)
        label[:, 2:12, 2:12] = 1
        label[5:8, 20:24, 20:24 + case] = 2
        label[:10, 14:18, 4:10] = 3
        image = np.where(label > 0, 60 * label.astype(np.int16), -400).astype(np.int16) + (yy + xx).astype(np.int16)
        write_case(root, f"{case:04d}", image, label)
    for case in (cases + 1, cases + 2):   # validation, test
        label = np.zeros((depth, size, size), np.uint8)
        label[:, 2:12, 2:12] = 1
        write_case(root, f"{case:04d}", np.where(label > 0, 60, -400).astype(np.int16), label)
    return root


def slices_module(root: Path, sampling, pipeline: str = "loader", batch_size: int = 8, seed: int = 7,
                  augment=None) -> SegDataModule:
    dm = SegDataModule(source=NiftiFolderSource(root, num_classes=len(NAMES)), class_names=NAMES,
                       split={"train": 2, "val": 1, "test": 1}, img_size=32, batch_size=batch_size,
                       augment=OFF_AUG if augment is None else augment, pipeline=pipeline,
                       class_aware_sampling=sampling)
    dm.seed = seed
    dm.prepare_data()
    dm.setup("fit")
    return dm


def patches_module(root: Path, sampling, pipeline: str = "loader", seed: int = 7) -> PatchDataModule:
    dm = PatchDataModule(source=NiftiFolderSource(root, num_classes=len(NAMES)), class_names=NAMES,
                         split={"train": 2, "val": 1, "test": 1}, patch_size=[4, 8, 8], samples_per_volume=4,
                         foreground_prob=0.5, batch_size=2, augment=OFF_AUG, pipeline=pipeline,
                         class_aware_sampling=sampling)
    dm.seed = seed
    dm.prepare_data()
    dm.setup("fit")
    return dm


def holds(labels: torch.Tensor, c: int) -> torch.Tensor:
    """Per sample of a ``[B, *spatial]`` label batch: does it hold class ``c``."""
    return (labels == c).flatten(1).any(dim=1)


def drawn_batches(dm, pipeline: str, batches: int = BATCHES):
    """``(labels, forced)`` of ``batches`` training batches, as training draws them (epochs set in turn, as
    Lightning sets them): the label batch and, per sample, whether it was forced (with its class, else 0)."""
    out = []
    epoch = 0
    # built once, as Lightning builds it (MONAI's DataLoader re-seeds the dataset's transforms when it is made)
    loader = dm.train_dataloader()
    while len(out) < batches:
        if pipeline == "loader":
            loader.sampler.set_epoch(epoch)
            plans = loader.sampler.epoch_batches(epoch)
            for batch, (_, classes) in zip(loader, plans):
                out.append((batch["label"], forced_marks(len(batch["label"]), classes)))
        else:
            loader.set_epoch(epoch)
            for drawn in loader:
                batch = dm.on_after_batch_transfer(dm.on_before_batch_transfer(drawn, 0), 0)
                out.append((batch["label"], forced_marks(len(batch["label"]), drawn["forced_classes"].tolist())))
        epoch += 1
    return out[:batches]


def forced_marks(size: int, classes: list[int]) -> torch.Tensor:
    """The forced samples are the last ones of a batch: their classes there, 0 elsewhere."""
    marks = torch.zeros(size, dtype=torch.long)
    if classes:
        marks[size - len(classes):] = torch.tensor(classes)
    return marks


def binomial_sigma(n: int, p: float) -> float:
    return math.sqrt(n * p * (1 - p))


# -- options ---------------------------------------------------------------------------------------------------------
def test_options_parse_and_off_is_none():
    assert ClassAwareSampling.from_config(None, NAMES) is None
    assert ClassAwareSampling.from_config({"fraction": 0.0, "classes": "uniform"}, NAMES) is None
    assert ClassAwareSampling.from_config({"fraction": 0, "classes": ["small"]}, NAMES) is None
    on = ClassAwareSampling.from_config({"fraction": 0.33, "classes": "rare"}, NAMES)
    assert (on.fraction.numerator, on.fraction.denominator, on.classes) == (33, 100, "rare")
    assert parse_classes(["small", 3, "1"], NAMES) == (2, 3, 1)
    assert parse_classes("small", NAMES) == (2,) and parse_classes(2, NAMES) == (2,)   # one class: a list of one
    assert parse_classes(["small", "small"], NAMES) == (2,)


@pytest.mark.parametrize("value,message", [
    ({"fraction": 1.5}, r"^data\.class_aware_sampling\.fraction must be a number in \[0, 1\] \(the share of each "
                        r"training batch drawn around a chosen class; 0: off\), got 1\.5$"),
    ({"fraction": -0.1}, r"^data\.class_aware_sampling\.fraction must be a number in \[0, 1\] .*got -0\.1$"),
    ({"fraction": True}, r"^data\.class_aware_sampling\.fraction must be .*got True$"),
    ({"fraction": "a third"}, r"^data\.class_aware_sampling\.fraction must be .*got 'a third'$"),
    ({"fraction": float("nan")}, r"^data\.class_aware_sampling\.fraction must be .*got nan$"),
    ({"fraction": 0.3, "classes": ["galbladder"]},
     r"^data\.class_aware_sampling\.classes names 'galbladder', which is not a class of data\.class_names \(big, "
     r"small, middle, absent\); or choose uniform or rare$"),
    ({"fraction": 0.3, "classes": "everything"}, r"^data\.class_aware_sampling\.classes names 'everything', which "),
    ({"fraction": 0.3, "classes": [9]},
     r"^data\.class_aware_sampling\.classes names class id 9, but the classes are 0\.\.4 \(background, big, "),
    ({"fraction": 0.3, "classes": ["background"]},
     r"^data\.class_aware_sampling\.classes names the background \(background, id 0\): forced samples are drawn "
     r"around an organ"),
    ({"fraction": 0.3, "classes": []}, r"^data\.class_aware_sampling\.classes is an empty list; name classes"),
    ({"fraction": 0.3, "clases": "rare"},
     r"^data\.class_aware_sampling has no option 'clases'; its options are: fraction, classes$"),
    (0.3, r"^data\.class_aware_sampling must be a mapping \{fraction: "),
])
def test_bad_values_are_refused_in_one_line(value, message):
    with pytest.raises(ConfigError, match=message) as info:
        ClassAwareSampling.from_config(value, NAMES)
    assert "\n" not in str(info.value)


def test_a_class_no_training_sample_holds_is_refused(tmp_path):
    root = organ_cases(tmp_path / "ds")
    with pytest.raises(DataError, match=r"^data\.class_aware_sampling\.classes names absent \(id 4\), which no "
                                        r"training slice holds; drop it, or choose uniform or rare"):
        slices_module(root, {"fraction": 0.5, "classes": ["small", "absent"]})
    with pytest.raises(DataError, match=r"^data\.class_aware_sampling\.classes names absent \(id 4\), which no "
                                        r"training case holds"):
        patches_module(root, {"fraction": 0.5, "classes": ["absent"]})


def test_the_forced_count_per_batch_is_floor_or_ceil_and_exact_over_the_run():
    # 0.33 of batches of 8: 2 or 3 per batch (2.64 on average); after n samples of the run floor(0.33 n) forced
    sampling = ClassAwareSampling.from_config({"fraction": 0.33}, NAMES)
    sizes = [8] * 5   # an epoch of 5 batches
    counts = [k for epoch in range(200) for k in sampling.forced_counts(sizes, epoch)]
    assert set(counts) == {2, 3} and sum(counts) == math.floor(0.33 * 8000) == 2640
    running = np.cumsum(counts)
    assert all(running[b] == math.floor(0.33 * 8 * (b + 1)) for b in range(len(counts)))
    assert sampling.forced_counts([8] * 3, 0) == [2, 3, 2]   # nnU-Net: 3 in every batch (B - round(B (1 - f)))
    for fraction, batch, expected in ((0.25, 8, 2), (0.5, 2, 1), (1.0, 4, 4)):
        exact = ClassAwareSampling.from_config({"fraction": fraction}, NAMES)
        assert set(exact.forced_counts([batch] * 10, 3)) == {expected}


def test_off_builds_the_loaders_of_a_run_without_it(tmp_path):
    """fraction 0 (the default): the shuffled DataLoader, the plain 3D dataset, no plan on the device path."""
    root = organ_cases(tmp_path / "ds")
    dm = slices_module(root, {"fraction": 0.0, "classes": "uniform"})
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, RandomSampler) and dm.class_index is None and dm.class_aware_plan() is None
    dm.pipeline = "device"
    assert dm.device_path().train_loader().plan is None
    assert "forced_classes" not in next(iter(dm.device_path().train_loader()))
    dm3 = patches_module(root, None)
    assert type(dm3.train_set) is PatchDataset and isinstance(dm3.train_dataloader().sampler, RandomSampler)


# -- the share of samples holding the chosen class, 1,000 batches -------------------------------------------------------
@pytest.mark.parametrize("pipeline", ["loader", "device"])
@pytest.mark.parametrize("fraction", [0.33, 0.5])
def test_2d_share_holding_the_chosen_class_matches_the_fraction(tmp_path, pipeline, fraction):
    root = organ_cases(tmp_path / "ds")
    dm = slices_module(root, {"fraction": fraction, "classes": ["small"]}, pipeline)
    labels = dm.train_set.slices.labels
    p = float(holds(labels, 2).float().mean())           # natural share: 6 of the 40 training slices
    assert p == pytest.approx(6 / 40)
    batches = drawn_batches(dm, pipeline)
    n = sum(len(lab) for lab, _ in batches)
    forced = sum(int((marks > 0).sum()) for _, marks in batches)
    holding = sum(int(holds(lab, 2).sum()) for lab, _ in batches)
    assert n == BATCHES * 8 and forced == math.floor(fraction * n)    # exact: floor(f n) of the run's first n
    assert all(bool(holds(lab, 2)[marks > 0].all()) for lab, marks in batches)   # every forced slice holds it
    rest = n - forced
    expected = fraction + (1 - fraction) * p
    bound = SIGMAS * binomial_sigma(rest, p) / n
    assert abs(holding / n - expected) <= bound, (holding / n, expected, bound)
    assert holding / n > p + 0.8 * fraction   # and far above the natural share (~0.15)


@pytest.mark.parametrize("pipeline", ["loader", "device"])
@pytest.mark.parametrize("classes", ["uniform", "rare"])
@pytest.mark.parametrize("dims", [2, 3])
def test_forced_classes_follow_uniform_and_rare(tmp_path, pipeline, classes, dims):
    root = organ_cases(tmp_path / "ds")
    if dims == 2:
        dm = slices_module(root, {"fraction": 0.5, "classes": classes}, pipeline)
        # the present classes' training slices: big 40, small 6, middle 20 (absent: never drawn)
        counts = {1: 40, 2: 6, 3: 20}
    else:
        dm = patches_module(root, {"fraction": 0.5, "classes": classes}, pipeline)
        counts = {1: 2 * 20 * 10 * 10, 2: 3 * 4 * 5 + 3 * 4 * 6, 3: 2 * 10 * 4 * 6}   # their training voxels
    index = dm.class_index
    assert index.classes == [1, 2, 3] and index.counts == counts
    weights = {c: 1 / 3 for c in counts} if classes == "uniform" else \
        {c: (1 / n) / sum(1 / m for m in counts.values()) for c, n in counts.items()}   # w_c ~ 1 / n_c
    assert dict(zip(index.classes, index.probabilities.tolist())) == pytest.approx(weights)
    batches = drawn_batches(dm, pipeline)
    marks = torch.cat([m for _, m in batches])
    assert int((marks > 0).sum()) == BATCHES * dm.batch_size // 2
    for lab, m in batches:   # each forced slice holds the class drawn for it
        for b in torch.nonzero(m).flatten().tolist():
            assert bool((lab[b] == m[b]).any())
    drawn = marks[marks > 0]
    for c, w in weights.items():
        count = int((drawn == c).sum())
        assert abs(count - len(drawn) * w) <= SIGMAS * binomial_sigma(len(drawn), w), (c, count, len(drawn) * w)


@pytest.mark.parametrize("pipeline", ["loader", "device"])
def test_3d_share_holding_the_chosen_class_matches_the_fraction(tmp_path, pipeline):
    root = organ_cases(tmp_path / "ds")
    fraction = 0.5
    on = patches_module(root, {"fraction": fraction, "classes": ["small"]}, pipeline)
    off = patches_module(root, None, pipeline)
    assert on.class_index.counts[2] == 3 * 4 * 5 + 3 * 4 * 6   # class 2's training voxels (cases 1 and 2)

    def measured(dm, class_aware: bool) -> tuple[int, int, list]:
        if class_aware:
            batches = drawn_batches(dm, pipeline)
        elif pipeline == "loader":
            loader = dm.train_dataloader()
            batches = [(b["label"], torch.zeros(len(b["label"]), dtype=torch.long))
                       for _ in range(BATCHES // len(loader)) for b in loader]
        else:
            loader = dm.device_path().train_loader()
            batches = []
            for epoch in range(BATCHES // len(loader)):
                loader.set_epoch(epoch)
                batches += [(dm.on_after_batch_transfer(dm.on_before_batch_transfer(d, 0), 0)["label"],
                             torch.zeros(2, dtype=torch.long)) for d in loader]
        assert len(batches) == BATCHES
        return sum(len(lab) for lab, _ in batches), sum(int(holds(lab, 2).sum()) for lab, _ in batches), batches

    n_off, holding_off, _ = measured(off, False)
    n, holding, batches = measured(on, True)
    forced = sum(int((m > 0).sum()) for _, m in batches)
    assert forced == n // 2 and all(bool(holds(lab, 2)[m > 0].all()) for lab, m in batches)
    p_off = holding_off / n_off                      # the patch sampler's own rate for class 2 (foreground_prob 0.5)
    expected = fraction + (1 - fraction) * p_off
    sigma = math.sqrt(((n - forced) * p_off * (1 - p_off)) / n ** 2
                      + ((1 - fraction) ** 2) * p_off * (1 - p_off) / n_off)
    assert abs(holding / n - expected) <= SIGMAS * sigma, (holding / n, expected, sigma)


def test_3d_forced_patches_are_centred_on_the_class_and_equal_on_both_paths(tmp_path):
    root = organ_cases(tmp_path / "ds")
    loader_dm = patches_module(root, {"fraction": 1.0, "classes": "rare"}, "loader")
    device_dm = patches_module(root, {"fraction": 1.0, "classes": "rare"}, "device")
    assert isinstance(loader_dm.train_set, ClassAwarePatchDataset)
    index = loader_dm.class_index
    assert index.classes == [1, 2, 3]   # rare: weights ~ 1 / the class's training voxels
    assert index.probabilities[1] > index.probabilities[2] > index.probabilities[0]
    device_loader = device_dm.device_path().train_loader()
    for drawn in device_loader:
        batch = device_dm.on_after_batch_transfer(drawn, 0)
        for b, (case, start, c) in enumerate(zip(drawn["cases"], drawn["starts"], drawn["forced_classes"].tolist())):
            sample = loader_dm.train_set[ForcedPatch(case, tuple(start), c)]
            assert torch.equal(sample["label"], batch["label"][b]) and torch.equal(sample["image"], batch["image"][b])
            assert bool((sample["label"] == c).any())


# -- seeded and resumable ------------------------------------------------------------------------------------------------
def test_an_epochs_batches_depend_on_seed_rank_and_epoch_only(tmp_path):
    """What a resumed run relies on: a sampler built afresh (a new process) and set to epoch 2 draws what the
    sampler of the uninterrupted run drew in its epoch 2, whatever the global random state; another seed or
    rank draws others, and DDP ranks share out the epoch's order."""
    root = organ_cases(tmp_path / "ds")
    dm = slices_module(root, {"fraction": 0.33, "classes": "rare"})
    straight = dm.train_dataloader().sampler
    drawn = {}
    for epoch in range(3):
        straight.set_epoch(epoch)
        drawn[epoch] = list(straight)
    torch.manual_seed(123)
    np.random.seed(123)
    resumed = slices_module(root, {"fraction": 0.33, "classes": "rare"}).train_dataloader().sampler
    resumed.set_epoch(2)
    assert list(resumed) == drawn[2] and drawn[1] != drawn[2]
    other = slices_module(root, {"fraction": 0.33, "classes": "rare"}, seed=8).train_dataloader().sampler
    other.set_epoch(2)
    assert list(other) != drawn[2]
    plan = dm.class_aware_plan()
    ranks = [ClassAwareSampler(40, 8, True, plan, 7, rank, 2) for rank in (0, 1)]
    rests = [set(i for items, classes in s.epoch_batches(0) for i in items[:len(items) - len(classes)])
             for s in ranks]
    assert not rests[0] & rests[1]   # each rank its shard of the order
    assert ranks[0].epoch_batches(0) != ranks[1].epoch_batches(0)


def test_the_device_path_resumes_mid_epoch_to_the_same_batches(tmp_path):
    root = organ_cases(tmp_path / "ds")
    dm = slices_module(root, {"fraction": 0.5, "classes": "uniform"}, "device")
    loader = dm.device_path().train_loader()
    loader.set_epoch(3)
    straight = list(loader)
    again = slices_module(root, {"fraction": 0.5, "classes": "uniform"}, "device")
    again.load_state_dict({"device_path": {"epoch": 3, "batches": 2}})   # a checkpoint after batch 2 of epoch 3
    resumed_loader = again.device_path().train_loader()
    resumed_loader.set_epoch(3)
    resumed = list(resumed_loader)
    assert len(resumed) == len(straight) - 2
    for a, b in zip(resumed, straight[2:]):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a)




@pytest.mark.slow  # 3 training runs of 3 epochs each (55-62 s on 2 cores shared with other work)
@pytest.mark.parametrize("pipeline", ["loader", "device"])
def test_a_killed_run_resumes_to_the_uninterrupted_weights(phantom_dir, tmp_path, pipeline):
    """Killed at batch 1 of epoch 2 (last.ckpt: the end of epoch 1), run again: the same batches, forced samples
    included, so the final weights equal an uninterrupted run's bit for bit (flips and rotations on)."""
    env = {**os.environ, "SEGBENCH_OUTPUT_DIR": str(tmp_path / "outputs")}
    args = ["debug=smoke", "num_threads=1", f"paths.data_dir={phantom_dir}", "trainer.max_epochs=3",
            f"data.pipeline={pipeline}", "data.class_aware_sampling.fraction=0.5",
            "data.class_aware_sampling.classes=rare"]
    killer = tmp_path / "kill.py"
    killer.write_text(KILLER)
    proc = script(killer, *args, "run_name=interrupted", env={**env, "SEGBENCH_KILL_AT": "2,1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    run_dir = tmp_path / "outputs" / "train" / "interrupted"
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 1
    proc = cli("segbench.train", *args, "run_name=interrupted", env=env)
    assert proc.returncode == 0 and "resuming from" in proc.stdout, proc.stderr[-3000:]
    proc = cli("segbench.train", *args, "run_name=uninterrupted", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "class-aware sampling (fraction=0.5, classes=rare)" in proc.stdout + proc.stderr
    weights = [torch.load(tmp_path / "outputs" / "train" / name / "checkpoints" / "last.ckpt",
                          weights_only=False)["state_dict"] for name in ("interrupted", "uninterrupted")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    per_case = [(tmp_path / "outputs" / "train" / name / "results" / "per_case.csv").read_text()
                for name in ("interrupted", "uninterrupted")]
    assert per_case[0] == per_case[1]
    summary = json.loads((run_dir / "results" / "summary.json").read_text())
    assert summary["config"]["data"]["class_aware_sampling"] == {"fraction": 0.5, "classes": "rare"}


# -- the study -----------------------------------------------------------------------------------------------------------
@pytest.mark.slow  # 4 smoke trainings, 2 at a time (130 s on 2 cores shared with other work)
def test_the_sampling_study_writes_its_table(phantom_dir, tmp_path):
    """``scripts/sampling_study.py --smoke``: the study's pipeline end to end on one seed (the full study is 12
    runs at the phantom study's budget, about 30 minutes): the runs, the table, the CSV, the per-organ table."""
    study = Path(__file__).resolve().parents[1] / "scripts" / "sampling_study.py"
    doc = tmp_path / "doc" / "sampling_study.md"
    doc.parent.mkdir()
    proc = script(study, "--smoke", "--seeds", "1", "--runs-dir", str(tmp_path / "runs"), "--doc", str(doc),
                  "--data-dir", str(phantom_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = doc.read_text()
    rows = [line for line in text.splitlines() if line.startswith(("| ce_dice |", "| afw_dice |"))]
    assert [r.split(" | ")[1] for r in rows] == ["off", "on (0.33, rare)"] * 2
    assert "## What it can and cannot say" in text and "python scripts/sampling_study.py --smoke" in text
    table = (tmp_path / "doc" / "sampling_study" / "runs.csv").read_text().splitlines()
    assert table[0].startswith("loss,sampling,seed,gallbladder_dsc,mean_dsc") and len(table) == 5
    assert (tmp_path / "doc" / "sampling_study" / "organs" / "table.md").is_file()
    logs = {name: (tmp_path / "runs" / "sampling" / f"{name}.log").read_text()
            for name in ("ce_dice_on_seed1", "ce_dice_off_seed1")}
    assert "class-aware sampling (fraction=0.33, classes=rare)" in logs["ce_dice_on_seed1"]
    assert "class-aware sampling" not in logs["ce_dice_off_seed1"]
