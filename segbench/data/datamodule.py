"""LightningDataModule: 3D cases -> HU window -> [0, 1] -> axial 2D slices at the model size.

Training and validation see axial slices resized to ``img_size`` (image with
anti-aliased bicubic interpolation, label nearest-neighbour). Testing sees whole
cases: the module predicts slice by slice, resizes the class probabilities back
to the native in-plane size, stacks them and scores the native-resolution
volume with the case's own voxel spacing.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError, DataError
from .volume import CaseRef, Volume


def window_hu(image: np.ndarray, window: Sequence[float]) -> np.ndarray:
    """Clip HU to ``window = (low, high)`` and scale to [0, 1]."""
    low, high = float(window[0]), float(window[1])
    return ((np.clip(image, low, high) - low) / (high - low)).astype(np.float32)


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


@dataclass
class SliceSet:
    """Axial slices of several cases, resized to the model size."""

    images: torch.Tensor   # (N, 1, S, S) float32 in [0, 1]
    labels: torch.Tensor   # (N, S, S) uint8
    case_index: torch.Tensor  # (N,) index into the split's case list


class SliceDataset(Dataset):
    """2D training / validation samples with optional MONAI augmentation."""

    def __init__(self, slices: SliceSet, transform=None):
        self.slices = slices
        self.transform = transform

    def __len__(self) -> int:
        return len(self.slices.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        sample = {"image": self.slices.images[i], "label": self.slices.labels[i][None].float()}
        if self.transform is not None:
            sample = self.transform(sample)
        return {"image": torch.as_tensor(sample["image"]).float(),
                "label": torch.as_tensor(sample["label"])[0].round().long(),
                "case_index": self.slices.case_index[i]}


class VolumeDataset(Dataset):
    """Whole test cases: model-size slices for prediction plus the native label and spacing."""

    def __init__(self, volumes: list[Volume], window: Sequence[float], img_size: int):
        self.volumes = volumes
        self.window = window
        self.img_size = img_size

    def __len__(self) -> int:
        return len(self.volumes)

    def __getitem__(self, i: int) -> dict[str, Any]:
        vol = self.volumes[i]
        slices = resize_slices(window_hu(vol.image, self.window), self.img_size, is_label=False)
        return {"case_id": vol.case_id, "image": torch.from_numpy(slices)[:, None],
                "label": torch.from_numpy(vol.label), "spacing": vol.spacing,
                "affine": vol.affine, "native_shape": vol.shape}


def _first(batch: list[dict[str, Any]]) -> dict[str, Any]:
    return batch[0]


def resolve_split(case_ids: list[str], split: dict[str, Any]) -> dict[str, list[str]]:
    """Turn ``{train: 12, val: 2, test: 6}`` (counts, taken in order) or explicit id lists into id lists."""
    out: dict[str, list[str]] = {}
    cursor = 0
    known = set(case_ids)
    for part in ("train", "val", "test"):
        spec = split.get(part, 0)
        if isinstance(spec, int):
            if spec < 0:
                raise ConfigError(f"data.split.{part} must be >= 0, got {spec}")
            out[part] = case_ids[cursor:cursor + spec]
            if len(out[part]) < spec:
                raise DataError(f"data.split asks for {sum(v for v in split.values() if isinstance(v, int))} "
                                f"cases but the dataset has {len(case_ids)}; lower the split counts")
            cursor += spec
        else:
            ids = [str(c).zfill(4) if str(c).isdigit() else str(c) for c in spec]
            missing = [c for c in ids if c not in known]
            if missing:
                raise DataError(f"data.split.{part} names case(s) {missing} that are not in the dataset "
                                f"(it has {case_ids[:5]}...)")
            out[part] = ids
    if not out["train"]:
        raise DataError("data.split.train is empty; give it at least one case")
    overlap = (set(out["train"]) & set(out["test"])) | (set(out["val"]) & set(out["test"]))
    if overlap:
        raise DataError(f"data.split: case(s) {sorted(overlap)} are both in test and train/val")
    return out


class SegDataModule(pl.LightningDataModule):
    """2D slice training on 3D cases from any :mod:`segbench.data.sources` source.

    Args:
        source: a source object (instantiated from ``data.source`` by Hydra).
        class_names: names of the classes, index = class id (background first).
        split: ``{train, val, test}`` counts or case-id lists.
        window: HU window ``[low, high]`` mapped to [0, 1].
        img_size: model input size (square) for 2D slices.
        batch_size, num_workers: loader settings (per process).
        augment: ``{flip_prob, rotate_prob, rotate_range_deg}``; probabilities 0 disable.
        spatial_dims: 2 (axial slices); 3D training arrives with the 3D path.
        name: the dataset's name (recorded in results).
        slices_with_foreground_only: train on slices that show at least one organ.
        root, phantom: read by the source config through interpolation (``${data.root}``);
            accepted here so that the data config stays one flat group.
    """

    def __init__(self, source, class_names: Sequence[str], split: dict[str, Any], window: Sequence[float] = (-125, 275),
                 img_size: int = 224, batch_size: int = 24, num_workers: int = 0,
                 augment: dict[str, float] | None = None, spatial_dims: int = 2, num_classes: int | None = None,
                 name: str = "dataset", slices_with_foreground_only: bool = False,
                 root: str | None = None, phantom: dict | None = None):
        super().__init__()
        self.source = source
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names) if num_classes is None else int(num_classes)
        if self.num_classes != len(self.class_names):
            raise ConfigError(f"data.num_classes={self.num_classes} but data.class_names has "
                              f"{len(self.class_names)} names; make them agree")
        if len(window) != 2 or not float(window[0]) < float(window[1]):
            raise ConfigError(f"data.window must be [low, high] with low < high, got {list(window)}")
        if int(img_size) < 16:
            raise ConfigError(f"data.img_size must be >= 16, got {img_size}")
        if int(batch_size) < 1:
            raise ConfigError(f"data.batch_size must be >= 1, got {batch_size}")
        if int(spatial_dims) != 2:
            raise ConfigError(f"data.spatial_dims={spatial_dims} is not supported by this data module (2 only)")
        self.split_spec = dict(split)
        self.window = [float(window[0]), float(window[1])]
        self.img_size = int(img_size)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.augment = dict(augment or {})
        self.name = name
        self.slices_with_foreground_only = slices_with_foreground_only
        self.splits: dict[str, list[str]] = {}
        self._refs: dict[str, CaseRef] = {}
        self.train_set = self.val_set = None
        self.test_volumes: list[Volume] = []
        self.val_case_ids: list[str] = []

    # -- setup -----------------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        self.source.prepare()

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            refs = self.source.cases()
            self._refs = {r.case_id: r for r in refs}
            self.splits = resolve_split([r.case_id for r in refs], self.split_spec)
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = SliceDataset(self._slices(self.splits["train"], self.slices_with_foreground_only),
                                          self._train_transform())
            if self.splits["val"]:
                self.val_case_ids = list(self.splits["val"])
                self.val_set = SliceDataset(self._slices(self.val_case_ids, False))
        if stage in (None, "test") and not self.test_volumes:
            if not self.splits["test"]:
                raise DataError("data.split.test is empty; give it at least one case to evaluate")
            self.test_volumes = [self._load(c) for c in self.splits["test"]]

    def _load(self, case_id: str) -> Volume:
        vol = self.source.load(self._refs[case_id])
        if vol.label is None:
            raise DataError(f"case {case_id} has no label file; training and testing need labels")
        return vol

    def _slices(self, case_ids: list[str], foreground_only: bool) -> SliceSet:
        images, labels, index = [], [], []
        for i, case_id in enumerate(case_ids):
            vol = self._load(case_id)
            img = resize_slices(window_hu(vol.image, self.window), self.img_size, is_label=False)
            lab = resize_slices(vol.label, self.img_size, is_label=True)
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
        from monai.transforms import Compose, RandFlipd, RandRotated

        flip = float(self.augment.get("flip_prob", 0.0))
        rot = float(self.augment.get("rotate_prob", 0.0))
        deg = float(self.augment.get("rotate_range_deg", 0.0))
        for key, value in (("flip_prob", flip), ("rotate_prob", rot)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"data.augment.{key} must be in [0, 1], got {value}")
        steps = []
        if flip > 0:
            steps += [RandFlipd(["image", "label"], prob=flip, spatial_axis=0),
                      RandFlipd(["image", "label"], prob=flip, spatial_axis=1)]
        if rot > 0 and deg > 0:
            steps.append(RandRotated(["image", "label"], range_x=math.radians(deg), prob=rot,
                                     mode=("bilinear", "nearest"), padding_mode="zeros"))
        return Compose(steps) if steps else None

    # -- loaders ---------------------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=len(self.train_set)
                          > self.batch_size, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self):
        if self.val_set is None:
            return []
        return DataLoader(self.val_set, batch_size=self.batch_size * 2, shuffle=False, num_workers=0)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(VolumeDataset(self.test_volumes, self.window, self.img_size), batch_size=1,
                          collate_fn=_first, num_workers=0)

    def write_splits(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.splits, indent=2))
        tmp.replace(path)
