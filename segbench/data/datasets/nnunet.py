"""Any nnU-Net raw dataset (``dataset.json`` + ``imagesTr/`` + ``labelsTr/``), v1 or v2 format.

Layout::

    <root>/dataset.json
    <root>/imagesTr/<case>_0000.nii.gz   (one file per channel: _0000, _0001, ...)
    <root>/labelsTr/<case>.nii.gz

Class names come from ``dataset.json``: v1 writes ``"labels": {"0": "background", "1": "liver"}``
(id -> name), v2 writes ``"labels": {"background": 0, "liver": 1}`` (name -> id); both must
number the classes 0..K-1. v2 region labels (a name mapped to a list of ids) are refused.

Channels: segbench trains single-channel 2D models, so only the first channel (``_0000``) is
read. Its name (v1 ``"modality"``, v2 ``"channel_names"``) decides the intensity
normalisation: ``CT`` -> the HU window ``data.window`` (as every CT dataset in segbench);
anything else (MRI, T2, ADC, noNorm, ...) -> per-case percentile normalisation: clip to the
case's [0.5, 99.5] percentiles (``data.source.percentiles``) and scale to [0, 1]. (nnU-Net
itself z-scores non-CT channels; a [0, 1] range keeps every segbench dataset on one scale.)
Only NIfTI files are read (v2 ``"file_ending"`` ``.nii.gz`` or ``.nii``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...errors import DataError
from ...files import natural_key
from ..preprocess import normalize_percentile
from ..volume import CaseRef, Volume, load_nifti_case
from .common import check_label_values, require_root

log = logging.getLogger("segbench.data")

LAYOUT = "dataset.json + imagesTr/<case>_0000.nii.gz + labelsTr/<case>.nii.gz"


def read_dataset_json(root: str | Path) -> dict[str, Any]:
    root = Path(root)
    require_root(root, "nnU-Net dataset", LAYOUT)
    path = root / "dataset.json"
    if not path.is_file():
        raise DataError(f"{path} not found; data.root must be an nnU-Net raw dataset folder ({LAYOUT})")
    try:
        meta = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise DataError(f"cannot read {path} ({type(exc).__name__}: {exc}); fix the JSON") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("labels"), dict) or not meta["labels"]:
        raise DataError(f"{path} has no \"labels\" mapping; nnU-Net's dataset.json must name its classes")
    return meta


def dataset_labels(meta: dict[str, Any], path: Path | str = "dataset.json") -> list[str]:
    """Class names by id from a v1 (``{"0": "background"}``) or v2 (``{"background": 0}``) labels mapping."""
    labels = meta["labels"]
    if all(str(k).strip().isdigit() for k in labels):  # v1: id -> name
        by_id = {int(k): str(v) for k, v in labels.items()}
    else:  # v2: name -> id
        by_id = {}
        for name, value in labels.items():
            if isinstance(value, (list, tuple)):
                raise DataError(f"{path}: label {name!r} is a region {value} (nnU-Net v2 region-based training); "
                                "segbench needs one id per class")
            try:
                by_id[int(value)] = str(name)
            except (TypeError, ValueError):
                raise DataError(f"{path}: label {name!r} has id {value!r}; expected an integer") from None
    if sorted(by_id) != list(range(len(by_id))):
        raise DataError(f"{path}: label ids {sorted(by_id)} are not 0..{len(by_id) - 1}; nnU-Net numbers classes "
                        "consecutively from 0 (background)")
    return [by_id[i] for i in range(len(by_id))]


def nnunet_class_names(root: str) -> list[str]:
    """Class names of the nnU-Net dataset at ``root`` (the ``${nnunet_class_names:...}`` config resolver)."""
    return dataset_labels(read_dataset_json(root), Path(root) / "dataset.json")


def first_channel_name(meta: dict[str, Any]) -> str:
    channels = meta.get("channel_names") or meta.get("modality") or {}
    name = channels.get("0", channels.get(0)) if isinstance(channels, dict) else None
    return str(name) if name is not None else "unknown"


class NnUNetSource:
    """An nnU-Net raw dataset (see the module docstring).

    Args:
        root: the dataset folder (``Dataset001_Xxx`` / ``Task01_Xxx``) holding ``dataset.json``.
        percentiles: non-CT normalisation: clip to these case percentiles and scale to [0, 1].
    """

    def __init__(self, root: str | Path, percentiles: Sequence[float] = (0.5, 99.5)):
        self.root = Path(root)
        self.percentiles = tuple(float(p) for p in percentiles)

    def prepare(self) -> None:
        read_dataset_json(self.root)

    def _meta(self) -> dict[str, Any]:
        meta = read_dataset_json(self.root)
        ending = meta.get("file_ending", ".nii.gz")
        if ending not in (".nii.gz", ".nii"):
            raise DataError(f"{self.root / 'dataset.json'}: file_ending {ending!r} is not supported; segbench reads "
                            "NIfTI (.nii.gz / .nii) only, convert the images first")
        return meta

    @property
    def class_names(self) -> list[str]:
        return dataset_labels(self._meta(), self.root / "dataset.json")

    @property
    def channel(self) -> str:
        return first_channel_name(self._meta())

    def cases(self) -> list[CaseRef]:
        meta = self._meta()
        ending = meta.get("file_ending", ".nii.gz")
        images, labels = self.root / "imagesTr", self.root / "labelsTr"
        if not images.is_dir():
            raise DataError(f"{images} not found; an nnU-Net raw dataset keeps its training images there ({LAYOUT})")
        refs = []
        for path in sorted(images.glob(f"*_0000{ending}"), key=lambda p: natural_key(p.name)):
            case = path.name[: -len(f"_0000{ending}")]
            label = labels / f"{case}{ending}"
            if not label.is_file():
                raise DataError(f"{label} not found; every imagesTr case needs its labelsTr file")
            refs.append(CaseRef(case, path, label))
        if not refs:
            raise DataError(f"no *_0000{ending} files in {images} ({LAYOUT})")
        expected = meta.get("numTraining")
        if expected is not None and int(expected) != len(refs):
            log.warning("%s says numTraining=%s but imagesTr holds %d cases; using the files",
                        self.root / "dataset.json", expected, len(refs))
        return refs

    def load(self, ref: CaseRef) -> Volume:
        names = self.class_names
        vol = load_nifti_case(ref, 256)
        check_label_values(vol.label, range(len(names)), ref.label,
                           f"the ids 0..{len(names) - 1} named in dataset.json")
        return self.normalize(vol)

    @property
    def intensity_normalization(self) -> str:
        """How a scan's intensities reach [0, 1]: the HU window for CT, the case's percentiles otherwise."""
        if self.channel.strip().upper() == "CT":
            return "HU window"
        return f"case percentiles {list(self.percentiles)}"

    def normalize(self, vol: Volume) -> Volume:
        """A non-CT scan clipped to its percentiles and scaled to [0, 1] (``normalized``); CT is left in HU."""
        if self.channel.strip().upper() != "CT":
            vol.image = normalize_percentile(vol.image, *self.percentiles)
            vol.normalized = True
        return vol
