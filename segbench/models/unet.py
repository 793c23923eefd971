"""The plain U-Net of the AFW-Dice paper (Guo et al. 2024), 2D or 3D.

Encoder widths ``w, 2w, 4w, 8w, 16w`` (32-64-128-256-512 at ``width=32``),
decoder ``8w, 4w, 2w, w``; each block is ``2 x (conv3x3 stride 1 pad 1 + BN + ReLU)``,
down-sampling by 2x2 max-pool, up-sampling by bilinear (trilinear) interpolation
followed by a 1x1 convolution, skip connections by concatenation, and a 1x1
convolution to ``num_classes`` logits.

``deep_supervision`` (:mod:`segbench.models.deep_supervision`) adds 1x1 heads on the decoder
outputs below full resolution (``depth - 1`` decoder scales: ``true`` puts heads at 1/2 and 1/4
of the paper's 5-level network, as nnU-Net).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .deep_supervision import extra_heads, output_heads, supervised


def _layers(spatial_dims: int):
    if spatial_dims == 2:
        return nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, "bilinear"
    if spatial_dims == 3:
        return nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d, "trilinear"
    raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")


class ConvBlock(nn.Sequential):
    """``2 x (conv3x3 + BatchNorm + ReLU)``."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int = 2):
        conv, norm, _, _ = _layers(spatial_dims)
        super().__init__(
            conv(in_channels, out_channels, 3, padding=1, bias=False), norm(out_channels), nn.ReLU(inplace=True),
            conv(out_channels, out_channels, 3, padding=1, bias=False), norm(out_channels), nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """Upsample x2, 1x1 conv to halve the channels, concatenate the skip, ConvBlock."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int = 2):
        super().__init__()
        conv, _, _, self.mode = _layers(spatial_dims)
        self.reduce = conv(in_channels, out_channels, 1)
        self.block = ConvBlock(2 * out_channels, out_channels, spatial_dims)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[2:], mode=self.mode, align_corners=False)
        return self.block(torch.cat([skip, self.reduce(x)], dim=1))


class UNet(nn.Module):
    """Plain U-Net. ``width=32, depth=5`` is the paper's 32-64-128-256-512 configuration."""

    name = "unet"

    def __init__(self, in_channels: int = 1, num_classes: int = 9, width: int = 32, depth: int = 5,
                 spatial_dims: int = 2, deep_supervision: bool | int = False):
        super().__init__()
        if width < 1 or depth < 2:
            raise ValueError(f"model.width must be >= 1 and model.depth >= 2, got width={width}, depth={depth}")
        _, _, pool, _ = _layers(spatial_dims)
        widths = [width * 2**i for i in range(depth)]
        self.spatial_dims = spatial_dims
        self.encoders = nn.ModuleList(
            [ConvBlock(in_channels, widths[0], spatial_dims)]
            + [ConvBlock(widths[i - 1], widths[i], spatial_dims) for i in range(1, depth)])
        self.pool = pool(2)
        self.decoders = nn.ModuleList(
            [Up(widths[i], widths[i - 1], spatial_dims) for i in range(depth - 1, 0, -1)])
        self.head = _layers(spatial_dims)[0](widths[0], num_classes, 1)
        # decoder outputs at 1, 1/2, ..., 1/2^(depth-2) with widths[0], widths[1], ... channels
        self.deep_supervision = extra_heads(self.name, deep_supervision, depth - 1, "set model.depth >= 4")
        self.ds_heads = output_heads(widths[1:1 + self.deep_supervision], num_classes, spatial_dims) \
            if self.deep_supervision else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, encoder in enumerate(self.encoders):
            x = encoder(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        decoded = []
        for decoder in self.decoders:
            x = decoder(x, skips.pop())
            decoded.append(x)
        # the lower-resolution decoder outputs, highest resolution first, for the deep-supervision heads
        return supervised(self.head(x), decoded[-2::-1], self.ds_heads, self.training)
