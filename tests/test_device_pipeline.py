"""The device data path (``data.pipeline=device``, segbench/data/device.py): the same transformations as the
loader path's MONAI transforms for the same drawn parameters, parameters drawn from the configured
distributions, DistributedSampler's shards, the same validation and test scores, exact resume (one process
and 2-process gloo DDP), the memory budget, and bad values refused in one line.

Tolerances of the equivalence tests: labels must be equal. Images are compared with ``atol=1e-6`` on [0, 1]
intensities; on the CPU they come out equal bit for bit (the batched ``affine_grid`` / ``grid_sample`` compute
each sample as MONAI's per-sample call does, from the same float32 matrix), and the tests also record that
the largest difference is 0. 1e-6 is what a bilinear interpolation of [0, 1] values can differ by when a
kernel rounds its four weights differently (a few float32 ulps, ~6e-8 each).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from conftest import write_case
from segbench.data import NiftiFolderSource, PatchDataModule, SegDataModule
from segbench.data.batch_augment import Augment, PatchCentres, rotation_theta
from segbench.data.device import (
    AUTO_CACHE_FRACTION,
    DeviceCache,
    augmentation_generator,
    check_device_cache_gb,
    check_pipeline,
    epoch_order,
    resolve_pipeline,
)
from segbench.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["background", "a", "b"]
AUG = {"flip_prob": 0.5, "rotate_prob": 0.5, "rotate_range_deg": 30}
IMAGE_ATOL = 1e-6


def random_cases(root: Path, shapes, seed: int = 0) -> Path:
    """Cases of random intensities and random labels (every voxel its own class: flips and rotations of the
    label are compared voxel by voxel, no smooth region hides a misplaced one)."""
    rng = np.random.default_rng(seed)
    for i, shape in enumerate(shapes, start=1):
        image = rng.integers(-200, 300, shape).astype(np.int16)
        label = rng.integers(0, 3, shape).astype(np.uint8)
        write_case(root, f"{i:04d}", image, label)
    return root


class Scripted(np.random.RandomState):
    """A RandomState that gives MONAI's transforms the values the device path drew: ``rand()`` the next of
    ``rand``, ``uniform(low, high)`` the next of ``uniform`` (``low`` when ``low == high``: what NumPy returns),
    ``randint(n)`` the next of ``randint``."""

    def __init__(self, rand=(), uniform=(), randint=()):
        super().__init__(0)
        self.queues = {"rand": list(rand), "uniform": list(uniform), "randint": list(randint)}

    def rand(self, *size):
        assert not size
        return self.queues["rand"].pop(0)

    def uniform(self, low=0.0, high=1.0, size=None):
        return low if low == high else self.queues["uniform"].pop(0)

    def randint(self, low, high=None, size=None, dtype=int):
        return self.queues["randint"].pop(0)

    def exhausted(self) -> bool:
        return not any(self.queues.values())


def script(compose, state: Scripted) -> None:
    """Every random transform of ``compose`` draws from ``state`` (a Compose's own set_random_state would
    seed them from it instead)."""
    from monai.transforms import Randomizable

    for transform in compose.transforms:
        if isinstance(transform, Randomizable):
            transform.set_random_state(state=state)


def yes(flag) -> float:
    """A uniform draw that MONAI's ``R.rand() < prob`` (0 < prob < 1) turns into ``flag``."""
    return 0.0 if bool(flag) else 1.0 - 1e-12


def device_batches(dm):
    """One epoch of the device path's training batches, completed as Lightning does (before the transfer,
    after it), on the CPU; each with the drawn CPU batch beside it."""
    for drawn in dm.device_path().train_loader():
        yield drawn, dm.on_after_batch_transfer(dm.on_before_batch_transfer(drawn, 0), 0)


def device_slices(root, budget) -> SegDataModule:
    """A 2D data module on the device path over ``root``'s cases (2 train, 1 val, 1 test), set up for fit."""
    dm = SegDataModule(source=NiftiFolderSource(root, num_classes=3), class_names=NAMES,
                       split={"train": 2, "val": 1, "test": 1}, img_size=32, batch_size=5, augment=AUG,
                       pipeline="device", device_cache_gb=budget)
    dm.seed = 3
    dm.prepare_data()
    dm.setup("fit")
    return dm


