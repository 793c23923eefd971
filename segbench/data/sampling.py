"""Class-aware sampling (``data.class_aware_sampling``): a set share of every training batch is drawn around a
chosen class, the rest as without it.

    segbench-train data.class_aware_sampling.fraction=0.33                       # classes: uniform
    segbench-train data.class_aware_sampling.fraction=0.33 data.class_aware_sampling.classes=rare
    segbench-train data.class_aware_sampling.fraction=0.5 'data.class_aware_sampling.classes=[gallbladder]'

``fraction`` (0 = off, the default: the training loaders are built exactly as without this module) is the
share of each batch's samples that are *forced*: each forced sample first draws a class, then a sample that
holds it,

* 2D: a training slice (at the model size, before augmentation) that holds the class, uniformly among them;
* 3D: a training case that holds the class (uniformly among them), then one of its voxels of that class
  (uniformly), and the patch centred there as MONAI's ``RandCropByPosNegLabeld`` / ``RandCropByLabelClassesd``
  centre a patch (``correct_crop_centers``: moved inside the volume, so the patch still holds the voxel).

The class is drawn from ``classes``:

* ``uniform``: uniformly among the foreground classes that the training set holds (nnU-Net's rule, over the
  training set rather than within one case);
* ``rare``: class ``c`` with probability ``w_c = (1 / n_c) / sum_k (1 / n_k)`` over the classes the training set
  holds, where ``n_c`` counts the training samples' units that hold it: in 2D the training slices holding ``c``,
  in 3D the training voxels of ``c``;
* a list of class names or ids (or one of them): uniformly among those.

How many per batch: with batch size ``B`` and fraction ``f``, the first ``n`` training samples of the run hold
``floor(f * n)`` forced samples (``f`` read as the nearest fraction with a denominator up to 10^6: 0.33 is
33/100). A batch thus holds ``floor(f * B)`` or ``ceil(f * B)`` forced samples (exactly ``f * B`` when that is
a whole number), the last ones of the batch as in nnU-Net, and over any number of batches the share is ``f`` to
within one sample. nnU-Net instead forces ``B - round(B * (1 - f))`` samples of every batch: 3 of 8 (0.375) at
``f = 0.33``, 1 of 2 (0.5) at its 3D batch of 2; ``fraction=0.5`` gives the latter here.

The rest of the batch is drawn as without class-aware sampling: the next samples of the epoch's random order
(in 3D with ``RandCropByPosNegLabeld``'s ``foreground_prob`` crop). An epoch keeps its number of batches, so it
takes ``1 - f`` of the order and leaves the rest of it out (another order every epoch).

Seeded and resumable: the order is ``DistributedSampler``'s permutation seeded by ``seed + epoch`` (each DDP
rank its shard, :func:`~segbench.data.device.epoch_order`), and the forced samples are drawn from a
``torch.Generator`` seeded from ``(seed, rank, epoch)`` on a stream of its own (:func:`sampling_generator`,
apart from the device path's augmentation stream). An epoch's batches are thus a function of
``(seed, rank, epoch)`` alone: the run resumed from a checkpoint draws the batches of the uninterrupted run, on
the loader path (:class:`ClassAwareSampler`, a ``DistributedSampler`` whose epoch Lightning sets) and on the
device path (:class:`~segbench.data.device.TrainBatches`, which also resumes mid-epoch). The indices of where
each class is (:class:`SliceClassIndex`, :class:`PatchClassIndex`) are built once on the host at setup; on the
device path the forced samples travel with the batch's other drawn parameters, nothing is read back from the
device.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DistributedSampler

from ..errors import ConfigError, DataError

#: ``data.class_aware_sampling.classes``: how the class of a forced sample is drawn (or a list of classes)
CLASS_CHOICES = ("uniform", "rare")
OPTIONS = ("fraction", "classes")
#: the stream of :func:`sampling_generator`, apart from the augmentation's (device.augmentation_generator)
SAMPLING_STREAM = 1


@dataclass(frozen=True)
class ClassAwareSampling:
    """``data.class_aware_sampling``: ``fraction`` of each batch forced, the class drawn by ``classes``
    (``uniform``, ``rare`` or a tuple of class ids)."""

    fraction: Fraction
    classes: str | tuple[int, ...]

    @classmethod
    def from_config(cls, value: Any, class_names: Sequence[str]) -> ClassAwareSampling | None:
        """The checked option, or ``None`` when off (absent, or ``fraction`` 0). Bad values: one line."""
        key = "data.class_aware_sampling"
        if value is None:
            return None
        from omegaconf import OmegaConf

        if OmegaConf.is_config(value):   # instantiated without _convert_ (a DictConfig)
            value = OmegaConf.to_container(value, resolve=True)
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping {{fraction: <share of each batch in [0, 1]>, classes: "
                              f"uniform | rare | [class names]}}, got {value!r}")
        unknown = sorted(set(value) - set(OPTIONS))
        if unknown:
            raise ConfigError(f"{key} has no option {unknown[0]!r}; its options are: {', '.join(OPTIONS)}")
        fraction = value.get("fraction", 0.0)
        number = None
        if not isinstance(fraction, bool) and isinstance(fraction, (int, float)):
            number = float(fraction)
        if number is None or not math.isfinite(number) or not 0.0 <= number <= 1.0:
            raise ConfigError(f"{key}.fraction must be a number in [0, 1] (the share of each training batch drawn "
                              f"around a chosen class; 0: off), got {fraction!r}")
        classes = parse_classes(value.get("classes", "uniform"), class_names)
        if number == 0.0:
            return None
        return cls(Fraction(number).limit_denominator(10 ** 6), classes)

    def forced_counts(self, sizes: Sequence[int], epoch: int = 0) -> list[int]:
        """Forced samples of each batch of epoch ``epoch`` (``sizes``, the same every epoch): the first ``n``
        samples of the run hold ``floor(f * n)``, so the share over any number of epochs is ``f`` to one sample."""
        seen = int(epoch) * sum(int(size) for size in sizes)
        counts, forced = [], math.floor(self.fraction * seen)
        for size in sizes:
            seen += int(size)
            now = math.floor(self.fraction * seen)
            counts.append(now - forced)
            forced = now
        return counts

    def describe(self, class_names: Sequence[str]) -> str:
        classes = self.classes if isinstance(self.classes, str) else \
            "[" + ", ".join(class_names[c] for c in self.classes) + "]"
        return f"fraction={float(self.fraction):g}, classes={classes}"


def parse_classes(value: Any, class_names: Sequence[str]) -> str | tuple[int, ...]:
    """``uniform``, ``rare``, or the class ids of a list of names / ids (a single name or id: a list of one)."""
    key = "data.class_aware_sampling.classes"
    if isinstance(value, str) and value in CLASS_CHOICES:
        return value
    from omegaconf import OmegaConf

    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    entries = list(value) if isinstance(value, (list, tuple)) else [value]
    if not entries:
        raise ConfigError(f"{key} is an empty list; name classes (e.g. [{class_names[-1]}]), or choose uniform or "
                          "rare")
    ids = []
    for entry in entries:
        if isinstance(entry, bool) or not isinstance(entry, (int, str)):
            raise ConfigError(f"{key}={value!r}: choose uniform, rare or a list of class names or ids")
        if isinstance(entry, int) or entry.isdigit():
            number = int(entry)
            if not 0 <= number < len(class_names):
                raise ConfigError(f"{key} names class id {number}, but the classes are 0..{len(class_names) - 1} "
                                  f"({', '.join(class_names)})")
        elif entry in class_names:
            number = list(class_names).index(entry)
        else:
            raise ConfigError(f"{key} names {entry!r}, which is not a class of data.class_names "
                              f"({', '.join(class_names[1:])}); or choose uniform or rare")
        if number == 0:
            raise ConfigError(f"{key} names the background ({class_names[0]}, id 0): forced samples are drawn around "
                              "an organ; the rest of each batch is drawn as without class-aware sampling")
        if number not in ids:
            ids.append(number)
    return tuple(ids)


def sampling_generator(seed: int, rank: int, epoch: int) -> torch.Generator:
    """The CPU generator of rank ``rank``'s forced samples in ``epoch``, seeded from ``(seed, rank, epoch)``
    through NumPy's ``SeedSequence`` on its own stream (:data:`SAMPLING_STREAM`)."""
    generator = torch.Generator()
    state = np.random.SeedSequence([int(seed) % 2 ** 63, int(rank), int(epoch), SAMPLING_STREAM]).generate_state(
        1, np.uint64)[0]
    generator.manual_seed(int(state))
    return generator


