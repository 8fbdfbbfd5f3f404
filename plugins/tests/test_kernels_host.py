"""The CUDA kernel sources (CUDA-core and tensor-core kernels), executed on the CPU, against
the numpy reference of the contract.

The harness compiles plugins/csrc/attention/attention_launch.cu unchanged with a host
compiler; cuda_host_shim.h turns each CUDA thread into a std::thread and __syncthreads
into a barrier, so the shared-memory tiling and the online softmax run for real.
"""
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from plugins.kernel_cases import (BIASED_CASES, CUDA_CORES, SITE_BIASED, SITE_SPARSE,
                                  SPARSE_CASES, TC_BIASED, TC_SPARSE, TENSOR_CORES)
from plugins.reference import numpy_ref


# Shared-memory statistics of the last harness run (the shim's wavefront count).
LAST_STATS: dict = {}


def run_harness(exe, tmp_path, kind, q, k, v, *, r=None, c=None, lm=None, scale=0.125,
                has_bias=1, strategy=0, F=1, T=1, N=1, mem=0, level_mask=0, path=0):
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
            str(tmp_path), str(path)]
    res = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    m = re.search(r"bank_conflict_factor=([\d.]+)", res.stdout)
    LAST_STATS["bank_conflict_factor"] = float(m.group(1)) if m else None
    return np.frombuffer((tmp_path / "out.bin").read_bytes(),
                         np.float16 if half else np.float32).reshape(B, H, L, D)




def check_biased(exe, tmp_path, B, H, L, S, D, has_bias, mag, dtype, path, seed=0):
    rng = np.random.default_rng(L * 131 + S * 7 + D + seed)
    q = (rng.standard_normal((B, H, L, D)) * mag).astype(dtype)
    k = (rng.standard_normal((B, H, S, D)) * mag).astype(dtype)
    v = rng.standard_normal((B, H, S, D)).astype(dtype)
    r = rng.standard_normal((B, L)).astype(np.float32)
    c = (rng.standard_normal((B, S)) * 50).astype(np.float32)   # bias up to +-150
    scale = float(D) ** -0.5
    got = run_harness(exe, tmp_path, 0, q, k, v, r=r, c=c, scale=scale, has_bias=has_bias,
                      path=path)
    ref = numpy_ref.biased_attention(q.astype(np.float32), k.astype(np.float32),
                                     v.astype(np.float32), r, c, scale, has_bias)
    assert np.isfinite(got).all()
    if dtype == np.float16:
        # inputs identical (fp16 values), fp32 sums, one fp16 rounding of the output (and,
        # on tensor cores, of P: relative 2^-11)
        np.testing.assert_allclose(got.astype(np.float32), ref, atol=2e-3, rtol=2e-3)
    else:
        np.testing.assert_allclose(got, ref, atol=2e-5 * max(1.0, mag), rtol=1e-4)


@pytest.mark.parametrize("B,H,L,S,D,has_bias,mag,dtype", BIASED_CASES)
def test_biased_kernel_matches_reference(host_harness, tmp_path, B, H, L, S, D, has_bias, mag,
                                         dtype):
    check_biased(host_harness, tmp_path, B, H, L, S, D, has_bias, mag, dtype, CUDA_CORES)


