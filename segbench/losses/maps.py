"""Distance maps that depend on the target alone: computed in the loss step, or by the data loader.

The boundary loss's signed map ``phi_G``, the ground-truth half of the HD-DT loss's
weights and the distance-penalised CE's penalty are functions of the label map only.
A loss lists the ones it uses in :meth:`SegLoss.target_maps` as :class:`TargetMap`
specs and reads them through :meth:`LossInputs.target_map`, which takes the map
from ``loss(logits, target, maps=...)`` when the caller passes it and computes it
on the logits' device otherwise.

With ``data.precompute_loss_maps=true`` the training loader's workers compute
them (Kervadec et al.'s set-up: distance maps in the data pipeline, after
augmentation and cropping, so they describe exactly the target the loss sees):
:meth:`SegLoss.map_builder` gives a picklable :class:`TargetMapBuilder` that the
datasets call on each sample's label, and the batch carries them under
``"maps"``, keyed by :attr:`TargetMap.key`. Both paths run the same function on
the same label, so the values are the same (tested). With ``data.pipeline=device``
the maps of a whole augmented batch are computed on the training device
(:meth:`TargetMapBuilder.batch`: the torch EDT kernels on CUDA).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..ops.edt import distance_transform_edt, signed_distance, unsigned_distance

KINDS = ("signed", "unsigned", "penalty")


@dataclass(frozen=True)
class TargetMap:
    """One target-only map.

    Attributes:
        kind: ``signed`` (:func:`~segbench.ops.edt.signed_distance` per class, the boundary
            loss's ``phi_G``), ``unsigned`` (:func:`~segbench.ops.edt.unsigned_distance`
            per class, HD-DT's ``d_p``) or ``penalty`` (the distance-penalised CE's
            ``Phi``, one channel: see :func:`penalty_map`).
        include_background: ``signed`` / ``unsigned``: classes ``0..C-1`` (true) or
            ``1..C-1``; ``penalty`` always uses every class.
        spacing: voxel size per spatial axis (``None``: distances in voxels).
    """

    kind: str
    include_background: bool = False
    spacing: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"TargetMap kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def key(self) -> str:
        """Name of the map in a batch's ``maps`` dict, e.g. ``signed[1:]@voxel``."""
        classes = "" if self.kind == "penalty" else ("[0:]" if self.include_background else "[1:]")
        unit = "voxel" if self.spacing is None else "x".join(f"{s:g}" for s in self.spacing)
        return f"{self.kind}{classes}@{unit}"

    def shape(self, target_shape: Sequence[int], num_classes: int) -> tuple[int, ...]:
        """Shape of the map of a ``[B, *spatial]`` target."""
        batch, *spatial = target_shape
        if self.kind == "penalty":
            return (batch, *spatial)
        return (batch, num_classes - (0 if self.include_background else 1), *spatial)

    def compute(self, target: torch.Tensor, num_classes: int, valid: torch.Tensor | None = None) -> torch.Tensor:
        """The float32 map of a ``[B, *spatial]`` long target (ignored voxels: ``valid`` false,
        target 0), on the target's device."""
        nd = target.dim() - 1
        spacing_for(self.spacing, nd)
        if self.kind == "penalty":
            return penalty_map(target, num_classes, self.spacing)
        first = 0 if self.include_background else 1
        classes = torch.arange(first, num_classes, device=target.device).view(1, -1, *([1] * nd))
        masks = target.unsqueeze(1) == classes
        if valid is not None:
            masks &= valid.unsqueeze(1)
        transform = signed_distance if self.kind == "signed" else unsigned_distance
        return transform(masks, self.spacing, spatial_dims=nd)


def spacing_for(spacing: tuple[float, ...] | None, nd: int) -> tuple[float, ...] | None:
    """A loss's ``spacing`` option, checked against the ``nd`` spatial dims of its inputs."""
    if spacing is not None and len(spacing) != nd:
        raise ValueError(f"spacing has {len(spacing)} entries but the inputs have {nd} spatial dims")
    return spacing


def penalty_map(target: torch.Tensor, num_classes: int, spacing: tuple[float, ...] | None) -> torch.Tensor:
    """Caliva et al.'s ``Phi``, ``[B, *spatial]`` (see :class:`~segbench.losses.boundary.DistancePenalizedCELoss`):
    ``(M_y - d) / (M_y - m_y)`` with ``d`` the distance of a voxel to the nearest voxel of another
    class, ``M_y`` / ``m_y`` its largest / smallest value in the voxel's class (``m = 1`` voxel on
    an isotropic grid: SegLoss's ``(max - edt) / max(max - edt)``); 1 where a class is all boundary
    (``M = m``), 0 where the class has no boundary."""
    nd = target.dim() - 1
    classes = torch.arange(num_classes, device=target.device).view(1, -1, *([1] * nd))
    masks = target.unsqueeze(1) == classes                   # [B, C, *spatial]
    flat = masks.flatten(2)
    has_boundary = flat.any(2) & ~flat.all(2)
    depth = torch.zeros(masks.shape, dtype=torch.float32, device=masks.device)
    sel = has_boundary.nonzero(as_tuple=True)
    if sel[0].numel() > 0:
        depth[sel] = distance_transform_edt(masks[sel], spacing, spatial_dims=nd, dtype=torch.float32)
    deepest = depth.flatten(2).amax(2)                       # [B, C]; 0: no boundary / absent
    shallowest = torch.where(flat, depth.flatten(2), torch.full_like(depth.flatten(2), math.inf)).amin(2)
    d = depth.gather(1, target.unsqueeze(1)).squeeze(1)
    m_max = deepest.gather(1, target.flatten(1)).view_as(d)
    m_min = shallowest.gather(1, target.flatten(1)).view_as(d)
    span = m_max - m_min
    phi = torch.where(span > 0, (m_max - d) / span.clamp_min(1e-12), torch.ones_like(d))
    return torch.where(m_max > 0, phi, torch.zeros_like(d))


@dataclass(frozen=True)
class TargetMapBuilder:
    """The maps of one loss for one sample, as the data pipeline computes them (picklable).

    ``builder(label)`` takes a ``[*spatial]`` integer label map and returns
    ``{key: map without the batch axis}``; the loader's collate stacks them.
    """

    maps: tuple[TargetMap, ...]
    num_classes: int
    ignore_index: int | None = None

    def __call__(self, label: torch.Tensor) -> dict[str, torch.Tensor]:
        target = label.long().unsqueeze(0)
        valid = None
        if self.ignore_index is not None:
            valid = target != self.ignore_index
            target = torch.where(valid, target, torch.zeros_like(target))
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= self.num_classes):
            raise ValueError(f"label ids must be in [0, {self.num_classes - 1}], got "
                             f"[{int(target.min())}, {int(target.max())}]; check data.num_classes")
        return {spec.key: spec.compute(target, self.num_classes, valid)[0] for spec in self.maps}

    def batch(self, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """The maps of a ``[B, *spatial]`` batch of label maps, on its device (the device data path:
        :mod:`segbench.data.device`), ``{key: [B, ...]}``: the values :meth:`__call__` gives sample by sample.
        The label ids are not checked here (that reads the batch back to the host): the data module checked
        every case's ids where it loaded them."""
        target = target.long()
        valid = None
        if self.ignore_index is not None:
            valid = target != self.ignore_index
            target = torch.where(valid, target, torch.zeros_like(target))
        return {spec.key: spec.compute(target, self.num_classes, valid) for spec in self.maps}