def _pick(u: float, count: int) -> int:
    """Index ``floor(u * count)`` of ``count`` items for a uniform ``u`` in [0, 1) (at most ``count - 1``)."""
    return min(int(u * count), count - 1)


class ClassIndex:
    """Where each class is in the training set, and the class distribution of forced samples.

    Subclasses fill :attr:`counts` (class id -> ``n_c``, the training units holding it) and draw a forced
    sample of a class (:meth:`sample`)."""

    unit = "training sample"

    def __init__(self, sampling: ClassAwareSampling, class_names: Sequence[str], counts: dict[int, int]):
        self.sampling = sampling
        self.class_names = list(class_names)
        self.counts = counts
        present = [c for c in range(1, len(class_names)) if counts.get(c, 0) > 0]
        if isinstance(sampling.classes, tuple):
            absent = [c for c in sampling.classes if counts.get(c, 0) == 0]
            if absent:
                c = absent[0]
                raise DataError(f"data.class_aware_sampling.classes names {class_names[c]} (id {c}), which no "
                                f"{self.unit} holds; drop it, or choose uniform or rare (the classes present)")
            self.classes = list(sampling.classes)
        elif not present:
            raise DataError(f"data.class_aware_sampling: no {self.unit} holds a class other than the background "
                            f"({class_names[0]}); there is no class to draw around")
        else:
            self.classes = present
        if sampling.classes == "rare":
            inverse = np.array([1.0 / counts[c] for c in self.classes])
            self.probabilities = inverse / inverse.sum()
        else:
            self.probabilities = np.full(len(self.classes), 1.0 / len(self.classes))
        self._cumulative = np.cumsum(self.probabilities)
        self._cumulative[-1] = 1.0

    def draw(self, k: int, generator: torch.Generator) -> tuple[list[Any], list[int]]:
        """``k`` forced samples and their classes, from ``generator``: three uniform draws per sample (the class,
        then the sample :meth:`sample` picks with the other two)."""
        if k <= 0:
            return [], []
        u = torch.rand(k, 3, generator=generator, dtype=torch.float64).tolist()
        items, classes = [], []
        for u_class, u_a, u_b in u:
            c = self.classes[min(int(np.searchsorted(self._cumulative, u_class, side="right")), len(self.classes) - 1)]
            items.append(self.sample(c, u_a, u_b))
            classes.append(c)
        return items, classes

    def sample(self, c: int, u_a: float, u_b: float) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> str:
        shares = ", ".join(f"{self.class_names[c]} {p:.3f}" for c, p in zip(self.classes, self.probabilities))
        return f"class-aware sampling ({self.sampling.describe(self.class_names)}): forced samples' classes {shares}"


