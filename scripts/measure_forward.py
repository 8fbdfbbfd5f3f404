"""Measures one full-size VGGT_MV forward on the CPU (README figures).

usage: python scripts/measure_forward.py --T 2 --N 2 --height 392 --width 518 [--preset vggt_mv_1b]
Random weights (no checkpoint is downloadable here); real frames from ../shared/data/mv_scene.
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np
import torch

from vggt_mv.config import get_config
from vggt_mv.models import VGGTMV


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, default=2)
    ap.add_argument("--N", type=int, default=2)
    ap.add_argument("--height", type=int, default=392)
    ap.add_argument("--width", type=int, default=518)
    ap.add_argument("--preset", default="vggt_mv_1b")
    ap.add_argument("--input", "--scene", dest="scene", help="frames folder (--scene: old "
                    "spelling)", default=str(Path(__file__).resolve().parents[2] / "shared"
                                             / "data" / "mv_scene"))
    args = ap.parse_args()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = VGGTMV(get_config(args.preset)).eval()
    t_build = time.perf_counter() - t0
    try:
        from runtime.preprocess import load_clip

        images = load_clip(args.scene, 0, args.T, args.N, (args.height, args.width))["images"]
        src = "mv_scene"
    except Exception as e:  # noqa: BLE001 - figures are still meaningful on noise
        print(f"real frames unavailable ({e}); using noise")
        images = np.random.default_rng(0).random((1, args.T, args.N, 3, args.height, args.width),
                                                 dtype=np.float32)
        src = "random"
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model(x)
    t_fwd = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({
        "preset": args.preset, "params": model.num_parameters(), "T": args.T, "N": args.N,
        "size": f"{args.height}x{args.width}", "inputs": src, "threads": torch.get_num_threads(),
        "build_s": round(t_build, 1), "forward_s": round(t_fwd, 1), "peak_rss_mb": round(peak),
        "outputs": {k: list(v.shape) for k, v in out.items()},
        "finite": all(bool(torch.isfinite(v).all()) for v in out.values()),
    }, indent=1))


if __name__ == "__main__":
    main()
