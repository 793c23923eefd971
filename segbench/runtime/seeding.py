"""Reproducible randomness: a seeded run draws the same numbers, and so does a resumed one.

``pl.seed_everything(seed)`` seeds Python, NumPy and torch, but not MONAI's random transforms:
each ``Compose`` seeds itself from the operating system unless MONAI's global seed is set, so
two runs with the same ``seed`` would augment differently. And a run resumed from a checkpoint
restarts every generator from wherever the new process left it, so its remaining epochs would
shuffle and augment differently from the run that was never interrupted.

:class:`RandomStateCheckpoint` fixes both. When a fit starts it seeds the training set's
MONAI transforms from ``seed`` (and the rank); every checkpoint carries the state of every
generator training draws from (Python, NumPy, torch CPU/CUDA, each transform's own
``RandomState``), and a resumed fit restores them before anything draws from them. A checkpoint
written at the end of epoch ``k`` therefore continues exactly as the uninterrupted run did.

Guaranteed (and tested) for single-process runs with ``data.num_workers=0`` (what ``auto`` gives on a CPU): with
loader workers the augmentation runs in worker processes whose generators are not checkpointed,
and under DDP every rank restores rank 0's generators (training continues correctly, but not
bit-identically).
"""

from __future__ import annotations

import random
from typing import Any, Iterator

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn


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


class RandomStateCheckpoint(pl.Callback):
    """Seed the training transforms when a fit starts; save / restore every generator with checkpoints.

    Args:
        seed: the run's ``seed``; rank ``r`` seeds its transforms with ``seed + 1_000_003 * r``.
    """

    def __init__(self, seed: int):
        self.seed = int(seed)
        self._trainer: pl.Trainer | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer
        if stage == "fit":
            self._seed_transforms(trainer)

    def _generators(self) -> list[np.random.RandomState]:
        dataset = getattr(getattr(self._trainer, "datamodule", None), "train_set", None)
        return transform_generators(dataset) if dataset is not None else []

    def _seed_transforms(self, trainer: pl.Trainer) -> None:
        from monai.transforms import Randomizable

        dataset = getattr(getattr(trainer, "datamodule", None), "train_set", None)
        seed = self.seed + 1_000_003 * trainer.global_rank
        for i, value in enumerate(vars(dataset).values() if dataset is not None else []):
            if isinstance(value, Randomizable):  # a Compose seeds the transforms it holds
                value.set_random_state(seed=(seed + i) % (2 ** 32))

    def state_dict(self) -> dict[str, Any]:
        py_version, py_keys, py_gauss = random.getstate()
        state = {"python": [py_version, list(py_keys), py_gauss], "numpy": _numpy_state(np.random.get_state()),
                 "torch": torch.get_rng_state(),
                 "transforms": [_numpy_state(g.get_state()) for g in self._generators()] if self._trainer else []}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Lightning loads callback states after ``setup`` and before it builds the optimisers, which
        # may already draw the first data loader iterator (``estimated_stepping_batches``): restore now
        if self._trainer is not None and self._trainer.state.fn == "fit":  # not when testing a checkpoint
            self._restore(state_dict)

    def _restore(self, state: dict[str, Any]) -> None:
        version, keys, gauss = state["python"]
        random.setstate((version, tuple(keys), gauss))
        np.random.set_state(_numpy_tuple(state["numpy"]))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        generators = self._generators()
        if len(generators) == len(state["transforms"]):
            for generator, saved in zip(generators, state["transforms"]):
                generator.set_state(_numpy_tuple(saved))
        else:  # another transform pipeline than the one checkpointed: seed it afresh
            self._seed_transforms(self._trainer)
            rank_zero_warn("the checkpoint's augmentation random states do not match this run's transforms; "
                           "they are seeded afresh, so the resumed run is not bit-identical")
