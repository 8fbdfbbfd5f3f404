"""Sinusoidal position embeddings used by the DPT and track heads, float32 only.

Upstream VGGT evaluates these sines in float64 (torch.double) and casts the result to
float32. TensorRT has no FP64 and ONNX Runtime's float64 coverage is partial, so here
every tensor is float32 from the start; the arguments are below ~300 rad, where the
float32 sin/cos error (< 2e-5 absolute) is far below what the 0.1-scaled embedding or
the following conv layers can resolve.
"""
from __future__ import annotations

import math

import torch


def _inv_frequencies(n: int, omega_0: float, device: torch.device | None) -> torch.Tensor:
    # omega_0 ** -(i / n) as exp(-(i / n) ln omega_0): no tensor constant for the exporter.
    exponent = torch.arange(n, dtype=torch.float32, device=device) / float(n)
    return torch.exp(exponent * -math.log(omega_0))


def sincos_1d(pos: torch.Tensor, dim: int, omega_0: float) -> torch.Tensor:
    """pos [...] -> [..., dim]: sin(pos * w) for dim/2 frequencies, then cos(pos * w)."""
    if dim % 2:
        raise ValueError(f"sin/cos embedding needs an even dimension, got {dim}")
    w = _inv_frequencies(dim // 2, omega_0, pos.device)
    angles = pos.to(torch.float32)[..., None] * w
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


def uv_grid(width: int, height: int, aspect_ratio: float | None = None,
            device: torch.device | None = None) -> torch.Tensor:
    """[height, width, 2] image-plane UV in (-span, span), normalized by the diagonal.

    Pixel centres, so the corners sit at +-span * (n - 1) / n (MoGe / VGGT convention).
    """
    if aspect_ratio is None:
        aspect_ratio = float(width) / float(height)
    diag = (aspect_ratio ** 2 + 1.0) ** 0.5
    span_x, span_y = aspect_ratio / diag, 1.0 / diag
    u = torch.linspace(-span_x * (width - 1) / width, span_x * (width - 1) / width, width,
                       dtype=torch.float32, device=device)
    v = torch.linspace(-span_y * (height - 1) / height, span_y * (height - 1) / height, height,
                       dtype=torch.float32, device=device)
    uu, vv = torch.meshgrid(u, v, indexing="xy")
    return torch.stack([uu, vv], dim=-1)


def uv_position_embed(channels: int, height: int, width: int, aspect_ratio: float,
                      device: torch.device | None = None, omega_0: float = 100.0) -> torch.Tensor:
    """[channels, height, width] DPT embedding: channels/2 for u, then channels/2 for v."""
    if channels % 4:
        raise ValueError(f"DPT position embedding needs channels % 4 == 0, got {channels}")
    uv = uv_grid(width, height, aspect_ratio, device)
    emb = torch.cat([sincos_1d(uv[..., 0], channels // 2, omega_0),
                     sincos_1d(uv[..., 1], channels // 2, omega_0)], dim=-1)
    return emb.permute(2, 0, 1)


def sampled_grid_embed(points_xy: torch.Tensor, dim: int, height: int, width: int,
                       omega_0: float = 10000.0) -> torch.Tensor:
    """Embedding of an integer-pixel sin/cos grid, bilinearly sampled at points_xy [..., 2].

    Equals building VGGT's [dim, height, width] tracker grid (dim/2 channels encode the
    column, dim/2 the row) and grid_sample-ing it with align_corners=True and border
    padding, but never materializes the grid (388 x 259 x 259 floats at 518 px, which an
    exporter would otherwise bake in as a 100 MB constant). Each half depends on one
    coordinate only, so the 2D bilinear blend reduces to a 1D lerp per half.
    """
    def lerp_embed(p: torch.Tensor, size: int) -> torch.Tensor:
        p = p.clamp(0.0, float(size - 1))
        p0 = torch.floor(p)
        frac = (p - p0)[..., None]
        # At p == size - 1 the upper neighbour is off the grid but gets weight 0.
        return sincos_1d(p0, dim // 2, omega_0) * (1 - frac) + \
            sincos_1d(p0 + 1, dim // 2, omega_0) * frac

    if dim % 4:
        raise ValueError(f"grid embedding needs dim % 4 == 0, got {dim}")
    pts = points_xy.to(torch.float32)
    return torch.cat([lerp_embed(pts[..., 0], width), lerp_embed(pts[..., 1], height)], dim=-1)
