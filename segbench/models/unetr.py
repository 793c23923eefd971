"""UNETR (Hatamizadeh et al., WACV 2022), 2D or 3D: the AFW-Dice paper's 3D model (Table 6).

MONAI's ``UNETR`` architecture and parameter names, built from MONAI's UNETR decoder blocks and
segbench's einops-free :class:`~segbench.models.vit.ViT` (MONAI's ViT needs the optional
``einops`` package). A ViT with patch size 16 encodes the input; the tokens of blocks
``L/4, L/2, 3L/4`` (3, 6, 9 of 12) are reshaped to feature maps and up-sampled to 1/2, 1/4 and
1/8 of the input, the final tokens (1/16) start the decoder, and a convolutional stem keeps the
full resolution. Compared with MONAI: no unused ``norm_cross_attn`` LayerNorms (MONAI creates
them even without cross-attention), and ``num_layers`` is an option (MONAI fixes 12).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks.dynunet_block import UnetOutBlock
from monai.networks.blocks.unetr_block import UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
from torch import nn

from ..errors import ConfigError
from .common import check_divisible, check_no_depth, check_spatial_dims, check_width, input_size, load_pretrained
from .deep_supervision import refuse
from .vit import ViT, tokens_to_map


class UNETR(nn.Module):
    """UNETR.

    Args:
        img_size: the input size the position embeddings are made for (the 2D slice size or the
            3D patch size; every side a multiple of ``patch_size``).
        width: ``feature_size`` of the convolutional decoder (UNETR paper: 16).
        hidden_size, mlp_dim, num_heads, num_layers: the ViT (paper: ViT-B/16, 768 / 3072 / 12 / 12).
        patch_size: the ViT patch size (16 in the paper and in MONAI).
        norm_name: decoder normalisation (``instance`` or ``batch``).
        pretrained_path: a local state dict (e.g. MONAI UNETR weights) loaded with a key-matching report.
    """

    name = "unetr"

    def __init__(self, in_channels: int = 1, num_classes: int = 9, img_size: int | Sequence[int] = 96,
                 width: int = 16, hidden_size: int = 768, mlp_dim: int = 3072, num_heads: int = 12,
                 num_layers: int = 12, patch_size: int = 16, dropout_rate: float = 0.0,
                 norm_name: str = "instance", qkv_bias: bool = False, spatial_dims: int = 3,
                 depth: int | None = None, pretrained_path: str | None = None, pretrained_strict: bool = True,
                 deep_supervision: bool | int = False):
        super().__init__()
        spatial_dims = check_spatial_dims(self.name, spatial_dims, (2, 3))
        refuse(self.name, deep_supervision)
        check_no_depth(self.name, depth)
        width = check_width(self.name, width)
        size = input_size(self.name, img_size, spatial_dims)
        check_divisible(self.name, size, patch_size, f"the ViT patch size {patch_size}")
        if hidden_size % num_heads:
            raise ConfigError(f"model={self.name}: model.hidden_size={hidden_size} must be a multiple of "
                              f"model.num_heads={num_heads}")
        if num_layers < 4:
            raise ConfigError(f"model={self.name}: model.num_layers={num_layers} must be >= 4 (skips are taken "
                              "from blocks L/4, L/2 and 3L/4)")
        self.grid_size = tuple(s // patch_size for s in size)
        # indices into the blocks' outputs; MONAI reads hidden_states_out[3], [6], [9] of 12
        self.taps = (num_layers // 4, num_layers // 2, 3 * num_layers // 4)
        self.vit = ViT(in_channels, self.grid_size, patch_size, hidden_size, mlp_dim, num_layers, num_heads,
                       dropout_rate, spatial_dims, qkv_bias)
        common = {"spatial_dims": spatial_dims, "kernel_size": 3, "norm_name": norm_name, "res_block": True}
        up = {"upsample_kernel_size": 2, "conv_block": True, "stride": 1}
        self.encoder1 = UnetrBasicBlock(in_channels=in_channels, out_channels=width, stride=1, **common)
        self.encoder2 = UnetrPrUpBlock(in_channels=hidden_size, out_channels=2 * width, num_layer=2, **up, **common)
        self.encoder3 = UnetrPrUpBlock(in_channels=hidden_size, out_channels=4 * width, num_layer=1, **up, **common)
        self.encoder4 = UnetrPrUpBlock(in_channels=hidden_size, out_channels=8 * width, num_layer=0, **up, **common)
        self.decoder5 = UnetrUpBlock(in_channels=hidden_size, out_channels=8 * width, upsample_kernel_size=2,
                                     **common)
        self.decoder4 = UnetrUpBlock(in_channels=8 * width, out_channels=4 * width, upsample_kernel_size=2, **common)
        self.decoder3 = UnetrUpBlock(in_channels=4 * width, out_channels=2 * width, upsample_kernel_size=2, **common)
        self.decoder2 = UnetrUpBlock(in_channels=2 * width, out_channels=width, upsample_kernel_size=2, **common)
        self.out = UnetOutBlock(spatial_dims=spatial_dims, in_channels=width, out_channels=num_classes)
        if pretrained_path:
            load_pretrained(self, pretrained_path, self.name, pretrained_strict, ignore=("norm_cross_attn",))

    def forward(self, x_in: torch.Tensor) -> torch.Tensor:
        x, hidden = self.vit(x_in)
        enc1 = self.encoder1(x_in)
        enc2 = self.encoder2(tokens_to_map(hidden[self.taps[0]], self.grid_size))
        enc3 = self.encoder3(tokens_to_map(hidden[self.taps[1]], self.grid_size))
        enc4 = self.encoder4(tokens_to_map(hidden[self.taps[2]], self.grid_size))
        dec3 = self.decoder5(tokens_to_map(x, self.grid_size), enc4)
        dec2 = self.decoder4(dec3, enc3)
        dec1 = self.decoder3(dec2, enc2)
        return self.out(self.decoder2(dec1, enc1))
