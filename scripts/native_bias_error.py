"""FP16 error of the rank-1 bias folded into head channels (export/native.py), measured.

An FP16 graph rounds the extra q/k channels to FP16 before the attention MMA; the plugin
adds r_i c_j in FP32. This script emulates the MMA (FP16 operands, exact products, FP32
accumulation) on numpy and reports, per bias magnitude, the error of the bias part of the
logits and of the attention output against float64, for:
  plugin : FP32 bias added to FP32-accumulated logits (what the plugin kernel does)
  single : one channel pair q_e = fp16(r / scale), k_e = fp16(c)
  hilo   : export/native.py's three channels r_hi c_hi + r_hi c_lo + r_lo c_hi

    python scripts/native_bias_error.py [--L 256] [--D 64] [--seed 0] [--json OUT]
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

# Bias magnitudes VGGT_MV meets: PAGE-4D's r in {0, 1} (camera / register rows) times a key
# bias in [-0.5, 0]; dual-stream lambdas reach |4|; "arbitrary" stresses the form.
CASES = {
    "page4d": lambda g, L, S: (g.integers(0, 2, L).astype(np.float64),
                               -0.5 * g.random(S)),
    "dual_lambda_4": lambda g, L, S: (g.uniform(-1, 1, L), g.uniform(-4, 4, S)),
    "arbitrary": lambda g, L, S: (g.normal(0, 3, L), g.normal(0, 3, S)),
}


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16)


def _split(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    hi = _f16(x)
    lo = _f16(x.astype(np.float32) - hi.astype(np.float32))
    return hi, lo


def _mma(a16: np.ndarray, b16: np.ndarray) -> np.ndarray:
    """FP16 operands, FP32 accumulation (products of two halves are exact in FP32)."""
    return a16.astype(np.float32) @ b16.astype(np.float32).T


def bias_forms(r: np.ndarray, c: np.ndarray, scale: float) -> dict[str, np.ndarray]:
    """The bias part of the logits each form produces (float64 for comparison)."""
    rs = (r / scale).astype(np.float32)
    single = scale * _mma(_f16(rs)[:, None], _f16(c.astype(np.float32))[:, None])
    (rh, rl), (ch, cl) = _split(rs), _split(c.astype(np.float32))
    q_e = np.stack([rh, rh, rl], axis=1)
    k_e = np.stack([ch, cl, ch], axis=1)
    hilo = scale * _mma(q_e, k_e)
    plugin = r.astype(np.float32)[:, None] * c.astype(np.float32)[None, :]
    return {"plugin": plugin.astype(np.float64), "single": single.astype(np.float64),
            "hilo": hilo.astype(np.float64)}


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def measure(L: int = 256, D: int = 64, seed: int = 0) -> dict[str, dict]:
    g = np.random.default_rng(seed)
    scale = D ** -0.5
    q, k, v = (_f16(g.normal(0, 1, (L, D))) for _ in range(3))
    qk = scale * (q.astype(np.float64) @ k.astype(np.float64).T)
    out = {}
    for name, make in CASES.items():
        r, c = make(g, L, L)
        exact = np.outer(r, c)
        ref = _softmax(qk + exact) @ v.astype(np.float64)
        rec = {"max_abs_bias": float(np.abs(exact).max())}
        for form, b in bias_forms(r, c, scale).items():
            o = _softmax(qk + b) @ v.astype(np.float64)
            rec[form] = {"logit_err": float(np.abs(b - exact).max()),
                         "out_err": float(np.abs(o - ref).max())}
        out[name] = rec
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--L", type=int, default=256)
    ap.add_argument("--D", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the figures to this file")
    a = ap.parse_args(argv)
    res = measure(a.L, a.D, a.seed)
    print(f"bias error vs float64, L = S = {a.L}, D = {a.D} (max |error| over all logits / "
          f"outputs)")
    print(f"{'case':<14}{'max|rc|':>9}  " + "".join(f"{f + ' logit':>14}{f + ' out':>13}"
                                                  for f in ("plugin", "single", "hilo")))
    for name, rec in res.items():
        print(f"{name:<14}{rec['max_abs_bias']:>9.3g}  " + "".join(
            f"{rec[f]['logit_err']:>14.2e}{rec[f]['out_err']:>13.2e}"
            for f in ("plugin", "single", "hilo")))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"L": a.L, "D": a.D, "seed": a.seed, "cases": res}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
