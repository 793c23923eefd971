"""LightningDataModule: 3D cases -> HU window -> [0, 1] -> axial 2D slices at the model size.

Training and validation see axial slices resized to ``img_size`` (image with
anti-aliased bicubic interpolation, label nearest-neighbour). Testing sees whole
cases: the module predicts slice by slice, resizes the class probabilities back
to the native in-plane size, stacks them and scores the native-resolution
volume with the case's own voxel spacing.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from monai.data import get_track_meta, set_track_meta
from monai.transforms import Compose
from monai.utils import convert_to_tensor
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError, DataError
from .device import MARK, SlicePath, check_device_cache_gb, check_pipeline, resolve_pipeline
from .folds import FOLD_KEYS, check_fold_options, cross_validation_split
from .loader import check_loader_options, check_num_workers, loader_options, training_device
from .preprocess import check_target_spacing, resample_volume
from .sampling import ClassAwarePlan, ClassAwareSampler, ClassAwareSampling, SliceClassIndex
from .sources import DataSource
from .volume import CaseRef, Grid, Volume, to_canonical

log = logging.getLogger("segbench.data")


def window_hu(image: np.ndarray, window: Sequence[float]) -> np.ndarray:
    """Clip HU to ``window = (low, high)`` and scale to [0, 1]."""
    low, high = float(window[0]), float(window[1])
    return ((np.clip(image, low, high) - low) / (high - low)).astype(np.float32)


def unit_image(vol: Volume, window: Sequence[float]) -> np.ndarray:
    """The case's image in [0, 1]: HU window, unless the source already normalised it."""
    return vol.image.astype(np.float32) if vol.normalized else window_hu(vol.image, window)


def resize_slices(slices: np.ndarray, size: int, is_label: bool) -> np.ndarray:
    """Resize ``(Z, Y, X)`` slice stacks in-plane to ``(Z, size, size)`` with MONAI's Resize."""
    from monai.transforms import Resize

    if slices.shape[1:] == (size, size):
        return slices.copy()
    if is_label:
        resize = Resize((size, size), mode="nearest-exact")
        return np.asarray(resize(torch.from_numpy(slices.astype(np.float32)))).round().astype(np.uint8)
    resize = Resize((size, size), mode="bicubic", anti_aliasing=True)
    return np.clip(np.asarray(resize(torch.from_numpy(slices))), 0.0, 1.0).astype(np.float32)


class UntrackedCompose(Compose):
    """A MONAI ``Compose`` that runs its transforms on plain tensors (MONAI's ``track_meta`` off while it
    runs): the same outputs, bit for bit, from the same random states, without the per-op MetaTensor
    bookkeeping that makes a random rotation of a 64 x 64 slice take ~3x as long."""

    def __call__(self, input_, *args, **kwargs):
        previous = get_track_meta()
        set_track_meta(False)
        try:
            return super().__call__(input_, *args, **kwargs)
        finally:
            set_track_meta(previous)


def build_augmentation(augment: dict[str, float], spatial_dims: int):
    """MONAI flips (every spatial axis) and an in-plane rotation from ``data.augment``; None when all off.

    ``augment = {flip_prob, rotate_prob, rotate_range_deg}``. In 3D (Z, Y, X) ``range_x`` rotates
    about the first spatial axis (Z), i.e. in the axial (Y, X) plane, as in 2D.
    """
    from monai.transforms import RandFlipd, RandRotated

    from .batch_augment import Augment

    settings = Augment.from_config(augment, spatial_dims)  # the same checks as the device path's
    flip, rot, deg = settings.flip_prob, settings.rotate_prob, settings.rotate_range_deg
    steps = []
    if flip > 0:
        steps += [RandFlipd(["image", "label"], prob=flip, spatial_axis=axis) for axis in range(spatial_dims)]
    if rot > 0 and deg > 0:
        steps.append(RandRotated(["image", "label"], range_x=math.radians(deg), prob=rot,
                                 mode=("bilinear", "nearest"), padding_mode="zeros"))
    return UntrackedCompose(steps) if steps else None


@dataclass
class SliceSet:
    """Axial slices of several cases, resized to the model size."""

    images: torch.Tensor   # (N, 1, S, S) float32 in [0, 1]
    labels: torch.Tensor   # (N, S, S) uint8
    case_index: torch.Tensor  # (N,) index into the split's case list


