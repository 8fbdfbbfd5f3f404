"""PyTorch CPU vs onnxruntime CPU (model.onnx, model.plugins.onnx) for one exported bucket.

usage: python scripts/bench_cpu.py artifacts/T2_N2_392x518 [--repeats 3] [--warmup 1]

Each backend runs in its own subprocess so its peak memory (ru_maxrss) is its own.
The PyTorch model is rebuilt from the manifest's config with the same seed as the
export when the bucket was exported from random weights (checkpoint paths otherwise).
Not a test: it prints a table and writes bench.json next to the manifest.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import numpy as np
folder, backend, repeats, warmup = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
from pathlib import Path
m = json.loads((Path(folder) / "manifest.json").read_text())
rng = np.random.default_rng(0)
feeds = {k: rng.random(v["shape"], dtype=np.float32) for k, v in m["inputs"].items()}
if backend == "pytorch":
    import torch
    from vggt_mv.config import VGGTMVConfig
    from vggt_mv.models import VGGTMV
    torch.manual_seed(m["weights"].get("seed") or 0)
    model = VGGTMV(VGGTMVConfig.from_dict(m["model_config"])).eval()
    args = [torch.from_numpy(feeds[k]) for k in m["inputs"]]
    def run():
        with torch.no_grad():
            model(*args)
else:
    import onnxruntime as ort
    graph = Path(folder) / backend
    if backend.endswith("plugins.onnx"):
        from plugins.reference.ort_ops import session_options, session_source
        so = session_options()
        src = session_source(graph, so)
    else:
        so = ort.SessionOptions()
        src = str(graph)
    sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    def run():
        sess.run(None, feeds)
for _ in range(warmup):
    run()
times = []
for _ in range(repeats):
    t0 = time.perf_counter(); run(); times.append(time.perf_counter() - t0)
print(json.dumps({"backend": backend, "median_s": float(np.median(times)),
                  "min_s": float(min(times)),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bucket", type=Path)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--backends", default="pytorch,model.onnx,model.plugins.onnx")
    args = ap.parse_args()
    root = Path(__file__).resolve().parents[1]
    rows = []
    for b in args.backends.split(","):
        proc = subprocess.run([sys.executable, "-c", CHILD, str(args.bucket), b,
                               str(args.repeats), str(args.warmup)], cwd=root,
                              capture_output=True, text=True)
        if proc.returncode != 0:
            rows.append({"backend": b, "error": proc.stderr.strip().splitlines()[-1]})
        else:
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    name = args.bucket.name
    print(f"\n{name}: {args.repeats} runs after {args.warmup} warm-up, CPU")
    print(f"{'backend':<22} {'median s':>9} {'min s':>8} {'peak MB':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['backend']:<22} error: {r['error']}")
        else:
            print(f"{r['backend']:<22} {r['median_s']:>9.3f} {r['min_s']:>8.3f} "
                  f"{r['peak_rss_mb']:>9.0f}")
    (args.bucket / "bench.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
