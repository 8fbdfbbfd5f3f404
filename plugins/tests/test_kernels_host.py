"""The CUDA kernel source, executed on the CPU, against the numpy reference of the contract.

The harness compiles plugins/csrc/attention/attention_launch.cu unchanged with a host
compiler; cuda_host_shim.h turns each CUDA thread into a std::thread and __syncthreads
into a barrier, so the shared-memory tiling and the online softmax run for real.
"""
import subprocess

import numpy as np
import pytest

from plugins.reference import numpy_ref


def run_harness(exe, tmp_path, kind, q, k, v, *, r=None, c=None, lm=None, scale=0.125,
                has_bias=1, strategy=0, F=1, T=1, N=1, mem=0, level_mask=0):
    B, H, L, D = q.shape
    S = k.shape[2]
    half = q.dtype == np.float16
    for name, a in (("q", q), ("k", k), ("v", v)):
        (tmp_path / f"{name}.bin").write_bytes(np.ascontiguousarray(a).tobytes())
    M = 1
    if kind == 0:
        (tmp_path / "r.bin").write_bytes(np.ascontiguousarray(r, np.float32).tobytes())
        (tmp_path / "c.bin").write_bytes(np.ascontiguousarray(c, np.float32).tobytes())
    else:
        lm = np.zeros((B, 1), np.int32) if lm is None else lm
        M = lm.shape[1]
        (tmp_path / "lm.bin").write_bytes(np.ascontiguousarray(lm, np.int32).tobytes())
    args = [str(exe), str(kind), str(int(half)), *map(str, (B, H, L, S, D, M)), repr(scale),
            str(has_bias), str(strategy), str(F), str(T), str(N), str(mem), str(level_mask),
            str(tmp_path)]
    res = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return np.frombuffer((tmp_path / "out.bin").read_bytes(),
                         np.float16 if half else np.float32).reshape(B, H, L, D)


BIASED_CASES = [
    # B, H, L, S, D, has_bias, magnitude, dtype
    (1, 1, 1, 1, 8, 1, 1.0, np.float32),
    (1, 2, 7, 7, 8, 1, 1.0, np.float32),
    (2, 2, 33, 33, 16, 1, 1.0, np.float32),
    (1, 1, 31, 65, 24, 1, 1.0, np.float32),
    (1, 3, 64, 64, 64, 1, 1.0, np.float32),
    (1, 1, 100, 37, 64, 0, 1.0, np.float32),
    (2, 1, 129, 97, 64, 1, 1.0, np.float32),
    (1, 1, 45, 45, 128, 1, 1.0, np.float32),
    (1, 1, 40, 70, 136, 1, 1.0, np.float32),   # generic (DMAX 256) path
    (1, 1, 33, 17, 256, 1, 1.0, np.float32),
    (1, 2, 50, 50, 64, 1, 12.0, np.float32),   # scale*qk ~ 1e2..1e3
    (1, 1, 61, 61, 32, 1, 30.0, np.float32),
    (1, 1, 300, 300, 64, 1, 1.0, np.float32),
    (1, 1, 257, 513, 64, 0, 1.0, np.float32),
    (1, 2, 40, 40, 64, 1, 1.0, np.float16),
    (1, 1, 65, 33, 128, 1, 1.0, np.float16),
    (2, 1, 31, 31, 64, 0, 1.0, np.float16),
    (1, 1, 77, 50, 16, 1, 4.0, np.float16),
    (1, 1, 3, 200, 64, 1, 1.0, np.float32),
    (3, 1, 20, 20, 40, 1, 1.0, np.float32),
    (1, 4, 16, 48, 72, 1, 1.0, np.float16),
]


@pytest.mark.parametrize("B,H,L,S,D,has_bias,mag,dtype", BIASED_CASES)
def test_biased_kernel_matches_reference(host_harness, tmp_path, B, H, L, S, D, has_bias, mag,
                                         dtype):
    rng = np.random.default_rng(L * 131 + S * 7 + D)
    q = (rng.standard_normal((B, H, L, D)) * mag).astype(dtype)
    k = (rng.standard_normal((B, H, S, D)) * mag).astype(dtype)
    v = rng.standard_normal((B, H, S, D)).astype(dtype)
    r = rng.standard_normal((B, L)).astype(np.float32)
    c = (rng.standard_normal((B, S)) * 50).astype(np.float32)   # bias up to +-150
    scale = float(D) ** -0.5
    got = run_harness(host_harness, tmp_path, 0, q, k, v, r=r, c=c, scale=scale,
                      has_bias=has_bias)
    ref = numpy_ref.biased_attention(q.astype(np.float32), k.astype(np.float32),
                                     v.astype(np.float32), r, c, scale, has_bias)
    assert np.isfinite(got).all()
    if dtype == np.float16:
        # inputs identical (fp16 values), fp32 maths, one fp16 rounding of the output
        np.testing.assert_allclose(got.astype(np.float32), ref, atol=2e-3, rtol=2e-3)
    else:
        np.testing.assert_allclose(got, ref, atol=2e-5 * max(1.0, mag), rtol=1e-4)


