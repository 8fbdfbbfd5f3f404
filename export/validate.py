"""Numerical validation of exported graphs against the PyTorch model (Optimum-style)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import numpy as np


@dataclass
class Tolerance:
    atol: float = 1e-3
    rtol: float = 1e-3


# Depth / confidences go through exp(), which turns an absolute logit error into a
# relative one; poses and points are compared in their own units.
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "pose_enc": Tolerance(1e-3, 1e-3),
    "depth": Tolerance(1e-3, 2e-3),
    "depth_conf": Tolerance(1e-3, 2e-3),
    "world_points": Tolerance(1e-3, 2e-3),
    "world_points_conf": Tolerance(1e-3, 2e-3),
    "dynamic_mask": Tolerance(1e-4, 1e-3),
}


@dataclass
class Row:
    output: str
    shape: tuple
    max_abs: float
    max_rel: float
    mean_abs: float
    nonfinite: int
    atol: float
    rtol: float
    passed: bool

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


def compare_outputs(ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray],
                    tolerances: Mapping[str, Tolerance] | None = None,
                    default: Tolerance = Tolerance()) -> list[Row]:
    tolerances = {**DEFAULT_TOLERANCES, **(tolerances or {})}
    rows = []
    for name, r in ref.items():
        tol = tolerances.get(name, default)
        if name not in got:
            rows.append(Row(name, tuple(r.shape), float("inf"), float("inf"), float("inf"),
                            0, tol.atol, tol.rtol, False))
            continue
        g = np.asarray(got[name], dtype=np.float64)
        r64 = np.asarray(r, dtype=np.float64)
        if g.shape != r64.shape:
            rows.append(Row(name, tuple(g.shape), float("inf"), float("inf"), float("inf"),
                            0, tol.atol, tol.rtol, False))
            continue
        nonfinite = int((~np.isfinite(g)).sum())
        d = np.abs(g - r64)
        rel = d / (np.abs(r64) + 1e-6)
        ok = bool(nonfinite == 0 and np.all(d <= tol.atol + tol.rtol * np.abs(r64)))
        rows.append(Row(name, tuple(g.shape), float(np.nanmax(d)) if d.size else 0.0,
                        float(np.nanmax(rel)) if d.size else 0.0,
                        float(np.nanmean(d)) if d.size else 0.0, nonfinite, tol.atol,
                        tol.rtol, ok))
    return rows


def format_table(rows: list[Row], title: str = "") -> str:
    head = f"{'output':<20} {'shape':<26} {'max abs':>10} {'max rel':>10} {'mean abs':>10} " \
           f"{'atol/rtol':>13}  result"
    lines = [title] if title else []
    lines += [head, "-" * len(head)]
    for r in rows:
        res = "PASS" if r.passed else ("FAIL (NaN/Inf)" if r.nonfinite else "FAIL")
        lines.append(f"{r.output:<20} {str(list(r.shape)):<26} {r.max_abs:>10.2e} "
                     f"{r.max_rel:>10.2e} {r.mean_abs:>10.2e} "
                     f"{f'{r.atol:.0e}/{r.rtol:.0e}':>13}  {res}")
    return "\n".join(lines)


def run_onnx(path: str | Path, feeds: Mapping[str, np.ndarray], plugins: bool,
             threads: int | None = None) -> dict[str, np.ndarray]:
    """Runs a bucket graph in onnxruntime on the CPU (plugin ops via the CPU reference)."""
    import onnxruntime as ort

    src: str | bytes = str(path)
    if plugins:
        from plugins.reference.ort_ops import session_options, session_source
        so = session_options()
        src = session_source(path, so)
    else:
        so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    inputs = {i.name for i in sess.get_inputs()}
    outs = sess.run(names, {k: v for k, v in feeds.items() if k in inputs})
    return dict(zip(names, outs))
