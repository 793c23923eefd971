"""Shared machinery of every segbench loss.

Every loss is an ``nn.Module`` called as ``loss(logits, target)``:

* ``logits``: ``[B, C, *spatial]`` raw network outputs (2D or 3D);
* ``target``: integer label map ``[B, *spatial]`` (``[B, 1, *spatial]`` accepted).

Losses may own learnable parameters (they are sub-modules of the
LightningModule, so the optimiser sees them) and may react to the training
schedule through :meth:`SegLoss.on_train_epoch_start`. Scalars returned by
:meth:`SegLoss.log_values` are logged under ``loss/<name>`` every step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def normalize_target(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Return ``target`` as a long tensor ``[B, *spatial]``, checking shape and label range."""
    if logits.dim() < 3:
        raise ValueError(f"logits must be [B, C, *spatial], got shape {tuple(logits.shape)}")
    if target.dim() == logits.dim() and target.shape[1] == 1:
        target = target[:, 0]
    if target.shape != logits.shape[:1] + logits.shape[2:]:
        raise ValueError(
            f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}; "
            "expected an integer label map [B, *spatial] or [B, 1, *spatial]")
    if target.is_floating_point():
        target = target.round()
    return target.long()


def check_label_range(target: torch.Tensor, num_classes: int, ignore_index: int | None = None) -> None:
    """Raise ValueError when a label id is outside ``[0, num_classes)`` (``ignore_index`` excepted)."""
    valid = target if ignore_index is None else target[target != ignore_index]
    if valid.numel() == 0:
        return
    lo, hi = int(valid.min()), int(valid.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"target holds label id {hi if hi >= num_classes else lo} but the logits have {num_classes} classes "
            f"(valid ids 0..{num_classes - 1}); check data.num_classes / the dataset's label map")


def one_hot(target: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[B, *spatial]`` long -> ``[B, C, *spatial]`` one-hot in ``dtype``."""
    return F.one_hot(target.clamp_min(0), num_classes).movedim(-1, 1).to(dtype)


class SegLoss(nn.Module):
    """Base class: validates the inputs and offers the training-loop hooks."""

    registered_name: str = ""

    def on_train_epoch_start(self, epoch: int, max_epochs: int) -> None:
        """Called by the training loop before every epoch (schedules live here)."""

    def log_values(self) -> dict[str, float]:
        """Scalars worth logging (learnable weights, schedule values)."""
        return {}

    def prepare(self, logits: torch.Tensor, target: torch.Tensor,
                ignore_index: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 logits (softmax in half precision is unsafe) and a checked long target."""
        target = normalize_target(logits, target)
        check_label_range(target, logits.shape[1], ignore_index)
        return logits.float(), target
