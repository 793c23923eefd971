"""The segbench loss library: every loss behind one registry.

>>> from segbench.losses import build_loss, available_losses
>>> loss = build_loss("ce_dice", include_background=False)
"""

from . import compound, distribution, region  # noqa: F401  (registration)
from .base import SegLoss
from .registry import LOSSES, available_losses, build_loss, loss_options, register_loss

__all__ = ["SegLoss", "LOSSES", "available_losses", "build_loss", "loss_options", "register_loss"]
