#!/usr/bin/env python3
"""Python half of scripts/gpu_check.sh: the kernel cases, compute-sanitizer runs and
timings on a GPU through the ctypes library the shell script built. Run the shell script,
not this file (it builds the library first)."""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SANITIZER_TOOLS = ("memcheck", "racecheck", "initcheck", "synccheck")
# T=8, N=4 at 518x518 (python cli.py model-info --T 8 --N 4): 1,374 tokens per frame,
# 16 heads of 64 in the 1B model. Time-SA: B*N sequences of T*F; View-SA: B*T of N*F;
# DINOv2: every frame alone.
TIMING_SHAPES = [
    ("Time-SA", 4, 16, 8 * 1374, 64),
    ("View-SA", 8, 16, 4 * 1374, 64),
    ("DINOv2", 32, 16, 1374, 64),
]
CUDA_CORES, TENSOR_CORES = 1, 2


def case_lists():
    from plugins.tests import test_kernels_host as t

    biased = [("biased", c, CUDA_CORES) for c in t.BIASED_CASES]
    biased += [("biased", c, TENSOR_CORES) for c in t.TC_BIASED + t.SITE_BIASED]
    sparse = [("sparse", c, CUDA_CORES) for c in t.SPARSE_CASES]
    sparse += [("sparse", c, TENSOR_CORES) for c in t.TC_SPARSE + t.SITE_SPARSE]
    return biased + sparse


def load_lib(path: str):
    lib = ctypes.CDLL(path)
    f = lib.vggt_attention_launch
    f.argtypes = [ctypes.c_int] * 8 + [ctypes.c_float] + [ctypes.c_int] * 7 + [ctypes.c_void_p] * 9 + [ctypes.c_int]
    f.restype = ctypes.c_int
    return f


def run_case(fn, kind, case, path, seed=3):
    """One case on the GPU vs numpy_ref; returns max abs error (raises on mismatch)."""
    import numpy as np
    import torch

    from plugins.reference import numpy_ref

    dev = torch.device("cuda")
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
        lm = np.zeros((B, 1), np.int32)
        attrs = (0, has_bias, 0, 1, 1, 1, 0, 0)
    else:
        from vggt_mv.layers.attention_ops import STRATEGIES, levels_to_mask

        strategy, T, N, F, mem, levels, M, D, dtype = case
        dtype = np.float16 if path == TENSOR_CORES else dtype
        L = S = T * N * F + mem
        B, H = 2, 2
        rng = np.random.default_rng(L * 17 + D + M + seed)
        q, k, v = (rng.standard_normal((B, H, L, D)).astype(dtype) for _ in range(3))
        lm = (np.stack([rng.choice(L, M, replace=False) for _ in range(B)]).astype(np.int32)
              if strategy == "landmark" else np.zeros((B, 1), np.int32))
        sid, mask = STRATEGIES[strategy], levels_to_mask(levels)
        scale = float(D) ** -0.5
        ref = numpy_ref.sparse_attention(*(a.astype(np.float32) for a in (q, k, v)), lm, scale, sid, F, T, N,
                                         mem, mask)
        r = np.zeros((B, L), np.float32)
        c = np.zeros((B, S), np.float32)
        attrs = (1, 0, sid, F, T, N, mem, mask)
    t = {n: torch.from_numpy(np.ascontiguousarray(a)).to(dev) for n, a in
         dict(q=q, k=k, v=v, r=r, c=c, lm=lm).items()}
    out = torch.empty_like(t["q"])
    rc = fn(attrs[0], int(dtype == np.float16), B, H, L, S, D, lm.shape[1], scale, *attrs[1:],
            t["q"].data_ptr(), t["k"].data_ptr(), t["v"].data_ptr(), t["r"].data_ptr(), t["c"].data_ptr(),
            t["lm"].data_ptr(), out.data_ptr(), None, path)
    torch.cuda.synchronize()
    if rc != 0:
        raise RuntimeError(f"launch returned {rc}")
    got = out.float().cpu().numpy()
    tol = 2e-3 if dtype == np.float16 else 2e-5
    err = float(np.abs(got - ref).max())
    np.testing.assert_allclose(got, ref, atol=tol * max(1.0, mag if kind == "biased" and dtype != np.float16 else 1.0),
                               rtol=tol if dtype == np.float16 else 1e-4)
    return err


def time_shapes(fn, iters=10):
    import torch
    import torch.nn.functional as Fnn

    rows = []
    for name, B, H, L, D in TIMING_SHAPES:
        q, k, v = (torch.randn(B, H, L, D, device="cuda", dtype=torch.float16) for _ in range(3))
        r = torch.randn(B, L, device="cuda")
        c = torch.randn(B, L, device="cuda")
        out = torch.empty_like(q)
        flops = 4.0 * B * H * L * L * D

        def ours(has_bias):
            rc = fn(0, 1, B, H, L, L, D, 1, D ** -0.5, has_bias, 0, 1, 1, 1, 0, 0, q.data_ptr(), k.data_ptr(),
                    v.data_ptr(), r.data_ptr(), c.data_ptr(), None, out.data_ptr(),
                    ctypes.c_void_p(torch.cuda.current_stream().cuda_stream), TENSOR_CORES)
            assert rc == 0, rc

        def sdpa():
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                Fnn.scaled_dot_product_attention(q, k, v)

        for label, f in (("ours (bias)", lambda: ours(1)), ("ours (no bias)", lambda: ours(0)), ("SDPA flash", sdpa)):
            for _ in range(3):
                f()
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                f()
            end.record()
            torch.cuda.synchronize()
            ms = start.elapsed_time(end) / iters
            rows.append({"site": name, "shape": [B, H, L, D], "kernel": label, "ms": round(ms, 3),
                         "tflops": round(flops / ms / 1e9, 1)})
    return rows


