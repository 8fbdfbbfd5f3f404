"""The two attention primitives of VGGT_MV, as torch.library custom ops.

Why custom ops (and not an ONNX function or a name scope): a custom op is opaque to
torch.export, so every call site reaches the ONNX exporter as exactly one node that a
registered translation turns into one custom-domain node. Counting sites, replacing them
by TensorRT plugins and giving them a portable standard-op body are then exact
one-to-one rewrites instead of pattern matching over a decomposed softmax, which the
exporter and optimizers are free to reshape. The maths is the contract in
plugins/contract.json:

  biased:  out = softmax(scale * q k^T + has_bias * r_i c_j) v       (rank-1 bias)
  sparse:  out = softmax over the keys visible to i of scale * q k^T, then @ v

Neither implementation below builds an L x S tensor for the biased op: the bias is
folded into SDPA by appending one channel to q (r / scale) and k (c), padded to a
multiple of 8 so CPU flash kernels accept the head size. The sparse op builds a
boolean visibility mask; it is the PyTorch reference, the export path never runs it.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F

STRATEGIES = {"landmark": 0, "dilated": 1, "memory_bank": 2}

_counter = threading.local()


@contextlib.contextmanager
def count_sites() -> Iterator[dict[str, int]]:
    """Counts biased / sparse attention calls made inside the block (any device, incl. meta)."""
    prev = getattr(_counter, "counts", None)
    counts = {"biased_attention": 0, "sparse_attention": 0}
    _counter.counts = counts
    try:
        yield counts
    finally:
        _counter.counts = prev


def _bump(kind: str) -> None:
    counts = getattr(_counter, "counts", None)
    if counts is not None:
        counts[kind] += 1


# ----------------------------------------------------------------------------- biased
@torch.library.custom_op("vggt_mv::biased_attention", mutates_args=())
def _biased_attention_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, r: torch.Tensor, c: torch.Tensor,
    scale: float, has_bias: int,
) -> torch.Tensor:
    return biased_attention_reference(q, k, v, r, c, scale, has_bias)


@_biased_attention_op.register_fake
def _(q, k, v, r, c, scale, has_bias):
    return torch.empty_like(q)


def biased_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, r: torch.Tensor, c: torch.Tensor,
    scale: float, has_bias: int,
) -> torch.Tensor:
    """softmax(scale q k^T + r c^T) v without an L x S tensor (rank-1 bias as an extra channel)."""
    if not has_bias:
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    B, H, L, D = q.shape
    S = k.shape[2]
    pad = 8
    qe = q.new_zeros(B, H, L, pad)
    ke = k.new_zeros(B, H, S, pad)
    # q_e * k_e * scale == r_i * c_j exactly when q_e = r / scale and k_e = c.
    qe[..., 0] = (r.to(q.dtype) / scale)[:, None, :]
    ke[..., 0] = c.to(k.dtype)[:, None, :]
    q2 = torch.cat([q, qe], dim=-1)
    k2 = torch.cat([k, ke], dim=-1)
    v2 = torch.cat([v, v.new_zeros(B, H, S, pad)], dim=-1)
    return F.scaled_dot_product_attention(q2, k2, v2, scale=scale)[..., :D]


def biased_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    r: torch.Tensor | None = None, c: torch.Tensor | None = None, scale: float | None = None,
) -> torch.Tensor:
    """q, k, v: [B, H, L|S, D]; r: [B, L] query-row gate; c: [B, S] key bias (fp32).

    With r or c None this is plain attention (has_bias = 0): still one site, so every
    attention of the model is served by the same fused plugin.
    """
    _bump("biased_attention")
    B, _, L, D = q.shape
    S = k.shape[2]
    scale = float(D ** -0.5) if scale is None else float(scale)
    has_bias = int(r is not None and c is not None)
    if not has_bias:
        # Zero placeholders keep one op signature; exported as tiny constants.
        r = q.new_zeros((B, L), dtype=torch.float32)
        c = q.new_zeros((B, S), dtype=torch.float32)
    return _biased_attention_op(q, k, v, r.float(), c.float(), scale, has_bias)


# ----------------------------------------------------------------------------- sparse
@torch.library.custom_op("vggt_mv::sparse_attention", mutates_args=())
def _sparse_attention_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, landmarks: torch.Tensor,
    scale: float, strategy: int, frame_len: int, num_t: int, num_n: int, num_memory: int,
    level_mask: int,
) -> torch.Tensor:
    return sparse_attention_reference(
        q, k, v, landmarks, scale, strategy, frame_len, num_t, num_n, num_memory, level_mask
    )


@_sparse_attention_op.register_fake
def _(q, k, v, landmarks, scale, strategy, frame_len, num_t, num_n, num_memory, level_mask):
    return torch.empty_like(q)


def sparse_visibility(
    L: int, landmarks: torch.Tensor, strategy: int, frame_len: int, num_t: int, num_n: int,
    num_memory: int, level_mask: int,
) -> torch.Tensor:
    """Boolean [B, L, L] mask of the keys each query sees (contract 'allowed_keys')."""
    device = landmarks.device
    B = landmarks.shape[0]
    n_frame_tok = num_t * num_n * frame_len
    idx = torch.arange(L, device=device)
    frame = torch.div(idx, frame_len, rounding_mode="floor")
    is_mem = idx >= n_frame_tok
    frame = torch.where(is_mem, torch.full_like(frame, -1), frame)
    same_frame = (frame[:, None] == frame[None, :]) & ~is_mem[:, None]
    if strategy == 0:
        lm = torch.zeros(B, L, dtype=torch.bool, device=device)
        lm.scatter_(1, landmarks.long(), True)
        vis = same_frame[None] | lm[:, None, :]
    elif strategy == 1:
        t = torch.div(frame, num_n, rounding_mode="floor")
        n = frame % num_n
        dt = (t[:, None] - t[None, :]).abs()
        lev = torch.zeros_like(dt, dtype=torch.bool)
        for lv in range(1, 31):
            if level_mask >> lv & 1:
                lev |= dt == lv
        vis = (t[:, None] == t[None, :]) | ((n[:, None] == n[None, :]) & lev)
        vis = vis & ~is_mem[:, None] & ~is_mem[None, :]
        vis = vis[None].expand(B, L, L)
    elif strategy == 2:
        vis = same_frame | is_mem[None, :] | is_mem[:, None]
        vis = vis[None].expand(B, L, L)
    else:
        raise ValueError(f"unknown sparse strategy {strategy}")
    return vis


def levels_to_mask(levels: Sequence[int]) -> int:
    """[1, 2, 4] -> 0b10110: the contract's level_mask (bit l = dilation l)."""
    mask = 0
    for lv in levels:
        if not 0 <= int(lv) <= 30:
            raise ValueError(f"dilation level {lv} outside [0, 30]")
        if lv:
            mask |= 1 << int(lv)
    return mask


