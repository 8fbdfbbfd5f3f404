"""Iterative point tracker of VGGT's track head (CoTracker / VGGSfM lineage).

Names match VGGT-1B's track_head.tracker.* (including updateformer.virual_tracks, sic).

Export-oriented differences from upstream, all with the same maths:
- attention runs through vggt_mv::biased_attention (one plugin site per attention) in a
  module whose parameters are named like nn.MultiheadAttention's (in_proj_weight,
  in_proj_bias, out_proj), instead of nn.MultiheadAttention, whose eval-mode fast path
  (_native_multi_head_attention) does not export;
- correlations are sampled before the dot product: bilinear sampling is linear, so
  <t, sample(F)(p)> == sample(<t, F>)(p) exactly (zero padding included), and the
  [B, S, Q, H*W] correlation volume per pyramid level is never built;
- the tracker's 2D sin/cos grid is sampled analytically (pos_embed.sampled_grid_embed)
  instead of being built at feature resolution and grid-sampled;
- no in-place writes (the query frame is pinned with a cat), no einops.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import Mlp, biased_attention
from .pos_embed import sampled_grid_embed


class MultiheadAttention(nn.Module):
    """batch_first multi-head attention with nn.MultiheadAttention's parameter names."""

    def __init__(self, embed_dim: int, num_heads: int):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, L, _ = x.shape
        return x.reshape(B, L, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, query: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        B, L, C = query.shape
        if context is None:
            q, k, v = F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        else:
            w_q, w_kv = self.in_proj_weight.split([C, 2 * C])
            b_q, b_kv = self.in_proj_bias.split([C, 2 * C])
            q = F.linear(query, w_q, b_q)
            k, v = F.linear(context, w_kv, b_kv).chunk(2, dim=-1)
        out = biased_attention(self._heads(q), self._heads(k), self._heads(v),
                               scale=self.head_dim ** -0.5)
        return self.out_proj(out.transpose(1, 2).reshape(B, L, C))


class AttnBlock(nn.Module):
    """Self-attention block. Unlike a pre-norm ViT block, the residual stream itself is
    normalized first (x = norm1(x); x = x + attn(x)); checkpoints were trained that way."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.attn = MultiheadAttention(hidden_size, num_heads)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        x = x + self.attn(x)
        return x + self.mlp(self.norm2(x))


class CrossAttnBlock(nn.Module):
    """x attends to context; same normalized-residual convention as AttnBlock."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size)
        self.norm_context = nn.LayerNorm(hidden_size)
        self.norm2 = nn.LayerNorm(hidden_size)
        self.cross_attn = MultiheadAttention(hidden_size, num_heads)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x)
        x = x + self.cross_attn(x, self.norm_context(context))
        return x + self.mlp(self.norm2(x))


class EfficientUpdateFormer(nn.Module):
    """Alternating time attention (per track) and space attention through a few learned
    virtual tracks (points -> virtual, virtual self-attention, virtual -> points)."""

    def __init__(self, space_depth: int = 6, time_depth: int = 6, input_dim: int = 388,
                 hidden_size: int = 384, num_heads: int = 8, output_dim: int = 130,
                 mlp_ratio: float = 4.0, add_space_attn: bool = True,
                 num_virtual_tracks: int = 64):
        super().__init__()
        if add_space_attn and not 0 < space_depth <= time_depth:
            raise ValueError("space attention needs 0 < space_depth <= time_depth")
        self.add_space_attn = add_space_attn
        self.num_virtual_tracks = num_virtual_tracks
        self.input_norm = nn.LayerNorm(input_dim)
        self.input_transform = nn.Linear(input_dim, hidden_size)
        self.output_norm = nn.LayerNorm(hidden_size)
        self.flow_head = nn.Linear(hidden_size, output_dim)
        self.virual_tracks = (nn.Parameter(torch.randn(1, num_virtual_tracks, 1, hidden_size))
                              if add_space_attn else None)
        self.time_blocks = nn.ModuleList(
            [AttnBlock(hidden_size, num_heads, mlp_ratio) for _ in range(time_depth)])
        if add_space_attn:
            self.space_virtual_blocks = nn.ModuleList(
                [AttnBlock(hidden_size, num_heads, mlp_ratio) for _ in range(space_depth)])
            self.space_point2virtual_blocks = nn.ModuleList(
                [CrossAttnBlock(hidden_size, num_heads, mlp_ratio) for _ in range(space_depth)])
            self.space_virtual2point_blocks = nn.ModuleList(
                [CrossAttnBlock(hidden_size, num_heads, mlp_ratio) for _ in range(space_depth)])
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # Small initial updates keep the first refinement steps near the query positions.
        nn.init.trunc_normal_(self.flow_head.weight, std=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, N, T, input_dim] (N tracks, T frames) -> [B, N, T, output_dim]."""
        tokens = self.input_transform(self.input_norm(x))
        init_tokens = tokens
        B, _, T, C = tokens.shape
        if self.add_space_attn:
            tokens = torch.cat([tokens, self.virual_tracks.expand(B, -1, T, -1)], dim=1)
        N = tokens.shape[1]
        n_points = N - self.num_virtual_tracks if self.add_space_attn else N

        # With fewer space than time blocks, space attention follows every k-th time block.
        n_space = len(self.space_virtual_blocks) if self.add_space_attn else 0
        every = len(self.time_blocks) // n_space if n_space else 0
        for i, time_block in enumerate(self.time_blocks):
            tokens = time_block(tokens.reshape(B * N, T, C)).reshape(B, N, T, C)
            if n_space and i % every == 0 and i // every < n_space:
                j = i // every
                space = tokens.permute(0, 2, 1, 3).reshape(B * T, N, C)
                points, virtual = space[:, :n_points], space[:, n_points:]
                virtual = self.space_virtual2point_blocks[j](virtual, points)
                virtual = self.space_virtual_blocks[j](virtual)
                points = self.space_point2virtual_blocks[j](points, virtual)
                space = torch.cat([points, virtual], dim=1)
                tokens = space.reshape(B, T, N, C).permute(0, 2, 1, 3)

        tokens = tokens[:, :n_points] + init_tokens
        return self.flow_head(self.output_norm(tokens))


def _normalize_grid(points_xy: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel (x, y) -> grid_sample coordinates for align_corners=True."""
    x, y = points_xy.unbind(-1)
    return torch.stack([x * (2.0 / max(width - 1, 1)), y * (2.0 / max(height - 1, 1))],
                       dim=-1) - 1.0


