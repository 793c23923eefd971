"""Deep supervision: any loss applied at every output scale of a network, with nnU-Net's weights.

A network with ``model.deep_supervision`` on (:mod:`segbench.models.deep_supervision`) returns, in training,
``(logits_0, logits_1, ..., logits_K)``: full resolution first, then its lower decoder scales. The loss is

    L = sum_k w_k L(logits_k, target_k),    w_k = 2^-k / sum_j 2^-j    (k = 0..K)

nnU-Net's weights (``nnUNetTrainer._build_loss``: ``1 / 2**i`` per decoder output, the lowest output 0, then
normalised to sum 1; segbench builds no head where nnU-Net's weight is 0, so the weights above are the same
numbers): 4/7, 2/7, 1/7 for the paper U-Net's three outputs. ``L`` is the configured loss, the same module at
every scale. Per kind of loss:

* ``target_k``: the full-resolution label map resampled to ``logits_k``'s size by nearest neighbour, each scale
  from the full-resolution map (:func:`downsample_labels`): ``F.interpolate(mode="nearest-exact")``, the
  resampling nnU-Net v2's ``DownsampleSegForDSTransform`` uses (and for a factor 2 the same voxels as nnU-Net
  v1's order-0 ``resize_segmentation``): output voxel ``i`` takes input voxel ``floor((i + 1/2) * n_in / n_out)``,
  the centre of its block, e.g. voxels 1, 3, 5, 7 of 8 at 1/2 and 2, 6 at 1/4. On the device, no host sync;
  labels are never averaged, and an ``ignore_index`` voxel stays one.
* distance-map losses (``boundary``, ``hausdorff_dt``, ``dpce``): each scale's maps are computed on the
  device from that scale's target, in that scale's voxels (the loss's ``spacing``, when set, is read as the
  voxel size of every scale's grid). Maps the loader precomputed (``data.precompute_loss_maps=true``) are
  full-resolution maps: they serve scale 0, and the lower scales compute theirs.
* losses that read the image (``level_set``): the image is averaged over each scale's voxel blocks
  (``F.interpolate(mode="area")``, :func:`downsample_image`).
* learnable parameters (``afw_dice``'s class weights ``log sigma_c^2``): one parameter set, shared by every
  scale, since the one loss module is called at each; its regulariser ``R(s)`` enters every scale's loss, and
  as the weights sum to 1 it counts once in ``L``. The optimiser sees the parameters as before (they are
  parameters of this module's ``loss``, a sub-module of the LightningModule).
* schedules (``boundary``'s alpha, ``hausdorff_dt``'s ``balance_dice``) run once per epoch, as without deep
  supervision; ``balance_dice`` balances the sums of every scale's terms.

Validation, testing and inference see the full-resolution logits only: called with one tensor, this loss is the
configured loss (``val/loss`` is the full-resolution loss). :meth:`log_values` adds each scale's own (unweighted)
loss of the last training step, ``ds/scale<k>`` (logged as ``loss/ds/scale<k>``), as device tensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import SegLoss
from .maps import TargetMap


def nnunet_weights(outputs: int) -> list[float]:
    """The weights of ``outputs`` outputs, full resolution first: ``2^-k`` normalised to sum 1."""
    if outputs < 1:
        raise ValueError(f"deep supervision needs at least one output, got {outputs}")
    raw = [0.5 ** k for k in range(outputs)]
    return [w / sum(raw) for w in raw]


def downsample_labels(target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """A ``[B, *spatial]`` label map at ``size`` by nearest neighbour (``nearest-exact``: block centres), on its
    device and in its dtype. Label ids are exact in float32 up to 2^24."""
    if tuple(target.shape[1:]) == tuple(size):
        return target
    resized = F.interpolate(target.unsqueeze(1).float(), size=tuple(size), mode="nearest-exact")
    return resized.squeeze(1).to(target.dtype)


def downsample_image(image: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """A ``[B, K, *spatial]`` image at ``size``, each voxel the mean of the voxels it covers (``area``)."""
    if tuple(image.shape[2:]) == tuple(size):
        return image
    return F.interpolate(image.float(), size=tuple(size), mode="area")


class DeepSupervisionLoss(SegLoss):
    """``sum_k w_k loss(logits_k, target_k)`` over a network's outputs (the module docstring has the rules).

    Args:
        loss: the configured loss (a :class:`SegLoss`; a plain module is wrapped by the registry already).
        outputs: how many outputs the network returns in training (1 + its heads).

    Called with a tuple / list of logits, full resolution first: the weighted sum. Called with one tensor
    (validation, test): ``loss`` of it. Everything else (``ignore_index``, ``needs_image``, the maps the loader
    may precompute, the epoch hooks, the logged values) is the wrapped loss's.
    """

    def __init__(self, loss: nn.Module, outputs: int):
        super().__init__()
        self.loss = loss
        self.weights = nnunet_weights(outputs)
        self._scale_values: list[torch.Tensor] | None = None

    @property
    def ignore_index(self) -> int | None:  # type: ignore[override]
        return getattr(self.loss, "ignore_index", None)

    @property
    def needs_image(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.loss, "needs_image", False))

    @property
    def needs_log_probs(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.loss, "needs_log_probs", False))

    def forward(self, logits: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor,
                maps: dict[str, torch.Tensor] | None = None, image: torch.Tensor | None = None) -> torch.Tensor:
        extra = {} if image is None else {"image": image}
        if torch.is_tensor(logits):  # the full-resolution output alone: validation, test
            return self.loss(logits, target, maps=maps, **extra)
        if len(logits) != len(self.weights):
            raise ValueError(f"deep supervision: the network returned {len(logits)} outputs, the loss weighs "
                             f"{len(self.weights)}")
        if target.dim() == logits[0].dim():  # [B, 1, *spatial]
            target = target[:, 0]
        total, values = None, []
        for k, (weight, output) in enumerate(zip(self.weights, logits)):
            size = output.shape[2:]
            scale_extra = extra if image is None else {"image": downsample_image(image, size)}
            value = self.loss(output, downsample_labels(target, size), maps=maps if k == 0 else None, **scale_extra)
            values.append(value.detach())
            total = weight * value if total is None else total + weight * value
        self._scale_values = values
        return total

    def on_train_epoch_start(self, epoch: int, max_epochs: int) -> None:
        self.loss.on_train_epoch_start(epoch, max_epochs)

    def log_values(self) -> dict[str, float | torch.Tensor]:
        values = dict(self.loss.log_values())
        for k, value in enumerate(self._scale_values or ()):
            values[f"ds/scale{k}"] = value
        return values

    def target_maps(self) -> list[TargetMap]:
        return self.loss.target_maps()

    def perfect_value(self, num_classes: int) -> float | None:
        return self.loss.perfect_value(num_classes)
