"""DINOv2 ViT-L/14 with registers, as VGGT's aggregator.patch_embed (checkpoint names kept:
cls_token, pos_embed, register_tokens, mask_token, patch_embed.proj, blocks.i, norm).

Export note: upstream resizes pos_embed with antialiased bicubic interpolation on every
call, which no ONNX exporter supports. The resize depends only on the weights and the
patch grid, so it is computed eagerly once per (grid, weights version) and the traced
graph sees a constant. `prepare(h, w)` warms the cache before tracing.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .block import Block


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int = 14, in_chans: int = 3, embed_dim: int = 1024):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoVisionTransformer(nn.Module):
    def __init__(self, img_size: int = 518, patch_size: int = 14, embed_dim: int = 1024,
                 depth: int = 24, num_heads: int = 16, mlp_ratio: float = 4.0,
                 num_register_tokens: int = 4, init_values: float = 1.0,
                 interpolate_antialias: bool = True):
        super().__init__()
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.num_register_tokens = num_register_tokens
        self.interpolate_antialias = interpolate_antialias
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, embed_dim))
        self.register_tokens = nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
        # Unused at inference; kept so DINOv2 / VGGT checkpoints load strictly.
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, init_values=init_values, norm_eps=1e-6)
            for _ in range(depth)
        ])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self._pos_cache: dict[tuple, tuple[int, torch.Tensor]] = {}
        if self.pos_embed.device.type != "meta":
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
            nn.init.normal_(self.cls_token, std=1e-6)
            nn.init.normal_(self.register_tokens, std=1e-6)

    def _interpolated(self, h0: int, w0: int) -> torch.Tensor:
        n = self.pos_embed.shape[1] - 1
        m = int(math.sqrt(n))
        if h0 == m and w0 == m:
            return self.pos_embed
        key = (h0, w0, str(self.pos_embed.device))
        entry = self._pos_cache.get(key)
        # While exporting, parameters are fake tensors: use the table computed eagerly by
        # prepare(). Eagerly, recompute when the weights changed (load_state_dict bumps
        # the parameter's version counter).
        if entry is not None and (torch.compiler.is_compiling()
                                  or entry[0] == self.pos_embed._version):
            return entry[1]
        if torch.compiler.is_compiling():
            raise RuntimeError(f"positional embedding for a {h0}x{w0} patch grid was not "
                               "prepared; call model.prepare(height, width) before export")
        with torch.no_grad():
            pe = self.pos_embed.detach().float()
            patch = pe[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
            patch = F.interpolate(patch, size=(h0, w0), mode="bicubic",
                                  antialias=self.interpolate_antialias)
            patch = patch.permute(0, 2, 3, 1).reshape(1, h0 * w0, -1)
            cached = torch.cat([pe[:, :1], patch], dim=1).to(self.pos_embed.dtype)
        self._pos_cache = {key: (self.pos_embed._version, cached)}
        return cached

    def prepare(self, height: int, width: int) -> None:
        """Precompute the positional embedding for an image size (call before tracing)."""
        self._interpolated(height // self.patch_size, width // self.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, H, W] normalized -> patch tokens [B, P, C] after the final norm."""
        B, _, H, W = x.shape
        tokens = self.patch_embed(x)
        tokens = torch.cat([self.cls_token.expand(B, -1, -1), tokens], dim=1)
        tokens = tokens + self._interpolated(H // self.patch_size, W // self.patch_size)
        tokens = torch.cat([tokens[:, :1], self.register_tokens.expand(B, -1, -1),
                            tokens[:, 1:]], dim=1)
        for blk in self.blocks:
            tokens = blk(tokens)
        tokens = self.norm(tokens)
        return tokens[:, 1 + self.num_register_tokens:]
