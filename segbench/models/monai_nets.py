"""MONAI networks behind segbench's model interface.

Every wrapper takes ``in_channels, num_classes, width, spatial_dims`` (+ ``img_size`` where the
architecture constrains the input size, ``depth`` where the number of resolution levels is a
choice), checks the combination at construction (:mod:`segbench.models.common`) and returns
one logits tensor ``[B, num_classes, *spatial]`` from ``forward``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .common import check_divisible, check_no_depth, check_spatial_dims, check_width, input_size, require_einops
from .deep_supervision import FeatureTaps, extra_heads, output_heads, refuse, supervised


class UNetPlusPlus(nn.Module):
    """UNet++ (Zhou et al., DLMIA 2018): nested, densely connected skip pathways.

    MONAI ``BasicUNetPlusPlus``: five levels with features ``(w, w, 2w, 4w, 8w)`` and ``w`` at the
    top of the decoder (MONAI's default at ``width=32``), conv3x3 + InstanceNorm + LeakyReLU,
    transposed-convolution up-sampling. Any input size (MONAI pads the up-sampled maps to their
    skips). Only the final output ``X^{0,4}`` is used.

    ``deep_supervision`` (segbench's, nnU-Net's regime: :mod:`segbench.models.deep_supervision`) puts 1 x 1
    heads on the last node of each lower row, ``X^{1,3}`` (1/2, ``w`` channels), ``X^{2,2}`` (1/4, ``2w``) and
    ``X^{3,1}`` (1/8, ``4w``): the decoder outputs on the path to ``X^{0,4}``; ``true`` takes 1/2 and 1/4.
    UNet++'s own deep supervision (Zhou et al.: the full-resolution outputs ``X^{0,1..4}``, averaged; MONAI's
    ``deep_supervision=True``) is another scheme, not offered here.
    """

    name = "unetpp"

    def __init__(self, in_channels: int = 1, num_classes: int = 9, width: int = 32, spatial_dims: int = 2,
                 depth: int | None = None, norm: str = "instance", upsample: str = "deconv", dropout: float = 0.0,
                 deep_supervision: bool | int = False):
        super().__init__()
        from monai.networks.nets import BasicUNetPlusPlus

        spatial_dims = check_spatial_dims(self.name, spatial_dims, (2, 3))
        check_no_depth(self.name, depth)
        w = check_width(self.name, width)
        self.net = BasicUNetPlusPlus(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes,
                                     features=(w, w, 2 * w, 4 * w, 8 * w, w), deep_supervision=False,
                                     norm=norm, upsample=upsample, dropout=dropout)
        # decoder outputs below full resolution: X^{1,3}, X^{2,2}, X^{3,1}
        self.deep_supervision = extra_heads(self.name, deep_supervision, 4)
        self.ds_heads, self.taps = None, None
        if self.deep_supervision:
            nodes = [self.net.upcat_1_3, self.net.upcat_2_2, self.net.upcat_3_1][:self.deep_supervision]
            self.taps = FeatureTaps(nodes)
            self.ds_heads = output_heads([w, 2 * w, 4 * w][:self.deep_supervision], num_classes, spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.taps is None:
            return self.net(x)[0]
        logits = self.net(x)[0]
        return supervised(logits, self.taps.take(), self.ds_heads, self.training)


class AttentionUNet(nn.Module):
    """Attention U-Net (Oktay et al., MIDL 2018): additive attention gates on the skips.

    MONAI ``AttentionUnet`` with ``depth`` levels of ``w, 2w, 4w, ...`` channels (``width=32,
    depth=5``: 32-64-128-256-512, the paper U-Net's widths) and stride-2 convolutions; the input
    sides must be multiples of ``2**(depth-1)``.

    ``deep_supervision`` (:mod:`segbench.models.deep_supervision`): 1 x 1 heads on the outputs of the
    nested attention layers below full resolution (1/2, 1/4, ... with ``2w, 4w, ...`` channels: the
    decoder's outputs, ``depth - 1`` scales in all; ``true`` takes 1/2 and 1/4 at ``depth=5``).
    """

    name = "attention_unet"

    def __init__(self, in_channels: int = 1, num_classes: int = 9, width: int = 32, depth: int = 5,
                 spatial_dims: int = 2, img_size: int | Sequence[int] | None = None, dropout: float = 0.0,
                 deep_supervision: bool | int = False):
        super().__init__()
        from monai.networks.nets import AttentionUnet

        spatial_dims = check_spatial_dims(self.name, spatial_dims, (2, 3))
        w = check_width(self.name, width)
        if int(depth) < 2:
            raise ConfigError(f"model={self.name}: model.depth must be >= 2, got {depth}")
        check_divisible(self.name, input_size(self.name, img_size, spatial_dims), 2 ** (depth - 1),
                        f"its {depth - 1} stride-2 downsamplings")
        self.net = AttentionUnet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes,
                                 channels=[w * 2**i for i in range(depth)], strides=[2] * (depth - 1),
                                 dropout=dropout)
        self.deep_supervision = extra_heads(self.name, deep_supervision, depth - 1, "set model.depth >= 4")
        self.ds_heads, self.taps = None, None
        if self.deep_supervision:
            # MONAI nests one AttentionLayer per level (model[1] at full resolution, each next one inside the
            # previous one's submodule); each returns the decoder's output at its level
            layers = [self.net.model[1]]
            while isinstance(layers[-1].submodule, nn.Sequential):
                layers.append(layers[-1].submodule[1])
            self.taps = FeatureTaps(layers[1:1 + self.deep_supervision])
            self.ds_heads = output_heads([w * 2**i for i in range(1, 1 + self.deep_supervision)], num_classes,
                                         spatial_dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.taps is None:
            return self.net(x)
        logits = self.net(x)
        return supervised(logits, self.taps.take(), self.ds_heads, self.training)


class SegResNet(nn.Module):
    """SegResNet (Myronenko, BrainLes 2018): residual encoder, light decoder (no VAE branch).

    MONAI ``SegResNet`` with ``init_filters = width`` and ``blocks_down`` residual blocks per level
    (``[1, 2, 2, 4]``: four levels, channels ``w, 2w, 4w, 8w``), GroupNorm with ``num_groups``
    groups (``width`` must be a multiple of it); input sides multiples of ``2**(levels-1)``.
    ``depth``, when given, must equal ``len(blocks_down)``.
    """

    name = "segresnet"

    @staticmethod
    def width_multiple(options) -> int:
        """GroupNorm splits ``width`` channels into ``num_groups`` groups."""
        return int(options.get("num_groups", 8) or 8)

    def __init__(self, in_channels: int = 1, num_classes: int = 9, width: int = 16,
                 blocks_down: Sequence[int] = (1, 2, 2, 4), blocks_up: Sequence[int] | None = None,
                 num_groups: int = 8, spatial_dims: int = 2, img_size: int | Sequence[int] | None = None,
                 depth: int | None = None, dropout: float | None = None, deep_supervision: bool | int = False):
        super().__init__()
        from monai.networks.nets import SegResNet as MonaiSegResNet

        spatial_dims = check_spatial_dims(self.name, spatial_dims, (2, 3))
        refuse(self.name, deep_supervision)
        levels = len(blocks_down)
        if depth is not None and int(depth) != levels:
            raise ConfigError(f"model={self.name}: model.depth={depth} but model.blocks_down has {levels} levels; "
                              "set blocks_down (one entry per level) instead of depth")
        w = check_width(self.name, width, num_groups, f"GroupNorm with model.num_groups={num_groups}")
        blocks_up = tuple(blocks_up) if blocks_up is not None else (1,) * (levels - 1)
        if len(blocks_up) != levels - 1:
            raise ConfigError(f"model={self.name}: model.blocks_up needs {levels - 1} entries (one per "
                              f"up-sampling), got {list(blocks_up)}")
        check_divisible(self.name, input_size(self.name, img_size, spatial_dims), 2 ** (levels - 1),
                        f"its {levels - 1} stride-2 downsamplings")
        self.net = MonaiSegResNet(spatial_dims=spatial_dims, init_filters=w, in_channels=in_channels,
                                  out_channels=num_classes, dropout_prob=dropout, blocks_down=tuple(blocks_down),
                                  blocks_up=blocks_up, norm=("GROUP", {"num_groups": num_groups}))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SwinUNETR(nn.Module):
    """Swin UNETR (Hatamizadeh et al., BrainLes 2021): Swin Transformer encoder, CNN decoder.

    MONAI ``SwinUNETR`` with ``feature_size = width`` (a multiple of 12; 48 in the paper), patch
    size 2, window 7, stages ``depths`` / ``num_heads``; input sides multiples of 32, at least 64. Needs the
    ``einops`` package (MONAI's implementation imports it); checked at start-up.
    """

    name = "swin_unetr"

    @staticmethod
    def width_multiple(options) -> int:
        """MONAI's SwinUNETR needs ``feature_size`` to be a multiple of 12."""
        return 12

    def __init__(self, in_channels: int = 1, num_classes: int = 9, width: int = 48, spatial_dims: int = 3,
                 img_size: int | Sequence[int] | None = None, depth: int | None = None,
                 depths: Sequence[int] = (2, 2, 2, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 window_size: int = 7, dropout_path_rate: float = 0.0, use_v2: bool = False,
                 use_checkpoint: bool = False, deep_supervision: bool | int = False):
        super().__init__()
        spatial_dims = check_spatial_dims(self.name, spatial_dims, (2, 3))
        refuse(self.name, deep_supervision)
        check_no_depth(self.name, depth)
        w = check_width(self.name, width, 12, "MONAI's SwinUNETR feature_size")
        # 64: InstanceNorm at 1/32 needs more than one voxel per side in training
        check_divisible(self.name, input_size(self.name, img_size, spatial_dims), 32,
                        "its patch size 2 and four patch mergings (2**5)", minimum=64)
        require_einops(self.name)
        from monai.networks.nets import SwinUNETR as MonaiSwinUNETR

        self.net = MonaiSwinUNETR(in_channels=in_channels, out_channels=num_classes, feature_size=w,
                                  spatial_dims=spatial_dims, depths=tuple(depths), num_heads=tuple(num_heads),
                                  window_size=window_size, dropout_path_rate=dropout_path_rate, use_v2=use_v2,
                                  use_checkpoint=use_checkpoint)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
