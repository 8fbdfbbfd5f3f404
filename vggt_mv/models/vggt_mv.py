"""VGGTMV: the full model (aggregator + camera / depth / point / track heads)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..config import VGGTMVConfig
from ..layers.attention_ops import count_sites
from .aggregator import Aggregator


class InputError(ValueError):
    """Images / masks / query points of a shape the model cannot take."""


class VGGTMV(nn.Module):
    def __init__(self, config: VGGTMVConfig | None = None):
        super().__init__()
        from ..heads import CameraHead, DPTHead, TrackHead

        cfg = config or VGGTMVConfig()
        self.config = cfg
        hc = cfg.heads
        dim_in = 2 * cfg.embed_dim
        self.aggregator = Aggregator(cfg)
        self.camera_head = CameraHead(
            dim_in=dim_in, trunk_depth=hc.camera_trunk_depth, num_heads=hc.camera_num_heads,
        ) if hc.camera else None
        dpt = dict(dim_in=dim_in, patch_size=cfg.patch_size, features=hc.dpt_features,
                   out_channels=hc.dpt_out_channels, intermediate_layer_idx=hc.dpt_layers)
        self.point_head = DPTHead(output_dim=4, activation="inv_log", conf_activation="expp1",
                                  **dpt) if hc.point else None
        self.depth_head = DPTHead(output_dim=2, activation="exp", conf_activation="expp1",
                                  **dpt) if hc.depth else None
        self.track_head = TrackHead(
            dim_in=dim_in, patch_size=cfg.patch_size, features=hc.track_features,
            iters=hc.track_iters, hidden_size=hc.track_hidden_size,
            out_channels=hc.dpt_out_channels, intermediate_layer_idx=hc.dpt_layers,
            **hc.track_kwargs,
        ) if hc.track else None

    # ------------------------------------------------------------------ checks
    def check_inputs(self, images: torch.Tensor, ext_mask: torch.Tensor | None = None,
                     query_points: torch.Tensor | None = None) -> tuple[int, int, int, bool]:
        """Static (shape-only) validation; returns (B, T, N, single_view)."""
        p = self.config.patch_size
        if images.dim() == 5:
            B, S, C, H, W = images.shape
            T, N, single = S, 1, True
        elif images.dim() == 6:
            B, T, N, C, H, W = images.shape
            single = False
        else:
            raise InputError(f"images must be [B, T, N, 3, H, W] or [B, S, 3, H, W], got "
                             f"{tuple(images.shape)}")
        if C != 3:
            raise InputError(f"images must have 3 (RGB) channels, got {C}")
        if H % p or W % p:
            raise InputError(f"image size {H}x{W} is not a multiple of the patch size {p}; "
                             f"resize/crop to e.g. {H // p * p}x{W // p * p}")
        if ext_mask is not None:
            want = (B, T, H, W) if single else (B, T, N, H, W)
            if tuple(ext_mask.shape) != want:
                raise InputError(f"ext_mask must be {want} (per pixel), got "
                                 f"{tuple(ext_mask.shape)}")
        if query_points is not None and (query_points.dim() != 3 or query_points.shape[0] != B
                                         or query_points.shape[-1] != 2):
            raise InputError(f"query_points must be [B, Q, 2], got {tuple(query_points.shape)}")
        return B, T, N, single

    def prepare(self, height: int, width: int) -> "VGGTMV":
        """Precompute resolution-dependent constants (call before tracing / exporting)."""
        self.aggregator.prepare(height, width)
        return self

    # ------------------------------------------------------------------ forward
    def forward(self, images: torch.Tensor, ext_mask: torch.Tensor | None = None,
                query_points: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        cfg = self.config
        B, T, N, single = self.check_inputs(images, ext_mask, query_points)
        H, W = images.shape[-2:]
        images6 = images[:, :, None] if single else images
        mask6 = ext_mask[:, :, None] if (single and ext_mask is not None) else ext_mask
        S = T * N

        keep = set()
        if self.depth_head is not None or self.point_head is not None or (
                self.track_head is not None and query_points is not None):
            keep |= set(cfg.heads.dpt_layers)
        if self.camera_head is not None:
            keep.add(cfg.depth - 1)
        agg = self.aggregator(images6, mask6, single_view=single, keep_layers=tuple(sorted(keep)))
        psi = agg["patch_start_idx"]

        def as_list(d: dict[int, torch.Tensor]) -> list[torch.Tensor | None]:
            lst: list[torch.Tensor | None] = [None] * cfg.depth
            for k, v in d.items():
                lst[k] = v.reshape(B, S, v.shape[3], v.shape[4])
            return lst

        pose_list, geo_list = as_list(agg["pose"]), as_list(agg["geo"])
        flat = images6.reshape(B, S, 3, H, W)
        out: dict[str, torch.Tensor] = {}
        if self.camera_head is not None:
            out["pose_enc"] = self.camera_head(pose_list, num_iterations=cfg.heads.camera_iterations)[-1]
        if self.depth_head is not None:
            out["depth"], out["depth_conf"] = self.depth_head(geo_list, images=flat,
                                                              patch_start_idx=psi)
        if self.point_head is not None:
            out["world_points"], out["world_points_conf"] = self.point_head(
                geo_list, images=flat, patch_start_idx=psi)
        if self.track_head is not None and query_points is not None:
            tracks, vis, conf = self.track_head(geo_list, images=flat, patch_start_idx=psi,
                                                query_points=query_points)
            out["track"], out["vis"], out["conf"] = tracks[-1], vis, conf
        if not single:
            out = {k: v.reshape(B, T, N, *v.shape[2:]) for k, v in out.items()}
        if agg["dynamic_mask"] is not None:
            dm = agg["dynamic_mask"]
            out["dynamic_mask"] = dm[:, :, 0] if single else dm
        return out

    # ------------------------------------------------------------------ introspection
    def attention_sites(self, images_shape: tuple[int, ...], with_ext_mask: bool = False,
                        num_query_points: int = 0) -> dict[str, int]:
        """How many biased / sparse attention calls one forward makes for this input shape.

        Runs a weightless copy on the meta device, so it is instant even at 1.26B params;
        export surgery must replace exactly this many nodes of each kind.
        """
        with torch.device("meta"):
            twin = VGGTMV(self.config)
            images = torch.empty(images_shape)
            B = images_shape[0]
            mask = None
            if with_ext_mask:
                mask = torch.empty(*images_shape[:-3], *images_shape[-2:])
            qp = torch.empty(B, num_query_points, 2) if num_query_points else None
            with count_sites() as counts, torch.no_grad():
                twin(images, mask, qp)
        return dict(counts)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