class SliceClassIndex(ClassIndex):
    """2D: per class, the training slices that hold it (model size, before augmentation); ``n_c`` = their number."""

    unit = "training slice"

    def __init__(self, labels: torch.Tensor, sampling: ClassAwareSampling, class_names: Sequence[str]):
        flat = labels.reshape(len(labels), -1)
        self.slices: dict[int, np.ndarray] = {}
        for c in range(1, len(class_names)):
            holding = torch.nonzero((flat == c).any(dim=1)).flatten().numpy()
            if len(holding):
                self.slices[c] = holding
        super().__init__(sampling, class_names, {c: len(s) for c, s in self.slices.items()})

    def sample(self, c: int, u_a: float, u_b: float) -> int:
        holding = self.slices[c]
        return int(holding[_pick(u_a, len(holding))])


class ForcedPatch(NamedTuple):
    """A forced 3D training sample: the patch of case ``case`` (its padded volume) starting at ``start``,
    centred on a voxel of class ``label``."""

    case: int
    start: tuple[int, ...]
    label: int


def patch_start(voxel: int, shape: Sequence[int], patch_size: Sequence[int]) -> tuple[int, ...]:
    """The first voxel of the patch MONAI's crop cuts around flat voxel ``voxel`` of a ``shape`` volume: the centre
    moved inside by ``correct_crop_centers``, minus half the patch (``SpatialCrop``)."""
    from monai.transforms.utils import correct_crop_centers

    centre = np.unravel_index(int(voxel), tuple(shape))
    centre = correct_crop_centers([int(c) for c in centre], tuple(patch_size), tuple(shape))
    return tuple(max(int(c) - s // 2, 0) for c, s in zip(centre, patch_size))


class PatchClassIndex(ClassIndex):
    """3D: per class and training case (its label padded to the patch size, as the crop pads it), the flat
    indices of its voxels of that class; ``n_c`` = the class's training voxels."""

    unit = "training case"

    def __init__(self, labels: Sequence[torch.Tensor], patch_size: Sequence[int], sampling: ClassAwareSampling,
                 class_names: Sequence[str]):
        self.patch_size = tuple(int(p) for p in patch_size)
        self.shapes: list[tuple[int, ...]] = []
        self.voxels: dict[int, dict[int, np.ndarray]] = {}   # class -> case -> flat voxel indices
        for case, label in enumerate(labels):
            array = np.asarray(label).reshape(np.asarray(label).shape[-len(self.patch_size):])
            self.shapes.append(tuple(int(s) for s in array.shape))
            flat = array.reshape(-1)
            kind = np.int32 if flat.size < 2 ** 31 else np.int64
            held = np.bincount(flat, minlength=len(class_names))
            for c in range(1, len(class_names)):
                if held[c]:
                    self.voxels.setdefault(c, {})[case] = np.flatnonzero(flat == c).astype(kind)
        self.cases = {c: sorted(per_case) for c, per_case in self.voxels.items()}
        counts = {c: int(sum(len(v) for v in per_case.values())) for c, per_case in self.voxels.items()}
        super().__init__(sampling, class_names, counts)

    def sample(self, c: int, u_a: float, u_b: float) -> ForcedPatch:
        cases = self.cases[c]
        case = cases[_pick(u_a, len(cases))]
        voxels = self.voxels[c][case]
        voxel = int(voxels[_pick(u_b, len(voxels))])
        return ForcedPatch(case, patch_start(voxel, self.shapes[case], self.patch_size), c)


class ClassAwarePlan:
    """An epoch's batches with class-aware sampling: the rest of each batch from the epoch's order, the forced
    samples from the class index (:meth:`batches`)."""

    def __init__(self, sampling: ClassAwareSampling, index: ClassIndex):
        self.sampling = sampling
        self.index = index

    def batches(self, order: Sequence[Any], sizes: Sequence[int], generator: torch.Generator,
                epoch: int) -> Iterator[tuple[list[Any], list[int]]]:
        """Per batch of epoch ``epoch`` (``sizes``): ``(items, classes)``, the next ``size - k`` items of ``order``
        then ``k`` forced samples (``k`` from :meth:`ClassAwareSampling.forced_counts`), and their classes."""
        cursor = 0
        for size, k in zip(sizes, self.sampling.forced_counts(sizes, epoch)):
            rest = list(order[cursor:cursor + size - k])
            cursor += size - k
            forced, classes = self.index.draw(k, generator)
            yield rest + forced, classes


def batch_sizes(n: int, batch_size: int, batches: int) -> list[int]:
    """The sizes of an epoch's ``batches`` batches over ``n`` items: ``batch_size`` each, the last one shorter when
    the items run out (``drop_last=False`` with fewer than ``batch_size`` items)."""
    return [max(0, min(batch_size, n - b * batch_size)) for b in range(batches)]


class ClassAwareSampler(DistributedSampler):
    """The loader path's training sampler with class-aware sampling: yields an epoch's batches
    (:meth:`ClassAwarePlan.batches`) one index after another, for the ``DataLoader``'s batching by
    ``batch_size`` (the forced samples are the last ones of each batch).

    A ``DistributedSampler`` (so Lightning does not wrap it in one under DDP) that shards itself as one does:
    rank ``rank`` of ``world_size`` takes its share of the epoch's permutation (seeded ``seed + epoch``), and
    draws its forced samples from :func:`sampling_generator` of ``(seed, rank, epoch)``. Lightning calls
    :meth:`set_epoch` before each epoch, also after a resume: the epoch's batches depend on nothing else.
    """

    def __init__(self, n: int, batch_size: int, drop_last: bool, plan: ClassAwarePlan, seed: int, rank: int = 0,
                 world_size: int = 1):
        super().__init__(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=int(seed))
        from .device import batches_per_epoch

        self.n, self.batch_size, self.plan = int(n), int(batch_size), plan
        self.batches = batches_per_epoch(self.n, self.batch_size, world_size, drop_last)
        self.sizes = batch_sizes(self.num_samples, self.batch_size, self.batches)

    def epoch_batches(self, epoch: int | None = None) -> list[tuple[list[Any], list[int]]]:
        """``(items, forced classes)`` of every batch of ``epoch`` (default: the epoch set last)."""
        from .device import epoch_order

        epoch = self.epoch if epoch is None else int(epoch)
        order = epoch_order(self.n, self.seed, epoch, self.rank, self.num_replicas)
        generator = sampling_generator(self.seed, self.rank, epoch)
        return list(self.plan.batches(order, self.sizes, generator, epoch))

    def __iter__(self):
        for items, _ in self.epoch_batches():
            yield from items

    def __len__(self) -> int:
        return sum(self.sizes)