def sparse_attention_reference(q, k, v, landmarks, scale, strategy, frame_len, num_t, num_n,
                               num_memory, level_mask):
    L = q.shape[2]
    vis = sparse_visibility(L, landmarks, strategy, frame_len, num_t, num_n, num_memory,
                            level_mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=vis[:, None], scale=scale)


def sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, strategy: str, frame_len: int,
    num_t: int, num_n: int, num_memory: int = 0, levels: Sequence[int] = (0,),
    landmarks: torch.Tensor | None = None, scale: float | None = None,
) -> torch.Tensor:
    """Global attention over T*N frames of F tokens (+ memory tokens) with a fixed sparsity."""
    _bump("sparse_attention")
    B, _, L, D = q.shape
    scale = float(D ** -0.5) if scale is None else float(scale)
    sid = STRATEGIES[strategy]
    if L != num_t * num_n * frame_len + num_memory:
        raise ValueError(f"sparse attention: L={L} != T*N*F + M = "
                         f"{num_t}*{num_n}*{frame_len} + {num_memory}")
    if landmarks is None:
        landmarks = torch.zeros(B, 1, dtype=torch.int32, device=q.device)
        if sid == 0:
            raise ValueError("landmark strategy needs landmark indices")
    return _sparse_attention_op(q, k, v, landmarks.to(torch.int32), scale, sid, int(frame_len),
                                int(num_t), int(num_n), int(num_memory), levels_to_mask(levels))
