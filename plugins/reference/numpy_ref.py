"""CPU reference of the plugin ops (contract.json maths), in numpy.

Flash-attention style: keys are visited in tiles with an online softmax (running max,
running sum, rescaled accumulator, all fp32), queries in chunks, so memory is
O(chunk x tile) and never O(L x S): a Time-SA call at T=8, N=4, 518x518 (L = 10,992)
runs in a few hundred MB. The sparse op visits only the key sets a query frame may see.
"""
from __future__ import annotations

import numpy as np

Q_CHUNK = 1024
K_TILE = 1024


def _flash(q: np.ndarray, k: np.ndarray, v: np.ndarray, scale: float,
           row_bias: np.ndarray | None = None, key_bias: np.ndarray | None = None,
           key_valid: np.ndarray | None = None) -> np.ndarray:
    """q [G, Lq, D], k/v [G, S, D] fp32; logits += row_bias[G, Lq, 1] * key_bias[G, 1, S];
    key_valid [G, Lq|1, S] bool restricts keys. Returns fp32 [G, Lq, D]."""
    G, Lq, D = q.shape
    S = k.shape[1]
    out = np.empty((G, Lq, v.shape[2]), np.float32)
    for qs in range(0, Lq, Q_CHUNK):
        qe = min(qs + Q_CHUNK, Lq)
        qc = q[:, qs:qe] * np.float32(scale)
        m = np.full((G, qe - qs, 1), -np.inf, np.float32)
        l = np.zeros((G, qe - qs, 1), np.float32)
        acc = np.zeros((G, qe - qs, v.shape[2]), np.float32)
        for ks in range(0, S, K_TILE):
            ke = min(ks + K_TILE, S)
            s = qc @ k[:, ks:ke].transpose(0, 2, 1)
            if row_bias is not None:
                s += row_bias[:, qs:qe] * key_bias[:, :, ks:ke]
            if key_valid is not None:
                kv = key_valid[:, qs:qe, ks:ke] if key_valid.shape[1] > 1 else key_valid[:, :, ks:ke]
                s = np.where(kv, s, -np.inf)
            m_new = np.maximum(m, s.max(axis=2, keepdims=True))
            # Rows whose keys were all masked so far keep m = -inf; avoid inf - inf.
            safe = np.where(np.isfinite(m_new), m_new, 0.0).astype(np.float32)
            p = np.exp(s - safe)
            corr = np.exp(np.where(np.isfinite(m), m - safe, -np.inf))
            l = l * corr + p.sum(axis=2, keepdims=True)
            acc = acc * corr + p @ v[:, ks:ke]
            m = m_new
        out[:, qs:qe] = acc / l
    return out


def biased_attention(q, k, v, r, c, scale: float, has_bias: int) -> np.ndarray:
    """[B,H,L,D] x [B,H,S,D] -> [B,H,L,D]; r [B,L], c [B,S] (see contract.json)."""
    B, H, L, D = q.shape
    S = k.shape[2]
    f = lambda x: np.ascontiguousarray(x, np.float32)  # noqa: E731
    qf, kf, vf = (f(x).reshape(B * H, -1, D) for x in (q, k, v))
    rb = kb = None
    if has_bias:
        rb = np.repeat(f(r)[:, None, :], H, 1).reshape(B * H, L, 1)
        kb = np.repeat(f(c)[:, None, :], H, 1).reshape(B * H, 1, S)
    out = _flash(qf, kf, vf, scale, rb, kb)
    return out.reshape(B, H, L, D).astype(q.dtype, copy=False)


def _levels(level_mask: int) -> list[int]:
    return [lv for lv in range(1, 31) if level_mask >> lv & 1]


def sparse_attention(q, k, v, landmarks, scale: float, strategy: int, frame_len: int,
                     num_t: int, num_n: int, num_memory: int, level_mask: int) -> np.ndarray:
    B, H, L, D = q.shape
    F, T, N = int(frame_len), int(num_t), int(num_n)
    nf = T * N * F
    if L != nf + int(num_memory):
        raise ValueError(f"sparse attention: L={L} != num_t*num_n*frame_len + num_memory "
                         f"= {T}*{N}*{F} + {num_memory}")
    f32 = lambda x: np.ascontiguousarray(x, np.float32)  # noqa: E731
    qf, kf, vf = f32(q), f32(k), f32(v)
    out = np.empty((B, H, L, D), np.float32)
    tok = lambda fr: np.arange(fr * F, (fr + 1) * F)  # noqa: E731
    for b in range(B):
        if strategy == 0:
            lm = np.unique(np.asarray(landmarks[b], np.int64))
        for fr in range(T * N):
            t, n = divmod(fr, N)
            rows = tok(fr)
            if strategy == 0:
                # own frame + landmarks outside it (inside ones are already visible once)
                extra = lm[(lm // F != fr) | (lm >= nf)]
                keys = np.concatenate([rows, extra])
            elif strategy == 1:
                frames = [t * N + j for j in range(N)]
                frames += [tt * N + n for tt in range(T) if abs(tt - t) in _levels(level_mask)]
                keys = np.concatenate([tok(x) for x in sorted(set(frames))])
            elif strategy == 2:
                keys = np.concatenate([rows, np.arange(nf, L)])
            else:
                raise ValueError(f"unknown strategy {strategy}")
            ob = out[b]  # view: keeps [H, rows, D] indexing unambiguous
            ob[:, rows] = _flash(qf[b][:, rows], kf[b][:, keys], vf[b][:, keys], scale)
        if L > nf:  # memory queries see every key (strategy 2)
            out[b, :, nf:] = _flash(qf[b][:, nf:], kf[b], vf[b], scale)
    return out.astype(q.dtype, copy=False)
