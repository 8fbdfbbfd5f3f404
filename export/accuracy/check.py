"""run_check: one set of inputs through every available backend of a bucket with
Polygraphy's Comparator; tensor + task metrics per backend pair against PyTorch; profile
pass/fail; Polygraphy JSON + Markdown report with pictures."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from export.artifacts import write_json_atomic

from .metrics import task_metrics, tensor_metrics
from .profiles import Profile, load_profiles, precision_of
from .runners import available_backends, make_runner


def align_quaternion_sign(ref_pose: np.ndarray, got_pose: np.ndarray) -> np.ndarray:
    """q and -q are one rotation: a backend may legitimately return either, so the
    elementwise comparison must not count a sign flip as an error."""
    g = np.array(got_pose, copy=True)
    dot = np.sum(ref_pose[..., 3:7].astype(np.float64) * g[..., 3:7], axis=-1, keepdims=True)
    g[..., 3:7] = np.where(dot < 0, -g[..., 3:7], g[..., 3:7])
    return g


def evaluate_pair(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], profile: Profile
                  ) -> dict[str, Any]:
    """Metrics and verdict of one backend against the reference; pure numpy (tested with
    deliberately corrupted outputs)."""
    rows, failures = [], []
    for name, r in ref.items():
        if name not in got:
            failures.append(f"{name}: missing")
            continue
        g = got[name]
        if name == "pose_enc" and g.shape == r.shape:
            g = align_quaternion_sign(r, g)
        if g.shape != r.shape:
            failures.append(f"{name}: shape {g.shape} != {r.shape}")
            continue
        m = tensor_metrics(r, g)
        atol, rtol = profile.tol(name)
        ok = m["nonfinite"] == 0 and bool(np.all(
            np.abs(g.astype(np.float64) - r) <= atol + rtol * np.abs(r.astype(np.float64))))
        if not ok:
            failures.append(f"{name}: " + ("NaN/Inf" if m["nonfinite"] else
                                           f"max abs {m['max_abs']:.3g} > atol {atol} + rtol {rtol}"))
        rows.append({"output": name, **m, "atol": atol, "rtol": rtol, "passed": ok})
    task = task_metrics(ref, got)
    limits = [("rotation_deg_max", profile.max_rotation_deg, "<="),
              ("translation_dir_deg_max", profile.max_translation_dir_deg, "<="),
              ("depth_absrel", profile.max_depth_absrel, "<="),
              ("depth_delta125", profile.min_depth_delta125, ">=")]
    for key, lim, op in limits:
        if key in task:
            v = task[key]
            bad = not np.isfinite(v) or (v > lim if op == "<=" else v < lim)
            if bad:
                failures.append(f"{key} = {v:.4g} (limit {op} {lim})")
    return {"profile": profile.name, "tensors": rows, "task": task, "failures": failures,
            "passed": not failures}


def run_check(folder: str | Path, feeds: list[dict[str, np.ndarray]], out_dir: str | Path,
              profiles_json: str | Path | None = None, backends: list[str] | None = None,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    from polygraphy.comparator import Comparator, CompareFunc

    try:  # Polygraphy >= 0.53 (CompareFunc.simple is deprecated there)
        from polygraphy.comparator.compare import SimpleCompareFunc

        def simple(atol: float, rtol: float):
            return SimpleCompareFunc(atol=atol, rtol=rtol)
    except ImportError:
        simple = CompareFunc.simple

    from export.exporter import load_manifest

    folder, out_dir = Path(folder), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(folder)
    profiles = load_profiles(profiles_json)
    found = available_backends(folder)
    chosen = [(b, r) for b, r in found if backends is None or b in backends or b == "pytorch"]
    active = [b for b, r in chosen if r is None]
    skipped = {b: r for b, r in chosen if r is not None}
    for b, r in skipped.items():
        log(f"skipped {b}: {r}")
    runners = [make_runner(folder, b, manifest) for b in active]
    t0 = time.perf_counter()
    results = Comparator.run(runners, data_loader=feeds)
    seconds = time.perf_counter() - t0
    results.save(str(out_dir / "run_results.json"))
    summary: dict[str, Any] = {"bucket": manifest["bucket"]["name"], "inputs": len(feeds),
                               "backends": {}, "skipped": skipped, "seconds": round(seconds, 1)}
    ref_runs = results[0][1]
    acc_all = {}
    for i, (name, runs) in enumerate(list(results)[1:], start=1):
        prof = profiles[precision_of(name)]
        per_iter = [evaluate_pair({k: np.asarray(v) for k, v in ref_runs[j].items()},
                                  {k: np.asarray(v) for k, v in runs[j].items()}, prof)
                    for j in range(len(runs))]
        verdict = per_iter[0]
        verdict["failures"] = sorted({f for p in per_iter for f in p["failures"]})
        verdict["passed"] = not verdict["failures"]
        summary["backends"][name] = verdict
        acc = Comparator.compare_accuracy(
            results, comparisons=[(0, i)],
            compare_func=simple(atol=prof.atol, rtol=prof.rtol))
        acc_all[name] = acc
        acc.save(str(out_dir / f"accuracy_{name.replace(':', '_')}.json"))
    summary["passed"] = all(v["passed"] for v in summary["backends"].values())
    write_json_atomic(out_dir / "summary.json", summary)
    from .report import write_report

    write_report(out_dir, summary, results, manifest)
    return summary
