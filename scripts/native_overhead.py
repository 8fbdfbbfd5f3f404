"""Attention sites of one bucket and the FLOPs the native graph adds to them.

Runs a weightless VGGT_MV on the meta device (instant at full size), records every dense
site's (B, H, L, S, D, has_bias) and prints, per site kind, the attention GEMM FLOPs
(q kᵀ and P v: 4 B H L S D) and what export/native.py's PAD extra channels on biased
sites add (D -> D + PAD for both products; unbiased sites are unchanged).

    python scripts/native_overhead.py [--preset vggt_mv_1b] [--T 8 --N 4 --H 518 --W 518]
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def site_shapes(preset: str, T: int, N: int, H: int, W: int) -> list[dict]:
    import torch

    from vggt_mv.config import get_config
    from vggt_mv.layers import attention_ops
    from vggt_mv.models import VGGTMV

    seen: list[dict] = []
    original = attention_ops._biased_attention_op

    def record(q, k, v, r, c, scale, has_bias):
        B, Hh, L, D = q.shape
        seen.append({"B": B, "H": Hh, "L": L, "S": k.shape[2], "D": D,
                     "biased": bool(has_bias)})
        return original(q, k, v, r, c, scale, has_bias)

    attention_ops._biased_attention_op = record
    try:
        with torch.device("meta"), torch.no_grad():
            model = VGGTMV(get_config(preset))
            model(torch.empty(1, T, N, 3, H, W))
    finally:
        attention_ops._biased_attention_op = original
    return seen


def main(argv: list[str] | None = None) -> int:
    from export.native import PAD

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="vggt_mv_1b")
    for dim, default in (("T", 8), ("N", 4), ("H", 518), ("W", 518)):
        ap.add_argument(f"--{dim}", type=int, default=default)
    a = ap.parse_args(argv)
    sites = site_shapes(a.preset, a.T, a.N, a.H, a.W)
    kinds: dict[tuple, dict] = defaultdict(lambda: {"sites": 0, "biased": 0, "flops": 0.0,
                                                    "extra": 0.0})
    for s in sites:
        key = (s["B"], s["H"], s["L"], s["S"], s["D"])
        k = kinds[key]
        f = 4.0 * s["B"] * s["H"] * s["L"] * s["S"] * s["D"]
        k["sites"] += 1
        k["flops"] += f
        if s["biased"]:
            k["biased"] += 1
            k["extra"] += f * PAD / s["D"]
    total = sum(k["flops"] for k in kinds.values())
    extra = sum(k["extra"] for k in kinds.values())
    print(f"{a.preset} T={a.T} N={a.N} {a.H}x{a.W}: {len(sites)} dense attention sites")
    print(f"{'[B, H, L, S, D]':<32}{'sites':>6}{'biased':>8}{'TFLOP':>9}{'+native':>10}")
    for key, k in sorted(kinds.items(), key=lambda kv: -kv[1]["flops"]):
        print(f"{str(list(key)):<32}{k['sites']:>6}{k['biased']:>8}{k['flops'] / 1e12:>9.2f}"
              f"{100 * k['extra'] / k['flops']:>9.2f}%")
    print(f"total attention GEMM {total / 1e12:.2f} TFLOP; the native graph adds "
          f"{extra / 1e12:.2f} TFLOP ({100 * extra / total:.2f}%), on biased sites only "
          f"(+{100 * PAD / 64:.1f}% each at D = 64)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
