"""Training loaders on accelerators: worker count from the CPUs the job has, pinning, prefetch,
per-worker augmentation seeds; label ids checked once where the data is loaded."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from segbench.data.datamodule import SliceDataset, SliceSet, build_augmentation, check_label_ids
from segbench.data.loader import MAX_AUTO_WORKERS, auto_num_workers, cpus_per_process, loader_options, seed_worker
from segbench.errors import ConfigError, DataError

SLURM = ("SLURM_CPUS_ON_NODE", "SLURM_CPUS_PER_TASK")


@pytest.fixture
def machine(monkeypatch):
    """A machine whose process may run on ``cpus`` CPUs (affinity), with Slurm variables as given."""
    def make(cpus: int, **slurm: int):
        monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
        monkeypatch.setattr("os.cpu_count", lambda: 128)  # the machine: never what a job may use
        for name in SLURM:
            monkeypatch.delenv(name, raising=False)
        for name, value in slurm.items():
            monkeypatch.setenv(name, str(value))
    return make


def trainer(device: str, devices: int = 1, rank: int = 0):
    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)), num_devices=devices,
                           global_rank=rank)


# -- how many CPUs, how many workers ---------------------------------------------------------------------------
@pytest.mark.parametrize("cpus,slurm,local,expected", [
    (16, {}, 1, 16),                                           # the affinity, not os.cpu_count() = 128
    (16, {}, 4, 16),                                           # no Slurm: the affinity (per process when bound)
    (128, {"SLURM_CPUS_ON_NODE": 32}, 4, 8),                   # unbound Slurm job: 32 CPUs / 4 GPU processes
    (128, {"SLURM_CPUS_ON_NODE": 32, "SLURM_CPUS_PER_TASK": 8}, 4, 8),
    (8, {"SLURM_CPUS_ON_NODE": 32, "SLURM_CPUS_PER_TASK": 8}, 4, 8),   # bound: affinity = the task's 8
    (128, {"SLURM_CPUS_PER_TASK": 6}, 1, 6),
    (2, {}, 4, 2),
    (3, {"SLURM_CPUS_ON_NODE": 2}, 4, 1),                      # never below one
])
def test_cpus_per_process_from_slurm_and_affinity(machine, cpus, slurm, local, expected):
    machine(cpus, **slurm)
    assert cpus_per_process(local) == expected


@pytest.mark.parametrize("device,cpus,slurm,local,expected", [
    ("cpu", 16, {}, 1, 0),                                     # a CPU run: the step uses every core
    ("cuda", 16, {}, 1, MAX_AUTO_WORKERS),                     # 16 - 1 = 15, capped at 8
    ("cuda", 128, {"SLURM_CPUS_PER_TASK": 6}, 1, 5),           # 6 CPUs: 5 workers + the training process
    ("cuda", 128, {"SLURM_CPUS_ON_NODE": 16}, 4, 3),           # 16 / 4 GPUs = 4 each: 3 workers
    ("cuda", 128, {"SLURM_CPUS_ON_NODE": 32, "SLURM_CPUS_PER_TASK": 8}, 4, 7),  # hydra/launcher=slurm, 4 GPUs
    ("cuda", 1, {}, 1, 0),                                     # one CPU: load in the training process
])
def test_auto_num_workers(machine, device, cpus, slurm, local, expected):
    machine(cpus, **slurm)
    assert auto_num_workers(device, local) == expected


def test_loader_options_on_cuda_pin_prefetch_and_keep_workers(machine):
    machine(8)
    options = loader_options("auto", "auto", 4, trainer("cuda", rank=3))
    assert options["num_workers"] == 7 and options["pin_memory"] is True
    assert options["persistent_workers"] is True and options["prefetch_factor"] == 4
    assert options["worker_init_fn"].func is seed_worker and options["worker_init_fn"].keywords == {"rank": 3}
    # on the CPU: no workers, no pinning (nothing to copy to), nothing else set
    assert loader_options("auto", "auto", 4, trainer("cpu")) == {"num_workers": 0, "pin_memory": False}
    # explicit values win; a data module used without a trainer counts as CPU
    assert loader_options(2, False, 3, None)["num_workers"] == 2
    assert loader_options(2, True, 3, None)["pin_memory"] is True


@pytest.mark.parametrize("override,message", [
    ("data.num_workers=many", "data.num_workers must be auto or an integer >= 0, got 'many'"),
    ("data.num_workers=-1", "data.num_workers must be auto or an integer >= 0, got -1"),
    ("data.pin_memory=sometimes", "data.pin_memory must be auto, true or false, got 'sometimes'"),
    ("data.prefetch_factor=0", "data.prefetch_factor must be an integer >= 1, got 0"),
])
def test_bad_loader_options_name_the_option(override, message):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from segbench.config import CONFIG_DIR
    from segbench.errors import unwrap

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["debug=smoke", override])
    with pytest.raises(Exception) as info:
        instantiate(cfg.data, _recursive_=True, _convert_="all")
    error = unwrap(info.value)
    assert isinstance(error, ConfigError) and str(error) == message


# -- every worker draws its own augmentations ----------------------------------------------------------------
def augmented_samples(worker_init_fn) -> list[torch.Tensor]:
    """Six augmentations of one image by 2 workers (batches alternate: worker 0 makes 0, 2, 4)."""
    torch.manual_seed(0)
    image = torch.rand(1, 1, 24, 24)
    slices = SliceSet(image.repeat(6, 1, 1, 1), torch.zeros(6, 24, 24, dtype=torch.uint8), torch.zeros(6))
    transform = build_augmentation({"flip_prob": 0.5, "rotate_prob": 1.0, "rotate_range_deg": 30}, 2)
    transform.set_random_state(seed=0)  # what the run's seed does in the main process
    loader = DataLoader(SliceDataset(slices, transform), batch_size=1, num_workers=2,
                        worker_init_fn=worker_init_fn)
    return [batch["image"][0] for batch in loader]


def test_loader_workers_draw_different_augmentations():
    # forked workers start from the parent's transform state: unseeded, worker 1 repeats worker 0's draws
    unseeded = augmented_samples(None)
    assert all(torch.equal(unseeded[i], unseeded[i + 1]) for i in (0, 2, 4))
    seeded = augmented_samples(seed_worker)
    # every image is rotated by a random angle in [-30, 30] degrees: no two are the same
    assert not any(torch.equal(seeded[i], seeded[j]) for i in range(6) for j in range(i))


# -- every DDP rank draws its own augmentations --------------------------------------------------------------
# The ranks of a DDP job seed their main processes alike (seed_everything(seed)), so the loader's base seed and
# the transforms' state are the same on every rank: the rank must enter the workers' seed (seed_worker, through
# loader_options, which reads it from the trainer) and the training transforms' seed (seed_transforms, through
# RandomStateCheckpoint.setup), or every rank draws the same flips and angles.
def one_image_set(n: int = 4) -> SliceDataset:
    """``n`` copies of one random image, augmented by flips and a rotation of a random angle each time."""
    image = torch.rand(1, 1, 24, 24, generator=torch.Generator().manual_seed(0))
    slices = SliceSet(image.repeat(n, 1, 1, 1), torch.zeros(n, 24, 24, dtype=torch.uint8), torch.zeros(n))
    return SliceDataset(slices, build_augmentation({"flip_prob": 0.5, "rotate_prob": 1.0, "rotate_range_deg": 30}, 2))


def worker_samples(rank: int) -> list[torch.Tensor]:
    """One epoch of the 2 loader workers of DDP rank ``rank`` (worker 0 makes samples 0, 2; worker 1 makes 1, 3),
    with the options the data module's training loader gets from a trainer of that rank."""
    dataset = one_image_set()
    dataset.transform.set_random_state(seed=0)  # the main process's transforms: alike on every rank here
    options = loader_options(2, False, 2, trainer("cpu", devices=2, rank=rank))
    torch.manual_seed(1)  # the same seed and epoch on every rank: the loader draws the same base seed
    return [batch["image"][0] for batch in DataLoader(dataset, batch_size=1, **options)]


