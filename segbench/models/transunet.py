"""TransUNet (Chen et al. 2021, arXiv:2102.04306), the R50-ViT-B/16 hybrid: 2D only.

Layout of the authors' code (``vit_seg_modeling.py``, ``vit_seg_modeling_resnet_skip.py``):

* CNN encoder (ResNet-50 v2 style, weight-standardised convolutions + GroupNorm):
  root ``conv7x7 stride 2`` (``width`` channels, 1/2) -> max-pool (1/4) -> three stages of
  bottleneck units (``encoder_blocks = [3, 4, 9]``) with ``4w, 8w, 16w`` output channels at
  1/4, 1/8, 1/16 (``w = width = 64`` in the paper);
* ViT over the 1/16 feature map, one token per position (hybrid patch size 1), learnable
  position embeddings, ``num_layers`` pre-norm blocks (paper: ViT-B, 12 layers, 12 heads,
  hidden 768, MLP 3072, dropout 0.1);
* cascaded upsampler: tokens -> map -> ``conv3x3`` to ``8w`` channels, then four blocks of
  (bilinear x2, concatenate the CNN skip at 1/8, 1/4, 1/2 / none, 2 x conv3x3 + BN + ReLU) with
  ``decoder_channels`` (paper: 256, 128, 64, 16), and a ``conv3x3`` segmentation head.

Differences from the authors' code, all deliberate: the input is used as is (they repeat a
grey image to 3 channels for ImageNet weights); the max-pool pads by 1 so sizes halve exactly
(they pool without padding and zero-pad the skip back); GroupNorm uses ``min(32, C)``-style
group counts (``gcd(32, C)``) so that small widths work. Random init by default; optional
``pretrained_path`` loads a LOCAL torch state dict of this network (no download, no .npz).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .common import check_divisible, check_no_depth, check_spatial_dims, check_width, input_size, load_pretrained
from .deep_supervision import refuse
from .vit import TransformerBlock, tokens_to_map


class StdConv2d(nn.Conv2d):
    """Weight-standardised convolution (BiT / ResNet v2): zero-mean, unit-variance filters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        var, mean = torch.var_mean(w, dim=(1, 2, 3), keepdim=True, unbiased=False)
        return F.conv2d(x, (w - mean) / torch.sqrt(var + 1e-5), self.bias, self.stride, self.padding,
                        self.dilation, self.groups)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels, eps=1e-6)


