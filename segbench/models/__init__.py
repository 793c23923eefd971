"""Segmentation networks. Configs in ``configs/model/`` instantiate them with Hydra.

``MODELS`` maps each ``model=<name>`` choice to its class; every class takes
``in_channels, num_classes, width, spatial_dims`` and returns logits ``[B, C, *spatial]``.
Unsupported combinations (2D-only model on 3D data, an input size the architecture cannot
take) raise :class:`segbench.errors.ConfigError` when the network is built.
"""

from __future__ import annotations

from .monai_nets import AttentionUNet, SegResNet, SwinUNETR, UNetPlusPlus
from .transunet import TransUNet
from .unet import UNet
from .unet3d import UNet3D
from .unetr import UNETR
from .unetr_pp import UNETRPP

#: ``model=<name>`` -> network class (the name of ``configs/model/<name>.yaml``)
MODELS = {"unet": UNet, "unet3d": UNet3D, "unetpp": UNetPlusPlus, "attention_unet": AttentionUNet,
          "transunet": TransUNet, "unetr": UNETR, "unetr_pp": UNETRPP, "swin_unetr": SwinUNETR,
          "segresnet": SegResNet}


def available_models() -> list[str]:
    return sorted(MODELS)


__all__ = ["MODELS", "available_models", "UNet", "UNet3D", "UNetPlusPlus", "AttentionUNet", "TransUNet", "UNETR",
           "UNETRPP", "SwinUNETR", "SegResNet"]
