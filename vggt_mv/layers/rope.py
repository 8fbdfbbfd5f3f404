"""2D rotary position embedding of VGGT (base 100), written to export as plain ops.

Upstream builds a cos/sin table sized by int(positions.max()) and indexes it with
F.embedding (data-dependent shape) and enumerates the grid with cartesian_prod; here
cos/sin are computed directly from the positions, which is the same maths
(cos(p * f) whether looked up or computed) and traces to a few elementwise ops.

Optional temporal encoding: a relative rotation by t * omega_t added to the same
channel pairs. Rotations of one plane compose additively, so <R q_i, R k_j> depends
on (y_i - y_j, x_i - x_j, t_i - t_j) only: relative in time as well as space.
"""
from __future__ import annotations

import torch
from torch import nn


def patch_positions(h: int, w: int, num_special: int, device=None) -> torch.Tensor:
    """[F, 2] (y, x) positions of one frame: special tokens at (0, 0), patches from (1, 1)."""
    ys = torch.arange(1, h + 1, device=device, dtype=torch.float32)
    xs = torch.arange(1, w + 1, device=device, dtype=torch.float32)
    grid = torch.stack([ys[:, None].expand(h, w), xs[None, :].expand(h, w)], dim=-1)
    special = torch.zeros(num_special, 2, device=device)
    return torch.cat([special, grid.reshape(h * w, 2)], dim=0)


class RotaryPositionEmbedding2D(nn.Module):
    def __init__(self, frequency: float = 100.0, temporal_frequency: float = 0.0):
        super().__init__()
        self.base = float(frequency)
        self.temporal_frequency = float(temporal_frequency)

    def _cos_sin(self, pos: torch.Tensor, half: int, t: torch.Tensor | None):
        exponents = torch.arange(0, half, 2, device=pos.device, dtype=torch.float32) / half
        inv_freq = 1.0 / (self.base ** exponents)
        ang = pos[..., None] * inv_freq
        if t is not None and self.temporal_frequency > 0:
            ang = ang + t[..., None] * (self.temporal_frequency * inv_freq)
        ang = torch.cat([ang, ang], dim=-1)
        return ang.cos(), ang.sin()

    @staticmethod
    def _rotate(x, cos, sin):
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin

    def forward(self, x: torch.Tensor, pos: torch.Tensor, t: torch.Tensor | None = None):
        """x: [B, H, L, D]; pos: [L, 2] or [B, L, 2] (y, x); t: optional [L] time index."""
        half = x.shape[-1] // 2
        if pos.dim() == 2:
            pos = pos[None]
        cy, sy = self._cos_sin(pos[..., 0], half, t)
        cx, sx = self._cos_sin(pos[..., 1], half, t)
        xv, xh = x.split(half, dim=-1)
        # [B|1, L, half] -> broadcast over heads
        xv = self._rotate(xv, cy[:, None], sy[:, None])
        xh = self._rotate(xh, cx[:, None], sx[:, None])
        return torch.cat([xv, xh], dim=-1)
