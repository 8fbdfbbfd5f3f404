"""VGGT_MV aggregator: DINOv2 patch tokens + camera/register tokens, then View-SA / Time-SA
alternation, PAGE-4D mask-biased attention, optional dual pose/geo streams and sparse
global attention.

Tokens live as [B, T, N, F, C] (F = 1 + R + P per frame). An attention "grouping" folds
that into sequences:
  view: [B*T, N*F, C]  (fixed time, across views)   <- global_blocks in multi-view mode
  time: [B*N, T*F, C]  (fixed view, across time)    <- frame_blocks  in multi-view mode
A single-view clip [B, S, ...] is T = S, N = 1, where "view" is VGGT's per-frame attention
and "time" its global attention; so frame_blocks take "view" and global_blocks "time",
and the single-view mode is exactly VGGT / PAGE-4D.

Dual streams are carried in the batch dimension: rows [0, B) are the pose stream and
[B, 2B) the geo stream once the first dual layer is reached. Dual layers run each
stream through its own blocks; later shared blocks run both in one batched call, so
the graph has no per-stream duplication outside the dual region.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import VGGTMVConfig
from ..layers.block import Block
from ..layers.dinov2 import DinoVisionTransformer
from ..layers.rope import RotaryPositionEmbedding2D, patch_positions
from .mask_head import MaskFusion, SpatialMaskHead, pool_external_mask

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def group(x: torch.Tensor, kind: str) -> torch.Tensor:
    """[B, T, N, F, *rest] -> sequences of the given grouping."""
    B, T, N, Fl = x.shape[:4]
    rest = x.shape[4:]
    if kind == "view":
        return x.reshape(B * T, N * Fl, *rest)
    x = x.transpose(1, 2)
    return x.reshape(B * N, T * Fl, *rest)


def ungroup(x: torch.Tensor, kind: str, B: int, T: int, N: int) -> torch.Tensor:
    rest = x.shape[2:]
    if kind == "view":
        return x.reshape(B, T, N, -1, *rest)
    return x.reshape(B, N, T, -1, *rest).transpose(1, 2)


class Aggregator(nn.Module):
    def __init__(self, cfg: VGGTMVConfig):
        super().__init__()
        self.cfg = cfg
        C, R = cfg.embed_dim, cfg.num_register_tokens
        enc = cfg.encoder
        if enc.embed_dim != C:
            raise ValueError("encoder.embed_dim must equal embed_dim")
        self.patch_embed = DinoVisionTransformer(
            cfg.img_size, cfg.patch_size, enc.embed_dim, enc.depth, enc.num_heads,
            enc.mlp_ratio, enc.num_register_tokens, init_values=1.0)
        temporal = cfg.temporal_frequency if cfg.temporal_encoding else 0.0
        self.rope = RotaryPositionEmbedding2D(cfg.rope_freq, temporal)

        def block() -> Block:
            return Block(C, cfg.num_heads, cfg.mlp_ratio, init_values=cfg.init_values,
                         qk_norm=True, rope=self.rope)

        self.frame_blocks = nn.ModuleList([block() for _ in range(cfg.depth)])
        self.global_blocks = nn.ModuleList([block() for _ in range(cfg.depth)])
        self.camera_token = nn.Parameter(torch.randn(1, 2, 1, C) * 1e-6)
        self.register_token = nn.Parameter(torch.randn(1, 2, R, C) * 1e-6)
        self.register_buffer("_resnet_mean", torch.tensor(_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("_resnet_std", torch.tensor(_STD).view(1, 3, 1, 1),
                             persistent=False)
        if cfg.mask_head:
            self.spatial_mask_head = SpatialMaskHead(C)
        if cfg.learnable_mask_fusion:
            self.dynamic_mask_head = MaskFusion()
        if cfg.dual_stream:
            n = len(cfg.dual_stream_layers)
            for name in ("pose_frame_blocks", "pose_global_blocks", "geo_frame_blocks",
                         "geo_global_blocks"):
                setattr(self, name, nn.ModuleList([block() for _ in range(n)]))
            # Stored unclamped; clamped to [-lambda_clamp, lambda_clamp] where used.
            # Zero init: a fresh dual-stream model computes exactly the unbiased blocks.
            for name in ("lambda_pose_logit", "lambda_geo_logit", "lambda_pose_t_logit",
                         "lambda_geo_t_logit"):
                setattr(self, name, nn.Parameter(torch.tensor(0.0)))
        if cfg.sparse_global:
            self.sparse_blocks = nn.ModuleList([block() for _ in cfg.sparse_layers])
            if cfg.sparse_strategy == "memory_bank":
                self.memory_tokens = nn.Parameter(torch.randn(1, cfg.num_memory_tokens, C) * 0.02)

    # ------------------------------------------------------------------ helpers
    def _special_tokens(self, B: int, T: int, N: int) -> torch.Tensor:
        """[B, T, N, 1+R, C]: index 0 for the reference frame (t=0, view 0), 1 elsewhere."""
        tok = torch.cat([self.camera_token, self.register_token], dim=2)  # [1, 2, 1+R, C]
        first, rest = tok[:, :1], tok[:, 1:]
        flat = torch.cat([first.expand(B, 1, -1, -1), rest.expand(B, T * N - 1, -1, -1)], 1)
        return flat.reshape(B, T, N, tok.shape[2], tok.shape[3])

    def _lambda(self, name: str) -> torch.Tensor:
        c = self.cfg.lambda_clamp
        return getattr(self, name).clamp(-c, c)

    def prepare(self, height: int, width: int) -> None:
        self.patch_embed.prepare(height, width)

    # ------------------------------------------------------------------ forward
    def forward(self, images: torch.Tensor, ext_mask: torch.Tensor | None = None,
                single_view: bool = False, keep_layers: tuple[int, ...] = ()) -> dict[str, Any]:
        """images [B, T, N, 3, H, W] in [0, 1]; ext_mask [B, T, N, H, W] in [0, 1]."""
        cfg = self.cfg
        B, T, N, _, H, W = images.shape
        p, R = cfg.patch_size, cfg.num_register_tokens
        h, w = H // p, W // p
        P, S0 = h * w, 1 + R
        Fl = S0 + P
        C = cfg.embed_dim

        x = images.reshape(B * T * N, 3, H, W)
        x = (x - self._resnet_mean) / self._resnet_std
        patches = self.patch_embed(x).reshape(B, T, N, P, C)
        tokens = torch.cat([self._special_tokens(B, T, N), patches], dim=3)

        kinds = {"frame": "view" if single_view else "time",
                 "global": "time" if single_view else "view"}
        pos_frame = patch_positions(h, w, S0, device=images.device)

        def pos_for(kind: str) -> torch.Tensor:
            return pos_frame.repeat(N if kind == "view" else T, 1)

        time_index = torch.arange(T, device=images.device, dtype=torch.float32)
        time_index = time_index.repeat_interleave(Fl)

        is_special = torch.cat([torch.ones(S0, device=images.device),
                                torch.zeros(P, device=images.device)])

        def per_token(patch_vals: torch.Tensor | None, special_val: float = 0.0):
            """[Bx, T, N, P] patch values -> [Bx, T, N, F] with special tokens filled."""
            if patch_vals is None:
                return None
            Bx = patch_vals.shape[0]
            fill = patch_vals.new_full((Bx, T, N, S0), special_val)
            return torch.cat([fill, patch_vals], dim=3)

        ext_logit = None
        if ext_mask is not None:
            ext_logit = pool_external_mask(ext_mask.reshape(B * T * N, H, W), p)
            ext_logit = ext_logit.reshape(B, T, N, P)

        M = None            # fused dynamic probability per patch [B, T, N, P]
        page4d_c = None     # PAGE-4D key bias per token [B, T, N, F]
        n_streams = 1
        dual = set(cfg.dual_stream_layers) if cfg.dual_stream else set()
        dual_first = min(dual) if dual else None
        sparse_at = {l: i for i, l in enumerate(cfg.sparse_layers)} if cfg.sparse_global else {}
        keep = set(keep_layers)
        outputs: dict[int, torch.Tensor] = {}

        def run(blk: Block, toks: torch.Tensor, kind: str, bias_tok=None) -> torch.Tensor:
            """toks [Bx, T, N, F, C]; bias_tok = (r [Bx,T,N,F], c [Bx,T,N,F]) or None."""
            Bx = toks.shape[0]
            seq = group(toks, kind)
            bias = None
            if bias_tok is not None:
                bias = (group(bias_tok[0], kind), group(bias_tok[1], kind))
            ti = time_index if kind == "time" else None
            out = blk(seq, pos=pos_for(kind), bias=bias, time_index=ti)
            return ungroup(out, kind, Bx, T, N)

        def rows(x: torch.Tensor) -> torch.Tensor:
            return x.repeat(n_streams, *([1] * (x.dim() - 1))) if n_streams > 1 else x

        for layer in range(cfg.depth):
            if layer == dual_first:
                tokens = torch.cat([tokens, tokens], dim=0)
                n_streams = 2
            di = cfg.dual_stream_layers.index(layer) if layer in dual else None
            slot_out = {}
            for slot in ("frame" if k == "time" else "global" for k in cfg.aa_order):
                kind = kinds[slot]
                if di is not None:
                    # Dual streams: c = -lambda_pose * m (pose), +lambda_geo * m (geo),
                    # every query row (r = 1). "_t" lambdas serve the time grouping.
                    sfx = "_t" if kind == "time" else ""
                    m = per_token(M if M is not None else None)
                    outs = []
                    for s, (stream, sign) in enumerate((("pose", -1.0), ("geo", 1.0))):
                        blk = getattr(self, f"{stream}_{slot}_blocks")[di]
                        part = tokens[s * B:(s + 1) * B]
                        if m is not None:
                            lam = self._lambda(f"lambda_{stream}{sfx}_logit")
                            bias = (torch.ones_like(m), sign * lam * m)
                        else:
                            bias = None
                        outs.append(run(blk, part, kind, bias))
                    tokens = torch.cat(outs, dim=0)
                else:
                    blocks = self.frame_blocks if slot == "frame" else self.global_blocks
                    bias = None
                    if slot == "global" and page4d_c is not None and layer in cfg.mask_bias_layers:
                        r = is_special.expand(B, T, N, Fl)
                        bias = (rows(r), rows(page4d_c))
                    tokens = run(blocks[layer], tokens, kind, bias)
                slot_out[slot] = tokens

                if slot == "frame" and layer == cfg.mask_layer and (cfg.mask_head or ext_logit is not None):
                    M, page4d_c = self._dynamic_mask(tokens[:B], ext_logit, B, T, N, h, w, S0)
                    page4d_c = per_token(page4d_c)

            if layer in sparse_at:
                tokens = self._sparse(sparse_at[layer], tokens, M, n_streams, pos_frame, T, N,
                                      S0, P)
                slot_out["global"] = tokens
            if layer in keep:
                outputs[layer] = torch.cat([slot_out["frame"], slot_out["global"]], dim=-1)

        # Layers before the dual region hold one stream, so "last B rows" is the geo
        # stream after the split and the shared stream before it.
        pose = {k: v[:B] for k, v in outputs.items()}
        geo = {k: v[v.shape[0] - B:] for k, v in outputs.items()}
        dyn = M.reshape(B, T, N, h, w) if M is not None else None
        return {"pose": pose, "geo": geo, "dynamic_mask": dyn, "patch_start_idx": S0}

    def _dynamic_mask(self, tokens, ext_logit, B, T, N, h, w, S0):
        """Fused dynamic mask M [B,T,N,P] and PAGE-4D key bias on patches [B,T,N,P]."""
        P = h * w
        a = b = 1.0
        if self.cfg.learnable_mask_fusion:
            a, b = self.dynamic_mask_head.alpha, self.dynamic_mask_head.beta
        logits = 0.0
        if self.cfg.mask_head:
            patch = tokens[:, :, :, S0:].reshape(B * T * N, P, -1)
            m_tilde = self.spatial_mask_head(patch, h, w).reshape(B, T, N, P)
            logits = a * m_tilde
        if ext_logit is not None:
            logits = logits + b * ext_logit
        M = torch.sigmoid(logits)
        key_bias = None
        if self.cfg.mask_head:
            alpha = self.spatial_mask_head.alpha()
            key_bias = -0.5 * (alpha * M).clamp(0.0, 1.0)
        return M, key_bias

    def _sparse(self, idx, tokens, M, n_streams, pos_frame, T, N, S0, P):
        cfg = self.cfg
        Bs, _, _, Fl, C = tokens.shape
        flat = tokens.reshape(Bs, T * N * Fl, C)
        pos = pos_frame.repeat(T * N, 1)
        kw: dict[str, Any] = {"strategy": cfg.sparse_strategy, "frame_len": Fl, "num_t": T,
                              "num_n": N}
        n_mem = 0
        if cfg.sparse_strategy == "memory_bank":
            n_mem = cfg.num_memory_tokens
            flat = torch.cat([flat, self.memory_tokens.expand(Bs, -1, -1)], dim=1)
            pos = torch.cat([pos, pos.new_zeros(n_mem, 2)], dim=0)
            kw["num_memory"] = n_mem
        elif cfg.sparse_strategy == "dilated":
            kw["levels"] = cfg.dilated_levels
        else:
            kw["landmarks"] = self._landmarks(tokens, M, n_streams, T, N, S0, P)
        out = self.sparse_blocks[idx](flat, pos=pos, sparse=kw)
        return out[:, :T * N * Fl].reshape(Bs, T, N, Fl, C)

    def _landmarks(self, tokens, M, n_streams, T, N, S0, P):
        """Top-k patch tokens of every frame by feature norm, damped on dynamic regions
        (static structure makes the best global anchors): [Bs, T*N*k] int32 indices."""
        Bs, _, _, Fl, _ = tokens.shape
        k = min(self.cfg.landmark_k, P)
        score = tokens[:, :, :, S0:].norm(dim=-1)
        if M is not None:
            score = score * (1.0 - M.repeat(n_streams, 1, 1, 1))
        top = score.topk(k, dim=-1).indices  # [Bs, T, N, k]
        frame = torch.arange(T * N, device=tokens.device).reshape(1, T, N, 1)
        return (frame * Fl + S0 + top).reshape(Bs, T * N * k).to(torch.int32)
