"""Latency / throughput / peak memory per backend of a bucket: the one benchmark and the
one bench.json schema.

Each backend runs in its own process so its peak memory (ru_maxrss) is its own, through
the same runners `check` uses (PyTorch rebuilt from the manifest; the runtime sessions
for ONNX graphs and engines). Inputs are seeded uniform noise of the bucket's shapes:
cost does not depend on the pixel values.

bench.json: {"bench_version": 1, "bucket": name, "repeats": R, "warmup": W,
             "rows": [{"backend", "load_s", "median_s", "p90_s", "min_s", "frames_per_s",
                       "peak_rss_mb"} | {"backend", "error"}],
             "skipped": {backend: reason}}
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH_VERSION = 1
# p90 / median beyond this: the runs were disturbed (other load, throttling) and the
# median is not a latency to quote; bench warns.
NOISY_RATIO = 2.0

_CHILD = r"""
import json, resource, sys, time
import numpy as np
from pathlib import Path
folder, backend, repeats, warmup = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
from runtime.layout import load_manifest
from accuracy.runners import make_runner
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
                  "frames_per_s": frames / float(np.median(times)),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def bench_backend(folder: Path, backend: str, repeats: int, warmup: int) -> dict[str, Any]:
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(folder), backend, str(repeats),
                           str(warmup)], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        return {"backend": backend, "error": tail}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_bench(folder: str | Path, backends: list[str], repeats: int = 3, warmup: int = 1,
              skipped: dict[str, str] | None = None) -> dict[str, Any]:
    if repeats < 1 or warmup < 0:
        raise ValueError(f"--repeats must be >= 1 and --warmup >= 0 (got {repeats}, {warmup})")
    folder = Path(folder)
    rows = [bench_backend(folder, b, repeats, warmup) for b in backends]
    return {"bench_version": BENCH_VERSION, "bucket": folder.name, "repeats": repeats,
            "warmup": warmup, "rows": rows, "skipped": skipped or {}}