def check_sparse(exe, tmp_path, strategy, T, N, F, mem, levels, M, D, dtype, path, seed=0):
    from vggt_mv.layers.attention_ops import STRATEGIES, levels_to_mask

    L = T * N * F + mem
    B, H = 2, 2
    rng = np.random.default_rng(L * 17 + D + M + seed)
    q, k, v = (rng.standard_normal((B, H, L, D)).astype(dtype) for _ in range(3))
    lm = None
    if strategy == "landmark":
        # distinct per batch row, including indices inside query frames
        lm = np.stack([rng.choice(L, M, replace=False) for _ in range(B)]).astype(np.int32)
    sid, mask = STRATEGIES[strategy], levels_to_mask(levels)
    scale = float(D) ** -0.5
    got = run_harness(exe, tmp_path, 1, q, k, v, lm=lm, scale=scale, has_bias=0, strategy=sid,
                      F=F, T=T, N=N, mem=mem, level_mask=mask, path=path)
    ref = numpy_ref.sparse_attention(q.astype(np.float32), k.astype(np.float32),
                                     v.astype(np.float32),
                                     lm if lm is not None else np.zeros((B, 1), np.int32),
                                     scale, sid, F, T, N, mem, mask)
    tol = 2e-3 if dtype == np.float16 else 2e-5
    np.testing.assert_allclose(got.astype(np.float32), ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("strategy,T,N,F,mem,levels,M,D,dtype", SPARSE_CASES)
def test_sparse_kernel_matches_reference(host_harness, tmp_path, strategy, T, N, F, mem, levels,
                                         M, D, dtype):
    check_sparse(host_harness, tmp_path, strategy, T, N, F, mem, levels, M, D, dtype, CUDA_CORES)


def test_harness_rejects_invalid_problems(host_harness, tmp_path):
    q = np.zeros((1, 1, 10, 12), np.float32)  # head size not a multiple of 8
    with pytest.raises(AssertionError, match="head size"):
        run_harness(host_harness, tmp_path, 0, q, q, q, r=np.zeros((1, 10)), c=np.zeros((1, 10)))
    q = np.zeros((1, 1, 10, 8), np.float32)   # L != T*N*F + mem
    with pytest.raises(AssertionError, match="num_t \\* num_n"):
        run_harness(host_harness, tmp_path, 1, q, q, q, strategy=1, F=3, T=2, N=2)


# --- tensor-core kernel (attention_kernel_tc.cuh, mma.sync m16n8k16) ------------------
# Every case above with a head size the tensor-core kernel takes (<= 128), in fp16, forced
# onto that kernel: mma.sync, ldmatrix and cp.async run through mma_ptx.h's host shim with
# their documented lane layouts, shared memory starts as NaN, reads before a write / before
# the cp.async wait / across warps without a barrier abort, and every shared-memory access
# is counted in bank wavefronts: the kernel must be conflict-free (factor 1.0). The case
# lists (and the small-length site shapes) live in plugins/kernel_cases.py.
def assert_conflict_free():
    assert LAST_STATS["bank_conflict_factor"] == 1.0, LAST_STATS


@pytest.mark.parametrize("B,H,L,S,D,has_bias,mag,_dtype", TC_BIASED + SITE_BIASED)
def test_tensor_core_biased_kernel(host_harness, tmp_path, B, H, L, S, D, has_bias, mag, _dtype):
    check_biased(host_harness, tmp_path, B, H, L, S, D, has_bias, mag, np.float16, TENSOR_CORES,
                 seed=1)
    assert_conflict_free()


@pytest.mark.parametrize("strategy,T,N,F,mem,levels,M,D,_dtype", TC_SPARSE + SITE_SPARSE)
def test_tensor_core_sparse_kernel(host_harness, tmp_path, strategy, T, N, F, mem, levels, M, D,
                                   _dtype):
    check_sparse(host_harness, tmp_path, strategy, T, N, F, mem, levels, M, D, np.float16,
                 TENSOR_CORES, seed=1)
    assert_conflict_free()


# --- mutation tests: each piece of the pipeline, removed, is caught ----------------------
def mutant(defines):
    from plugins.tests.conftest import CSRC, build_host_program

    return build_host_program("attention_host_mutant",
                              [CSRC / "attention" / "attention_launch.cu",
                               CSRC / "host_tests" / "attention_host_test.cpp"], tuple(defines))


@pytest.mark.parametrize("define,message", [
    ("VGGT_MUTATE_NO_ASYNC_WAIT", "before the cp.async.wait_group"),
    # the reading warp may find the other warp's copy still in flight, landed, or not yet
    # issued (the shim's initcheck: on a loaded machine the warps' threads interleave so):
    # each aborts, so each catches the missing barrier
    ("VGGT_MUTATE_DROP_BARRIER=1", "shared-memory race|before the cp.async.wait_group|"
                                   "read of uninitialised shared word"),
    ("VGGT_MUTATE_DROP_BARRIER=2", "shared-memory race"),
])
def test_mutation_missing_synchronisation_is_caught(tmp_path, define, message):
    """Without the wait, the kernel reads tiles still in flight; without either barrier,
    one warp reads what another wrote (or overwrites what another still reads) in the same
    barrier interval: the shim aborts with the reason, deterministically."""
    exe = mutant([define])
    with pytest.raises(AssertionError, match=message):
        check_biased(exe, tmp_path, 1, 1, 70, 200, 64, 1, 1.0, np.float16, TENSOR_CORES)


def test_mutation_missing_o_rescale_is_caught(tmp_path):
    exe = mutant(["VGGT_MUTATE_NO_O_RESCALE"])
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        check_biased(exe, tmp_path, 1, 1, 70, 200, 64, 1, 1.0, np.float16, TENSOR_CORES)


@pytest.mark.parametrize("D", [64, 128])
def test_mutation_missing_swizzle_raises_bank_conflicts(host_harness, tmp_path, D):
    """Row-major tiles give the same results with several-way bank conflicts on every
    ldmatrix: the factor the shim reports rises well above 1."""
    exe = mutant(["VGGT_MUTATE_NO_SWIZZLE"])
    check_biased(exe, tmp_path, 1, 1, 70, 100, D, 1, 1.0, np.float16, TENSOR_CORES)
    factor = LAST_STATS["bank_conflict_factor"]
    check_biased(host_harness, tmp_path, 1, 1, 70, 100, D, 1, 1.0, np.float16, TENSOR_CORES)
    assert LAST_STATS["bank_conflict_factor"] == 1.0 and factor > 2.0, factor


def test_automatic_path_choice(host_harness, tmp_path):
    """fp16 with D <= 128 runs on tensor cores, fp32 and D > 128 on CUDA cores: the
    automatic choice is bit-identical to the forced one, and the two kernels differ (P in
    fp16 vs fp32), so the comparison can tell which one ran."""
    rng = np.random.default_rng(7)

    def run(dtype, D, *paths):
        q, k, v = (rng.standard_normal((1, 2, 45, D)).astype(dtype) for _ in range(3))
        r, c = rng.standard_normal((1, 45)).astype(np.float32), rng.standard_normal((1, 45))
        return [run_harness(host_harness, tmp_path, 0, q, k, v, r=r, c=c, path=p) for p in paths]

    auto, tc, cc = run(np.float16, 64, 0, TENSOR_CORES, CUDA_CORES)
    assert np.array_equal(auto, tc) and not np.array_equal(tc, cc)
    auto, cc = run(np.float16, 136, 0, CUDA_CORES)
    assert np.array_equal(auto, cc)
    auto, cc = run(np.float32, 64, 0, CUDA_CORES)
    assert np.array_equal(auto, cc)


@pytest.mark.parametrize("dtype,D", [(np.float32, 64), (np.float16, 136), (np.float16, 256)])
def test_tensor_cores_refused_where_they_do_not_apply(host_harness, tmp_path, dtype, D):
    q = np.zeros((1, 1, 4, D), dtype)
    with pytest.raises(AssertionError, match="launch_attention failed: 4"):
        run_harness(host_harness, tmp_path, 0, q, q, q, r=np.zeros((1, 4)), c=np.zeros((1, 4)),
                    path=TENSOR_CORES)


# --- real-frame-derived inputs --------------------------------------------------------
SCENE = Path(__file__).resolve().parents[3] / "shared" / "data" / "mv_scene"


def scene_tokens(T: int, N: int, size_hw=(56, 84), D: int = 64, H: int = 2):
    """q, k, v [1, H, T*N*F, D] from real mv_scene patches (14x14 RGB, standardised,
    through fixed projections) and the per-patch dynamic-mask fraction [T*N*F]: the
    correlated, non-Gaussian logits and the mask bias a real clip produces."""
    if not SCENE.is_dir():
        pytest.skip(f"real frames not found at {SCENE} (../shared/data/mv_scene)")
    from runtime.preprocess import load_image, load_mask, pool_mask_to_patches

    patches, fracs = [], []
    for t in range(T):
        for n in range(N):
            img = load_image(SCENE / "images" / f"time_{t:02d}" / f"view{n}.png", size_hw)
            c, h, w = img.shape
            p = img.reshape(c, h // 14, 14, w // 14, 14).transpose(1, 3, 0, 2, 4)
            patches.append(p.reshape(-1, c * 14 * 14))
            m = load_mask(SCENE / "masks" / f"time_{t:02d}" / f"view{n}.png", size_hw)
            fracs.append(pool_mask_to_patches(m).reshape(-1))
    x = np.concatenate(patches)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    rng = np.random.default_rng(1234)
    proj = rng.standard_normal((3, H, x.shape[1], D)) / np.sqrt(x.shape[1])
    q, k, v = (np.einsum("lc,hcd->hld", x, proj[i])[None] for i in range(3))
    return q, k, v, np.concatenate(fracs).astype(np.float32), patches[0].shape[0]


@pytest.mark.parametrize("dtype,path", [(np.float32, 1), (np.float16, 2)])
def test_kernels_on_real_frame_tokens(host_harness, tmp_path, dtype, path):
    """Biased attention over a 2x2 real clip (dynamic-mask bias: mask fraction of the query
    times -6 x the key's) and dilated sparse attention over 4x2, on both kernels."""
    q, k, v, frac, F = scene_tokens(2, 2)
    assert 0 < frac.mean() < 1, "the clip's masks should mark some dynamic patches"
    q, k, v = (a.astype(dtype) for a in (q, k, v))
    r, c = frac[None], -6.0 * frac[None]
    got = run_harness(host_harness, tmp_path, 0, q, k, v, r=r, c=c, scale=0.125, path=path)
    ref = numpy_ref.biased_attention(*(a.astype(np.float32) for a in (q, k, v)), r, c, 0.125, 1)
    tol = 2e-3 if dtype == np.float16 else 2e-5
    np.testing.assert_allclose(got.astype(np.float32), ref, atol=tol, rtol=tol)

    q, k, v, _, F = scene_tokens(4, 2)
    q, k, v = (a.astype(dtype) for a in (q, k, v))
    got = run_harness(host_harness, tmp_path, 1, q, k, v, scale=0.125, has_bias=0, strategy=1,
                      F=F, T=4, N=2, level_mask=0b110, path=path)
    ref = numpy_ref.sparse_attention(*(a.astype(np.float32) for a in (q, k, v)),
                                     np.zeros((1, 1), np.int32), 0.125, 1, F, 4, 2, 0, 0b110)
    np.testing.assert_allclose(got.astype(np.float32), ref, atol=tol, rtol=tol)


# --- Time-SA lengths (T=8 at 518x518: L = 8 x 1374 = 10,992 tokens per view) -------------
@pytest.mark.parametrize("dtype,path", [(np.float32, 1), (np.float16, 2)])
@pytest.mark.parametrize("L,S", [(40, 11_008), (11_003, 40)])
def test_time_sa_lengths(host_harness, tmp_path, dtype, path, L, S):
    """11k keys streamed through one block (344 tiles of online softmax), and 11k queries
    over 344 blocks of the grid; D = 16 keeps the CPU emulation of the tensor cores short."""
    rng = np.random.default_rng(L + S)
    D = 16
    q, k, v = (rng.standard_normal((1, 1, n, D)).astype(dtype) for n in (L, S, S))
    r, c = rng.standard_normal((1, L)).astype(np.float32), rng.standard_normal((1, S)) * 3
    got = run_harness(host_harness, tmp_path, 0, q, k, v, r=r, c=c, scale=0.25, path=path)
    ref = numpy_ref.biased_attention(*(a.astype(np.float32) for a in (q, k, v)), r,
                                     c.astype(np.float32), 0.25, 1)
    tol = 2e-3 if dtype == np.float16 else 2e-5
    np.testing.assert_allclose(got.astype(np.float32), ref, atol=tol, rtol=tol)
