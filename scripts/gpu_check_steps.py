"""The work of each step of scripts/gpu_check.py, run in a child process of it so a hung
kernel, a crash or a timeout costs that step only. Buffers are PyTorch tensors: on the GPU
for the real check, in host memory (numpy arrays shared with torch) for the dry run, where
the library is the host build of the same entry point and executes every launch on the CPU.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from plugins.capi import Launcher, SignatureError
from plugins.kernel_cases import SANITIZE_CASES, TENSOR_CORES, Site, gpu_cases, real_sites

FP16_TOL = 2e-3   # fp16 inputs and output, fp32 sums: one rounding of the output (and of P)
# Dry run: the sites at the real head size and structure but these lengths, so the CPU
# shim runs several query and key tiles (partial ones included) in seconds.
DRY_LENGTH = {"Time-SA": 200, "View-SA": 136, "DINOv2": 75, "camera trunk": 32}


class Env:
    """Where the buffers live and how time is taken there."""

    def __init__(self, dry_run: bool):
        import torch

        self.torch = torch
        self.dry = dry_run
        self.dev = torch.device("cpu" if dry_run else "cuda")

    def sync(self) -> None:
        if not self.dry:
            self.torch.cuda.synchronize()

    def stream(self):
        return None if self.dry else self.torch.cuda.current_stream().cuda_stream

    def tensor(self, a: np.ndarray):
        return self.torch.from_numpy(np.ascontiguousarray(a)).to(self.dev)

    def host(self, t) -> np.ndarray:
        # the copy back happens in the kernel's dtype: no device-side cast kernel runs
        # (under compute-sanitizer only our kernel should execute)
        return t.cpu().numpy().astype(np.float32)

    def ms_per_call(self, fn, iters: int, warmup: int) -> float:
        for _ in range(warmup):
            fn()
        self.sync()
        if self.dry:
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            return (time.perf_counter() - t0) * 1e3 / iters
        start, end = (self.torch.cuda.Event(enable_timing=True) for _ in range(2))
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        self.torch.cuda.synchronize()
        return start.elapsed_time(end) / iters


def launch(fn: Launcher, env: Env, *, kind, half, B, H, L, S, D, M, scale, has_bias=0, strategy=0, frame_len=1,
           num_t=1, num_n=1, num_memory=0, level_mask=0, q, k, v, r, c, landmarks, out, path) -> None:
    ptr = lambda t: None if t is None else t.data_ptr()   # noqa: E731
    rc = fn(kind=kind, half=half, B=B, H=H, L=L, S=S, D=D, M=M, scale=scale, has_bias=has_bias,
            strategy=strategy, frame_len=frame_len, num_t=num_t, num_n=num_n, num_memory=num_memory,
            level_mask=level_mask, q=ptr(q), k=ptr(k), v=ptr(v), r=ptr(r), c=ptr(c), landmarks=ptr(landmarks),
            out=ptr(out), stream=env.stream(), path=path)
    if rc != 0:
        raise RuntimeError(f"vggt_attention_launch returned {rc}")


def run_case(fn: Launcher, env: Env, kind: str, case: tuple, path: int, seed: int = 3) -> float:
    """One case of plugins/kernel_cases.py vs numpy_ref; returns the max abs error
    (raises AssertionError past the tolerance of the CPU tests)."""
    from plugins.reference import numpy_ref

    if kind == "biased":
        B, H, L, S, D, has_bias, mag, dtype = case
        dtype = np.float16 if path == TENSOR_CORES else dtype
        rng = np.random.default_rng(L * 131 + S * 7 + D + seed)
        q = (rng.standard_normal((B, H, L, D)) * mag).astype(dtype)
        k = (rng.standard_normal((B, H, S, D)) * mag).astype(dtype)
        v = rng.standard_normal((B, H, S, D)).astype(dtype)
        r = rng.standard_normal((B, L)).astype(np.float32)
        c = (rng.standard_normal((B, S)) * 50).astype(np.float32)
        scale = float(D) ** -0.5
        ref = numpy_ref.biased_attention(*(a.astype(np.float32) for a in (q, k, v)), r, c, scale, has_bias)
        lm, M = None, 1
        attrs = dict(kind=0, has_bias=has_bias)
    else:
        from vggt_mv.layers.attention_ops import STRATEGIES, levels_to_mask

        strategy, T, N, F, mem, levels, M, D, dtype = case
        dtype = np.float16 if path == TENSOR_CORES else dtype
        L = S = T * N * F + mem
        B, H, mag = 2, 2, 1.0
        rng = np.random.default_rng(L * 17 + D + M + seed)
        q, k, v = (rng.standard_normal((B, H, L, D)).astype(dtype) for _ in range(3))
        lm = (np.stack([rng.choice(L, M, replace=False) for _ in range(B)]).astype(np.int32)
              if strategy == "landmark" else np.zeros((B, 1), np.int32))
        M = lm.shape[1]
        sid, mask = STRATEGIES[strategy], levels_to_mask(levels)
        scale = float(D) ** -0.5
        ref = numpy_ref.sparse_attention(*(a.astype(np.float32) for a in (q, k, v)), lm, scale, sid, F, T, N,
                                         mem, mask)
        r = c = None
        attrs = dict(kind=1, strategy=sid, frame_len=F, num_t=T, num_n=N, num_memory=mem, level_mask=mask)
    t = {n: None if a is None else env.tensor(a) for n, a in dict(q=q, k=k, v=v, r=r, c=c, lm=lm).items()}
    out = env.torch.empty_like(t["q"])
    launch(fn, env, half=int(dtype == np.float16), B=B, H=H, L=L, S=S, D=D, M=M, scale=scale, q=t["q"], k=t["k"],
           v=t["v"], r=t["r"], c=t["c"], landmarks=t["lm"], out=out, path=path, **attrs)
    env.sync()
    got = env.host(out)
    if dtype == np.float16:
        np.testing.assert_allclose(got, ref, atol=FP16_TOL, rtol=FP16_TOL)
    else:
        np.testing.assert_allclose(got, ref, atol=2e-5 * max(1.0, mag), rtol=1e-4)
    return float(np.abs(got - ref).max())


def case_label(kind: str, case: tuple, path: int) -> str:
    vals = [getattr(x, "__name__", x) for x in case]
    return f"{kind} {tuple(vals)} path={'tensor cores' if path == TENSOR_CORES else 'CUDA cores'}"


def site_shapes(dry_run: bool) -> list[Site]:
    sites = real_sites()
    if dry_run:
        sites = [replace(s, batch=1, heads=2, length=min(s.length, DRY_LENGTH[s.name])) for s in sites]
    return sites


def site_inputs(env: Env, s: Site, seed: int):
    torch = env.torch
    g = torch.Generator(device=env.dev).manual_seed(seed)
    shape = (s.batch, s.heads, s.length, s.head_dim)
    q, k, v = (torch.randn(shape, generator=g, device=env.dev).half() for _ in range(3))
    r = torch.randn(s.batch, s.length, generator=g, device=env.dev)
    c = 3 * torch.randn(s.batch, s.length, generator=g, device=env.dev)
    return q, k, v, r, c


def folded(q, k, v, r, c, scale: float, pad: int = 8):
    """q, k, v with the bias as one more channel (q: r / scale, k: c; v: 0), zero-padded to
    D + pad so every SDPA backend takes them: scale * q'k' = scale * qk + r c."""
    import torch

    B, H, L, D = q.shape
    qe, ke, ve = (torch.zeros(B, H, L, D + pad, dtype=t.dtype, device=t.device) for t in (q, k, v))
    qe[..., :D], ke[..., :D], ve[..., :D] = q, k, v
    if r is not None:
        qe[..., D] = (r / scale)[:, None, :].to(q.dtype)
        ke[..., D] = c[:, None, :].to(k.dtype)
    return qe, ke, ve


def sdpa_reference(env: Env, q, k, v, r, c, scale: float):
    """fp32 SDPA of the fp16 inputs, one batch row at a time (a math-backend fallback then
    holds at most H x L x L fp32)."""
    import torch.nn.functional as Fnn

    outs = []
    D = q.shape[-1]
    for b in range(q.shape[0]):
        sl = slice(b, b + 1)
        qe, ke, ve = folded(q[sl].float(), k[sl].float(), v[sl].float(),
                            None if r is None else r[sl], None if c is None else c[sl], scale)
        outs.append(Fnn.scaled_dot_product_attention(qe, ke, ve, scale=scale)[..., :D])
    return env.torch.cat(outs)


def compare_sites(fn: Launcher, env: Env, progress) -> list[dict]:
    """Every real site, with and without the bias, on all rows, vs torch SDPA in fp32."""
    rows = []
    for i, s in enumerate(site_shapes(env.dry)):
        q, k, v, r, c = site_inputs(env, s, seed=11 + i)
        scale = s.head_dim ** -0.5
        for has_bias in (0, 1):
            out = env.torch.empty_like(q)
            t0 = time.perf_counter()
            launch(fn, env, kind=0, half=1, B=s.batch, H=s.heads, L=s.length, S=s.length, D=s.head_dim, M=1,
                   scale=scale, has_bias=has_bias, q=q, k=k, v=v, r=r, c=c, landmarks=None, out=out,
                   path=TENSOR_CORES)
            env.sync()
            ref = sdpa_reference(env, q, k, v, r if has_bias else None, c if has_bias else None, scale)
            diff = (out.float() - ref).abs()
            bad = int((diff > FP16_TOL + FP16_TOL * ref.abs()).sum())
            row = {"site": s.name, "shape": [s.batch, s.heads, s.length, s.head_dim], "bias": bool(has_bias),
                   "rows": s.batch * s.heads * s.length, "max_abs_err": round(float(diff.max()), 6),
                   "elements_past_tol": bad, "ok": bad == 0, "seconds": round(time.perf_counter() - t0, 2)}
            rows.append(row)
            progress(row)
    return rows


def time_sites(fn: Launcher, env: Env, progress, iters: int, warmup: int) -> list[dict]:
    """ms per call of ours (with / without bias) and of SDPA's flash backend (the bias
    folded as an extra channel for the biased form) at each site."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as Fnn

    rows = []
    for i, s in enumerate(site_shapes(env.dry)):
        q, k, v, r, c = site_inputs(env, s, seed=11 + i)
        scale = s.head_dim ** -0.5
        out = env.torch.empty_like(q)
        qe, ke, ve = folded(q, k, v, r, c, scale)
        q0, k0, v0 = folded(q, k, v, None, None, scale, pad=0)
        flops = 4.0 * s.batch * s.heads * s.length * s.length * s.head_dim

        def ours(has_bias):
            launch(fn, env, kind=0, half=1, B=s.batch, H=s.heads, L=s.length, S=s.length, D=s.head_dim, M=1,
                   scale=scale, has_bias=has_bias, q=q, k=k, v=v, r=r, c=c, landmarks=None, out=out,
                   path=TENSOR_CORES)

        def sdpa(a, b, cc):
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                Fnn.scaled_dot_product_attention(a, b, cc, scale=scale)

        for label, f in (("ours, bias", lambda: ours(1)), ("ours, no bias", lambda: ours(0)),
                         ("SDPA flash, bias as a channel", lambda: sdpa(qe, ke, ve)),
                         ("SDPA flash, no bias", lambda: sdpa(q0, k0, v0))):
            ms = env.ms_per_call(f, iters, warmup)
            row = {"site": s.name, "shape": [s.batch, s.heads, s.length, s.head_dim], "kernel": label,
                   "ms": round(ms, 3), "tflops": round(flops / ms / 1e9, 2)}
            rows.append(row)
            progress(row)
    return rows