# -- equivalence with the loader path's MONAI transforms -------------------------------------------------------
@pytest.mark.parametrize("budget", ["auto", 0])  # on the device / gathered in host memory (a budget of 0 GB)
def test_2d_device_batches_equal_monai_for_the_same_draws(tmp_path, budget):
    root = random_cases(tmp_path / "ds", [(10, 40, 40)] * 4)
    dm = device_slices(root, budget)
    reference = dm.train_set.transform   # the loader path's Compose (build_augmentation)
    dm.device_path().train_loader()
    assert dm.device_path().cache.parts["train"].on_device is (budget == "auto")
    seen, worst = {"flip": 0, "rotate": 0, "samples": 0}, 0.0
    for drawn, out in device_batches(dm):
        assert out["image"].shape == (5, 1, 32, 32) and out["label"].dtype == torch.long
        for b, i in enumerate(drawn["indices"].tolist()):
            flip, rotate, angle = drawn["flip"][b], drawn["rotate"][b], float(drawn["angle"][b])
            state = Scripted(rand=[yes(flip[0]), yes(flip[1]), yes(rotate), 0.0], uniform=[angle])
            script(reference, state)
            sample = dm.train_set[i]
            assert state.exhausted()
            assert torch.equal(out["label"][b], sample["label"]), (i, flip, rotate, angle)
            torch.testing.assert_close(out["image"][b], sample["image"], atol=IMAGE_ATOL, rtol=0)
            worst = max(worst, float((out["image"][b] - sample["image"]).abs().max()))
            assert torch.equal(out["case_index"][b], sample["case_index"])
            seen["flip"] += bool(flip.any())
            seen["rotate"] += bool(rotate)
            seen["samples"] += 1
    assert seen["samples"] == 20 and 0 < seen["flip"] < 20 and 0 < seen["rotate"] < 20  # both cases covered
    assert worst == 0.0  # on the CPU: equal bit for bit


@pytest.mark.parametrize("budget", ["auto", 0])
def test_3d_device_patches_equal_monai_for_the_same_draws(tmp_path, budget):
    # the third case is thinner than the patch along Z: padded first, as SpatialPadd pads it
    root = random_cases(tmp_path / "ds", [(12, 40, 36), (6, 40, 36), (10, 30, 30), (10, 30, 30)])
    dm = PatchDataModule(source=NiftiFolderSource(root, num_classes=3), class_names=NAMES,
                         split={"train": 2, "val": 1, "test": 1}, patch_size=[8, 16, 16], samples_per_volume=6,
                         foreground_prob=0.5, batch_size=4, augment=AUG, pipeline="device", device_cache_gb=budget)
    dm.seed = 5
    dm.prepare_data()
    dm.setup("fit")
    crop, reference = dm.train_set.crop, dm.train_set.augment   # RandCropByPosNegLabeld; flips + rotation
    seen, worst = {"fg": 0, "flip": 0, "rotate": 0, "samples": 0}, 0.0
    for drawn, out in device_batches(dm):
        assert out["image"].shape == (4, 1, 8, 16, 16) and out["label"].shape == (4, 8, 16, 16)
        for b, case in enumerate(drawn["cases"]):
            flip, rotate, angle = drawn["flip"][b], drawn["rotate"][b], float(drawn["angle"][b])
            crop_state = Scripted(rand=[yes(drawn["on_foreground"][b])], randint=[drawn["nth"][b]])
            aug_state = Scripted(rand=[*(yes(f) for f in flip), yes(rotate), 0.0], uniform=[angle])
            script(crop, crop_state)
            script(reference, aug_state)
            sample = dm.train_set[case * dm.samples_per_volume]   # item i is a patch of case i // samples_per_volume
            assert crop_state.exhausted() and aug_state.exhausted()
            assert torch.equal(out["label"][b], sample["label"]), (case, drawn["starts"][b], flip, rotate, angle)
            torch.testing.assert_close(out["image"][b], sample["image"], atol=IMAGE_ATOL, rtol=0)
            worst = max(worst, float((out["image"][b] - sample["image"]).abs().max()))
            assert int(out["case_index"][b]) == sample["case_index"]
            seen["fg"] += drawn["on_foreground"][b]
            seen["flip"] += bool(flip.any())
            seen["rotate"] += bool(rotate)
            seen["samples"] += 1
    assert seen["samples"] == 12 and all(0 < seen[k] < 12 for k in ("fg", "flip", "rotate"))
    assert worst == 0.0


