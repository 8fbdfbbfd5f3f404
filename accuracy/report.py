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


MIN_SIDE = 224  # px: tiny buckets' maps (42x56) are upscaled to be readable
BAR_WIDTH, BAR_GAP = 12, 4


def picture(arr: np.ndarray, cmap: str, vmin: float, vmax: float,
            min_side: int = MIN_SIDE) -> np.ndarray:
    """uint8 RGB: the map coloured on [vmin, vmax] (values beyond clip to the ends),
    upscaled by an integer factor (nearest: every model pixel stays one visible block) so
    its short side reaches ``min_side``, with a colour bar on the right (vmin at the
    bottom, vmax at the top; the caption gives the numbers)."""
    rgb = colorize(arr, cmap=cmap, vmin=vmin, vmax=vmax)
    k = max(1, -(-min_side // min(rgb.shape[:2])))
    rgb = rgb.repeat(k, axis=0).repeat(k, axis=1)
    h = rgb.shape[0]
    ramp = np.linspace(vmax, vmin, h)[:, None].repeat(BAR_WIDTH, axis=1)
    bar = colorize(ramp, cmap=cmap, vmin=vmin, vmax=vmax)
    gap = np.full((h, BAR_GAP, 3), 255, np.uint8)
    return np.concatenate([rgb, gap, bar], axis=1)


def _depth_tolerance(verdict: dict[str, Any], ref: np.ndarray) -> float:
    """The profile's depth tolerance at the reference's median depth: error maps share this
    scale, so an error at the tolerance is the top colour and a 1e-7 one stays dark."""
    row = next((r for r in verdict["tensors"] if r["output"] == "depth"), None)
    atol, rtol = (row["atol"], row["rtol"]) if row else (1e-3, 1e-3)
    med = float(np.median(np.abs(ref[np.isfinite(ref)]))) if np.isfinite(ref).any() else 0.0
    return atol + rtol * med


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
            tol = _depth_tolerance(v, ref["depth"])
            lines += ["", f"Depth in turbo on the reference's 2nd..98th percentile; abs "
                          f"error in viridis on 0 .. {tol:.3g} (the {v['profile']} depth "
                          f"tolerance at the median depth: the top colour is an error at "
                          f"the tolerance, larger ones saturate). Colour bars: low at the "
                          f"bottom.", "",
                      "| frame | PyTorch depth | this backend | abs error | scales |",
                      "|---|---|---|---|---|"]
            for (label, dr), (_, dg) in zip(_frames(ref["depth"]), _frames(got["depth"])):
                fin = dr[np.isfinite(dr)]
                lo, hi = ((float(np.percentile(fin, 2)), float(np.percentile(fin, 98)))
                          if fin.size else (0.0, 1.0))
                tag = name.replace(":", "_").replace(".", "_")
                err = np.abs(dg - dr)
                files = []
                for kind, arr, vmin, vmax, cmap in (
                        ("ref", dr, lo, hi, "turbo"), ("got", dg, lo, hi, "turbo"),
                        ("err", err, 0.0, tol, "viridis")):
                    fn = f"depth_{label}_{tag}_{kind}.png"
                    save_png(out_dir / fn, picture(arr, cmap, vmin, vmax))
                    files.append(fn)
                emax = float(np.nanmax(err)) if np.isfinite(err).any() else float("nan")
                lines.append(f"| {label} | ![]({files[0]}) | ![]({files[1]}) | ![]({files[2]}) "
                             f"| depth {lo:.3g} .. {hi:.3g}; error 0 .. {tol:.3g} (max "
                             f"{emax:.2e}) |")
        lines.append("")
    path = out_dir / "report.md"
    with atomic_write(path, "w") as f:
        f.write("\n".join(lines))
    return path