def test_ddp_ranks_draw_different_augmentations_in_their_loader_workers():
    rank0, again, rank1 = worker_samples(0), worker_samples(0), worker_samples(1)
    assert all(torch.equal(a, b) for a, b in zip(rank0, again))  # the same rank: the same draws
    # the same seed, epoch and worker ids on another rank: other flips and angles for every sample
    assert not any(torch.equal(a, b) for a, b in zip(rank0, rank1))


def test_ddp_ranks_seed_their_training_transforms_apart():
    from segbench.runtime.callbacks import RandomStateCheckpoint

    def samples(rank: int) -> list[torch.Tensor]:
        """What rank ``rank`` draws in its main process (data.num_workers=0) after the fit's setup."""
        dataset = one_image_set()
        fake = SimpleNamespace(global_rank=rank, datamodule=SimpleNamespace(train_set=dataset))
        RandomStateCheckpoint(seed=1).setup(fake, None, "fit")
        return [dataset[i]["image"] for i in range(len(dataset))]

    rank0, again, rank1 = samples(0), samples(0), samples(1)
    assert all(torch.equal(a, b) for a, b in zip(rank0, again))
    assert not any(torch.equal(a, b) for a, b in zip(rank0, rank1))


# -- label ids: counted where a case is loaded, checked once before training ---------------------------------
def test_check_label_ids_names_the_case_and_the_fix():
    check_label_ids({"0001": (0, 1, 2), "0002": (0, 2)}, 3)
    with pytest.raises(DataError, match=r"^case 0002 holds label id 5 but there are 3 classes \(ids 0..2\); "
                                        r".*loss.ignore_index=5"):
        check_label_ids({"0001": (0, 1, 2), "0002": (0, 2, 5)}, 3)
    check_label_ids({"0002": (0, 2, 255)}, 3, ignore_index=255)  # the loss leaves those voxels out