class SliceDataset(Dataset):
    """2D training / validation samples with optional MONAI augmentation."""

    def __init__(self, slices: SliceSet, transform=None, maps=None):
        self.slices = slices
        self.transform = transform
        self.maps = maps

    def __len__(self) -> int:
        return len(self.slices.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = {"image": self.slices.images[i], "label": self.slices.labels[i][None].float()}
        if self.transform is not None:
            sample = self.transform(sample)
        # plain tensors: MONAI's MetaTensor would follow the batch through the network and slow
        # every forward/backward by ~2x (it dispatches through __torch_function__ for each op)
        out = {"image": convert_to_tensor(sample["image"], track_meta=False).float(),
               "label": convert_to_tensor(sample["label"], track_meta=False)[0].round().long(),
               "case_index": self.slices.case_index[i]}
        return with_loss_maps(out, self.maps)


class VolumeDataset(Dataset):
    """Whole test cases: model-size slices for prediction plus the native label (a NumPy array: it stays on
    the host, where it is scored), spacing and affine.

    ``slices(i)``: case ``i``'s model-size slices, ``(Z, 1, S, S)``, resized once per data module
    (:meth:`SegDataModule.test_slices`), on the host or the training device."""

    def __init__(self, volumes: list[Volume], slices: Callable[[int], torch.Tensor]):
        self.volumes = volumes
        self.slices = slices

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, i: int) -> dict[str, Any]:
        vol = self.volumes[i]
        return {"case_id": vol.case_id, "image": self.slices(i), "label": vol.label, "spacing": vol.spacing,
                "spacing_known": vol.spacing_known, "affine": vol.affine, "native_shape": vol.shape,
                "original": vol.original}


def with_loss_maps(sample: dict[str, Any], maps) -> dict[str, Any]:
    """Add the loss's target-only maps of ``sample["label"]`` (``maps``: a
    :class:`~segbench.losses.maps.TargetMapBuilder`, or ``None``: nothing to add)."""
    if maps is not None:
        sample["maps"] = maps(sample["label"])
    return sample


def label_ids_of(label: np.ndarray) -> tuple[int, ...]:
    """The label ids a (uint8) label array holds, counted on the CPU."""
    return tuple(int(i) for i in np.flatnonzero(np.bincount(np.asarray(label, np.uint8).ravel())))


def check_label_ids(label_ids: dict[str, Sequence[int]], num_classes: int, ignore_index: int | None = None) -> None:
    """DataError naming the first case that holds a label id outside ``0..num_classes-1``
    (``ignore_index`` excepted); ``label_ids``: case id -> the ids it holds."""
    for case_id, ids in label_ids.items():
        bad = [int(i) for i in ids if not 0 <= int(i) < num_classes and int(i) != ignore_index]
        if bad:
            raise DataError(f"case {case_id} holds label id {bad[0]} but there are {num_classes} classes "
                            f"(ids 0..{num_classes - 1}); make data.class_names / data.num_classes match the "
                            f"dataset's labels, or set loss.ignore_index={bad[0]} to leave those voxels out")


def first_item(batch: list[dict[str, Any]]) -> dict[str, Any]:
    return batch[0]


def _trainer_placement(trainer) -> tuple[torch.device, int, int]:
    """``(device, global rank, world size)`` of a Lightning trainer (the CPU, 0, 1 without one)."""
    if trainer is None:
        return torch.device("cpu"), 0, 1
    return trainer.strategy.root_device, int(trainer.global_rank), int(trainer.world_size)


def _seeded_order(case_ids: list[str], seed: int | None, subset: int | None) -> list[str]:
    """The case order for counts / ratios: as listed, or shuffled by ``seed`` and cut to ``subset`` cases."""
    if subset is not None:
        if seed is None:
            raise ConfigError("data.split.subset needs data.split.seed (the random choice must be reproducible)")
        if int(subset) < 1:
            raise ConfigError(f"data.split.subset must be >= 1 or null (all cases), got {subset}")
        if int(subset) > len(case_ids):
            raise DataError(f"data.split.subset={subset} but the dataset has {len(case_ids)} cases; "
                            "lower it or set data.split.subset=null to use all cases")
    if seed is None:
        return list(case_ids)
    order = np.random.default_rng(int(seed)).permutation(len(case_ids))
    shuffled = [case_ids[i] for i in order]
    return shuffled[: int(subset)] if subset is not None else shuffled


