"""LightningDataModule for 3D training: random patches in, whole cases out.

    segbench-train data=phantom3d model=unet3d
    segbench-train data=phantom3d model=unetr data.patch_size=[96,96,96] trainer=gpu

Each case goes through the same preprocessing as the 2D path (:class:`.datamodule.SegDataModule`):
load from the source -> optional resampling to ``target_spacing`` -> HU window to [0, 1]
(skipped for sources that deliver normalised images) -> optional on-disk cache (``cache_dir``).
Then:

* training: an epoch draws ``samples_per_volume`` patches of ``patch_size`` from every training
  case (padded first to at least the patch size). Each patch is centred on a foreground voxel
  with probability ``foreground_prob`` and on a background voxel otherwise (MONAI
  ``RandCropByPosNegLabeld``), then flipped along each axis with ``augment.flip_prob`` and
  rotated in the axial plane by up to ``augment.rotate_range_deg`` with ``augment.rotate_prob``;
* validation: ``validation: sliding_window`` scores whole cases (the LightningModule runs
  sliding-window inference on them) or ``validation: patches`` scores a fixed set of
  ``val_samples_per_volume`` patches per case (faster, noisier);
* testing: whole cases at model resolution, predicted by sliding window
  (:func:`segbench.models.inference.sliding_window_logits`) and scored on the preprocessed grid with the
  case's spacing, like the 2D path (the native grid unless ``target_spacing`` is set).

Arrays are ``(Z, Y, X)`` and so are ``patch_size`` and ``target_spacing``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError
from .datamodule import CaseDataModule, UntrackedCompose, build_augmentation, first_item, label_ids_of, with_loss_maps
from .device import PatchPath, padded
from .preprocess import check_target_shape, resize_volume
from .sampling import ForcedPatch, PatchClassIndex
from .sources import DataSource
from .volume import Grid, Volume


def _plain(x) -> torch.Tensor:
    """MONAI returns MetaTensors; the network gets plain tensors (no per-op metadata overhead)."""
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def crop_transform(patch_size: Sequence[int], foreground_prob: float):
    """Pad to at least ``patch_size``, then one patch centred on foreground with ``foreground_prob``."""
    from monai.transforms import RandCropByPosNegLabeld, SpatialPadd

    return UntrackedCompose([
        SpatialPadd(["image", "label"], spatial_size=patch_size, mode="constant"),
        RandCropByPosNegLabeld(["image", "label"], label_key="label", spatial_size=patch_size,
                               pos=foreground_prob, neg=1.0 - foreground_prob, num_samples=1),
    ])


class PatchDataset(Dataset):
    """``samples_per_volume`` random patches per case; item ``i`` comes from case ``i // samples_per_volume``."""

    def __init__(self, images: list[torch.Tensor], labels: list[torch.Tensor], samples_per_volume: int,
                 crop, augment=None, maps=None):
        self.images, self.labels = images, labels   # (1, Z, Y, X) float32 / uint8
        self.samples_per_volume = samples_per_volume
        self.crop = crop
        self.augment = augment
        self.maps = maps

    def __len__(self) -> int:
        return len(self.images) * self.samples_per_volume

    def __getitem__(self, i: int) -> dict[str, Any]:
        case = i // self.samples_per_volume
        sample = self.crop({"image": self.images[case], "label": self.labels[case]})[0]
        sample = {"image": sample["image"], "label": sample["label"].float()}
        if self.augment is not None:
            sample = self.augment(sample)
        return with_loss_maps({"image": _plain(sample["image"]).float(),
                               "label": _plain(sample["label"])[0].round().long(), "case_index": case}, self.maps)


class ClassAwarePatchDataset(PatchDataset):
    """:class:`PatchDataset` that also takes a forced patch as an item (class-aware sampling,
    :class:`~segbench.data.sampling.ForcedPatch`): the case padded as the crop pads it, the patch at the given
    start, then augmented as any patch."""

    def __init__(self, *args, patch_size: Sequence[int], **kwargs):
        super().__init__(*args, **kwargs)
        self.patch_size = [int(p) for p in patch_size]

    def __getitem__(self, i) -> dict[str, Any]:
        if not isinstance(i, ForcedPatch):
            return super().__getitem__(i)
        pad = self.crop.transforms[0]   # crop_transform's SpatialPadd
        sample = pad({"image": self.images[i.case], "label": self.labels[i.case]})
        window = (slice(None), *(slice(s, s + p) for s, p in zip(i.start, self.patch_size)))
        sample = {"image": _plain(sample["image"])[window], "label": _plain(sample["label"])[window].float()}
        if self.augment is not None:
            sample = self.augment(sample)
        return with_loss_maps({"image": _plain(sample["image"]).float(),
                               "label": _plain(sample["label"])[0].round().long(), "case_index": i.case}, self.maps)