def test_the_rotation_matrix_is_monais_for_every_angle_and_shape():
    """The matrix the device path builds on the CPU is, value for value, the one MONAI's Rotate hands to
    grid_sample (captured from inside Rotate), in 2D and 3D, for non-square shapes."""
    from unittest import mock

    from monai.data import set_track_meta
    from monai.transforms import Rotate

    captured = []
    real = torch.nn.functional.affine_grid

    def spy(theta, size, align_corners=None):
        captured.append(theta.clone())
        return real(theta, size, align_corners=align_corners)

    for shape in [(32, 32), (20, 28), (6, 20, 28)]:
        for angle in (-0.52, -0.1, 0.0, 0.3, 0.5235):
            captured.clear()
            set_track_meta(False)   # as the loader path runs it (UntrackedCompose)
            try:
                with mock.patch("torch.nn.functional.affine_grid", spy):
                    Rotate(angle if len(shape) == 2 else (angle, 0.0, 0.0), keep_size=True, mode="bilinear",
                           padding_mode="zeros", align_corners=False, dtype=torch.float32)(torch.zeros(1, *shape))
            finally:
                set_track_meta(True)
            assert len(captured) == 1
            assert torch.equal(rotation_theta(angle, shape), captured[0][0]), (shape, angle)


# -- the drawn parameters follow the configured distributions ----------------------------------------------------
def within(count: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("dims,flip_prob,rotate_prob,degrees",
                         [(2, 0.5, 0.5, 30), (3, 0.3, 0.8, 15), (2, 0.0, 1.0, 45)])
def test_augmentation_parameters_follow_the_configured_distributions(dims, flip_prob, rotate_prob, degrees):
    augment = Augment.from_config({"flip_prob": flip_prob, "rotate_prob": rotate_prob, "rotate_range_deg": degrees},
                                  dims)
    generator = augmentation_generator(1, 0, 0)
    n = 4000
    params = augment.draw(n, (8,) * dims, generator)
    for axis in range(dims):
        assert within(int(params["flip"][:, axis].sum()), n, flip_prob)
    assert within(int(params["rotate"].sum()), n, rotate_prob)
    limit = math.radians(degrees)
    angles = params["angle"][params["rotate"]].numpy()
    assert angles.min() >= -limit and angles.max() < limit
    # roughly uniform on [-limit, limit): each of 10 equal bins holds its share within 4 sigma
    counts, _ = np.histogram(angles, bins=10, range=(-limit, limit))
    assert all(within(int(c), len(angles), 0.1) for c in counts), counts
    # the flips of different axes and the rotation are drawn independently
    if flip_prob and dims == 3:
        both = int((params["flip"][:, 0] & params["flip"][:, 1]).sum())
        assert within(both, n, flip_prob ** 2)
    # samples that are not rotated keep the identity matrix (they are not resampled)
    identity = torch.eye(dims, dims + 1)
    assert all(torch.equal(t, identity) for t in params["theta"][~params["rotate"]])


def test_patch_centres_follow_the_foreground_ratio_and_monais_index_lists():
    from monai.transforms.utils import map_binary_to_indices

    rng = np.random.default_rng(0)
    label = torch.from_numpy((rng.random((10, 12, 14)) < 0.2).astype(np.uint8) * 2)
    centres = PatchCentres([label], (4, 6, 6), foreground_prob=0.7)
    fg, voxels = centres.counts(0)
    # the lists MONAI's RandCropByPosNegLabeld draws from, for the uint8 label the loader path gives it: the
    # foreground voxels, and as "background" every voxel (~ of a uint8 any() is a bitwise not)
    monai_fg, monai_bg = map_binary_to_indices(label[None])
    assert [centres.voxel(0, True, k) for k in range(fg)] == monai_fg.tolist()
    assert [centres.voxel(0, False, k) for k in range(voxels)] == monai_bg.tolist() == list(range(label.numel()))
    drawn = centres.draw([0] * 4000, augmentation_generator(2, 0, 0))
    assert within(sum(drawn["on_foreground"]), 4000, 0.7)
    # the share of patches centred on foreground: p + (1 - p) * (foreground fraction)
    flat = label.reshape(-1)
    on_organ = sum(int(flat[centres.voxel(0, f, k)] > 0) for f, k in zip(drawn["on_foreground"], drawn["nth"]))
    assert within(on_organ, 4000, 0.7 + 0.3 * fg / voxels)
    # each kind's voxel is drawn uniformly: the ranks spread over their range (10 bins, 4 sigma)
    for kind, count in ((True, fg), (False, voxels)):
        ranks = [k for k, f in zip(drawn["nth"], drawn["on_foreground"]) if f is kind]
        hist, _ = np.histogram(ranks, bins=10, range=(0, count))
        assert all(within(int(h), len(ranks), 0.1) for h in hist), (kind, hist)
    # the patch lies in the volume
    for start in drawn["starts"]:
        assert all(0 <= s <= dim - p for s, dim, p in zip(start, label.shape, (4, 6, 6)))
    # a case without foreground: never on foreground
    assert not any(PatchCentres([torch.zeros(6, 6, 6)], (2, 2, 2), 1.0).draw([0] * 50, torch.Generator())[
        "on_foreground"])


# -- order and shards ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,world", [(10, 1), (10, 2), (11, 2), (7, 3), (2, 4)])
def test_ranks_take_distributed_samplers_shards(n, world):
    from torch.utils.data import DistributedSampler

    for epoch in (0, 3):
        shards = [epoch_order(n, 42, epoch, rank, world) for rank in range(world)]
        for rank, shard in enumerate(shards):
            sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=42)
            sampler.set_epoch(epoch)
            assert shard == list(sampler)
        together = [i for shard in shards for i in shard]
        assert sorted(set(together)) == list(range(n))             # every item of the epoch is drawn
        assert len(together) == math.ceil(n / world) * world       # padded to equal shares, as the sampler pads
        if n % world == 0:
            assert len(set(together)) == n                         # ranks disjoint when nothing is padded
    assert epoch_order(n, 42, 0) != epoch_order(n, 42, 1) or n < 3  # a new order every epoch


