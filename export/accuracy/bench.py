"""Latency / throughput / peak memory per backend of a bucket, each backend in its own
process so peak memory (ru_maxrss) is its own."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

_CHILD = r"""
import json, resource, sys, time
import numpy as np
from pathlib import Path
folder, backend, repeats, warmup = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
from export.exporter import load_manifest
from export.accuracy.runners import make_runner
m = load_manifest(folder)
rng = np.random.default_rng(0)
feed = {k: rng.random(v["shape"], dtype=np.float32) for k, v in m["inputs"].items()}
t_load = time.perf_counter()
with make_runner(folder, backend, m) as runner:
    t_load = time.perf_counter() - t_load
    for _ in range(warmup):
        runner.infer(feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter(); runner.infer(feed); times.append(time.perf_counter() - t0)
frames = int(np.prod(m["inputs"]["images"]["shape"][:-3]))
print(json.dumps({"backend": backend, "load_s": t_load, "median_s": float(np.median(times)),
                  "p90_s": float(np.percentile(times, 90)), "min_s": float(min(times)),
                  "frames_per_s": frames / float(np.median(times)), "repeats": repeats,
                  "warmup": warmup,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def bench_backend(folder: Path, backend: str, repeats: int, warmup: int) -> dict[str, Any]:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(folder), backend, str(repeats),
                           str(warmup)], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        return {"backend": backend, "error": tail}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_bench(folder: str | Path, backends: list[str], repeats: int = 3, warmup: int = 1,
              skipped: dict[str, str] | None = None) -> dict[str, Any]:
    folder = Path(folder)
    rows = [bench_backend(folder, b, repeats, warmup) for b in backends]
    return {"bucket": folder.name, "rows": rows, "skipped": skipped or {}}