def sample_points(fmap: torch.Tensor, points_xy: torch.Tensor) -> torch.Tensor:
    """fmap [B, C, H, W], points [B, N, 2] (pixels) -> [B, N, C]; bilinear, border padding."""
    H, W = fmap.shape[-2:]
    grid = _normalize_grid(points_xy, H, W)[:, :, None]
    feats = F.grid_sample(fmap, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return feats[..., 0].transpose(1, 2)


def flow_embedding(flows: torch.Tensor, dim: int) -> torch.Tensor:
    """flows [..., 2] -> [..., 2 * dim]: interleaved sin/cos of x, then of y (VGGT's
    get_2d_embedding with its linear frequency ramp k * 1000 / dim)."""
    freqs = torch.arange(0, dim, 2, dtype=torch.float32, device=flows.device) * (1000.0 / dim)

    def interleaved(v: torch.Tensor) -> torch.Tensor:
        a = v[..., None] * freqs
        return torch.stack([torch.sin(a), torch.cos(a)], dim=-1).flatten(-2)

    flows = flows.to(torch.float32)
    return torch.cat([interleaved(flows[..., 0]), interleaved(flows[..., 1])], dim=-1)


class BaseTrackerPredictor(nn.Module):
    def __init__(self, stride: int = 1, corr_levels: int = 5, corr_radius: int = 4,
                 latent_dim: int = 128, hidden_size: int = 384, use_spaceatt: bool = True,
                 depth: int = 6, num_heads: int = 8, num_virtual_tracks: int = 64,
                 mlp_ratio: float = 4.0, max_scale: int = 518, predict_conf: bool = True):
        super().__init__()
        if latent_dim % 4:
            raise ValueError(f"latent_dim must be a multiple of 4, got {latent_dim}")
        self.stride = stride
        self.latent_dim = latent_dim
        self.corr_levels = corr_levels
        self.corr_radius = corr_radius
        self.max_scale = max_scale
        self.predict_conf = predict_conf
        self.flows_emb_dim = latent_dim // 2
        self.transformer_dim = 3 * latent_dim + 4

        self.corr_mlp = Mlp(corr_levels * (2 * corr_radius + 1) ** 2, hidden_size, latent_dim)
        # Token 0 marks the query frame, token 1 every other frame.
        self.query_ref_token = nn.Parameter(torch.randn(1, 2, self.transformer_dim))
        self.updateformer = EfficientUpdateFormer(
            space_depth=depth if use_spaceatt else 0, time_depth=depth,
            input_dim=self.transformer_dim, hidden_size=hidden_size, num_heads=num_heads,
            output_dim=latent_dim + 2, mlp_ratio=mlp_ratio, add_space_attn=use_spaceatt,
            num_virtual_tracks=num_virtual_tracks)
        self.fmap_norm = nn.LayerNorm(latent_dim)
        self.ffeat_norm = nn.GroupNorm(1, latent_dim)
        self.ffeat_updater = nn.Sequential(nn.Linear(latent_dim, latent_dim), nn.GELU())
        self.vis_predictor = nn.Sequential(nn.Linear(latent_dim, 1))
        if predict_conf:
            self.conf_predictor = nn.Sequential(nn.Linear(latent_dim, 1))

    def _window_offsets(self, device: torch.device) -> torch.Tensor:
        """[(2r+1)^2, 2] (dx, dy) offsets in the order upstream's corr_mlp was trained on:
        the slow index moves x, the fast index moves y."""
        r = self.corr_radius
        lin = torch.linspace(-r, r, 2 * r + 1, dtype=torch.float32, device=device)
        slow, fast = torch.meshgrid(lin, lin, indexing="ij")
        return torch.stack([slow, fast], dim=-1).reshape(-1, 2)

    def _correlations(self, pyramid: list[torch.Tensor], targets: torch.Tensor,
                      coords: torch.Tensor) -> torch.Tensor:
        """targets [B, S, N, C], coords [B, S, N, 2] (level-0 pixels) ->
        [B, S, N, levels * (2r+1)^2] windowed correlations (zero outside the map)."""
        B, S, N, C = targets.shape
        offsets = self._window_offsets(coords.device)
        K = offsets.shape[0]
        t = targets.reshape(B * S, N, C, 1)
        out = []
        for level, fmap in enumerate(pyramid):
            h, w = fmap.shape[-2:]
            pts = coords.reshape(B * S, N, 1, 2) / float(2 ** level) + offsets.view(1, 1, K, 2)
            grid = _normalize_grid(pts, h, w)
            win = F.grid_sample(fmap, grid, mode="bilinear", padding_mode="zeros",
                                align_corners=True)                     # [BS, C, N, K]
            corr = torch.matmul(win.permute(0, 2, 3, 1), t)[..., 0]      # [BS, N, K]
            out.append(corr.reshape(B, S, N, K) / math.sqrt(C))
        return torch.cat(out, dim=-1)

    def forward(self, query_points: torch.Tensor, fmaps: torch.Tensor, iters: int = 4
                ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """query_points [B, N, 2] pixels of frame 0; fmaps [B, S, C, HH, WW] at 1/stride.

        Returns (tracks per iteration [B, S, N, 2] in pixels, vis [B, S, N], conf [B, S, N]).
        """
        B, N, _ = query_points.shape
        _, S, C, HH, WW = fmaps.shape
        if min(HH, WW) < 2 ** (self.corr_levels - 1):
            raise ValueError(
                f"track feature map {HH}x{WW} is too small for {self.corr_levels} correlation "
                f"levels (needs >= {2 ** (self.corr_levels - 1)} px per side, i.e. images of "
                f">= {2 ** (self.corr_levels - 1) * self.stride} px); lower corr_levels")
        fmaps = self.fmap_norm(fmaps.permute(0, 1, 3, 4, 2)).permute(0, 1, 4, 2, 3)

        query = query_points.to(fmaps.dtype) / float(self.stride)
        coords = query[:, None].expand(B, S, N, 2)
        track_feats = sample_points(fmaps[:, 0], query)[:, None].expand(B, S, N, C)

        level = fmaps.reshape(B * S, C, HH, WW)
        pyramid = [level]
        for _ in range(self.corr_levels - 1):
            level = F.avg_pool2d(level, kernel_size=2, stride=2)
            pyramid.append(level)

        # Both depend only on the (pinned) query positions, so they are loop invariants.
        pos = sampled_grid_embed(query, self.transformer_dim, HH, WW).to(fmaps.dtype)
        pos = pos.reshape(B * N, 1, self.transformer_dim)
        ref = torch.cat([self.query_ref_token[:, :1],
                         self.query_ref_token[:, 1:2].expand(1, S - 1, -1)], dim=1).to(fmaps.dtype)

        coord_preds: list[torch.Tensor] = []
        for _ in range(iters):
            coords = coords.detach()
            corr = self._correlations(pyramid, track_feats, coords)
            corr = self.corr_mlp(corr.permute(0, 2, 1, 3).reshape(B * N, S, -1))

            flows = (coords - coords[:, :1]).permute(0, 2, 1, 3).reshape(B * N, S, 2)
            flows_emb = torch.cat([flow_embedding(flows, self.flows_emb_dim).to(flows.dtype),
                                   flows / self.max_scale, flows / self.max_scale], dim=-1)
            feats = track_feats.permute(0, 2, 1, 3).reshape(B * N, S, C)

            x = torch.cat([flows_emb, corr, feats], dim=-1) + pos + ref
            delta = self.updateformer(x.reshape(B, N, S, -1)).reshape(B * N * S, C + 2)
            feats = feats.reshape(B * N * S, C)
            feats = self.ffeat_updater(self.ffeat_norm(delta[:, 2:])) + feats
            track_feats = feats.reshape(B, N, S, C).permute(0, 2, 1, 3)

            coords = coords + delta[:, :2].reshape(B, N, S, 2).permute(0, 2, 1, 3)
            # The query frame is an input, not an estimate: pin it every iteration.
            coords = torch.cat([query[:, None], coords[:, 1:]], dim=1)
            coord_preds.append(coords * float(self.stride))

        flat = track_feats.reshape(B * S * N, C)
        vis = torch.sigmoid(self.vis_predictor(flat)).reshape(B, S, N)
        conf = (torch.sigmoid(self.conf_predictor(flat)).reshape(B, S, N)
                if self.predict_conf else None)
        return coord_preds, vis, conf
