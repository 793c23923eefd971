"""Segmentation networks. Configs in ``configs/model/`` instantiate them with Hydra."""

from .unet import UNet

__all__ = ["UNet"]
