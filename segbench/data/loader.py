"""Training loaders that keep an accelerator fed: worker count, pinned memory, prefetch.

``data.num_workers: auto`` (the data configs' default) resolves, per training process, to

* ``0`` when the run trains on the CPU: the training step already uses every core through
  torch's intra-op threads, and a worker process would take one of them away (measured on a
  2-core machine: the default run is slower with a worker). It also keeps CPU runs exactly
  reproducible and resumable (the augmentation draws from checkpointed generators);
* otherwise ``min(cpus - 1, MAX_AUTO_WORKERS)``, where ``cpus`` is what this process may really
  use (:func:`cpus_per_process`): the job's Slurm allocation and the process's CPU affinity, shared
  by the training processes of the node, never the machine's ``os.cpu_count()``. One CPU is left to
  the training process itself (it launches the kernels).

``data.pin_memory: auto`` pins batches on CUDA (page-locked memory: the copy to the GPU runs
asynchronously, Lightning moves batches with ``non_blocking=True``); workers are persistent (no
re-spawn, no re-import, every epoch) and each loads ``data.prefetch_factor`` batches ahead.

Loader workers hold copies of the augmentation transforms, and a forked worker starts from its
parent's random state: without re-seeding, every worker would draw the same flips and angles.
:func:`seed_worker` seeds each worker's transforms (and Python, NumPy, torch) from the seed torch
gives the worker, offset by the rank, as MONAI's ``DataLoader`` does for its own transforms.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError

#: the most workers ``auto`` starts per training process: PyTorch's and Lightning's guides size the
#: pool to the CPUs at hand; beyond ~8 a 2D slice or 3D patch pipeline outruns one GPU step and
#: every extra worker only adds memory (each holds ``prefetch_factor`` batches)
MAX_AUTO_WORKERS = 8


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "")
    return int(value) if value.strip().isdigit() and int(value) > 0 else None


def cpus_per_process(local_processes: int = 1) -> int:
    """The CPUs one of ``local_processes`` training processes on this node may use.

    The smallest of: the process's CPU affinity (``os.sched_getaffinity``: taskset, cgroup cpusets,
    Slurm's task binding); Slurm's CPUs for this job on this node (``SLURM_CPUS_ON_NODE``) shared
    by the node's training processes; Slurm's CPUs per task (``SLURM_CPUS_PER_TASK``: all of a
    task's processes share them). Slurm's figures count even where the job is not bound to its
    CPUs (no affinity set), so a job never sizes its workers from the whole machine.
    """
    local = max(int(local_processes), 1)
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    budgets = [affinity]
    on_node = _env_int("SLURM_CPUS_ON_NODE")
    if on_node is not None:
        budgets.append(on_node // local)
    per_task = _env_int("SLURM_CPUS_PER_TASK")
    if per_task is not None:
        budgets.append(per_task)
    return max(1, min(budgets))


def auto_num_workers(accelerator: str, local_processes: int = 1) -> int:
    """``data.num_workers: auto``: 0 on the CPU, else ``min(cpus_per_process - 1, MAX_AUTO_WORKERS)``."""
    if accelerator == "cpu":
        return 0
    return max(0, min(cpus_per_process(local_processes) - 1, MAX_AUTO_WORKERS))


def check_num_workers(value: Any) -> int | str:
    """``data.num_workers``: ``auto`` or an integer >= 0."""
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"data.num_workers must be auto or an integer >= 0, got {value!r}")
    return value


def check_loader_options(pin_memory: Any, prefetch_factor: Any) -> tuple[bool | str, int]:
    """``data.pin_memory``: auto / true / false; ``data.prefetch_factor``: an integer >= 1."""
    if pin_memory not in ("auto", True, False):
        raise ConfigError(f"data.pin_memory must be auto, true or false, got {pin_memory!r}")
    if isinstance(prefetch_factor, bool) or not isinstance(prefetch_factor, int) or prefetch_factor < 1:
        raise ConfigError(f"data.prefetch_factor must be an integer >= 1, got {prefetch_factor!r}")
    return pin_memory, prefetch_factor


def training_device(trainer) -> tuple[str, int, int]:
    """``(device type, training processes on this node, global rank)`` of a Lightning trainer
    (``("cpu", 1, 0)`` without one, e.g. a data module used on its own)."""
    if trainer is None:
        return "cpu", 1, 0
    device = trainer.strategy.root_device.type
    return device, max(int(getattr(trainer, "num_devices", 1) or 1), 1), int(trainer.global_rank)


def loader_options(num_workers: int | str, pin_memory: bool | str, prefetch_factor: int, trainer) -> dict[str, Any]:
    """Keyword arguments of a training ``DataLoader``: workers, pinning, prefetch, worker seeding."""
    device, local, rank = training_device(trainer)
    workers = auto_num_workers(device, local) if num_workers == "auto" else int(num_workers)
    options: dict[str, Any] = {"num_workers": workers,
                               "pin_memory": device == "cuda" if pin_memory == "auto" else bool(pin_memory)}
    if workers > 0:
        options.update(persistent_workers=True, prefetch_factor=prefetch_factor,
                       worker_init_fn=functools.partial(seed_worker, rank=rank))
    return options


def seed_worker(worker_id: int, rank: int = 0) -> None:
    """Seed a loader worker: its MONAI transforms, Python, NumPy (torch is seeded by the DataLoader).

    ``torch.initial_seed()`` in a worker is the loader's base seed (drawn from the seeded main
    process each time the workers start) plus the worker id, so workers draw different
    augmentations, reproducibly; ``rank`` sets the ranks of a DDP job apart (their main processes
    are seeded alike).
    """
    import random

    from monai.data.utils import set_rnd

    seed = (torch.initial_seed() + 1_000_003 * rank) % (2 ** 32)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    info = torch.utils.data.get_worker_info()
    if info is not None:
        set_rnd(info.dataset, seed)
