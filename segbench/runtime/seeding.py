"""Reproducible randomness: a seeded run draws the same numbers, and so does a resumed one.

``pl.seed_everything(seed)`` seeds Python, NumPy and torch, but not MONAI's random transforms:
each ``Compose`` seeds itself from the operating system unless MONAI's global seed is set, so
two runs with the same ``seed`` would augment differently. And a run resumed from a checkpoint
restarts every generator from wherever the new process left it, so its remaining epochs would
shuffle and augment differently from the run that was never interrupted.

:class:`~segbench.runtime.callbacks.RandomStateCheckpoint` fixes both, with the functions below. When a
fit starts it seeds the training set's MONAI transforms from ``seed`` (and the rank); every checkpoint carries
the state of every generator training draws from (Python, NumPy, torch CPU/CUDA, each transform's own
``RandomState``), and a resumed fit restores them before anything draws from them. A checkpoint
written at the end of epoch ``k`` therefore continues exactly as the uninterrupted run did.

Guaranteed (and tested) for single-process runs with ``data.num_workers=0`` (what ``auto`` gives on a CPU): with
loader workers the augmentation runs in worker processes whose generators are not checkpointed,
and under DDP every rank restores rank 0's generators (training continues correctly, but not
bit-identically).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


def _randomizables(obj: Any, seen: set[int], depth: int = 0) -> Iterator[Any]:
    """MONAI ``Randomizable`` objects reachable from ``obj`` through attributes and lists (depth-first)."""
    from monai.transforms import Randomizable

    if id(obj) in seen or depth > 6:
        return
    seen.add(id(obj))
    if isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _randomizables(item, seen, depth + 1)
        return
    if isinstance(obj, Randomizable):
        yield obj
    if isinstance(obj, (torch.Tensor, np.ndarray, str, bytes, int, float)) or not hasattr(obj, "__dict__"):
        return
    for value in vars(obj).values():
        if isinstance(value, (Randomizable, list, tuple)) or (depth == 0 and hasattr(value, "__dict__")):
            yield from _randomizables(value, seen, depth + 1)


def transform_generators(dataset: Any) -> list[np.random.RandomState]:
    """The distinct ``RandomState`` objects of the MONAI transforms held by ``dataset``, in a fixed order."""
    states, ids = [], set()
    for transform in _randomizables(dataset, set()):
        if id(transform.R) not in ids:
            ids.add(id(transform.R))
            states.append(transform.R)
    return states


def _numpy_state(state) -> list:
    name, keys, pos, has_gauss, gauss = state
    return [name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(gauss)]


def _numpy_tuple(state: list) -> tuple:
    name, keys, pos, has_gauss, gauss = state
    return name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss


def seed_transforms(dataset: Any, seed: int, rank: int = 0) -> None:
    """Seed the MONAI transforms that ``dataset`` holds from ``seed`` and the DDP ``rank``
    (``seed + 1_000_003 * rank``, plus the attribute's position), so every rank augments differently."""
    from monai.transforms import Randomizable

    seed = int(seed) + 1_000_003 * int(rank)
    for i, value in enumerate(vars(dataset).values() if dataset is not None else []):
        if isinstance(value, Randomizable):  # a Compose seeds the transforms it holds
            value.set_random_state(seed=(seed + i) % (2 ** 32))


def generator_states(dataset: Any) -> dict[str, Any]:
    """The state of every generator training draws from: Python, NumPy, torch CPU (and CUDA when it is in
    use) and each MONAI transform that ``dataset`` holds; plain tensors and numbers, so a checkpoint loads
    with ``weights_only=True``."""
    py_version, py_keys, py_gauss = random.getstate()
    state = {"python": [py_version, list(py_keys), py_gauss], "numpy": _numpy_state(np.random.get_state()),
             "torch": torch.get_rng_state(),
             "transforms": [_numpy_state(g.get_state()) for g in transform_generators(dataset)]
             if dataset is not None else []}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_generator_states(state: dict[str, Any], dataset: Any) -> bool:
    """Restore what :func:`generator_states` saved. False (and the transforms left as they are) when the
    dataset's transforms are not the ones checkpointed."""
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    np.random.set_state(_numpy_tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    generators = transform_generators(dataset) if dataset is not None else []
    if len(generators) != len(state["transforms"]):
        return False
    for generator, saved in zip(generators, state["transforms"]):
        generator.set_state(_numpy_tuple(saved))
    return True