def test_generators_differ_by_seed_rank_and_epoch():
    draws = {key: torch.rand(4, generator=augmentation_generator(*key)) for key in
             [(1, 0, 0), (1, 1, 0), (1, 0, 1), (2, 0, 0)]}
    assert len({tuple(v.tolist()) for v in draws.values()}) == 4
    assert torch.equal(draws[(1, 0, 0)], torch.rand(4, generator=augmentation_generator(1, 0, 0)))


# -- options and the budget --------------------------------------------------------------------------------------------
def test_pipeline_choice_and_bad_values():
    assert resolve_pipeline("auto", "cuda") == "device" and resolve_pipeline("auto", "cpu") == "loader"
    assert resolve_pipeline("device", "cpu") == "device" and resolve_pipeline("loader", "cuda") == "loader"
    assert check_device_cache_gb("auto") == "auto" and check_device_cache_gb(0) == 0.0
    assert check_device_cache_gb(2.5) == 2.5
    with pytest.raises(ConfigError, match=r"^data\.pipeline='gpu' is unknown; choose auto"):
        check_pipeline("gpu")
    for bad in (-1, "lots", float("nan"), True):
        with pytest.raises(ConfigError, match=r"^data\.device_cache_gb=.* is not a budget; pass auto"):
            check_device_cache_gb(bad)
    assert 0 < AUTO_CACHE_FRACTION < 1


