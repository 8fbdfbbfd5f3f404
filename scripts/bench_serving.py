"""Throughput and latency of the Triton Python-backend model (serving/) on this machine.

For each instance count a repository is written from the bucket, a tritonserver is
started on 127.0.0.1 (serving environment, scripts/setup_serving.sh), and closed-loop
clients (serving/load.py, one tritonclient per thread) send the clip's real frames at
each concurrency. The local runtime (Predictor in this process, no server) is the
baseline. Prints a markdown table; --json writes the numbers.

    python scripts/bench_serving.py --bucket artifacts/T2_N2_56x70 \\
        --input ../shared/data/mv_scene --instances 1,2 --concurrency 1,4,8
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runtime.layout import Bucket, atomic_write_json, load_manifest  # noqa: E402
from serving.repository import RepositoryOptions, export_repository, model_names  # noqa: E402
from serving.server import TritonServer, find_serving_env  # noqa: E402


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def local_baseline(bucket: Path, scene: str, T: int, N: int, repeats: int,
                   threads: int | None) -> dict:
    from runtime import Predictor

    with Predictor(bucket, backend="onnx", graph="model.onnx", threads=threads) as p:
        p.predict(scene, T=T, N=N)  # warm-up (session load)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            p.predict(scene, T=T, N=N)
            times.append(time.perf_counter() - t0)
    times.sort()
    return {"setup": "local runtime (no server)", "protocol": "-", "concurrency": 1,
            "clips_per_s": repeats / sum(times), "p50": times[len(times) // 2] * 1e3,
            "p90": times[int(len(times) * 0.9)] * 1e3, "mean_batch": 1.0, "failed": 0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bucket", required=True, type=Path)
    ap.add_argument("--input", default=str(ROOT.parent / "shared" / "data" / "mv_scene"))
    ap.add_argument("--instances", default="1,2")
    ap.add_argument("--concurrency", default="1,4,8")
    ap.add_argument("--protocols", default="http,grpc")
    ap.add_argument("--requests-per-client", type=int, default=8)
    ap.add_argument("--max-batch-size", type=int, default=4)
    ap.add_argument("--max-queue-delay-us", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=None,
                    help="onnxruntime threads per instance (default: onnxruntime's)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    m = load_manifest(a.bucket)
    b = Bucket.from_dict(m["bucket"])
    env = find_serving_env()
    rows = [local_baseline(a.bucket, a.input, b.T, b.N, 10, a.threads)]
    for inst in _ints(a.instances):
        with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
            repo = Path(tmp) / "repo"
            export_repository([a.bucket], repo, RepositoryOptions(
                max_batch_size=a.max_batch_size, max_queue_delay_us=a.max_queue_delay_us,
                instances=inst, threads=a.threads, include_onnx=False))
            with TritonServer(repo, env=env) as srv:
                name = model_names(b)["pipeline"]
                for proto in a.protocols.split(","):
                    url = (f"http://{srv.http_url}" if proto == "http"
                           else f"grpc://{srv.grpc_url}")
                    for conc in _ints(a.concurrency):
                        st0 = srv.statistics(name)["model_stats"][0]
                        r = subprocess.run(
                            [str(env.python), "-m", "serving.load", "--server", url,
                             "--input", a.input, "--T", str(b.T), "--N", str(b.N),
                             "--requests", str(max(conc * a.requests_per_client, 16)),
                             "--concurrency", str(conc)],
                            cwd=ROOT, capture_output=True, text=True, timeout=900)
                        res = json.loads(r.stdout.strip().splitlines()[-1])
                        st1 = srv.statistics(name)["model_stats"][0]
                        inf = int(st1["inference_count"]) - int(st0["inference_count"])
                        exe = int(st1["execution_count"]) - int(st0["execution_count"])
                        rows.append({"setup": f"triton, {inst} instance(s)",
                                     "protocol": proto, "concurrency": conc,
                                     "clips_per_s": res["clips_per_s"],
                                     "p50": res["latency_ms"]["p50"],
                                     "p90": res["latency_ms"]["p90"],
                                     "mean_batch": inf / exe if exe else 0.0,
                                     "failed": res["failed"]})
                        print(json.dumps(rows[-1]), file=sys.stderr)
    print(f"\nbucket {b.name}, max_batch_size {a.max_batch_size}, queue delay "
          f"{a.max_queue_delay_us} us\n")
    print("| setup | protocol | clients | clips/s | p50 ms | p90 ms | mean batch | failed |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['setup']} | {r['protocol']} | {r['concurrency']} | "
              f"{r['clips_per_s']:.1f} | {r['p50']:.0f} | {r['p90']:.0f} | "
              f"{r['mean_batch']:.2f} | {r['failed']} |")
    if a.json:
        atomic_write_json(a.json, {"bucket": b.name, "rows": rows})
    return 0 if all(r["failed"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
