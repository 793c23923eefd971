"""``model=unet3d``: the paper's plain U-Net with 3D convolutions, 3D only.

Segbench's :class:`~segbench.models.unet.UNet` (``2 x (conv3x3x3 + BN + ReLU)`` blocks, max-pool
down, trilinear up + 1x1 conv, concatenated skips) at the 3D U-Net size of Cicek et al.
(MICCAI 2016): four levels of 32-64-128-256 channels (``width=32, depth=4``). Chosen over MONAI's
``BasicUNet`` so that 2D and 3D results compare the same building blocks. ``model=unet`` with
3D data is the paper's five-level U-Net in 3D.
"""

from __future__ import annotations

from .common import check_spatial_dims
from .unet import UNet


class UNet3D(UNet):
    name = "unet3d"

    def __init__(self, in_channels: int = 1, num_classes: int = 9, width: int = 32, depth: int = 4,
                 spatial_dims: int = 3, deep_supervision: bool | int = False):
        check_spatial_dims(self.name, spatial_dims, (3,))
        super().__init__(in_channels=in_channels, num_classes=num_classes, width=width, depth=depth, spatial_dims=3,
                         deep_supervision=deep_supervision)