class FixedPatches(Dataset):
    """Patches drawn once with a fixed seed (validation ``patches`` mode, overlays)."""

    def __init__(self, images: list[torch.Tensor], labels: list[torch.Tensor], per_case: int,
                 patch_size: Sequence[int], foreground_prob: float, seed: int = 0):
        crop = crop_transform(patch_size, foreground_prob)
        crop.set_random_state(seed=seed)
        out_img, out_lab, index = [], [], []
        for case, (image, label) in enumerate(zip(images, labels)):
            for _ in range(per_case):
                sample = crop({"image": image, "label": label})[0]
                out_img.append(_plain(sample["image"]).float())
                out_lab.append(_plain(sample["label"])[0].long())
                index.append(case)
        self.images = torch.stack(out_img)
        self.labels = torch.stack(out_lab)
        self.case_index = torch.tensor(index)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.images[i], "label": self.labels[i], "case_index": self.case_index[i]}


class WholeCases(Dataset):
    """Whole validation cases at model resolution (sliding-window validation)."""

    def __init__(self, images: list[torch.Tensor], labels: list[torch.Tensor]):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.images[i], "label": self.labels[i][0].long(), "case_index": i}


class TestCases(Dataset):
    """Whole test cases: ``image`` ``(1, 1, Z, Y, X)`` for sliding-window prediction + label (a NumPy array: it
    stays on the host, where it is scored), spacing, affine. ``images``: the cases' images where the device
    path holds them (default: from the volumes)."""

    def __init__(self, volumes: list[Volume], images: list[torch.Tensor] | None = None):
        self.volumes = volumes
        self.images = images

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, i: int) -> dict[str, Any]:
        vol = self.volumes[i]
        image = self.images[i] if self.images is not None else torch.from_numpy(vol.image)[None, None]
        return {"case_id": vol.case_id, "image": image, "label": vol.label, "spacing": vol.spacing,
                "spacing_known": vol.spacing_known, "affine": vol.affine, "native_shape": vol.shape,
                "original": vol.original}


