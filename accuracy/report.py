"""Markdown report with pictures (side-by-side depth, error heatmaps) of a check run."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from runtime.layout import atomic_write
from runtime.outputs import colorize, save_png


def _frames(depth: np.ndarray, max_frames: int = 2):
    """(label, [H, W] map) for the first (t, view) frames of [B, T, N, H, W, 1] or [B, S, H, W, 1]."""
    d = depth[0, ..., 0]
    flat = d.reshape(-1, *d.shape[-2:])
    idx = list(np.ndindex(*d.shape[:-2]))
    return [("t{:02d}_view{}".format(*i) if len(i) == 2 else f"s{i[0]:02d}", flat[k])
            for k, i in enumerate(idx[:max_frames])]


def write_report(out_dir: Path, summary: dict[str, Any], results, manifest: dict) -> Path:
    lines = [f"# Accuracy check: {summary['bucket']}", "",
             f"{summary['inputs']} input set(s); reference: PyTorch; "
             f"{'PASS' if summary['passed'] else 'FAIL'}.", ""]
    if summary["skipped"]:
        lines += ["| skipped backend | reason |", "|---|---|"]
        lines += [f"| {b} | {r} |" for b, r in summary["skipped"].items()] + [""]
    ref = {k: np.asarray(v) for k, v in results[0][1][0].items()}
    for name, runs in list(results)[1:]:
        v = summary["backends"][name]
        lines += [f"## {name} (profile {v['profile']}): {'PASS' if v['passed'] else 'FAIL'}", "",
                  "| output | max abs | p99 abs | mean abs | max rel | cosine | NaN/Inf | atol/rtol | |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in v["tensors"]:
            lines.append(f"| {r['output']} | {r['max_abs']:.2e} | {r['p99_abs']:.2e} | "
                         f"{r['mean_abs']:.2e} | {r['max_rel']:.2e} | {r['cosine']:.6f} | "
                         f"{r['nonfinite']} | {r['atol']:g}/{r['rtol']:g} | "
                         f"{'ok' if r['passed'] else 'FAIL'} |")
        lines += ["", "| task metric | value |", "|---|---|"]
        lines += [f"| {k} | {val:.4g} |" for k, val in v["task"].items()]
        if v["failures"]:
            lines += ["", "Failures: " + "; ".join(v["failures"])]
        got = {k: np.asarray(x) for k, x in runs[0].items()}
        if "depth" in ref and "depth" in got:
            lines += ["", "| frame | PyTorch depth | this backend | abs error |", "|---|---|---|---|"]
            for (label, dr), (_, dg) in zip(_frames(ref["depth"]), _frames(got["depth"])):
                lo, hi = float(np.percentile(dr, 2)), float(np.percentile(dr, 98))
                tag = name.replace(":", "_").replace(".", "_")
                files = []
                for kind, arr, vmin, vmax, cmap in (
                        ("ref", dr, lo, hi, "turbo"), ("got", dg, lo, hi, "turbo"),
                        ("err", np.abs(dg - dr), 0.0, None, "viridis")):
                    fn = f"depth_{label}_{tag}_{kind}.png"
                    save_png(out_dir / fn, colorize(arr, cmap=cmap, vmin=vmin, vmax=vmax))
                    files.append(fn)
                lines.append(f"| {label} | ![]({files[0]}) | ![]({files[1]}) | ![]({files[2]}) |")
        lines.append("")
    path = out_dir / "report.md"
    with atomic_write(path, "w") as f:
        f.write("\n".join(lines))
    return path
