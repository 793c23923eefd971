"""A plain Vision Transformer encoder (Dosovitskiy et al. 2021), 2D or 3D, shared by UNETR and TransUNet.

Module and parameter names follow MONAI's ``ViT`` (``patch_embedding.patch_embeddings``,
``patch_embedding.position_embeddings``, ``blocks.<i>.{norm1, attn.qkv, attn.out_proj, norm2,
mlp.linear1, mlp.linear2}``, ``norm``), so MONAI UNETR weights load by name. It is written
here because MONAI's attention block needs the optional ``einops`` package; this one uses
``torch.nn.functional.scaled_dot_product_attention`` (same maths: softmax(q k^T / sqrt(d)) v).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class PatchEmbedding(nn.Module):
    """Non-overlapping patches -> tokens (strided convolution) + learnable position embeddings."""

    def __init__(self, in_channels: int, grid_size: Sequence[int], patch_size: int, hidden_size: int,
                 dropout_rate: float = 0.0, spatial_dims: int = 3):
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.patch_embeddings = conv(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)
        n_patches = 1
        for g in grid_size:
            n_patches *= int(g)
        self.position_embeddings = nn.Parameter(torch.zeros(1, n_patches, hidden_size))
        nn.init.trunc_normal_(self.position_embeddings, std=0.02, a=-2.0, b=2.0)
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embeddings(x).flatten(2).transpose(1, 2)  # [B, N, hidden]
        return self.dropout(x + self.position_embeddings)


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused q/k/v projection (MONAI ``SABlock`` layout)."""

    def __init__(self, hidden_size: int, num_heads: int, dropout_rate: float = 0.0, qkv_bias: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=qkv_bias)
        self.out_proj = nn.Linear(hidden_size, hidden_size)
        self.dropout_rate = dropout_rate
        self.drop_output = nn.Dropout(dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        # output features ordered (q|k|v, head, dim), as MONAI's "b h (qkv l d) -> qkv b l h d"
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout_rate if self.training else 0.0)
        return self.drop_output(self.out_proj(x.transpose(1, 2).reshape(b, n, c)))


class MLP(nn.Module):
    def __init__(self, hidden_size: int, mlp_dim: int, dropout_rate: float = 0.0):
        super().__init__()
        self.linear1 = nn.Linear(hidden_size, mlp_dim)
        self.linear2 = nn.Linear(mlp_dim, hidden_size)
        self.fn = nn.GELU()
        self.drop1 = nn.Dropout(dropout_rate)
        self.drop2 = nn.Dropout(dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.linear2(self.drop1(self.fn(self.linear1(x)))))


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, hidden_size: int, mlp_dim: int, num_heads: int, dropout_rate: float = 0.0,
                 qkv_bias: bool = False, norm_eps: float = 1e-5):
        super().__init__()
        self.mlp = MLP(hidden_size, mlp_dim, dropout_rate)
        self.norm1 = nn.LayerNorm(hidden_size, eps=norm_eps)
        self.attn = SelfAttention(hidden_size, num_heads, dropout_rate, qkv_bias)
        self.norm2 = nn.LayerNorm(hidden_size, eps=norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Patch embedding, ``num_layers`` transformer blocks, final LayerNorm.

    ``forward`` returns ``(normed_tokens, hidden_states)`` where ``hidden_states[i]`` is the
    output of block ``i`` (before the final norm), as MONAI's ViT.

    Args:
        grid_size: tokens per side (input size // patch_size).
    """

    def __init__(self, in_channels: int, grid_size: Sequence[int], patch_size: int, hidden_size: int = 768,
                 mlp_dim: int = 3072, num_layers: int = 12, num_heads: int = 12, dropout_rate: float = 0.0,
                 spatial_dims: int = 3, qkv_bias: bool = False, norm_eps: float = 1e-5):
        super().__init__()
        self.patch_embedding = PatchEmbedding(in_channels, grid_size, patch_size, hidden_size, dropout_rate,
                                              spatial_dims)
        self.blocks = nn.ModuleList([TransformerBlock(hidden_size, mlp_dim, num_heads, dropout_rate, qkv_bias,
                                                      norm_eps) for _ in range(num_layers)])
        self.norm = nn.LayerNorm(hidden_size, eps=norm_eps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.patch_embedding(x)
        hidden_states = []
        for block in self.blocks:
            x = block(x)
            hidden_states.append(x)
        return self.norm(x), hidden_states


def tokens_to_map(tokens: torch.Tensor, grid_size: Sequence[int]) -> torch.Tensor:
    """``[B, N, C]`` tokens -> ``[B, C, *grid_size]`` feature map (row-major token order)."""
    b, _, c = tokens.shape
    return tokens.transpose(1, 2).reshape(b, c, *grid_size)
