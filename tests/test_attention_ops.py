"""The model's two attention primitives against explicit softmax references."""
import itertools

import pytest
import torch

from vggt_mv.layers import attention_ops as ops
from vggt_mv.layers.rope import RotaryPositionEmbedding2D


def dense(q, k, v, scale, bias=None, mask=None):
    logits = q.double() @ k.double().transpose(-1, -2) * scale
    if bias is not None:
        logits = logits + bias.double()
    if mask is not None:
        logits = logits.masked_fill(~mask, float("-inf"))
    return (logits.softmax(-1) @ v.double()).float()


@pytest.mark.parametrize("L,S,D", [(7, 7, 8), (33, 50, 16), (129, 65, 64)])
def test_biased_attention_matches_explicit_softmax(L, S, D):
    g = torch.Generator().manual_seed(L)
    q, v_ = torch.randn(2, 3, L, D, generator=g), None
    k = torch.randn(2, 3, S, D, generator=g)
    v = torch.randn(2, 3, S, D, generator=g)
    r = torch.randn(2, L, generator=g)
    c = torch.randn(2, S, generator=g) * 5
    out = ops.biased_attention(q, k, v, r, c, scale=0.3)
    ref = dense(q, k, v, 0.3, bias=(r[:, :, None] * c[:, None, :])[:, None])
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    # has_bias = 0 is plain attention, and a zero bias changes nothing
    plain = ops.biased_attention(q, k, v, scale=0.3)
    torch.testing.assert_close(plain, dense(q, k, v, 0.3), atol=2e-5, rtol=2e-5)
    zero = ops.biased_attention(q, k, v, r, torch.zeros_like(c), scale=0.3)
    torch.testing.assert_close(zero, plain, atol=2e-5, rtol=2e-5)


def test_biased_attention_bias_actually_matters():
    q, k, v = torch.randn(3, 1, 2, 9, 8).unbind(0)
    r, c = torch.ones(1, 9), torch.linspace(-5, 5, 9)[None]
    assert not torch.allclose(ops.biased_attention(q, k, v, r, c), ops.biased_attention(q, k, v))


def visible_by_loops(L, F, T, N, M, strategy, landmarks=None, levels=()):
    vis = torch.zeros(L, L, dtype=torch.bool)
    n_frame = T * N * F
    for i, j in itertools.product(range(L), range(L)):
        fi, fj = i // F, j // F
        if strategy == "landmark":
            vis[i, j] = fi == fj or j in landmarks
        elif strategy == "dilated":
            ti, ni, tj, nj = fi // N, fi % N, fj // N, fj % N
            vis[i, j] = ti == tj or (ni == nj and abs(ti - tj) in levels)
        else:
            if i >= n_frame:
                vis[i, j] = True
            else:
                vis[i, j] = j >= n_frame or fi == fj
    return vis


@pytest.mark.parametrize("strategy,T,N,F,M", [
    ("landmark", 2, 2, 5, 0), ("landmark", 3, 1, 6, 0),
    ("dilated", 5, 2, 3, 0), ("dilated", 3, 3, 4, 0),
    ("memory_bank", 2, 2, 5, 3), ("memory_bank", 1, 3, 4, 2),
])
def test_sparse_attention_equals_dense_under_mask(strategy, T, N, F, M):
    L = T * N * F + M
    g = torch.Generator().manual_seed(L)
    q, k, v = (torch.randn(1, 2, L, 8, generator=g) for _ in range(3))
    levels = (1, 2) if strategy == "dilated" else (0,)
    landmarks = None
    if strategy == "landmark":
        # includes indices inside query frames (must be counted once)
        landmarks = torch.tensor([[0, 3, F + 1, L - 1]], dtype=torch.int32)
    out = ops.sparse_attention(q, k, v, strategy=strategy, frame_len=F, num_t=T, num_n=N,
                               num_memory=M, levels=levels, landmarks=landmarks, scale=0.4)
    lm = set(landmarks[0].tolist()) if landmarks is not None else None
    mask = visible_by_loops(L, F, T, N, M, strategy, lm, levels)
    ref = dense(q, k, v, 0.4, mask=mask)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    full = dense(q, k, v, 0.4)
    if not mask.all():
        assert not torch.allclose(out, full, atol=1e-4)


def test_level_mask_encoding():
    assert ops.levels_to_mask([1, 2, 4]) == 0b10110
    assert ops.levels_to_mask([0]) == 0
    with pytest.raises(ValueError):
        ops.levels_to_mask([31])


def test_sparse_rejects_wrong_length():
    q = torch.randn(1, 1, 10, 8)
    with pytest.raises(ValueError, match="T\\*N\\*F"):
        ops.sparse_attention(q, q, q, strategy="dilated", frame_len=3, num_t=2, num_n=2)


def test_site_counter_counts_calls_on_meta():
    with torch.device("meta"):
        q = torch.empty(1, 2, 5, 8)
        with ops.count_sites() as c:
            ops.biased_attention(q, q, q)
            ops.biased_attention(q, q, q)
        assert c == {"biased_attention": 2, "sparse_attention": 0}


def test_rope_matches_table_lookup_formulation():
    """Upstream VGGT looks cos/sin up in a table indexed by integer positions."""
    D, base = 16, 100.0
    rope = RotaryPositionEmbedding2D(base)
    pos = torch.tensor([[0, 0], [1, 1], [1, 2], [3, 1], [7, 5]], dtype=torch.float32)
    x = torch.randn(2, 3, 5, D)
    out = rope(x, pos)
    half = D // 2
    inv = 1.0 / base ** (torch.arange(0, half, 2).float() / half)
    table = torch.einsum("i,j->ij", torch.arange(8).float(), inv)
    table = torch.cat([table, table], -1)
    cos, sin = table.cos(), table.sin()

    def rot(feat, p):
        c, s = cos[p.long()], sin[p.long()]
        a, b = feat.chunk(2, -1)
        return feat * c + torch.cat([-b, a], -1) * s

    ref = torch.cat([rot(x[..., :half], pos[:, 0]), rot(x[..., half:], pos[:, 1])], -1)
    torch.testing.assert_close(out, ref)
    # relative: shifting every position by the same offset leaves q.k unchanged
    q, k = torch.randn(2, 1, 1, 5, D).unbind(0)
    a = rope(q, pos) @ rope(k, pos).transpose(-1, -2)
    b = rope(q, pos + 3) @ rope(k, pos + 3).transpose(-1, -2)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_temporal_rope_is_relative_in_time():
    rope = RotaryPositionEmbedding2D(100.0, temporal_frequency=1.0)
    pos = torch.zeros(6, 2)
    t = torch.tensor([0., 0, 1, 1, 2, 2])
    q, k = torch.randn(2, 1, 1, 6, 8).unbind(0)
    a = rope(q, pos, t) @ rope(k, pos, t).transpose(-1, -2)
    b = rope(q, pos, t + 5) @ rope(k, pos, t + 5).transpose(-1, -2)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    plain = rope(q, pos) @ rope(k, pos).transpose(-1, -2)
    assert not torch.allclose(a, plain, atol=1e-3)