class PatchDataModule(CaseDataModule):
    """3D patch training on cases from any :mod:`segbench.data.sources` source.

    Args:
        source: the dataset source, as :class:`~segbench.data.datamodule.SegDataModule`'s.
        class_names: names of the classes, index = class id (background first).
        split: ``{train, val, test}`` counts or case-id lists (and k-fold options).
        window: HU window ``[low, high]`` mapped to [0, 1].
        batch_size: patches per batch (per process).
        num_workers: training loader workers per process (``auto`` as in 2D).
        pin_memory: pinned training batches (``auto``: on CUDA).
        prefetch_factor: batches each loader worker prepares ahead.
        name: the dataset's name (recorded in results).
        cache_dir: where preprocessed cases are cached; ``None`` = no cache.
        target_spacing: ``[sz, sy, sx]`` mm to resample every case to (``null`` entries keep that axis).
        target_shape: ``[Z, Y, X]`` voxels every case is resized to after ``target_spacing`` (image cubic,
            label nearest; ``null``: keep each case's size). With ``patch_size`` equal to it the network
            trains on whole volumes (the AFW-Dice paper's 3D experiment: 256 x 256 x 128).
        patch_size: ``[Z, Y, X]`` voxels of a training patch (also the sliding-window size).
        samples_per_volume: patches drawn from each training case per epoch.
        foreground_prob: probability that a patch is centred on a labelled voxel.
        augment: ``{flip_prob, rotate_prob, rotate_range_deg}`` as in 2D (flips along all three
            axes, rotation in the axial plane); probabilities 0 disable.
        validation: ``sliding_window`` (whole cases) or ``patches``.
        val_samples_per_volume: patches per validation case in ``patches`` mode.
        spatial_dims: must be 3.
        img_size: not used in 3D (the network sees ``patch_size``); accepted so that 2D overlays such
            as ``debug=smoke`` compose with 3D data configs.
        num_classes: number of classes including the background (``None``: ``len(class_names)``).
        precompute_loss_maps: the training loader computes the loss's target distance maps per patch.
        nonfinite_fill: ``None`` refuses a scan holding NaN / inf intensities; a number replaces them.
        pipeline: ``auto`` | ``device`` | ``loader`` as in 2D (the device path cuts the patches on the device:
            :class:`~segbench.data.device.PatchPath`).
        device_cache_gb: ``auto`` | GB of the training device the device path may fill with data.
        class_aware_sampling: ``{fraction, classes}``: ``fraction`` of each training batch (0: off) are patches
            centred on a voxel of a class drawn by ``classes`` (``uniform``, ``rare`` or a list of class names /
            ids); the rest as ``foreground_prob`` says (:mod:`segbench.data.sampling`).
        root: read by the source config through interpolation.
        phantom: the phantom's options, read by the source config through interpolation.
    """

    spatial_dims = 3
    device_path_class = PatchPath

    def __init__(self, source: DataSource, class_names: Sequence[str], split: dict[str, Any],
                 window: Sequence[float] = (-125, 275), patch_size: Sequence[int] = (96, 96, 96),
                 samples_per_volume: int = 4, foreground_prob: float = 0.5, batch_size: int = 2,
                 num_workers: int | str = "auto", augment: dict[str, float] | None = None,
                 validation: str = "sliding_window", val_samples_per_volume: int = 4,
                 target_spacing: Sequence[float | None] | None = None, cache_dir: str | None = None,
                 spatial_dims: int = 3, num_classes: int | None = None, name: str = "dataset",
                 img_size: int | None = None, root: str | None = None, phantom: dict | None = None,
                 precompute_loss_maps: bool = False, pin_memory: bool | str = "auto", prefetch_factor: int = 4,
                 target_shape: Sequence[int] | None = None, nonfinite_fill: float | None = None,
                 pipeline: str = "auto", device_cache_gb: str | float = "auto",
                 class_aware_sampling: dict[str, Any] | None = None):
        if int(spatial_dims) != 3:
            raise ConfigError(f"data.spatial_dims={spatial_dims} but this is a 3D data config (patches); "
                              "use the 2D data config of the dataset (e.g. data=phantom) for 2D")
        super().__init__(source, class_names, split, window, num_classes, name, cache_dir, target_spacing,
                         precompute_loss_maps, num_workers, pin_memory, prefetch_factor, nonfinite_fill, pipeline,
                         device_cache_gb, class_aware_sampling)
        self.target_shape = check_target_shape(target_shape)
        self.patch_size = [int(p) for p in patch_size]
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ConfigError(f"data.patch_size must be [Z, Y, X] voxels, got {list(patch_size)}")
        if not 0.0 <= float(foreground_prob) <= 1.0:
            raise ConfigError(f"data.foreground_prob must be in [0, 1], got {foreground_prob}")
        if validation not in ("sliding_window", "patches"):
            raise ConfigError(f"data.validation={validation!r} is unknown; choose sliding_window or patches")
        for key, value in (("samples_per_volume", samples_per_volume), ("batch_size", batch_size),
                           ("val_samples_per_volume", val_samples_per_volume)):
            if int(value) < 1:
                raise ConfigError(f"data.{key} must be >= 1, got {value}")
        self.samples_per_volume = int(samples_per_volume)
        self.foreground_prob = float(foreground_prob)
        self.batch_size = int(batch_size)
        self.augment = dict(augment or {})
        self.validation = validation
        self.val_samples_per_volume = int(val_samples_per_volume)
        self._overlays: FixedPatches | None = None
        self._val_arrays: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None

    def _preprocess(self, vol: Volume) -> Volume:
        """The shared path (resample to ``target_spacing``, intensities to [0, 1]), then ``target_shape``."""
        out = super()._preprocess(vol)
        resized = resize_volume(out, self.target_shape)
        if resized is not out:
            resized.original = out.original or Grid(vol.shape, vol.spacing, vol.affine)
        return resized

    def model_input(self, vol: Volume) -> torch.Tensor:
        """A preprocessed case as the network sees it, ``(1, 1, Z, Y, X)`` (sliding windows when larger than one)."""
        return torch.from_numpy(np.ascontiguousarray(vol.image, np.float32))[None, None]

    def preprocessing(self) -> dict[str, Any]:
        shape = None if self.target_shape is None else list(self.target_shape)
        return {**super().preprocessing(), "spatial_dims": 3, "target_shape": shape}

    def _cache_params(self, **extra) -> dict[str, Any]:
        if self.target_shape is None:  # the cache keys of existing 3D caches stay valid
            return super()._cache_params(**extra)
        return super()._cache_params(target_shape=list(self.target_shape), **extra)

    # -- setup -----------------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        self._resolve_splits()
        if stage in (None, "fit") and self.train_set is None:
            images, labels = self._tensors(self.splits["train"])
            crop = crop_transform(self.patch_size, self.foreground_prob)
            if self.class_aware is None:
                self.train_set = PatchDataset(images, labels, self.samples_per_volume, crop, self._augment(),
                                              self.loss_maps)
            else:
                self.train_set = ClassAwarePatchDataset(images, labels, self.samples_per_volume, crop, self._augment(),
                                                        self.loss_maps, patch_size=self.patch_size)
                # where each class is, on the labels padded as the crop (and the device path) pads them
                _, labels_padded = padded([], labels, self.patch_size)
                self.class_index = PatchClassIndex([label[0] for label in labels_padded], self.patch_size,
                                                   self.class_aware, self.class_names)
                self._log_class_index()
            if self.splits["val"]:
                self.val_case_ids = list(self.splits["val"])
                self._val_arrays = self._tensors(self.val_case_ids)
                if self.validation == "patches":
                    self.val_set = FixedPatches(*self._val_arrays, self.val_samples_per_volume, self.patch_size,
                                                self.foreground_prob)
                else:
                    self.val_set = WholeCases(*self._val_arrays)
        if stage in (None, "test"):
            self._load_test_volumes()

    def _tensors(self, case_ids: list[str]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        images, labels = [], []
        for case_id in case_ids:
            vol = self._prepared(case_id)
            self.label_ids[case_id] = label_ids_of(vol.label)
            images.append(torch.from_numpy(vol.image)[None])
            labels.append(torch.from_numpy(vol.label)[None])
        return images, labels

    def _augment(self):
        return build_augmentation(self.augment, spatial_dims=3)

    def overlay_samples(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` fixed, foreground-centred validation patches ``(n, 1, *patch)``, ``(n, *patch)`` for overlays."""
        if self._overlays is None:
            per_case = max(1, math.ceil(n / max(len(self.val_case_ids), 1)))
            self._overlays = FixedPatches(*self._val_arrays, per_case, self.patch_size, 1.0, seed=1)
        return self._overlays.images[:n], self._overlays.labels[:n]

    # -- loaders ---------------------------------------------------------------------------------------------
    def train_dataloader(self):
        if self.pipeline_in_use() == "device":
            return self.device_path().train_loader()
        from monai.data import DataLoader as MonaiDataLoader  # re-seeds the random crops in every worker

        if self.class_aware is not None:
            return MonaiDataLoader(self.train_set, batch_size=self.batch_size,
                                   sampler=self.class_aware_sampler(len(self.train_set)),
                                   drop_last=len(self.train_set) > self.batch_size, **self.train_loader_options())
        return MonaiDataLoader(self.train_set, batch_size=self.batch_size, shuffle=True,
                               drop_last=len(self.train_set) > self.batch_size, **self.train_loader_options())

    def val_dataloader(self):
        if self.val_set is None:
            return []
        if self.pipeline_in_use() == "device":
            return self.device_path().val_loader()
        batch = 1 if self.validation == "sliding_window" else self.batch_size
        return DataLoader(self.val_set, batch_size=batch, shuffle=False, num_workers=0,
                          pin_memory=self.eval_pin_memory())

    def test_dataloader(self) -> DataLoader:
        images = None
        if self.pipeline_in_use() == "device":
            held = self.device_path().cache.place(
                self.scored_cache_part, f"{self.scored_split} cases",
                {"image": [torch.from_numpy(v.image)[None, None] for v in self.test_volumes]})
            images = held["image"]
        return DataLoader(TestCases(self.test_volumes, images), batch_size=1, collate_fn=first_item, num_workers=0)