def sanitizer_commands(lib: str) -> list[list[str]]:
    return [["compute-sanitizer", "--tool", tool, "--error-exitcode", "9", sys.executable, str(Path(__file__)),
             "--lib", lib, "--sanitize-case"] for tool in SANITIZER_TOOLS]


SANITIZE_CASES = [
    ("biased", (1, 1, 70, 200, 64, 1, 1.0, None), TENSOR_CORES),
    ("biased", (1, 1, 45, 45, 128, 1, 1.0, None), TENSOR_CORES),
    ("sparse", ("landmark", 2, 2, 7, 0, (), 4, 64, None), TENSOR_CORES),
    ("biased", (1, 1, 33, 17, 64, 1, 1.0, "float32"), CUDA_CORES),
]


def write_reports(out: Path, report: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# Attention kernels on {report['gpu']}", "",
          f"dry run: {report['dry_run']}; arch sm_{report['arch']}; command: `bash scripts/gpu_check.sh`", "",
          f"kernel cases: {report['cases_passed']} / {report['cases_total']} passed", ""]
    for f in report["case_failures"]:
        md.append(f"- FAILED {f}")
    md += ["", "| sanitizer | result |", "|---|---|"]
    md += [f"| {k} | {v} |" for k, v in report["sanitizers"].items()]
    md += ["", "| site | B, H, L, D | kernel | ms | TFLOP/s |", "|---|---|---|---|---|"]
    md += [f"| {t['site']} | {t['shape']} | {t['kernel']} | {t['ms']} | {t['tflops']} |" for t in report["timings"]]
    for name, text in (("gpu_check.json", json.dumps(report, indent=2) + "\n"), ("gpu_check.md", "\n".join(md) + "\n")):
        tmp = out / (name + ".partial")
        tmp.write_text(text)
        tmp.replace(out / name)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lib", default="")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "gpu_check")
    ap.add_argument("--arch", default="")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--sanitize-case", action="store_true", help="(internal) the small cases under compute-sanitizer")
    args = ap.parse_args(argv)
    import numpy as np

    if args.sanitize_case:
        fn = load_lib(args.lib)
        for kind, case, path in SANITIZE_CASES:
            case = tuple(np.float32 if x == "float32" else np.float16 if x is None else x for x in case)
            run_case(fn, kind, case, path)
        return 0
    cases = case_lists()
    report = {"dry_run": args.dry_run, "arch": args.arch, "gpu": "none (dry run)", "cases_total": len(cases),
              "cases_passed": 0, "case_failures": [], "sanitizers": {}, "timings": [],
              "timing_shapes": TIMING_SHAPES, "sanitizer_commands": [" ".join(c) for c in sanitizer_commands(args.lib)]}
    if args.lib:
        load_lib(args.lib)   # the library loads and exports the entry point
        report["library_symbol"] = "vggt_attention_launch"
    if args.dry_run:
        write_reports(args.out, report)
        print(f"gpu_check: dry run ok: {len(cases)} cases, {len(TIMING_SHAPES)} timing shapes, "
              f"{len(SANITIZER_TOOLS)} sanitizer tools; report in {args.out}")
        return 0
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: PyTorch sees no CUDA device; use --dry-run to check the plumbing", file=sys.stderr)
        return 1
    report["gpu"] = torch.cuda.get_device_name(0)
    fn = load_lib(args.lib)
    t0 = time.time()
    for kind, case, path in cases:
        try:
            run_case(fn, kind, case, path)
            report["cases_passed"] += 1
        except Exception as e:   # keep going: the report lists every failure
            report["case_failures"].append(f"{kind} {case} path={path}: {str(e).splitlines()[0][:200]}")
    report["cases_seconds"] = round(time.time() - t0, 1)
    for cmd in sanitizer_commands(args.lib):
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=150)
            tail = (res.stdout + res.stderr).strip().splitlines()[-1:] or [""]
            report["sanitizers"][cmd[2]] = "ok" if res.returncode == 0 else f"rc={res.returncode}: {tail[0][:200]}"
        except (OSError, subprocess.TimeoutExpired) as e:
            report["sanitizers"][cmd[2]] = f"not run: {e}"
    report["timings"] = time_shapes(fn)
    write_reports(args.out, report)
    print(json.dumps({k: report[k] for k in ("gpu", "cases_passed", "cases_total", "sanitizers")}, indent=1))
    return 0 if not report["case_failures"] and all(v == "ok" for v in report["sanitizers"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