SPARSE_CASES = [
    # strategy, T, N, F, mem, levels, M(landmarks), D, dtype
    ("landmark", 1, 1, 5, 0, (), 2, 8, np.float32),
    ("landmark", 2, 2, 7, 0, (), 4, 16, np.float32),
    ("landmark", 3, 2, 33, 0, (), 10, 64, np.float32),   # frames longer than a query tile
    ("landmark", 2, 3, 40, 0, (), 31, 64, np.float16),
    ("landmark", 4, 1, 9, 0, (), 7, 128, np.float32),
    ("landmark", 2, 2, 65, 0, (), 1, 32, np.float32),
    ("landmark", 1, 4, 12, 0, (), 12, 64, np.float32),
    ("dilated", 5, 2, 3, 0, (1, 2), 0, 8, np.float32),
    ("dilated", 6, 2, 9, 0, (1, 4), 0, 16, np.float32),
    ("dilated", 8, 4, 5, 0, (1, 2, 4), 0, 64, np.float32),
    ("dilated", 3, 3, 35, 0, (2,), 0, 64, np.float16),
    ("dilated", 4, 1, 11, 0, (), 0, 32, np.float32),      # no dilations: same time only
    ("dilated", 7, 2, 6, 0, (3, 5), 0, 128, np.float32),
    ("dilated", 2, 2, 50, 0, (1,), 0, 64, np.float32),
    ("memory_bank", 1, 1, 5, 3, (), 0, 8, np.float32),
    ("memory_bank", 2, 2, 7, 4, (), 0, 16, np.float32),
    ("memory_bank", 2, 3, 40, 32, (), 0, 64, np.float32),  # memory longer than a tile
    ("memory_bank", 3, 1, 33, 5, (), 0, 64, np.float16),
    ("memory_bank", 1, 2, 10, 1, (), 0, 128, np.float32),
    ("memory_bank", 2, 2, 12, 40, (), 0, 32, np.float32),
    ("landmark", 2, 2, 6, 0, (), 24, 64, np.float32),     # every token is a landmark
]


@pytest.mark.parametrize("strategy,T,N,F,mem,levels,M,D,dtype", SPARSE_CASES)
def test_sparse_kernel_matches_reference(host_harness, tmp_path, strategy, T, N, F, mem, levels,
                                         M, D, dtype):
    from vggt_mv.layers.attention_ops import STRATEGIES, levels_to_mask

    L = T * N * F + mem
    B, H = 2, 2
    rng = np.random.default_rng(L * 17 + D + M)
    q, k, v = (rng.standard_normal((B, H, L, D)).astype(dtype) for _ in range(3))
    lm = None
    if strategy == "landmark":
        # distinct per batch row, including indices inside query frames
        lm = np.stack([rng.choice(L, M, replace=False) for _ in range(B)]).astype(np.int32)
    sid, mask = STRATEGIES[strategy], levels_to_mask(levels)
    scale = float(D) ** -0.5
    got = run_harness(host_harness, tmp_path, 1, q, k, v, lm=lm, scale=scale, has_bias=0,
                      strategy=sid, F=F, T=T, N=N, mem=mem, level_mask=mask)
    ref = numpy_ref.sparse_attention(q.astype(np.float32), k.astype(np.float32),
                                     v.astype(np.float32),
                                     lm if lm is not None else np.zeros((B, 1), np.int32),
                                     scale, sid, F, T, N, mem, mask)
    tol = 2e-3 if dtype == np.float16 else 2e-5
    np.testing.assert_allclose(got.astype(np.float32), ref, atol=tol, rtol=tol)


def test_harness_rejects_invalid_problems(host_harness, tmp_path):
    q = np.zeros((1, 1, 10, 12), np.float32)  # head size not a multiple of 8
    with pytest.raises(AssertionError, match="head size"):
        run_harness(host_harness, tmp_path, 0, q, q, q, r=np.zeros((1, 10)), c=np.zeros((1, 10)))
    q = np.zeros((1, 1, 10, 8), np.float32)   # L != T*N*F + mem
    with pytest.raises(AssertionError, match="num_t \\* num_n"):
        run_harness(host_harness, tmp_path, 1, q, q, q, strategy=1, F=3, T=2, N=2)