def probe(env: Env) -> dict:
    torch = env.torch
    info = {"torch": torch.__version__, "torch_cuda": torch.version.cuda}
    if env.dry:
        return {**info, "gpu": "none (dry run)"}
    if not torch.cuda.is_available():
        raise RuntimeError("PyTorch sees no CUDA device (use --dry-run to check the plumbing without one)")
    major, minor = torch.cuda.get_device_capability(0)
    return {**info, "gpu": torch.cuda.get_device_name(0), "arch": f"{major}{minor}"}


def run_step(name: str, lib: str, work: Path, dry_run: bool, capi_source: str | None = None) -> dict:
    """Runs one step in this process; writes work/<name>.progress.jsonl as it goes (what a
    timeout leaves behind) and returns the step's result."""
    env = Env(dry_run)
    prog_path = work / f"{name}.progress.jsonl"

    def progress(row: dict) -> None:
        with prog_path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    if name == "probe":
        info = probe(env)
        return {"status": "ok", **info, "summary": f"{info['gpu']}, torch {info['torch']}"}
    fn = Launcher(lib, capi_source) if capi_source else Launcher(lib)
    if name == "sanitize":
        for kind, case, path in SANITIZE_CASES:
            run_case(fn, env, kind, case, path)
        return {"status": "ok", "cases": len(SANITIZE_CASES), "summary": f"{len(SANITIZE_CASES)} cases"}
    if name == "cases":
        failures, n = [], 0
        for kind, case, path in gpu_cases():
            t0 = time.perf_counter()
            try:
                err = run_case(fn, env, kind, case, path)
                n += 1
                progress({"case": case_label(kind, case, path), "ok": True, "max_abs_err": err,
                          "seconds": round(time.perf_counter() - t0, 3)})
            except SignatureError:
                raise   # no case can run: stop at the first
            except (AssertionError, RuntimeError) as e:   # keep going: the report lists every failure
                msg = f"{case_label(kind, case, path)}: {' '.join(str(e).split())[:300]}"
                failures.append(msg)
                progress({"case": case_label(kind, case, path), "ok": False, "error": msg})
        return {"status": "ok" if not failures else "failed", "passed": n, "total": n + len(failures),
                "failures": failures, "summary": f"{n} / {n + len(failures)} cases passed"}
    if name == "sites":
        rows = compare_sites(fn, env, progress)
        good = sum(r["ok"] for r in rows)
        return {"status": "ok" if good == len(rows) else "failed", "rows": rows,
                "summary": f"{good} / {len(rows)} site comparisons within tolerance on all rows"}
    if name == "timing":
        iters, warmup = (1, 0) if dry_run else (20, 3)
        rows = time_sites(fn, env, progress, iters, warmup)
        return {"status": "ok", "rows": rows, "summary": f"{len(rows)} timings, {iters} calls each"}
    raise ValueError(f"unknown step {name!r}")
