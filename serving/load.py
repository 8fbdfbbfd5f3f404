"""Closed-loop load against a Triton server: ``concurrency`` threads, each with its own
tritonclient client (the HTTP client is not thread-safe), send ``requests`` clips in
total and record latency and every failure. Used by scripts/bench_serving.py and the
serving tests (run with the serving environment's Python):

    .venv-serving/bin/python -m serving.load --server http://127.0.0.1:8000 \\
        --input ../shared/data/mv_scene --T 2 --N 2 --requests 64 --concurrency 8
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

import numpy as np

from .client import ServingClientError, TritonClient, load_frames

__all__ = ["run_load", "main"]


def run_load(server: str, frames: np.ndarray, requests: int, concurrency: int,
             protocol: str | None = None, model: str | None = None,
             timeout: float = 60.0) -> dict[str, Any]:
    """frames uint8 [T, N, H, W, C]; returns counts, latencies (ms) and error texts."""
    T, N = frames.shape[:2]
    with TritonClient(server, protocol, timeout=timeout) as c:
        name, cfg = c.choose_model(T, N, model)
    outputs = [o["name"] for o in cfg["output"]]
    lock = threading.Lock()
    next_id = [0]
    latencies: list[float] = []
    errors: list[str] = []

    def worker() -> None:
        try:
            client = TritonClient(server, protocol, timeout=timeout)
        except ServingClientError as e:
            with lock:
                errors.append(str(e))
            return
        with client:
            while True:
                with lock:
                    if next_id[0] >= requests:
                        return
                    next_id[0] += 1
                t0 = time.perf_counter()
                try:
                    out = client.infer_frames(name, frames[None], outputs)
                    if out["points"].shape[:3] != (1, T, N):
                        raise ServingClientError(f"points came back {out['points'].shape}")
                except ServingClientError as e:
                    with lock:
                        errors.append(str(e))
                    continue
                with lock:
                    latencies.append(time.perf_counter() - t0)

    t_start = time.perf_counter()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t_start
    lat = np.asarray(latencies) * 1e3
    pct = (lambda q: float(np.percentile(lat, q))) if lat.size else (lambda q: None)
    return {"model": name, "protocol": protocol or server.split("://")[0],
            "requests": requests, "concurrency": concurrency, "ok": len(latencies),
            "failed": len(errors), "errors": sorted(set(errors))[:10],
            "seconds": wall, "clips_per_s": len(latencies) / wall if wall else 0.0,
            "latency_ms": {"mean": float(lat.mean()) if lat.size else None,
                           "p50": pct(50), "p90": pct(90), "p99": pct(99)}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", required=True)
    ap.add_argument("--protocol", choices=("http", "grpc"))
    ap.add_argument("--model")
    ap.add_argument("--input", required=True)
    ap.add_argument("--T", type=int)
    ap.add_argument("--N", type=int)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=60.0)
    a = ap.parse_args(argv)
    try:
        clip = load_frames(a.input, T=a.T, N=a.N)
        res = run_load(a.server, clip.frames, a.requests, a.concurrency, a.protocol,
                       a.model, a.timeout)
    except ServingClientError as e:
        print(json.dumps({"fatal": str(e)}))
        return 2
    print(json.dumps(res))
    return 0 if res["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
