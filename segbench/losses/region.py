"""Region-based losses: functions of the per-class soft TP / FP / FN."""

from __future__ import annotations

import torch

from .base import SegLoss, one_hot
from .registry import register_loss


def soft_counts(probs: torch.Tensor, onehot: torch.Tensor, batch: bool,
                squared: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Intersection ``sum s g`` and denominator ``sum s + sum g`` (or squares), ``[B, C]`` or ``[C]``."""
    dims = tuple(range(2, probs.dim()))
    if batch:
        dims = (0,) + dims
    intersection = (probs * onehot).sum(dims)
    if squared:
        denominator = (probs * probs).sum(dims) + (onehot * onehot).sum(dims)
    else:
        denominator = probs.sum(dims) + onehot.sum(dims)
    return intersection, denominator


@register_loss("dice")
class DiceLoss(SegLoss):
    """Soft Dice (Milletari et al. 2016, V-Net).

    ``L = 1 - mean_c (2 sum_i s_i^c g_i^c + smooth) / (sum_i s_i^c + sum_i g_i^c + smooth)``

    Args:
        include_background: score class 0 too.
        smooth: added to numerator and denominator (1e-5, as MONAI); it makes an
            absent class predicted absent a loss of 0 and keeps 0/0 away.
        batch: pool the sums over the batch ("batch Dice", nnU-Net) instead of
            per sample.
        squared: V-Net's squared denominator ``sum s^2 + sum g^2``.
    """

    def __init__(self, include_background: bool = True, smooth: float = 1e-5, batch: bool = False,
                 squared: bool = False):
        super().__init__()
        if smooth < 0:
            raise ValueError(f"smooth must be >= 0, got {smooth}")
        self.include_background = include_background
        self.smooth = smooth
        self.batch = batch
        self.squared = squared

    def per_class(self, probs: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
        """Per-class Dice loss ``[B, C']`` (or ``[C']`` with ``batch``)."""
        if not self.include_background:
            probs, onehot = probs[:, 1:], onehot[:, 1:]
        inter, denom = soft_counts(probs, onehot, self.batch, self.squared)
        return 1.0 - (2.0 * inter + self.smooth) / (denom + self.smooth).clamp_min(1e-8)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = self.prepare(logits, target)
        probs = logits.softmax(1)
        return self.per_class(probs, one_hot(target, logits.shape[1])).mean()
