"""The segbench loss library: every loss behind one registry.

>>> from segbench.losses import build_loss, available_losses
>>> loss = build_loss("ce_dice", include_background=False)

Layout follows the taxonomy (Ma, "Loss functions for medical image segmentation: a
taxonomy"): ``distribution.py`` (per-voxel terms), ``region.py`` (functions of the
per-class soft TP / FP / FN), ``compound.py`` (weighted sums), ``afw.py`` (the
AFW-Dice loss of Guo et al. 2024). ``base.py`` holds the shared quantities;
``deep_supervision.py`` applies any of them at a network's every output scale.

A loss of your own, without editing segbench: subclass :class:`SegLoss` and write
``compute(inputs)`` from the :class:`LossInputs` (``inputs.logits``, ``inputs.target``,
``inputs.probs``, ``inputs.onehot``, ``inputs.counts()``, ``inputs.target_map(...)``), then name
the class in a loss config, ``_target_: my_module.MyLoss`` (:func:`loss_from_config`).
"""

from . import afw, boundary, compound, distribution, region  # noqa: F401 - importing them registers their losses
from .base import LossInputs, ModuleLoss, SegLoss
from .deep_supervision import DeepSupervisionLoss
from .maps import TargetMap, TargetMapBuilder
from .registry import LOSSES, available_losses, build_loss, loss_from_config, loss_options, register_loss

__all__ = ["SegLoss", "LossInputs", "ModuleLoss", "DeepSupervisionLoss", "TargetMap", "TargetMapBuilder", "LOSSES",
           "available_losses", "build_loss", "loss_from_config", "loss_options", "register_loss"]
