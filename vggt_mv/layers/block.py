"""Transformer block of VGGT / DINOv2 (names match the checkpoints: norm1, attn.qkv,
attn.q_norm, attn.k_norm, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma).

Every attention goes through attention_ops.biased_attention (or sparse_attention), so
each one is a countable, replaceable site in the exported graph.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .attention_ops import biased_attention, sparse_attention
from .rope import RotaryPositionEmbedding2D


class Mlp(nn.Module):
    def __init__(self, in_features: int, hidden_features: int | None = None,
                 out_features: int | None = None, bias: bool = True,
                 act_layer: Callable[[], nn.Module] = nn.GELU):
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_values: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class Attention(nn.Module):
    """Multi-head self-attention with optional q/k LayerNorm and 2D RoPE.

    forward(x, pos, bias=(r, c)) adds r_i * c_j to the logits (rank-1, PAGE-4D / dual
    stream); sparse=dict(...) switches to the sparse global pattern.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True,
                 proj_bias: bool = True, qk_norm: bool = False, norm_eps: float = 1e-5,
                 rope: RotaryPositionEmbedding2D | None = None):
        super().__init__()
        assert dim % num_heads == 0, "dim must be divisible by num_heads"
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=norm_eps) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.rope = rope

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None,
                bias: tuple[torch.Tensor, torch.Tensor] | None = None,
                sparse: dict | None = None, time_index: torch.Tensor | None = None):
        B, L, C = x.shape
        qkv = self.qkv(x).reshape(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None and pos is not None:
            q = self.rope(q, pos, time_index)
            k = self.rope(k, pos, time_index)
        if sparse is not None:
            out = sparse_attention(q, k, v, scale=self.scale, **sparse)
        elif bias is not None:
            out = biased_attention(q, k, v, bias[0], bias[1], scale=self.scale)
        else:
            out = biased_attention(q, k, v, scale=self.scale)
        out = out.transpose(1, 2).reshape(B, L, C)
        return self.proj(out)


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 proj_bias: bool = True, ffn_bias: bool = True, init_values: float | None = None,
                 norm_eps: float = 1e-5, qk_norm: bool = False,
                 rope: RotaryPositionEmbedding2D | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, proj_bias, qk_norm, norm_eps=1e-5,
                              rope=rope)
        self.ls1 = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), bias=ffn_bias)
        self.ls2 = LayerScale(dim, init_values) if init_values else nn.Identity()

    def forward(self, x: torch.Tensor, pos: torch.Tensor | None = None,
                bias: tuple[torch.Tensor, torch.Tensor] | None = None,
                sparse: dict | None = None, time_index: torch.Tensor | None = None):
        x = x + self.ls1(self.attn(self.norm1(x), pos=pos, bias=bias, sparse=sparse,
                                   time_index=time_index))
        return x + self.ls2(self.mlp(self.norm2(x)))