def built(phantom_dir: Path, *overrides: str):
    from hydra import compose, initialize_config_dir

    from segbench.config import CONFIG_DIR
    from segbench.runtime.build import build

    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["debug=smoke", f"paths.data_dir={phantom_dir}", *overrides])
    datamodule, module = build(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule, module


def fit_one_step(datamodule, module) -> None:
    pl.Trainer(accelerator="cpu", max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
               enable_progress_bar=False, enable_model_summary=False).fit(module, datamodule=datamodule)


@pytest.mark.parametrize("data", ["phantom", "phantom3d"])
def test_label_ids_are_counted_on_load_and_spare_the_loss_its_check(phantom_dir, data):
    extra = ["data.patch_size=[8,32,32]", "model=unet3d"] if data == "phantom3d" else []
    datamodule, module = built(phantom_dir, f"data={data}", *extra)
    # debug=smoke: one training and one validation case, each holding background and organs 1..8
    assert sorted(datamodule.label_ids) == ["0001", "0002"]
    assert all(ids[0] == 0 and set(ids) <= set(range(9)) and len(ids) > 1 for ids in datamodule.label_ids.values())
    assert module.loss_fn.check_labels
    fit_one_step(datamodule, module)
    assert not any(m.check_labels for m in module.loss_fn.modules() if hasattr(m, "check_labels"))


def test_a_label_id_beyond_the_classes_stops_before_the_first_step(phantom_dir):
    datamodule, module = built(phantom_dir, "loss=ce_dice")
    datamodule.label_ids["0001"] = (0, 1, 9)   # as a case labelled with one class too many would be counted
    steps = []
    module.training_step = lambda *args: steps.append(1)
    with pytest.raises(DataError, match="case 0001 holds label id 9 but there are 9 classes"):
        fit_one_step(datamodule, module)
    assert steps == []


def test_a_data_module_that_counts_no_label_ids_keeps_the_per_batch_check(phantom_dir):
    datamodule, module = built(phantom_dir)
    datamodule.label_ids = {}
    fit_one_step(datamodule, module)
    assert module.loss_fn.check_labels
