"""UNETR++ (Shaker et al. 2022/2024, "UNETR++: Delving into efficient and accurate 3D medical image
segmentation"): the AFW-Dice paper's second 3D model (Table 6).

A hierarchical encoder-decoder whose stages are Efficient Paired-Attention (EPA) blocks. Layout
(the authors' Synapse network, ``unetr_pp/network_architecture/synapse``; our own code on MONAI's
``UnetResBlock`` / ``UnetOutBlock``):

* **stem**: a convolution with kernel = stride = ``patch_size`` (2, 4, 4) to ``2 w`` channels, then
  GroupNorm with ``in_channels`` groups; three **downsamplings** (kernel = stride = 2, channels
  ``2 w -> 4 w -> 8 w -> 16 w``, GroupNorm with as many groups as input channels). Each of the 4
  encoder stages runs ``depths[i]`` EPA transformer blocks on its ``N_i`` tokens.
* **transformer block**: ``x <- x + gamma * EPA(LayerNorm(x + pos))`` (layer scale ``gamma``
  initialised 1e-6, learnable position embedding ``pos`` of the stage's ``N x C``), then the
  tokens as a volume ``v``: ``v + Conv1x1(Dropout3d(ResBlock3x3(v)))`` (BatchNorm in the block).
* **EPA**: four linear maps of the tokens, ``q`` and ``k`` shared by two attentions computed in
  parallel (``h`` heads, ``q`` and ``k`` L2-normalised along the tokens):
  - *spatial*: keys and values projected from ``N`` tokens to ``P`` (one shared linear map
    ``E = F``), ``softmax(q k_P^T * tau_s) v_P``: attention linear in ``N``;
  - *channel*: ``softmax(q^T k * tau_c)`` over the ``C/h x C/h`` channel pairs, applied to ``v_C``;
  each output is projected to ``C/2`` channels and the two are concatenated (learnable
  temperatures ``tau_s``, ``tau_c`` per head).
* **decoder**: transposed convolutions (kernel = stride = 2) back through the stages, each added
  to the encoder's skip and followed by ``decoder_depth`` EPA blocks; the last one goes up by
  ``patch_size`` to the full resolution, adds a full-resolution convolutional stem
  (``ResBlock(in -> w)``) and runs a residual convolution block (no attention, as the paper's
  supplementary material); a 1 x 1 convolution gives the logits.

Deep supervision (``deep_supervision``, off by default; :mod:`segbench.models.deep_supervision`): 1 x 1
heads on the decoder outputs at ``1 / patch_size`` and ``1 / (2 patch_size)`` (``true``: the authors' ``out2``
and ``out3``, with their trainer's weights 4/7, 2/7, 1/7); up to the ``1 / (4 patch_size)`` output (``3``).

Differences from the authors' code: the spatial branch's output is laid out as ``[B, N, h, C/h]`` before
the merge of the heads (the code permutes it as ``[B, C/h, h, N]`` and reshapes that to ``[B, N, C]``, mixing
tokens into channels); the input size is any multiple of ``8 * patch_size`` (the code hard-codes the
decoders' token counts for 64 x 128 x 128); deep supervision is off unless asked for (the authors train with it).

The token counts fix the input size: the position embeddings and the ``N -> P`` projections are
made for ``img_size`` (``data.patch_size``; sliding-window inference feeds windows of that size).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks.dynunet_block import UnetOutBlock, UnetResBlock
from torch import nn

from ..errors import ConfigError
from .common import check_no_depth, check_spatial_dims, check_width, input_size, size_setting
from .deep_supervision import extra_heads, output_heads, supervised


class EPA(nn.Module):
    """Efficient paired attention of ``[B, N, C]`` tokens (spatial + channel, shared ``q`` / ``k``)."""

    def __init__(self, tokens: int, channels: int, proj_size: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.temperature_channel = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.temperature_spatial = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkvv = nn.Linear(channels, 4 * channels, bias=False)  # q, k (shared), v spatial, v channel
        self.project_tokens = nn.Linear(tokens, proj_size)         # E = F: N tokens -> P
        self.drop_channel = nn.Dropout(dropout)
        self.drop_spatial = nn.Dropout(dropout)
        self.out_spatial = nn.Linear(channels, channels // 2)
        self.out_channel = nn.Linear(channels, channels // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        h = self.num_heads
        # [4, B, h, C/h, N]: every head's channels as rows, the tokens along the last axis
        q, k, v_spatial, v_channel = self.qkvv(x).reshape(B, N, 4, h, C // h).permute(2, 0, 3, 4, 1)
        k_projected = self.project_tokens(k)                      # [B, h, C/h, P]
        v_projected = self.project_tokens(v_spatial)              # [B, h, C/h, P]
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        # channel attention: (C/h x C/h) per head
        attn_c = self.drop_channel((q @ k.transpose(-2, -1) * self.temperature_channel).softmax(-1))
        x_channel = (attn_c @ v_channel).permute(0, 3, 1, 2).reshape(B, N, C)
        # spatial attention: N tokens against P projected ones
        attn_s = self.drop_spatial((q.transpose(-2, -1) @ k_projected * self.temperature_spatial).softmax(-1))
        x_spatial = (attn_s @ v_projected.transpose(-2, -1)).permute(0, 2, 1, 3).reshape(B, N, C)
        return torch.cat([self.out_spatial(x_spatial), self.out_channel(x_channel)], dim=-1)


class EPABlock(nn.Module):
    """One UNETR++ transformer block on a ``[B, C, *grid]`` volume of ``N = prod(grid)`` tokens."""

    def __init__(self, tokens: int, channels: int, proj_size: int, num_heads: int, dropout: float):
        super().__init__()
        self.position = nn.Parameter(torch.zeros(1, tokens, channels))
        self.norm = nn.LayerNorm(channels)
        self.gamma = nn.Parameter(1e-6 * torch.ones(channels))
        self.epa = EPA(tokens, channels, proj_size, num_heads, dropout)
        self.conv = UnetResBlock(3, channels, channels, kernel_size=3, stride=1, norm_name="batch")
        self.out = nn.Sequential(nn.Dropout3d(0.1), nn.Conv3d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, *grid = x.shape
        tokens = x.flatten(2).transpose(1, 2) + self.position    # [B, N, C]
        tokens = tokens + self.gamma * self.epa(self.norm(tokens))
        volume = tokens.transpose(1, 2).reshape(B, C, *grid)
        return volume + self.out(self.conv(volume))


def _stage(depth: int, tokens: int, channels: int, proj_size: int, num_heads: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(*(EPABlock(tokens, channels, proj_size, num_heads, dropout) for _ in range(depth)))


class UNETRPP(nn.Module):
    """UNETR++ (3D).

    Args:
        img_size: the input size ``(Z, Y, X)`` the token counts are made for; every side a multiple of
            ``8 * patch_size`` (16 x 32 x 32 for the default patch).
        width: ``feature_size`` ``w`` (16 in the paper): stage channels ``2w, 4w, 8w, 16w``.
        depths: EPA blocks per encoder stage (3, 3, 3, 3).
        decoder_depth: EPA blocks per decoder stage (3).
        num_heads: attention heads of every EPA (4).
        proj_size: the spatial attention's projected token count ``P`` per encoder stage (64, 64, 64, 32).
        decoder_proj_size: ``P`` of the decoder stages (64, the code's default).
        patch_size: the stem's kernel and stride (2, 4, 4): the slice axis first, as segbench's volumes.
        dropout_rate: attention dropout of the EPA blocks (0.1).
        norm_name: normalisation of the full-resolution convolution blocks (``instance`` or ``batch``).
        deep_supervision: ``false``, ``true`` (the authors' two heads) or a number of heads (1-3).
    """

    name = "unetr_pp"

    def __init__(self, in_channels: int = 1, num_classes: int = 9, img_size: int | Sequence[int] = (64, 128, 128),
                 width: int = 16, depths: Sequence[int] = (3, 3, 3, 3), decoder_depth: int = 3, num_heads: int = 4,
                 proj_size: Sequence[int] = (64, 64, 64, 32), decoder_proj_size: int = 64,
                 patch_size: Sequence[int] = (2, 4, 4), dropout_rate: float = 0.1, norm_name: str = "instance",
                 spatial_dims: int = 3, depth: int | None = None, deep_supervision: bool | int = False):
        super().__init__()
        check_spatial_dims(self.name, spatial_dims, (3,))
        check_no_depth(self.name, depth)
        width = check_width(self.name, width)
        size = input_size(self.name, img_size, 3)
        if size is None:
            raise ConfigError(f"model={self.name} needs the input size ({size_setting(3)}): its position "
                              "embeddings and token projections are made for one size")
        patch = tuple(int(p) for p in patch_size)
        depths, proj_size = [int(d) for d in depths], [int(p) for p in proj_size]
        if len(patch) != 3 or len(depths) != 4 or len(proj_size) != 4:
            raise ConfigError(f"model={self.name}: model.patch_size needs 3 sides, model.depths and "
                              f"model.proj_size 4 stages (got {list(patch)}, {depths}, {proj_size})")
        if any(s % (8 * p) or s < 8 * p for s, p in zip(size, patch)):
            need = [8 * p for p in patch]
            raise ConfigError(f"model={self.name} cannot take {size_setting(3)}={list(size)}: the stem "
                              f"(patch {list(patch)}) and three halvings need every side to be a multiple of "
                              f"{need}; set {size_setting(3)} to one")
        channels = [2 * width, 4 * width, 8 * width, 16 * width]
        if any(c % num_heads or (c // 2) * 2 != c for c in channels):
            raise ConfigError(f"model={self.name}: the stage channels {channels} (2, 4, 8, 16 x model.width) must "
                              f"be multiples of model.num_heads={num_heads}")
        grids = [tuple(s // p // 2 ** i for s, p in zip(size, patch)) for i in range(4)]
        tokens = [math.prod(g) for g in grids]
        self.grids = grids

        # encoder: stem + 3 downsamplings, each stage a stack of EPA blocks
        self.downsample = nn.ModuleList([nn.Sequential(
            nn.Conv3d(in_channels, channels[0], kernel_size=patch, stride=patch, bias=False),
            nn.GroupNorm(in_channels, channels[0]))])
        for i in range(3):
            self.downsample.append(nn.Sequential(
                nn.Conv3d(channels[i], channels[i + 1], kernel_size=2, stride=2, bias=False),
                nn.GroupNorm(channels[i], channels[i + 1])))
        self.stages = nn.ModuleList(_stage(depths[i], tokens[i], channels[i], proj_size[i], num_heads, dropout_rate)
                                    for i in range(4))
        self.stem = UnetResBlock(3, in_channels, width, kernel_size=3, stride=1, norm_name=norm_name)
        # decoder: up to stages 2, 1, 0 with EPA blocks, then to full resolution with a conv block
        self.up = nn.ModuleList(nn.ConvTranspose3d(channels[i + 1], channels[i], kernel_size=2, stride=2, bias=False)
                                for i in (2, 1, 0))
        self.decoders = nn.ModuleList(_stage(decoder_depth, tokens[i], channels[i], decoder_proj_size, num_heads,
                                             dropout_rate) for i in (2, 1, 0))
        self.up_full = nn.ConvTranspose3d(channels[0], width, kernel_size=patch, stride=patch, bias=False)
        self.decoder_full = UnetResBlock(3, width, width, kernel_size=3, stride=1, norm_name=norm_name)
        self.out = UnetOutBlock(spatial_dims=3, in_channels=width, out_channels=num_classes)
        # decoder outputs: full resolution, then the grids of stages 0, 1, 2 (channels 2w, 4w, 8w)
        self.deep_supervision = extra_heads(self.name, deep_supervision, 4)
        self.ds_heads = output_heads(channels[:self.deep_supervision], num_classes, 3) \
            if self.deep_supervision else None
        for module in [self.downsample, self.stages]:
            module.apply(_init_linear)

    def forward(self, x_in: torch.Tensor) -> torch.Tensor:
        skips = []
        x = x_in
        for down, stage in zip(self.downsample, self.stages):
            x = stage(down(x))
            skips.append(x)
        decoded = []
        for up, decoder, skip in zip(self.up, self.decoders, reversed(skips[:3])):
            x = decoder(up(x) + skip)
            decoded.append(x)
        x = self.decoder_full(self.up_full(x) + self.stem(x_in))
        return supervised(self.out(x), decoded[::-1], self.ds_heads, self.training)


def _init_linear(module: nn.Module) -> None:
    """The encoder's initialisation in the authors' code: truncated normal (std .02) linear weights, zero bias."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
