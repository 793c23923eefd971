"""The device data path (``data.pipeline=device``): the data set held on the training device, batches cut
and augmented there, in one batched operation, from parameters drawn on the CPU.

    segbench-train trainer=gpu data.pipeline=device             # what data.pipeline=auto picks on CUDA
    segbench-train data.pipeline=device data.device_cache_gb=2  # at most 2 GB of the device for the data

The loader path (``data.pipeline=loader``) cuts and augments one sample at a time in loader worker
processes (MONAI's transforms, :func:`~segbench.data.datamodule.build_augmentation`). The device path
instead:

* holds the preprocessed training set (2D slices at the model size, or 3D volumes padded to the patch
  size) on the training device when it fits ``data.device_cache_gb`` (:class:`DeviceCache`), else in pinned
  host memory, gathering each batch there and copying it asynchronously; validation data and the test
  cases' model-size images likewise, after the training set;
* iterates tiny CPU batches (:class:`TrainBatches`, no workers, no collation): the sample indices of the
  batch and its augmentation parameters, drawn from a ``torch.Generator`` seeded from
  ``(seed, rank, epoch)`` (:func:`augmentation_generator`). The epoch's order is
  ``DistributedSampler``'s: a permutation seeded by ``seed + epoch`` shared by the ranks, padded to a
  multiple of the world size, rank ``r`` taking every ``world``-th index from ``r``
  (:func:`epoch_order`); in 3D the patch centres too are drawn there
  (:class:`~segbench.data.batch_augment.PatchCentres`);
* once Lightning has moved such a batch to the device, ``on_after_batch_transfer`` (the data module's
  hook) gathers the samples from the cache and flips and rotates them all at once
  (:func:`~segbench.data.batch_augment.augment_batch`), then adds the loss's target maps when
  ``data.precompute_loss_maps`` (computed for the batch on the device:
  :meth:`~segbench.losses.maps.TargetMapBuilder.batch`). Nothing is read back from the device.

Resuming: the generators are functions of ``(seed, rank, epoch)`` and the position in the epoch, so a run
resumed from an end-of-epoch checkpoint draws what the uninterrupted run drew; the data module's
``state_dict`` (saved in every checkpoint) records the position, so a checkpoint written mid-epoch
(``callbacks.model_checkpoint.last_every_n_train_steps``) resumes at the next batch.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError

log = logging.getLogger("segbench.data")

#: ``data.pipeline`` values
PIPELINES = ("auto", "device", "loader")
#: ``data.device_cache_gb: auto`` on CUDA: this share of the device memory free when the cache is placed
#: (after the model's weights are on the device, before the first step): the rest is left to activations,
#: gradients and the optimiser's state, which the training step allocates later
AUTO_CACHE_FRACTION = 0.4
#: the key that marks a batch of the device path (what ``on_after_batch_transfer`` completes)
MARK = "device_batch"


def check_pipeline(value: Any) -> str:
    """``data.pipeline``: auto, device or loader."""
    if value not in PIPELINES:
        raise ConfigError(f"data.pipeline={value!r} is unknown; choose auto (device on CUDA, loader otherwise), "
                          "device (batches cut and augmented on the training device) or loader (CPU workers)")
    return value


def check_device_cache_gb(value: Any) -> str | float:
    """``data.device_cache_gb``: auto, or a number of GB >= 0 (0: nothing on the device)."""
    if value == "auto":
        return "auto"
    number = None
    if not isinstance(value, bool):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = None
    if number is None or not math.isfinite(number) or number < 0:
        raise ConfigError(f"data.device_cache_gb={value!r} is not a budget; pass auto ({AUTO_CACHE_FRACTION:.0%} of "
                          "the free device memory on CUDA) or a number of GB >= 0 (0: keep the data in host memory)")
    return number


def resolve_pipeline(pipeline: str, device_type: str) -> str:
    """What ``data.pipeline`` means on a device: ``auto`` is ``device`` on CUDA and ``loader`` elsewhere.

    On a CPU the step dwarfs the augmentation (docs/performance.md, "The device data path": 2 % of the quickstart's step
    either way), and ``loader`` keeps the default run's numbers; on CUDA the GPU no longer waits for CPU
    workers and the run resumes exactly.
    """
    if pipeline == "auto":
        return "device" if device_type == "cuda" else "loader"
    return pipeline


# -- generators and epoch order ----------------------------------------------------------------------------------
def augmentation_generator(seed: int, rank: int, epoch: int) -> torch.Generator:
    """The CPU generator of rank ``rank``'s augmentation (and 3D patch centres) in ``epoch``: seeded from
    ``(seed, rank, epoch)`` through NumPy's ``SeedSequence`` (distinct, well-mixed streams)."""
    generator = torch.Generator()
    state = np.random.SeedSequence([int(seed) % 2 ** 63, int(rank), int(epoch)]).generate_state(1, np.uint64)[0]
    generator.manual_seed(int(state))
    return generator