def ratio_counts(n: int, ratios: Sequence[float]) -> dict[str, int]:
    """``n`` cases split in proportion to ``ratios = [train, val, test]`` (largest remainder, ties to train)."""
    values = [float(r) for r in ratios]
    if len(values) != 3 or min(values) < 0 or sum(values) <= 0:
        raise ConfigError(f"data.split.ratios must be [train, val, test] with values >= 0, got {list(ratios)}")
    exact = [n * r / sum(values) for r in values]
    counts = [math.floor(e) for e in exact]
    for i in sorted(range(3), key=lambda i: (counts[i] - exact[i], i))[: n - sum(counts)]:
        counts[i] += 1
    for part, r, c in zip(("train", "val", "test"), values, counts):
        if r > 0 and c == 0:
            raise DataError(f"data.split.ratios {list(ratios)} leave split '{part}' empty with {n} cases; "
                            "use more cases (data.split.subset) or other ratios")
    return dict(zip(("train", "val", "test"), counts))


def _match_id(case_id: Any, known: set[str]) -> str:
    """A case id from a config: as written, or zero-padded to 4 digits (YAML reads 0005 as 5)."""
    text = str(case_id)
    if text not in known and text.isdigit() and text.zfill(4) in known:
        return text.zfill(4)
    return text


def resolve_split(case_ids: list[str], split: dict[str, Any]) -> dict[str, Any]:
    """Turn a split spec into id lists.

    ``{train: 12, val: 2, test: 6}`` are counts taken in order, or lists of case ids. ``ratios:
    [6, 1, 3]`` splits in proportion instead. ``seed`` shuffles the case order before counts or
    ratios are applied and ``subset: N`` then keeps the first N shuffled cases (AbdomenCT-1K's
    100-case subset). Explicit train/val/test entries win over ``ratios`` (so overlays such as
    ``debug=smoke`` can shrink any split).

    ``folds: K`` and ``fold: k`` (k-fold cross-validation, :mod:`segbench.data.folds`): the train + val
    cases above are split into K folds by nnU-Net's convention, fold k becomes ``val`` and the others
    ``train``; ``test`` stays. The result then also records ``folds`` (each fold's validation cases),
    ``fold`` and ``fold_seed``.
    """
    split = dict(split)
    cv = check_fold_options(split)
    for key in FOLD_KEYS:
        split.pop(key, None)
    ratios, subset, seed = split.pop("ratios", None), split.pop("subset", None), split.pop("seed", None)
    known = set(case_ids)
    case_ids = _seeded_order(case_ids, seed, subset)
    if ratios is not None:
        if any(split.get(part) is not None for part in ("train", "val", "test")):
            log.info("data.split: explicit train/val/test entries given; data.split.ratios is not used")
        else:
            split = ratio_counts(len(case_ids), ratios)
    out: dict[str, list[str]] = {}
    cursor = 0
    for part in ("train", "val", "test"):
        spec = split.get(part, 0)
        if spec is None:
            spec = 0
        if isinstance(spec, int):
            if spec < 0:
                raise ConfigError(f"data.split.{part} must be >= 0, got {spec}")
            out[part] = case_ids[cursor:cursor + spec]
            if len(out[part]) < spec:
                raise DataError(f"data.split asks for {sum(v for v in split.values() if isinstance(v, int))} "
                                f"cases but the dataset has {len(case_ids)}; lower the split counts")
            cursor += spec
        else:
            ids = [_match_id(c, known) for c in spec]
            missing = [c for c in ids if c not in known]
            if missing:
                raise DataError(f"data.split.{part} names case(s) {missing} that are not in the dataset "
                                f"(it has {case_ids[:5]}...)")
            out[part] = ids
    if not out["train"]:
        raise DataError("data.split.train is empty; give it at least one case")
    for part, ids in out.items():
        dups = sorted({c for c in ids if ids.count(c) > 1})
        if dups:
            raise DataError(f"data.split.{part} lists case(s) {dups} more than once")
    for first, second in (("train", "test"), ("val", "test"), ("train", "val")):
        both = sorted(set(out[first]) & set(out[second]))
        if both:  # a test case seen in training or model selection, or validation on training cases
            raise DataError(f"data.split: case(s) {both} are in both {first} and {second}; each case belongs to "
                            "one split only")
    return out if cv is None else cross_validation_split(out, cv)


