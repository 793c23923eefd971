"""The segbench loss library: every loss behind one registry.

>>> from segbench.losses import build_loss, available_losses
>>> loss = build_loss("ce_dice", include_background=False)

Layout follows the taxonomy (Ma, "Loss functions for medical image segmentation: a
taxonomy"): ``distribution.py`` (per-voxel terms), ``region.py`` (functions of the
per-class soft TP / FP / FN), ``compound.py`` (weighted sums), ``afw.py`` (the
AFW-Dice loss of Guo et al. 2024). ``base.py`` holds the shared quantities.
"""

from . import afw, compound, distribution, region  # noqa: F401  (registration)
from . import boundary  # noqa: F401
from .base import LossInputs, SegLoss
from .maps import TargetMap, TargetMapBuilder
from .registry import LOSSES, available_losses, build_loss, loss_options, register_loss

__all__ = ["SegLoss", "LossInputs", "TargetMap", "TargetMapBuilder", "LOSSES", "available_losses", "build_loss",
           "loss_options", "register_loss"]
