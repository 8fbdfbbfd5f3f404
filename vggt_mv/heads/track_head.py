"""Track head of VGGT: a feature-only DPT at half resolution feeding the iterative tracker."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .dpt_head import DPTHead
from .tracker import BaseTrackerPredictor


class TrackHead(nn.Module):
    def __init__(self, dim_in: int = 2048, patch_size: int = 14, features: int = 128,
                 iters: int = 4, predict_conf: bool = True, stride: int = 2,
                 corr_levels: int = 7, corr_radius: int = 4, hidden_size: int = 384,
                 depth: int = 6, num_heads: int = 8, num_virtual_tracks: int = 64,
                 mlp_ratio: float = 4.0, max_scale: int = 518,
                 out_channels: Sequence[int] = (256, 512, 1024, 1024),
                 intermediate_layer_idx: Sequence[int] = (4, 11, 17, 23)):
        super().__init__()
        self.patch_size = patch_size
        self.iters = iters
        # down_ratio 2 == tracker stride 2: the tracker works in feature-map pixels.
        self.feature_extractor = DPTHead(
            dim_in=dim_in, patch_size=patch_size, features=features,
            out_channels=out_channels, intermediate_layer_idx=intermediate_layer_idx,
            pos_embed=False, feature_only=True, down_ratio=2)
        self.tracker = BaseTrackerPredictor(
            stride=stride, corr_levels=corr_levels, corr_radius=corr_radius,
            latent_dim=features, hidden_size=hidden_size, depth=depth, num_heads=num_heads,
            num_virtual_tracks=num_virtual_tracks, mlp_ratio=mlp_ratio, max_scale=max_scale,
            predict_conf=predict_conf)

    def forward(self, aggregated_tokens_list: list[torch.Tensor | None], images: torch.Tensor,
                patch_start_idx: int, query_points: torch.Tensor, iters: int | None = None
                ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """query_points [B, Q, 2]: (x, y) pixels in frame 0 of each sequence.

        Returns (tracks per iteration, each [B, S, Q, 2] pixels; vis [B, S, Q] and
        conf [B, S, Q] in (0, 1), conf None when predict_conf is False).
        """
        if query_points is None:
            raise ValueError("TrackHead needs query_points [B, Q, 2]")
        fmaps = self.feature_extractor(aggregated_tokens_list, images, patch_start_idx)
        return self.tracker(query_points, fmaps, iters=self.iters if iters is None else iters)