def test_a_part_over_the_budget_stays_in_host_memory_with_one_line(caplog):
    cache = DeviceCache(torch.device("cpu"), 1e-6)   # 1000 bytes
    small = cache.place("train", "training set", {"image": torch.zeros(100, dtype=torch.float32)})   # 400 bytes
    with caplog.at_level("WARNING", logger="segbench.data"):
        big = cache.place("val", "validation set", {"image": [torch.zeros(200), torch.zeros(10)]})  # 840 bytes
    assert small.on_device and not big.on_device and cache.used == 400
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["data.pipeline=device: the validation set (0.00 GB) does not fit data.device_cache_gb=1e-06, "
                     "0.00 GB of it left; held in host memory and gathered there per batch (no pinning on cpu)"]


# -- validation and test: the same scores as the loader path -------------------------------------------------------
def compose_run(phantom_dir: Path, *overrides: str):
    from hydra import compose, initialize_config_dir

    from segbench.config import CONFIG_DIR

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=["debug=smoke", f"paths.data_dir={phantom_dir}", *overrides])


def scores(cfg, pipeline: str, weights=None) -> tuple[dict, list, dict]:
    """``trainer.validate`` and ``trainer.test`` of one set of weights through ``pipeline``: the logged
    validation metrics, the test rows and the weights."""
    from omegaconf import open_dict

    from segbench.runtime.build import build

    with open_dict(cfg):
        cfg.data.pipeline = pipeline
    pl.seed_everything(0, verbose=False)
    datamodule, module = build(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")   # the validation set (trainer.validate sets up stage "validate" only)
    if weights is None:   # large random weights: the predictions depend on the input, every organ appears
        generator = torch.Generator().manual_seed(0)
        for parameter in module.parameters():
            parameter.data.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)   # keeps the layout
    else:
        module.load_state_dict(weights)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    val = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    trainer.test(module, datamodule=datamodule, verbose=False)
    return val, [dict(r) for r in module.evaluator.rows], module.state_dict()


@pytest.mark.parametrize("extra", [[], ["data=phantom3d", "model=unet3d", "data.patch_size=[8,32,32]"],
                                   ["data=phantom3d", "model=unet3d", "data.patch_size=[8,32,32]",
                                    "data.validation=patches"]])
def test_validation_and_test_scores_equal_the_loader_paths(phantom_dir, extra):
    cfg = compose_run(phantom_dir, *extra)
    loader_val, loader_rows, weights = scores(cfg, "loader")
    device_val, device_rows, _ = scores(compose_run(phantom_dir, *extra), "device", weights)
    assert device_val == loader_val and {"val/dice", "val/loss"} <= set(device_val)
    assert device_rows == loader_rows and any(row["pred_voxels"] > 0 for row in device_rows)  # organs predicted


