"""PAGE-4D's spatial mask head and VGGT_MV's fusion with an external mask.

PAGE-4D maths (names kept: spatial_mask_head.head0.{0,2,4}, alpha_logit, tau_logit):
  logit = head0(patch tokens as a [C, h, w] map)
  suppress = sigmoid(-logit / tau), tau = softplus(tau_logit), alpha = softplus(alpha_logit)
  key bias c_j = -0.5 * clamp(alpha * suppress_j, 0, 1) on patch keys, 0 on special keys
VGGT_MV fuses an external per-pixel mask (SAM2 / SegAnyMo) in the logit domain:
  M = sigmoid(a * M_tilde + b * M_ext), M_tilde = -logit / tau, M_ext = logit(pooled mask)
With no external mask and a = 1, M == suppress, so PAGE-4D is reproduced exactly. The
external mask enters as a logit because adding a probability in [0, 1] to a logit would
barely move it and would push "static" (0) pixels nowhere.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SpatialMaskHead(nn.Module):
    def __init__(self, dim: int = 1024):
        super().__init__()
        self.head0 = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.GELU(),
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim), nn.GELU(),
            nn.Conv2d(dim, 1, 1),
        )
        self.alpha_logit = nn.Parameter(torch.tensor(0.0))
        self.tau_logit = nn.Parameter(torch.tensor(0.0))

    def forward(self, patch_tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """patch_tokens [G, h*w, C] -> M_tilde [G, h*w] (dynamic logit, -logit / tau)."""
        G, P, C = patch_tokens.shape
        fmap = patch_tokens.transpose(1, 2).reshape(G, C, h, w)
        logit = self.head0(fmap).reshape(G, P)
        tau = F.softplus(self.tau_logit)
        return -logit / tau

    def alpha(self) -> torch.Tensor:
        return F.softplus(self.alpha_logit)


class MaskFusion(nn.Module):
    """Learnable a, b of M = sigmoid(a * M_tilde + b * M_ext) (seed names alpha, beta)."""

    def __init__(self):
        super().__init__()
        self.alpha = nn.Parameter(torch.tensor(1.0))
        self.beta = nn.Parameter(torch.tensor(1.0))


def pool_external_mask(ext_mask: torch.Tensor, patch: int, eps: float = 0.01) -> torch.Tensor:
    """[G, H, W] per-pixel mask in [0, 1] -> [G, h*w] logits of the per-patch coverage."""
    pooled = F.avg_pool2d(ext_mask[:, None].float(), kernel_size=patch, stride=patch)
    p = pooled.flatten(1).clamp(eps, 1.0 - eps)
    return torch.log(p) - torch.log1p(-p)
