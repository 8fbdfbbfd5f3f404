"""run_check: one set of inputs through every available backend of a bucket with
Polygraphy's Comparator (the runtime sessions `infer` uses, behind runners.SessionRunner);
tensor + task metrics per backend against PyTorch and the precision profile's verdict
(export/compare.py); Polygraphy JSON + Markdown report with pictures."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from export.compare import evaluate, load_profiles, precision_of
from runtime.layout import (atomic_directory, atomic_write_json, load_manifest,
                            replaceable_folder)

from .runners import available_backends, make_runner, unknown_backends, verify_backend_files


def run_check(folder: str | Path, feeds: list[dict[str, np.ndarray]], out_dir: str | Path,
              profiles_json: str | Path | None = None, backends: list[str] | None = None,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    from polygraphy.comparator import CompareFunc

    try:  # Polygraphy >= 0.53 (CompareFunc.simple is deprecated there)
        from polygraphy.comparator.compare import SimpleCompareFunc

        def simple(atol: float, rtol: float):
            return SimpleCompareFunc(atol=atol, rtol=rtol)
    except ImportError:
        simple = CompareFunc.simple

    from runtime.errors import RuntimeDataError

    folder, out_dir = Path(folder), Path(out_dir)
    manifest = load_manifest(folder)
    profiles = load_profiles(profiles_json)
    found = available_backends(folder)
    refusal = unknown_backends(found, backends or [])
    if refusal:
        raise RuntimeDataError(refusal)
    chosen = [(b, r) for b, r in found if backends is None or b in backends or b == "pytorch"]
    active = [b for b, r in chosen if r is None]
    skipped = {b: r for b, r in chosen if r is not None}
    # replaced whole (below), so it may only be new, empty or an earlier report: never the
    # bucket, a folder above it, or a folder of the user's
    replaceable_folder(out_dir, marker="summary.json", keep=[folder], what="check report")
    verify_backend_files(folder, manifest, active)
    for b, r in skipped.items():
        log(f"skipped {b}: {r}")
    # the report folder appears whole or not at all: a run that dies half-way (a graph
    # that fails to load, Ctrl-C) leaves neither an empty folder nor a stale mix
    with atomic_directory(out_dir) as tmp:
        summary = _compare(folder, manifest, feeds, tmp, profiles, active, skipped, simple)
    return summary


def _compare(folder: Path, manifest: dict[str, Any], feeds: list[dict[str, np.ndarray]],
             out_dir: Path, profiles: dict[str, Any], active: list[str],
             skipped: dict[str, str], simple: Callable[..., Any]) -> dict[str, Any]:
    from polygraphy.comparator import Comparator

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
        per_iter = [evaluate({k: np.asarray(v) for k, v in ref_runs[j].items()},
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
    atomic_write_json(out_dir / "summary.json", summary)
    from .report import write_report

    write_report(out_dir, summary, results, manifest)
    return summary