class CaseDataModule(pl.LightningDataModule):
    """What every segbench data module shares: the source and its case split, the class names, the HU
    window, the preprocessing cache and the one whole-case preprocessing path (load, resample to
    ``target_spacing``, intensities to [0, 1]). Subclasses add how training samples are cut
    (2D slices, 3D patches)."""

    def __init__(self, source, class_names: Sequence[str], split: dict[str, Any], window: Sequence[float],
                 num_classes: int | None, name: str, cache_dir: str | None,
                 target_spacing: Sequence[float | None] | None, precompute_loss_maps: bool = False,
                 num_workers: int | str = "auto", pin_memory: bool | str = "auto", prefetch_factor: int = 4,
                 nonfinite_fill: float | None = None, pipeline: str = "auto", device_cache_gb: str | float = "auto",
                 class_aware_sampling: dict[str, Any] | None = None):
        super().__init__()
        self.pipeline = check_pipeline(pipeline)
        self.device_cache_gb = check_device_cache_gb(device_cache_gb)
        # set by segbench.runtime.build from the run's seed: the device path's generators are seeded from it
        self.seed: int | None = None
        self._device_path = None   # the device path of the current fit / test (segbench.data.device)
        self._device_state: dict[str, Any] | None = None   # a checkpoint's position, until the path exists
        self.num_workers = check_num_workers(num_workers)
        self.pin_memory, self.prefetch_factor = check_loader_options(pin_memory, prefetch_factor)
        if nonfinite_fill is not None and not (isinstance(nonfinite_fill, (int, float))
                                               and math.isfinite(float(nonfinite_fill))):
            raise ConfigError(f"data.nonfinite_fill must be a finite number (the value that replaces NaN / inf "
                              f"image values) or null (refuse such scans), got {nonfinite_fill!r}")
        self.nonfinite_fill = None if nonfinite_fill is None else float(nonfinite_fill)
        self._checked: set[str] = set()  # cases read and checked (segbench.data.CaseDataModule.preflight)
        if not isinstance(precompute_loss_maps, bool):
            raise ConfigError(f"data.precompute_loss_maps must be true or false, got {precompute_loss_maps!r}")
        self.precompute_loss_maps = precompute_loss_maps
        # set by segbench.train when precompute_loss_maps: the loss's TargetMapBuilder, called by the
        # training datasets on every sample after augmentation / cropping (segbench.losses.maps)
        self.loss_maps = None
        self.source = source
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names) if num_classes is None else int(num_classes)
        if self.num_classes != len(self.class_names):
            raise ConfigError(f"data.num_classes={self.num_classes} but data.class_names has "
                              f"{len(self.class_names)} names; make them agree")
        # data.class_aware_sampling (segbench.data.sampling): None when off (fraction 0), the loaders then as without it
        self.class_aware = ClassAwareSampling.from_config(class_aware_sampling, self.class_names)
        self.class_index = None   # where each class is in the training set: built at setup when class_aware
        if len(window) != 2 or not float(window[0]) < float(window[1]):
            raise ConfigError(f"data.window must be [low, high] with low < high, got {list(window)}")
        self.split_spec = dict(split)
        check_fold_options(self.split_spec)  # data.split.folds / fold: refused here, before any case is read
        self.window = [float(window[0]), float(window[1])]
        self.name = name
        self.target_spacing = check_target_spacing(target_spacing)
        self.cache = None
        if cache_dir:
            from ..files import writable
            from .cache import PreprocessCache

            problem = writable(cache_dir)
            if problem is None:
                self.cache = PreprocessCache(cache_dir, source)
            else:  # a read-only or full disk: the run works without the cache, only slower
                log.warning("data.cache_dir %s is not writable (%s); running without the preprocessing cache "
                            "(set data.cache_dir=<a writable folder>, or null)", cache_dir, problem)
        # train / val / test case ids (and, under k-fold cross-validation, folds / fold / fold_seed)
        self.splits: dict[str, Any] = {}
        self._refs: dict[str, CaseRef] = {}
        self.train_set = self.val_set = None
        self.test_volumes: list[Volume] = []
        self.val_case_ids: list[str] = []
        # case id -> the label ids of each training / validation case, counted on the CPU where the case
        # is loaded; the LightningModule checks them once instead of every batch on the device
        self.label_ids: dict[str, tuple[int, ...]] = {}

    def prepare_data(self) -> None:
        self.source.prepare()

    def _resolve_splits(self) -> None:
        if not self.splits:
            refs = self.source.cases()
            self._refs = {r.case_id: r for r in refs}
            self.splits = resolve_split([r.case_id for r in refs], self.split_spec)

    #: the split whose cases the test machinery (test_volumes, test_dataloader) scores: test, or val for the
    #: cross-validation pass of a fold (:meth:`scoring`)
    scored_split = "test"

    @contextmanager
    def scoring(self, part: str):
        """While in this block, ``trainer.test`` scores the cases of split ``part`` (e.g. ``val``: a fold's
        validation cases, scored whole like the test cases) instead of the test split's."""
        saved = self.scored_split, self.test_volumes
        self.scored_split, self.test_volumes = part, []
        try:
            yield self
        finally:
            self.scored_split, self.test_volumes = saved

    @property
    def scored_cache_part(self) -> str:
        """The device cache's name for the scored cases: ``test``, else ``scored <split>`` (the name ``val`` is
        taken by the validation set of training, model-size slices or patches)."""
        return "test" if self.scored_split == "test" else f"scored {self.scored_split}"

    def _load_test_volumes(self) -> None:
        if not self.test_volumes:
            part = self.scored_split
            if not self.splits[part]:
                raise DataError(f"data.split.{part} is empty; give it at least one case to evaluate")
            self.test_volumes = [self._prepared(c, original_label=True)
                                 for c in self._progress(self.splits[part], part)]

    def _load(self, case_id: str) -> Volume:
        """Read a case, check it (a label, finite intensities) and bring it to the canonical orientation."""
        ref = self._refs[case_id]
        vol = self.source.load(ref)
        if vol.label is None:
            raise DataError(f"case {case_id} has no label file; training and testing need labels")
        vol.image = self._finite(vol.image, f"case {case_id} ({ref.image})")
        return to_canonical(vol)

    def _finite(self, image: np.ndarray, where: str) -> np.ndarray:
        """``image`` when every value is finite; else refused, or NaN/inf replaced by ``data.nonfinite_fill``."""
        bad = ~np.isfinite(image)
        count = int(bad.sum())
        if count == 0:
            return image
        if self.nonfinite_fill is None:
            raise DataError(f"{where} holds {count} non-finite image value(s) (NaN or inf) "
                            f"of {image.size}; fix or drop the scan, or pass data.nonfinite_fill=<value> "
                            "(e.g. -1024 HU) to replace them")
        log.warning("%s: %d non-finite image value(s) replaced by data.nonfinite_fill=%g", where, count,
                    self.nonfinite_fill)
        return np.where(bad, np.float32(self.nonfinite_fill), image).astype(image.dtype, copy=False)

    def preflight(self) -> None:
        """Open and check every case of every split before the first training step.

        Each case goes through the one loading path (:meth:`_prepared`): readable, a label in
        ``0..num_classes-1`` (:func:`~segbench.data.volume.apply_label_map`), image and label of one
        shape and affine, finite intensities. A bad test case so stops the run before training, not
        after it. Cases already prepared by :meth:`setup` are not read again; with ``data.cache_dir``
        the preprocessed cases are cached, so a second run only reads the cache.
        """
        self._resolve_splits()
        for part in ("train", "val", "test"):
            todo = [c for c in self.splits[part] if c not in self._checked]
            for case_id in self._progress(todo, f"{part} (pre-flight)") if todo else ():
                self._prepared(case_id)

    # -- the one preprocessing path (cached when data.cache_dir is set) -------------------------------------
    def _prepare(self, case_id: str) -> Volume:
        """Load, resample to ``target_spacing``, intensities to [0, 1]."""
        return self._preprocess(self._load(case_id))

    def _preprocess(self, vol: Volume) -> Volume:
        """A loaded canonical case resampled to ``target_spacing`` with intensities in [0, 1]; ``original`` is
        the scan's own grid when the resampling changed it."""
        out = resample_volume(vol, self.target_spacing)
        original = None if out is vol else Grid(vol.shape, vol.spacing, vol.affine)
        return Volume(out.case_id, unit_image(out, self.window), out.label, out.spacing, out.affine, True,
                      out.spacing_known, original)

    def preprocess_scan(self, vol: Volume) -> Volume:
        """A new scan (HU, in its file's orientation, no label needed) through this data module's preprocessing,
        as a training case goes through it: the source's intensity normalisation (``source.normalize``),
        finite intensities, the canonical orientation, then :meth:`_preprocess` (segbench-predict)."""
        normalize = getattr(self.source, "normalize", None)
        if normalize is not None:
            vol = normalize(vol)
        vol.image = self._finite(vol.image, f"scan {vol.case_id}")
        return self._preprocess(to_canonical(vol))

    def model_input(self, vol: Volume) -> torch.Tensor:  # pragma: no cover - abstract
        """A preprocessed case as the network's input (2D: its slices at the model size; 3D: the whole case)."""
        raise NotImplementedError

    def preprocessing(self) -> dict[str, Any]:
        """What decides the grid and intensities a network sees (an ensemble's runs must agree on it)."""
        return {"window": self.window, "target_spacing": self.target_spacing,
                "intensities": getattr(self.source, "intensity_normalization", "HU window")}

    def _cache_params(self, **extra) -> dict[str, Any]:
        fill = {} if self.nonfinite_fill is None else {"nonfinite_fill": self.nonfinite_fill}
        return {"window": self.window, "target_spacing": self.target_spacing, **fill, **extra}

    def _prepared(self, case_id: str, original_label: bool = False) -> Volume:
        """A whole preprocessed case, from the cache when possible. ``original_label``: with its label on the scan's
        own grid too (``Volume.original.label``) when preprocessing resampled it (a test case: scored there under
        ``metrics.grid=original``); the case is read once for both."""
        loaded: dict[str, Volume] = {}

        def load() -> Volume:
            if "case" not in loaded:
                loaded["case"] = self._load(case_id)
            return loaded["case"]

        def build():
            vol = self._preprocess(load())
            grid = vol.original
            original = None if grid is None else {"shape": list(grid.shape), "spacing": list(grid.spacing),
                                                  "affine": np.asarray(grid.affine).tolist()}
            return ({"image": vol.image, "label": vol.label},
                    {"spacing": list(vol.spacing), "affine": np.asarray(vol.affine).tolist(),
                     "spacing_known": bool(vol.spacing_known), "original": original})

        def build_label():
            return {"label": load().label}, {}

        arrays, meta = self._cached(case_id, "volume", build)
        self._checked.add(case_id)
        grid = meta.get("original")
        original = None if grid is None else Grid(tuple(grid["shape"]), tuple(grid["spacing"]),
                                                  np.asarray(grid["affine"]))
        if original is not None and original_label:
            original.label = np.ascontiguousarray(self._cached(case_id, "label", build_label)[0]["label"], np.uint8)
        return Volume(case_id, np.ascontiguousarray(arrays["image"], np.float32),
                      np.ascontiguousarray(arrays["label"], np.uint8), tuple(meta["spacing"]),
                      np.asarray(meta["affine"]), normalized=True,
                      spacing_known=bool(meta.get("spacing_known", True)), original=original)

    def _cached(self, case_id: str, kind: str, build, **params):
        """``build()``'s ``(arrays, meta)``, through the preprocessing cache when there is one."""
        if self.cache is None:
            return build()
        return self.cache.get_or_build(self._refs[case_id], kind, self._cache_params(**params), build)

    def _progress(self, case_ids: list[str], part: str):
        from tqdm.auto import tqdm

        builds = self.cache.builds if self.cache is not None else 0
        yield from tqdm(case_ids, desc=f"{self.name}: preparing {part} cases", unit="case", leave=False,
                        disable=None)
        if self.cache is not None and self.cache.builds > builds:
            log.info("%s: preprocessed %d %s case(s) into %s", self.name, self.cache.builds - builds, part,
                     self.cache.root)

    # -- class-aware sampling (data.class_aware_sampling; segbench.data.sampling) ----------------------------------
    def class_aware_plan(self) -> ClassAwarePlan | None:
        """The training batches' class-aware plan (``None`` when off), from the class index built at setup."""
        if self.class_aware is None:
            return None
        return ClassAwarePlan(self.class_aware, self.class_index)

    def _log_class_index(self) -> None:
        if self.trainer is None or int(self.trainer.global_rank) == 0:
            log.info("%s: %s", self.name, self.class_index.describe())

    def class_aware_sampler(self, n: int) -> ClassAwareSampler:
        """The loader path's training sampler with class-aware sampling over ``n`` training items."""
        _, rank, world = _trainer_placement(self.trainer)
        seed = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
        return ClassAwareSampler(n, self.batch_size, n > self.batch_size, self.class_aware_plan(), seed, rank, world)

    def train_loader_options(self) -> dict[str, Any]:
        """The training loader's workers, pinning, prefetch and worker seeding for the attached trainer."""
        return loader_options(self.num_workers, self.pin_memory, self.prefetch_factor, self.trainer)

    def eval_pin_memory(self) -> bool:
        """Pinned validation batches on CUDA (``data.pin_memory``), loaded in the training process."""
        return self.train_loader_options()["pin_memory"]

    # -- the device path (data.pipeline; segbench.data.device) ---------------------------------------------------
    #: the device path's class for this module's samples (segbench.data.device.SlicePath / PatchPath)
    device_path_class: Any = None

    def pipeline_in_use(self) -> str:
        """``device`` or ``loader``: ``data.pipeline`` for the attached trainer's device (``auto``: device on CUDA)."""
        return resolve_pipeline(self.pipeline, training_device(self.trainer)[0])

    def device_path(self):
        """The device path on the attached trainer's device (made once per device and data module)."""
        device, rank, world = _trainer_placement(self.trainer)
        if self._device_path is None or self._device_path.device != device:
            seed = self.seed if self.seed is not None else int(os.environ.get("PL_GLOBAL_SEED", 0))
            self._device_path = self.device_path_class(self, device, rank, world, seed)
            if self._device_state is not None:
                self._device_path.load_state_dict(self._device_state)
        return self._device_path

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and MARK in batch:
            return self.device_path().before_transfer(batch)
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and MARK in batch:
            return self.device_path().after_transfer(batch)
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The device path's position in training (saved in checkpoints); nothing for the loader path."""
        if self._device_path is None or self._device_path._train is None:
            return {}
        return {"device_path": self._device_path.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = state_dict.get("device_path")
        if state is not None:
            self._device_state = dict(state)
            if self._device_path is not None:
                self._device_path.load_state_dict(self._device_state)

    def write_splits(self, path: Path) -> None:
        from ..files import atomic_write_text

        atomic_write_text(path, json.dumps(self.splits, indent=2))


class SegDataModule(CaseDataModule):
    """2D slice training on 3D cases from any :mod:`segbench.data.sources` source.

    Args:
        source: a source object (instantiated from ``data.source`` by Hydra).
        class_names: names of the classes, index = class id (background first).
        split: ``{train, val, test}`` counts or case-id lists.
        window: HU window ``[low, high]`` mapped to [0, 1].
        img_size: model input size (square) for 2D slices.
        batch_size: slices per batch (per process).
        num_workers: training loader workers per process; ``auto`` resolves from the trainer's device and the
            CPUs the process has (:mod:`segbench.data.loader`).
        pin_memory: pinned training batches; ``auto``: when training on CUDA.
        prefetch_factor: batches each loader worker prepares ahead.
        augment: ``{flip_prob, rotate_prob, rotate_range_deg}``; probabilities 0 disable.
        spatial_dims: 2 (axial slices); 3D data configs (``data=phantom3d``) use the patch module.
        name: the dataset's name (recorded in results).
        slices_with_foreground_only: train on slices that show at least one organ.
        cache_dir: where preprocessed cases are cached (:mod:`segbench.data.cache`); ``None`` = no cache.
        nonfinite_fill: ``None`` refuses a scan holding NaN / inf intensities (one line: case, count);
            a number replaces them by it (in the image's units, e.g. -1024 HU).
        target_spacing: ``[sz, sy, sx]`` mm to resample every case to before slicing (``null`` entries
            keep that axis; ``None`` = native spacing). Test cases are then scored on the resampled grid.
        pipeline: ``auto`` | ``device`` | ``loader``: where training batches are cut and augmented
            (:mod:`segbench.data.device`; ``auto``: on the device on CUDA, in the loader elsewhere).
        device_cache_gb: ``auto`` | GB: how much of the training device the device path may fill with data.
        class_aware_sampling: ``{fraction, classes}``: ``fraction`` of each training batch (0: off) are slices
            holding a class drawn by ``classes`` (``uniform``, ``rare`` or a list of class names / ids)
            (:mod:`segbench.data.sampling`).
        num_classes: number of classes including the background (``None``: ``len(class_names)``).
        precompute_loss_maps: the training loader computes the loss's target distance maps per sample.
        root: read by the source config through interpolation (``${data.root}``); accepted here so that the
            data config stays one flat group.
        phantom: the phantom's options, read by the source config through interpolation (as ``root``).
    """

    device_path_class = SlicePath

    def __init__(self, source: DataSource, class_names: Sequence[str], split: dict[str, Any],
                 window: Sequence[float] = (-125, 275), img_size: int = 224, batch_size: int = 24,
                 num_workers: int | str = "auto",
                 augment: dict[str, float] | None = None, spatial_dims: int = 2, num_classes: int | None = None,
                 name: str = "dataset", slices_with_foreground_only: bool = False,
                 root: str | None = None, phantom: dict | None = None, cache_dir: str | None = None,
                 target_spacing: Sequence[float | None] | None = None, precompute_loss_maps: bool = False,
                 pin_memory: bool | str = "auto", prefetch_factor: int = 4, nonfinite_fill: float | None = None,
                 pipeline: str = "auto", device_cache_gb: str | float = "auto",
                 class_aware_sampling: dict[str, Any] | None = None):
        super().__init__(source, class_names, split, window, num_classes, name, cache_dir, target_spacing,
                         precompute_loss_maps, num_workers, pin_memory, prefetch_factor, nonfinite_fill, pipeline,
                         device_cache_gb, class_aware_sampling)
        if int(img_size) < 16:
            raise ConfigError(f"data.img_size must be >= 16, got {img_size}")
        if int(batch_size) < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size}")
        if int(spatial_dims) != 2:
            raise ConfigError(f"data.spatial_dims={spatial_dims} needs a 3D data config (patches, sliding window): "
                              f"use data=phantom3d or data=abdomenct1k3d instead of data={name}")
        self.img_size = int(img_size)
        self.batch_size = int(batch_size)
        self.augment = dict(augment or {})
        self.slices_with_foreground_only = slices_with_foreground_only
        self._test_slices: dict[str, torch.Tensor] = {}   # case id -> its model-size slices (test_slices)

    # -- setup -----------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        self._resolve_splits()
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = SliceDataset(self._slices(self.splits["train"], self.slices_with_foreground_only),
                                          self._train_transform(), self.loss_maps)
            if self.class_aware is not None:
                self.class_index = SliceClassIndex(self.train_set.slices.labels, self.class_aware, self.class_names)
                self._log_class_index()
            if self.splits["val"]:
                self.val_case_ids = list(self.splits["val"])
                self.val_set = SliceDataset(self._slices(self.val_case_ids, False, "val"))
        if stage in (None, "test"):
            self._load_test_volumes()

    def _case_slices(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        """A case's axial slices at the model size (image, label), from the cache when possible."""
        def build():
            vol = self._prepare(case_id)
            return ({"image": resize_slices(vol.image, self.img_size, is_label=False),
                     "label": resize_slices(vol.label, self.img_size, is_label=True)}, {"spacing": list(vol.spacing)})

        arrays, _ = self._cached(case_id, "slices", build, img_size=self.img_size)
        self._checked.add(case_id)
        return arrays["image"], arrays["label"]

    def _slices(self, case_ids: list[str], foreground_only: bool, part: str = "train") -> SliceSet:
        images, labels, index = [], [], []
        for i, case_id in enumerate(self._progress(case_ids, part)):
            img, lab = self._case_slices(case_id)
            self.label_ids[case_id] = label_ids_of(lab)
            if foreground_only:
                keep = lab.reshape(len(lab), -1).max(1) > 0
                img, lab = img[keep], lab[keep]
            images.append(img)
            labels.append(lab)
            index.append(np.full(len(lab), i))
        return SliceSet(torch.from_numpy(np.concatenate(images))[:, None],
                        torch.from_numpy(np.concatenate(labels)),
                        torch.from_numpy(np.concatenate(index)))

    def _train_transform(self):
        return build_augmentation(self.augment, spatial_dims=2)

    def model_input(self, vol: Volume) -> torch.Tensor:
        """A preprocessed case's axial slices at the model size, ``(Z, 1, S, S)``."""
        return torch.from_numpy(resize_slices(unit_image(vol, self.window), self.img_size, is_label=False))[:, None]

    def preprocessing(self) -> dict[str, Any]:
        return {**super().preprocessing(), "spatial_dims": 2, "img_size": self.img_size}

    # -- loaders ---------------------------------------------------------------------------------------------
    def train_dataloader(self):
        if self.pipeline_in_use() == "device":
            return self.device_path().train_loader()
        if self.class_aware is not None:
            return DataLoader(self.train_set, batch_size=self.batch_size,
                              sampler=self.class_aware_sampler(len(self.train_set)),
                              drop_last=len(self.train_set) > self.batch_size, **self.train_loader_options())
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True,
                          drop_last=len(self.train_set) > self.batch_size, **self.train_loader_options())

    def val_dataloader(self):
        if self.val_set is None:
            return []
        if self.pipeline_in_use() == "device":
            return self.device_path().val_loader()
        return DataLoader(self.val_set, batch_size=self.batch_size * 2, shuffle=False, num_workers=0,
                          pin_memory=self.eval_pin_memory())

    def test_slices(self, i: int) -> torch.Tensor:
        """Test case ``i``'s axial slices at the model size, ``(Z, 1, S, S)``: resized when first asked for,
        kept for every later test pass."""
        vol = self.test_volumes[i]
        if vol.case_id not in self._test_slices:
            slices = resize_slices(unit_image(vol, self.window), self.img_size, is_label=False)
            self._test_slices[vol.case_id] = torch.from_numpy(slices)[:, None]
        return self._test_slices[vol.case_id]

    def test_dataloader(self) -> DataLoader:
        slices = self.test_slices
        if self.pipeline_in_use() == "device":  # every case resized now: the cache needs their size
            held = self.device_path().cache.place(self.scored_cache_part, f"{self.scored_split} cases' slices",
                                                  {"image": [slices(i) for i in range(len(self.test_volumes))]})
            slices = held["image"].__getitem__
        return DataLoader(VolumeDataset(self.test_volumes, slices), batch_size=1, collate_fn=first_item,
                          num_workers=0)