# -- maps of the boundary losses ----------------------------------------------------------------------------------
def test_precomputed_maps_of_a_device_batch_equal_the_per_sample_maps(phantom_dir):
    from segbench.runtime.build import build

    cfg = compose_run(phantom_dir, "loss=boundary", "data.precompute_loss_maps=true", "data.pipeline=device")
    datamodule, module = build(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    drawn = next(iter(datamodule.device_path().train_loader()))
    batch = datamodule.on_after_batch_transfer(drawn, 0)
    builder = datamodule.loss_maps
    assert set(batch["maps"]) == {m.key for m in builder.maps}
    for b, label in enumerate(batch["label"]):
        for key, value in builder(label).items():
            assert torch.equal(batch["maps"][key][b], value)
    # and the loss reads them: the same value as computing them in the loss step
    logits = torch.randn(len(batch["label"]), len(module.class_names), *batch["label"].shape[1:])
    torch.testing.assert_close(module.loss_fn(logits, batch["label"], maps=batch["maps"]),
                               module.loss_fn(logits, batch["label"]))


def test_the_device_batch_makes_no_host_sync(phantom_dir, monkeypatch):
    """What on_after_batch_transfer does on the device reads nothing back (the distance transforms take their
    CUDA kernels, as on a GPU)."""
    from segbench.ops import edt
    from segbench.runtime.build import build
    from test_host_sync import count_host_syncs

    monkeypatch.setattr(edt, "_dispatch_device", lambda x: "cuda")
    for extra in ([], ["data=phantom3d", "model=unet3d", "data.patch_size=[8,32,32]"]):
        cfg = compose_run(phantom_dir, "loss=boundary", "data.precompute_loss_maps=true", "data.pipeline=device",
                          *extra)
        datamodule, _ = build(cfg)
        datamodule.prepare_data()
        datamodule.setup("fit")
        drawn = next(iter(datamodule.device_path().train_loader()))
        with count_host_syncs() as calls:
            batch = datamodule.on_after_batch_transfer(drawn, 0)
        assert calls == [] and "maps" in batch, calls


# -- end to end: smoke runs, exact resume --------------------------------------------------------------------------
def cli(*args: str, env: dict, script: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    command = [sys.executable, str(script)] if script else [sys.executable, "-m", "segbench.train"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout, env=env)


BOUNDARY_FAMILY = ["boundary", "hausdorff_dt", "dpce", "hausdorff_er", "hausdorff_cv", "active_contour", "level_set",
                   "cldice"]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[f"loss={loss}", f"data.precompute_loss_maps={maps}"] for loss in BOUNDARY_FAMILY
                                   for maps in ("false", "true") if maps == "false" or loss in ("boundary",
                                                                                                  "hausdorff_dt",
                                                                                                  "dpce")]
                         + [["data=phantom3d", "model=unet3d"], ["data=phantom3d", "model=unet3d", "loss=boundary",
                                                                 "data.precompute_loss_maps=true"]])
def test_smoke_runs_train_through_the_device_path(phantom_dir, tmp_path, extra):
    env = {**os.environ, "SEGBENCH_OUTPUT_DIR": str(tmp_path / "outputs")}
    proc = cli("debug=smoke", "num_threads=1", f"paths.data_dir={phantom_dir}", "data.pipeline=device", *extra,
               f"hydra.run.dir={tmp_path / 'run'}", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "data.pipeline=device: training set" in proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "run" / "results" / "summary.json").read_text())
    assert summary["config"]["data"]["pipeline"] == "device" and math.isfinite(summary["mean_dsc"])


KILLER = '''
"""segbench-train that SIGKILLs itself (every DDP rank) at the start of batch BATCH of epoch EPOCH
(SEGBENCH_KILL_AT=EPOCH,BATCH); each process writes its pid into SEGBENCH_PIDS first."""
import os, signal, sys
import pytorch_lightning as pl
import segbench.runtime.build as build
import segbench.train as train

EPOCH, BATCH = (int(v) for v in os.environ["SEGBENCH_KILL_AT"].split(","))
with open(os.environ["SEGBENCH_PIDS"], "a") as fh:
    fh.write(f"{os.getpid()}\\n")


class KillMidEpoch(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == EPOCH and batch_idx == BATCH:
            os.kill(os.getpid(), signal.SIGKILL)


build_trainer = build.build_trainer   # what segbench.runtime.task.run calls (imported there at call time)


def build_trainer_that_kills(cfg, output_dir):
    trainer = build_trainer(cfg, output_dir)
    trainer.callbacks.append(KillMidEpoch())
    return trainer


build.build_trainer = build_trainer_that_kills
train.main()
'''


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def end_processes(pid_file: Path) -> None:
    """SIGKILL whatever the killed run left (a DDP rank waiting for its killed peer), by pid."""
    for line in pid_file.read_text().split() if pid_file.exists() else []:
        try:
            os.kill(int(line), signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["single", "mid-epoch checkpoint", "ddp"])
