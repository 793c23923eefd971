"""Compound losses: weighted sums of a distribution and a region term."""

from __future__ import annotations

import torch

from .base import SegLoss
from .distribution import CrossEntropyLoss
from .region import DiceLoss
from .registry import register_loss


@register_loss("ce_dice")
class CEDiceLoss(SegLoss):
    """``lambda_ce * CE + lambda_dice * Dice`` (nnU-Net's default is 1:1, Dice without background)."""

    def __init__(self, lambda_ce: float = 1.0, lambda_dice: float = 1.0, include_background: bool = False,
                 smooth: float = 1e-5, batch: bool = False, squared: bool = False):
        super().__init__()
        self.lambda_ce = lambda_ce
        self.lambda_dice = lambda_dice
        self.ce = CrossEntropyLoss()
        self.dice = DiceLoss(include_background=include_background, smooth=smooth, batch=batch, squared=squared)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.lambda_ce * self.ce(logits, target) + self.lambda_dice * self.dice(logits, target)