class Bottleneck(nn.Module):
    """``1x1 -> 3x3 (stride) -> 1x1`` with GroupNorm, projection shortcut when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = StdConv2d(in_channels, mid_channels, 1, bias=False)
        self.gn1 = group_norm(mid_channels)
        self.conv2 = StdConv2d(mid_channels, mid_channels, 3, stride=stride, padding=1, bias=False)
        self.gn2 = group_norm(mid_channels)
        self.conv3 = StdConv2d(mid_channels, out_channels, 1, bias=False)
        self.gn3 = group_norm(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(StdConv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                            group_norm(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.gn1(self.conv1(x)))
        y = self.relu(self.gn2(self.conv2(y)))
        return self.relu(residual + self.gn3(self.conv3(y)))


class ResNetEncoder(nn.Module):
    """Root + three bottleneck stages; returns the 1/16 map and the skips at 1/8, 1/4, 1/2."""

    def __init__(self, in_channels: int, width: int, blocks: Sequence[int]):
        super().__init__()
        self.root = nn.Sequential(StdConv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
                                  group_norm(width), nn.ReLU(inplace=True))
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        stages, cin = [], width
        for i, n in enumerate(blocks):
            cout, cmid = 4 * width * 2**i, width * 2**i
            units = [Bottleneck(cin, cout, cmid, stride=1 if i == 0 else 2)]
            units += [Bottleneck(cout, cout, cmid) for _ in range(n - 1)]
            stages.append(nn.Sequential(*units))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.out_channels = cin
        self.skip_channels = [4 * width * 2 ** (len(blocks) - 2 - i) for i in range(len(blocks) - 1)] + [width]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.root(x)
        skips = [x]                              # 1/2
        x = self.pool(x)
        for stage in self.stages[:-1]:
            x = stage(x)
            skips.append(x)                      # 1/4, 1/8
        return self.stages[-1](x), skips[::-1]   # 1/16; skips deepest first


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class DecoderBlock(nn.Module):
    """Bilinear x2, concatenate the skip (if any), two ``conv3x3 + BN + ReLU``."""

    def __init__(self, in_channels: int, out_channels: int, skip_channels: int = 0):
        super().__init__()
        self.conv1 = conv_bn_relu(in_channels + skip_channels, out_channels)
        self.conv2 = conv_bn_relu(out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class TransUNet(nn.Module):
    """TransUNet (R50-ViT hybrid), 2D.

    Args:
        img_size: the slice size (position embeddings are made for it; a multiple of 16).
        width: channels of the CNN root (64 = ResNet-50); the stages have ``4w, 8w, 16w``.
        encoder_blocks: bottleneck units per CNN stage (ResNet-50: ``[3, 4, 9]`` in TransUNet).
        hidden_size, mlp_dim, num_heads, num_layers, dropout_rate, attention_dropout_rate: the ViT.
        decoder_channels: the four upsampler blocks (``null`` = ``[4w, 2w, w, w/4]``: 256-128-64-16).
        n_skip: how many CNN skips the upsampler uses (3 in the paper; 0 = none).
        pretrained_path, pretrained_strict: a local state dict of this network, loaded with a
            key-matching report (strict: any missing / unexpected / mis-shaped key stops the run).
    """

    name = "transunet"

    def __init__(self, in_channels: int = 1, num_classes: int = 9, img_size: int | Sequence[int] = 224,
                 width: int = 64, encoder_blocks: Sequence[int] = (3, 4, 9), hidden_size: int = 768,
                 mlp_dim: int = 3072, num_heads: int = 12, num_layers: int = 12, dropout_rate: float = 0.1,
                 attention_dropout_rate: float = 0.0, decoder_channels: Sequence[int] | None = None,
                 n_skip: int = 3, spatial_dims: int = 2, depth: int | None = None,
                 pretrained_path: str | None = None, pretrained_strict: bool = True,
                 deep_supervision: bool | int = False):
        super().__init__()
        check_spatial_dims(self.name, spatial_dims, (2,))
        refuse(self.name, deep_supervision)
        check_no_depth(self.name, depth)
        width = check_width(self.name, width)
        size = input_size(self.name, img_size, 2)
        check_divisible(self.name, size, 16, "the 1/16 CNN feature grid of the ViT")
        if len(encoder_blocks) != 3 or min(encoder_blocks) < 1:
            raise ConfigError(f"model={self.name}: model.encoder_blocks must be three counts >= 1 (CNN to 1/16), "
                              f"got {list(encoder_blocks)}")
        if hidden_size % num_heads:
            raise ConfigError(f"model={self.name}: model.hidden_size={hidden_size} must be a multiple of "
                              f"model.num_heads={num_heads}")
        if not 0 <= n_skip <= 3:
            raise ConfigError(f"model={self.name}: model.n_skip must be 0..3, got {n_skip}")
        decoder_channels = list(decoder_channels or [4 * width, 2 * width, width, max(width // 4, 1)])
        if len(decoder_channels) != 4:
            raise ConfigError(f"model={self.name}: model.decoder_channels needs 4 entries (1/8, 1/4, 1/2, 1), "
                              f"got {decoder_channels}")
        self.grid_size = (size[0] // 16, size[1] // 16)
        self.n_skip = n_skip
        self.encoder = ResNetEncoder(in_channels, width, encoder_blocks)
        # the ViT: one token per 1/16 position (hybrid patch size 1)
        self.patch_embeddings = nn.Conv2d(self.encoder.out_channels, hidden_size, 1)
        self.position_embeddings = nn.Parameter(torch.zeros(1, self.grid_size[0] * self.grid_size[1], hidden_size))
        nn.init.trunc_normal_(self.position_embeddings, std=0.02)
        self.embedding_dropout = nn.Dropout(dropout_rate)
        self.blocks = nn.ModuleList([TransformerBlock(hidden_size, mlp_dim, num_heads, dropout_rate, qkv_bias=True,
                                                      norm_eps=1e-6) for _ in range(num_layers)])
        for block in self.blocks:  # attention-weight dropout has its own rate in TransUNet
            block.attn.dropout_rate = attention_dropout_rate
        self.encoder_norm = nn.LayerNorm(hidden_size, eps=1e-6)
        # the cascaded upsampler
        head_channels = 8 * width
        self.conv_more = conv_bn_relu(hidden_size, head_channels)
        skips = self.encoder.skip_channels[:n_skip] + [0] * (4 - n_skip)
        ins = [head_channels] + decoder_channels[:-1]
        self.decoder = nn.ModuleList([DecoderBlock(i, o, s) for i, o, s in zip(ins, decoder_channels, skips)])
        self.segmentation_head = nn.Conv2d(decoder_channels[-1], num_classes, 3, padding=1)
        if pretrained_path:
            load_pretrained(self, pretrained_path, self.name, pretrained_strict)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, skips = self.encoder(x)
        tokens = self.patch_embeddings(x).flatten(2).transpose(1, 2)
        tokens = self.embedding_dropout(tokens + self.position_embeddings)
        for block in self.blocks:
            tokens = block(tokens)
        x = self.conv_more(tokens_to_map(self.encoder_norm(tokens), self.grid_size))
        for i, block in enumerate(self.decoder):
            x = block(x, skips[i] if i < self.n_skip else None)
        return self.segmentation_head(x)