def epoch_order(n: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """Rank ``rank``'s share of epoch ``epoch``'s order of ``n`` items, as ``DistributedSampler(shuffle=True,
    seed=seed, drop_last=False)`` draws it: ``randperm(n)`` from a generator seeded ``seed + epoch`` (the
    same on every rank), padded with its own first items to a multiple of ``world_size``, then
    ``[rank::world_size]``."""
    generator = torch.Generator()
    generator.manual_seed(int(seed) + int(epoch))
    order = torch.randperm(n, generator=generator).tolist()
    total = math.ceil(n / world_size) * world_size
    padding = total - n
    if padding:
        order += (order * math.ceil(padding / n))[:padding]
    return order[rank:total:world_size]


def batches_per_epoch(n: int, batch_size: int, world_size: int, drop_last: bool) -> int:
    per_rank = math.ceil(n / world_size)
    return per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)


class TrainBatches:
    """The training loader of the device path: per batch a small CPU dict, the drawn sample indices and
    augmentation parameters (``draw(indices, generator)``), marked ``device_batch: "train"``.

    Lightning calls :meth:`set_epoch` before each epoch (as for a ``DistributedSampler``: :attr:`sampler` is
    the object itself). ``drop_last`` as the loader path's training ``DataLoader``. :meth:`resume_at` makes the
    next pass over that epoch skip the batches a checkpoint had already trained on (their parameters are
    still drawn, so the generator is where the uninterrupted run had it).

    ``plan``: class-aware sampling (:class:`~segbench.data.sampling.ClassAwarePlan`; ``None``: off): each batch is
    then the next items of the order plus the forced samples drawn from
    :func:`~segbench.data.sampling.sampling_generator` of ``(seed, rank, epoch)``, and carries their classes
    (``forced_classes``).
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int, world_size: int,
                 draw: Callable[[list[Any], torch.Generator], dict[str, Any]], pin: bool = False, plan: Any = None):
        self.n, self.batch_size = int(n), int(batch_size)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.drop_last = self.n > self.batch_size
        self.draw = draw
        self.pin = pin
        self.plan = plan
        self.epoch = 0
        self._resume: tuple[int, int] | None = None

    @property
    def sampler(self) -> TrainBatches:
        return self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def resume_at(self, epoch: int, batches_done: int) -> None:
        self._resume = (int(epoch), int(batches_done))

    def __len__(self) -> int:
        return batches_per_epoch(self.n, self.batch_size, self.world_size, self.drop_last)

    def __iter__(self):
        epoch = self.epoch
        skip = 0
        if self._resume is not None:
            if self._resume[0] == epoch:
                skip = self._resume[1]
            self._resume = None
        order = epoch_order(self.n, self.seed, epoch, self.rank, self.world_size)
        generator = augmentation_generator(self.seed, self.rank, epoch)
        planned = None
        if self.plan is not None:   # class-aware sampling: the epoch's batches, drawn from their own stream
            from .sampling import batch_sizes, sampling_generator

            sizes = batch_sizes(len(order), self.batch_size, len(self))
            planned = list(self.plan.batches(order, sizes, sampling_generator(self.seed, self.rank, epoch), epoch))
        for b in range(len(self)):
            if planned is None:
                indices = order[b * self.batch_size:(b + 1) * self.batch_size]
                batch = self.draw(indices, generator)
            else:
                batch = {**self.draw(planned[b][0], generator),
                         "forced_classes": torch.tensor(planned[b][1], dtype=torch.long)}
            if b < skip:
                continue
            if self.pin:
                batch = {k: v.pin_memory() if torch.is_tensor(v) else v for k, v in batch.items()}
            yield {**batch, MARK: "train", "epoch": epoch, "position": b + 1}


class _Indices(Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


@dataclass
class _IndexCollate:
    kind: str

    def __call__(self, indices: list[int]) -> dict[str, Any]:
        return {MARK: self.kind, "indices": torch.tensor(indices, dtype=torch.long), "index_list": list(indices)}


def index_loader(n: int, batch_size: int, kind: str, pin: bool = False) -> DataLoader:
    """Batches of ``batch_size`` indices ``0..n-1`` in order, marked ``kind`` (validation): a real
    ``DataLoader``, so that Lightning shards it over DDP ranks as it shards the loader path's (a
    ``DistributedSampler`` without shuffling), and the scores are the same."""
    return DataLoader(_Indices(n), batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=_IndexCollate(kind),
                      pin_memory=pin)


# -- the cache ---------------------------------------------------------------------------------------------------
def nbytes(value: Any) -> int:
    if torch.is_tensor(value):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(nbytes(v) for v in value)
    return 0


def _move(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if torch.is_tensor(value):
        return fn(value)
    if isinstance(value, (list, tuple)):
        return [_move(v, fn) for v in value]
    return value


@dataclass
class CachePart:
    """One part of the cache: its tensors (a tensor or a list of tensors per key), on the device or not."""

    name: str
    tensors: dict[str, Any]
    on_device: bool
    size: int = 0

    def __getitem__(self, key: str) -> Any:
        return self.tensors[key]


@dataclass
class DeviceCache:
    """The data the device path serves from, on ``device`` within a budget of ``budget_gb``.

    ``budget_gb="auto"``: on CUDA :data:`AUTO_CACHE_FRACTION` of the device's free memory when the first
    part is placed; on other devices no limit (on a CPU the "device" is host memory, which already holds
    the data: the tensors are used as they are). Parts are placed in the order they are asked for
    (training, validation, test); a part that does not fit what is left stays in host memory (pinned on
    CUDA), with one line saying so, and its batches are gathered there and copied.
    """

    device: torch.device
    budget_gb: str | float = "auto"
    rank: int = 0
    parts: dict[str, CachePart] = field(default_factory=dict)
    _budget: float | None = None
    used: int = 0

    def budget(self) -> float:
        """The budget in bytes (``inf``: no limit)."""
        if self._budget is None:
            if self.budget_gb != "auto":
                self._budget = float(self.budget_gb) * 1e9
            elif self.device.type == "cuda":
                self._budget = AUTO_CACHE_FRACTION * torch.cuda.mem_get_info(self.device)[0]
            else:
                self._budget = math.inf
        return self._budget

    def describe_budget(self) -> str:
        if self.budget_gb != "auto":
            return f"data.device_cache_gb={self.budget_gb:g}"
        return f"data.device_cache_gb=auto ({AUTO_CACHE_FRACTION:.0%} of the free memory of {self.device}: " \
               f"{self.budget() / 1e9:.2f} GB)"

    def place(self, name: str, what: str, tensors: dict[str, Any]) -> CachePart:
        """Hold ``tensors`` (host tensors, or lists of them) as part ``name`` (``what``: how the line names it)."""
        if name in self.parts:
            return self.parts[name]
        size = sum(nbytes(v) for v in tensors.values())
        left = self.budget() - self.used
        if size <= left:
            moved = {k: _move(v, lambda t: t.to(self.device)) for k, v in tensors.items()}
            part = CachePart(name, moved, True, size)
            self.used += size
        else:
            cuda = self.device.type == "cuda"
            held = {k: _move(v, lambda t: t.pin_memory() if cuda else t) for k, v in tensors.items()}
            part = CachePart(name, held, False, size)
            if self.rank == 0:
                where = ("held in pinned host memory and copied per batch" if cuda else
                         f"held in host memory and gathered there per batch (no pinning on {self.device.type})")
                shown = self.describe_budget() + (f", {left / 1e9:.2f} GB of it left" if self.used else "")
                log.warning("data.pipeline=device: the %s (%.2f GB) does not fit %s; %s", what, size / 1e9, shown,
                            where)
        self.parts[name] = part
        return part


def gather(source: torch.Tensor, indices: torch.Tensor, pin: bool) -> torch.Tensor:
    """``source[indices]`` along the first axis, into pinned memory when ``pin`` (so that its copy to the
    GPU is asynchronous; PyTorch's pinned-memory allocator reuses a block only once its copy is done)."""
    out = torch.empty((len(indices), *source.shape[1:]), dtype=source.dtype, pin_memory=pin)
    return torch.index_select(source, 0, indices, out=out)


# -- the path: what a data module serves through the device ------------------------------------------------------
class DevicePath(ABC):
    """A data module's device path for one fit: the cache on the trainer's device, the training batches,
    and the completion of every batch after Lightning moved it (:meth:`after_transfer`).

    Subclasses say what the parts hold and how a batch is drawn and taken from them: :class:`SlicePath`
    (2D slices), :class:`PatchPath` (3D patches).
    """

    spatial_dims = 2

    def __init__(self, datamodule, device: torch.device, rank: int, world_size: int, seed: int):
        from .batch_augment import Augment

        self.dm = datamodule
        self.device = device
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.pin = device.type == "cuda"
        self.cache = DeviceCache(device, datamodule.device_cache_gb, rank)
        self.augment = Augment.from_config(datamodule.augment, self.spatial_dims)
        self.maps = datamodule.loss_maps
        self.position = (0, 0)   # (epoch, batches of it trained on): what a checkpoint records
        self._train: TrainBatches | None = None
        self._resume: tuple[int, int] | None = None

    # -- what subclasses provide ----------------------------------------------------------------------------------
    @abstractmethod
    def train_tensors(self) -> dict[str, Any]:
        """The training part's host tensors (a tensor, or a list of tensors, per key)."""

    @abstractmethod
    def train_size(self) -> int:
        """Training samples per epoch (before sharding over ranks)."""

    @abstractmethod
    def draw(self, indices: list[int], generator: torch.Generator) -> dict[str, Any]:
        """The CPU part of the training batch of samples ``indices``: what to take, how to augment it."""

    @abstractmethod
    def val_loader(self) -> DataLoader:
        """The validation loader (index batches), after placing the validation part."""

    @abstractmethod
    def take(self, part: CachePart, batch: dict[str, Any],
             pin: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(image, label, case_index)`` of ``batch`` from ``part``, where the part is (``pin``: into pinned
        memory)."""

    # -- loaders --------------------------------------------------------------------------------------------------
    def train_loader(self) -> TrainBatches:
        if self._train is None:
            part = self.cache.place("train", "training set", self.train_tensors())
            self._train = TrainBatches(self.train_size(), self.dm.batch_size, self.seed, self.rank, self.world_size,
                                       self.draw, pin=self.pin, plan=self.dm.class_aware_plan())
            if self._resume is not None:
                self._train.resume_at(*self._resume)
            if self.rank == 0:
                log.info("data.pipeline=device: training set (%.2f GB) held %s, batches cut and augmented on %s "
                         "(draws seeded from seed=%d, rank, epoch)", part.size / 1e9,
                         f"on {self.device}" if part.on_device else "in host memory", self.device, self.seed)
        return self._train

    # -- checkpoint state -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.position[0]), "batches": int(self.position[1])}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resume = (int(state["epoch"]), int(state["batches"]))
        self.position = self._resume
        if self._train is not None:
            self._train.resume_at(*self._resume)

    # -- Lightning's batch hooks ----------------------------------------------------------------------------------
    def before_transfer(self, batch: dict[str, Any]) -> dict[str, Any]:
        """On the host: a batch of a part held in host memory is gathered here (pinned on CUDA), so that
        Lightning's copy of it is asynchronous."""
        part = self.cache.parts[batch[MARK]]
        if part.on_device:
            return batch
        image, label, case_index = self.take(part, batch, self.pin)
        return {**batch, "image": image, "label": label, "case_index": case_index}

    def after_transfer(self, batch: dict[str, Any]) -> dict[str, Any]:
        """On the device: the batch's samples (gathered from the cache unless they came with it), flipped and
        rotated when training, with the loss's target maps when ``data.precompute_loss_maps``."""
        kind = batch[MARK]
        if "image" in batch:
            image, label, case_index = batch["image"], batch["label"], batch["case_index"]
        else:
            image, label, case_index = self.take(self.cache.parts[kind], batch, False)
        if kind != "train":
            return {"image": image, "label": label.long(), "case_index": case_index}
        from .batch_augment import augment_batch

        image, label = augment_batch(image, label, batch, self.augment)
        self.position = (batch["epoch"], batch["position"])
        out = {"image": image, "label": label, "case_index": case_index}
        if self.maps is not None:
            out["maps"] = self.maps.batch(label)
        return out


class SlicePath(DevicePath):
    """2D: the training (and validation) slices at the model size, stacked: a batch is an index gather."""

    spatial_dims = 2

    def train_size(self) -> int:
        return len(self.dm.train_set)

    def train_tensors(self) -> dict[str, Any]:
        return _slice_tensors(self.dm.train_set.slices)

    def val_loader(self) -> DataLoader:
        self.cache.place("val", "validation set", _slice_tensors(self.dm.val_set.slices))
        return index_loader(len(self.dm.val_set), self.dm.batch_size * 2, "val", pin=self.pin)

    def draw(self, indices: list[int], generator: torch.Generator) -> dict[str, Any]:
        size = self.dm.img_size
        return {"indices": torch.tensor(indices, dtype=torch.long),
                **self.augment.draw(len(indices), (size, size), generator)}

    def take(self, part, batch, pin):
        indices = batch["indices"]
        return (gather(part["image"], indices, pin) if pin else part["image"].index_select(0, indices),
                gather(part["label"], indices, pin) if pin else part["label"].index_select(0, indices),
                part["case_index"].index_select(0, indices))


def _slice_tensors(slices) -> dict[str, torch.Tensor]:
    return {"image": slices.images, "label": slices.labels, "case_index": slices.case_index}


class PatchPath(DevicePath):
    """3D: the training volumes, padded to the patch size, one tensor each; a batch is cut from them by
    slicing at starts drawn on the CPU (:class:`~segbench.data.batch_augment.PatchCentres`)."""

    spatial_dims = 3

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.centres = None

    def train_size(self) -> int:
        return len(self.dm.train_set)

    def train_tensors(self) -> dict[str, Any]:
        from .batch_augment import PatchCentres

        images, labels = padded(self.dm.train_set.images, self.dm.train_set.labels, self.dm.patch_size)
        self.centres = PatchCentres([label[0] for label in labels], self.dm.patch_size, self.dm.foreground_prob)
        return {"image": images, "label": labels}

    def draw(self, indices: list[Any], generator: torch.Generator) -> dict[str, Any]:
        """Items are sample indices (patch centres drawn here) or, with class-aware sampling, forced patches
        (:class:`~segbench.data.sampling.ForcedPatch`: case and start given; the last ones of the batch)."""
        drawn = [i for i in indices if not isinstance(i, tuple)]
        forced = indices[len(drawn):]
        cases = [i // self.dm.samples_per_volume for i in drawn]
        centres = self.centres.draw(cases, generator)
        if forced:
            cases = cases + [f.case for f in forced]
            centres = {"starts": centres["starts"] + [f.start for f in forced],
                       "on_foreground": centres["on_foreground"] + [True] * len(forced),
                       "nth": centres["nth"] + [-1] * len(forced)}
        return {"cases": cases, **centres, "case_index": torch.tensor(cases, dtype=torch.long),
                **self.augment.draw(len(indices), self.dm.patch_size, generator)}

    def val_loader(self) -> DataLoader:
        val = self.dm.val_set
        if self.dm.validation == "patches":
            tensors = {"image": val.images, "label": val.labels, "case_index": val.case_index}
            self.cache.place("val", "validation patches", tensors)
            return index_loader(len(val), self.dm.batch_size, "val", pin=self.pin)
        self.cache.place("val", "validation set", {"image": list(val.images), "label": list(val.labels)})
        return index_loader(len(val), 1, "val", pin=self.pin)

    def take(self, part, batch, pin):
        from .batch_augment import crop

        if batch[MARK] == "train":
            cases, starts, size = batch["cases"], batch["starts"], self.dm.patch_size
            image_out = label_out = None
            if pin:
                image_out = torch.empty((len(cases), 1, *size), dtype=part["image"][0].dtype, pin_memory=True)
                label_out = torch.empty((len(cases), 1, *size), dtype=part["label"][0].dtype, pin_memory=True)
            return (crop(part["image"], cases, starts, size, image_out),
                    crop(part["label"], cases, starts, size, label_out)[:, 0], batch["case_index"])
        if isinstance(part["image"], list):  # whole validation cases, one per batch
            i = batch["index_list"][0]
            return part["image"][i][None], part["label"][i][0][None], batch["indices"]
        indices = batch["indices"]
        return (gather(part["image"], indices, pin) if pin else part["image"].index_select(0, indices),
                gather(part["label"], indices, pin) if pin else part["label"].index_select(0, indices),
                part["case_index"].index_select(0, indices))


def padded(images: Sequence[torch.Tensor], labels: Sequence[torch.Tensor],
           patch_size: Sequence[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Volumes ``(1, Z, Y, X)`` padded to at least ``patch_size`` as the loader path's ``SpatialPadd`` pads them
    (zeros, split evenly, the odd voxel after): MONAI's own ``SpatialPad``, once per case."""
    from monai.data import get_track_meta, set_track_meta
    from monai.transforms import SpatialPad

    pad = SpatialPad(spatial_size=list(patch_size), mode="constant")
    previous = get_track_meta()
    set_track_meta(False)
    try:
        out_images = [torch.as_tensor(pad(image)).contiguous() for image in images]
        out_labels = [torch.as_tensor(pad(label)).contiguous() for label in labels]
    finally:
        set_track_meta(previous)
    return out_images, out_labels