def test_killed_and_resumed_run_ends_with_the_uninterrupted_weights(phantom_dir, tmp_path, setting):
    """4 epochs of 3 batches through the device path (flips and rotations on), killed at batch 1 of epoch 2:
    the same command resumes from last.ckpt (the end of epoch 1, or batch 1 of epoch 2 when last.ckpt is
    written after every step) and ends with the weights of a run never interrupted, bit for bit. Under
    ``ddp``: 2 gloo processes, each drawing its own shard and augmentation, killed alike."""
    env = {**os.environ, "SEGBENCH_OUTPUT_DIR": str(tmp_path / "outputs"), "SEGBENCH_PIDS": str(tmp_path / "pids")}
    args = ["debug=smoke", "num_threads=1", f"paths.data_dir={phantom_dir}", "data.pipeline=device",
            "trainer.max_epochs=4", "data.phantom.num_cases=4", "data.split.train=2"]
    kill_at = "2,1"
    if setting == "mid-epoch checkpoint":
        args.append("callbacks.model_checkpoint.last_every_n_train_steps=1")
        kill_at = "2,2"
    if setting == "ddp":
        args += ["trainer=ddp_cpu"]
    killer = tmp_path / "kill_mid_epoch.py"
    killer.write_text(KILLER)
    try:
        proc = cli(*args, "run_name=interrupted", env={**env, "SEGBENCH_KILL_AT": kill_at}, script=killer)
    finally:
        end_processes(tmp_path / "pids")
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    run_dir = tmp_path / "outputs" / "train" / "interrupted"
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    state = checkpoint["SegDataModule"]["device_path"]
    assert (checkpoint["epoch"], state) == ((2, {"epoch": 2, "batches": 2}) if setting == "mid-epoch checkpoint"
                                            else (1, {"epoch": 1, "batches": 3}))

    proc = cli(*args, "run_name=interrupted", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming from {run_dir}/checkpoints/last.ckpt" in proc.stdout
    proc = cli(*args, "run_name=uninterrupted", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = weights(run_dir / "checkpoints" / "last.ckpt")
    straight = weights(tmp_path / "outputs" / "train" / "uninterrupted" / "checkpoints" / "last.ckpt")
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in resumed)   # bit-identical final weights
    summaries = [json.loads((tmp_path / "outputs" / "train" / name / "results" / "summary.json").read_text())
                 for name in ("interrupted", "uninterrupted")]
    assert summaries[0]["mean_dsc"] == summaries[1]["mean_dsc"]
    assert summaries[0]["run"]["world_size"] == (2 if setting == "ddp" else 1)


# -- on a GPU (scripts/gpu_checks.sh runs this) ---------------------------------------------------------------------
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_batches_on_cuda_match_the_cpu(tmp_path):
    """The device path on CUDA: the training set lands on the GPU under the auto budget (and in pinned host
    memory under a budget of 0), and the batches augmented there match the CPU's (which equal MONAI's,
    above). CUDA's grid_sample may round a bilinear weight differently in the last bit (images within 1e-6);
    a nearest-neighbour label can then differ only where a sampling point falls within that rounding of a
    pixel boundary (at most 1 in 10,000 voxels)."""
    root = random_cases(tmp_path / "ds", [(10, 40, 40)] * 4)
    results = {}
    for device, budget in (("cpu", "auto"), ("cuda", "auto"), ("cuda", 0)):
        dm = device_slices(root, budget)
        dm.trainer = type("Trainer", (), {"strategy": type("S", (), {"root_device": torch.device(device)})(),
                                          "global_rank": 0, "world_size": 1})()
        batches = []
        for drawn in dm.device_path().train_loader():
            moved = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
                     for k, v in dm.on_before_batch_transfer(drawn, 0).items()}
            batches.append({k: v.cpu() for k, v in dm.on_after_batch_transfer(moved, 0).items()})
        part = dm.device_path().cache.parts["train"]
        assert part.on_device is (budget == "auto")
        assert part["image"].device.type == (device if budget == "auto" else "cpu")
        assert part["image"].is_pinned() is (device == "cuda" and budget == 0)
        results[(device, budget)] = batches
    for held in (("cuda", "auto"), ("cuda", 0)):
        for cpu, cuda in zip(results[("cpu", "auto")], results[held]):
            torch.testing.assert_close(cuda["image"], cpu["image"], atol=1e-6, rtol=0)
            assert (cuda["label"] != cpu["label"]).float().mean() <= 1e-4
