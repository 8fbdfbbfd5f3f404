"""Streaming throughput and memory: windows per minute, and peak RSS over 1x and 4x the
windows (the same frames replayed), each run in a fresh process.

usage: python scripts/bench_stream.py --bucket DIR [--input ../shared/data/mv_scene]
           [--window 4 --overlap 1 --loops 1,4 --graph model.onnx] [--as-videos]
Without --bucket it exports a tiny-preset T=4, N=4, 42x56 bucket into a temporary folder.
Prints a Markdown table (the README's streaming figures come from it).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    from runtime.predictor import Predictor
    from runtime.streaming import StreamingPredictor

    with tempfile.TemporaryDirectory() as tmp, \
            Predictor(args.bucket, backend="onnx", graph=args.graph) as p:
        s = StreamingPredictor(p, args.window, args.overlap, Path(tmp) / "out",
                               log=lambda m: None, warn=lambda m: None)
        s.run_input(args.input, loops=args.loops[0])
        summary = s.close()
    summary["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(summary))


def write_view_videos(scene: Path, out: Path, fps: float = 10.0) -> Path:
    """The frames of a time_TT/viewV scene as out/view<V>.avi (MJPG decodes everywhere)."""
    import cv2

    sys.path.insert(0, str(ROOT))
    from runtime.preprocess import discover_scene

    sc = discover_scene(scene)
    out.mkdir(parents=True)
    for v in sc.views:
        writer = None
        for t in sc.times:
            img = cv2.imread(str(sc.frame_path(t, v)))
            if writer is None:
                writer = cv2.VideoWriter(str(out / f"view{v}.avi"),
                                         cv2.VideoWriter_fourcc(*"MJPG"), fps,
                                         (img.shape[1], img.shape[0]))
            writer.write(img)
        writer.release()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bucket", type=Path, default=None)
    ap.add_argument("--input", type=Path, default=ROOT.parent / "shared" / "data" / "mv_scene")
    ap.add_argument("--window", type=int, default=4)
    ap.add_argument("--overlap", type=int, default=1)
    ap.add_argument("--graph", default="model.onnx")
    ap.add_argument("--loops", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4])
    ap.add_argument("--as-videos", action="store_true",
                    help="first write --input's frames as one MJPG video per view (OpenCV) "
                         "and stream those: the video decoding path")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if any(n < 1 for n in args.loops):
        ap.error("--loops values must be >= 1")
    if args.child:
        return child(args)
    with tempfile.TemporaryDirectory() as tmp:
        bucket = args.bucket
        if bucket is None:
            subprocess.run([sys.executable, str(ROOT / "cli.py"), "export", "--preset", "tiny",
                            "--T", str(args.window), "--N", "4", "--height", "42", "--width",
                            "56", "--out", tmp, "--no-validate"], check=True,
                           capture_output=True)
            bucket = Path(tmp)
        if args.as_videos:
            args.input = write_view_videos(args.input, Path(tmp) / "videos")
            print(f"input: one MJPG video per view, {args.input}")
        print(f"| loops | windows | aligned | fallback | seconds | windows / min | peak RSS MB |")
        print("|---|---|---|---|---|---|---|")
        for n in args.loops:
            res = subprocess.run([sys.executable, __file__, "--child", "--bucket", str(bucket),
                                  "--input", str(args.input), "--window", str(args.window),
                                  "--overlap", str(args.overlap), "--graph", args.graph,
                                  "--loops", str(n)], capture_output=True, text=True)
            if res.returncode != 0:
                sys.exit(f"stream run failed:\n{res.stderr[-2000:]}")
            s = json.loads(res.stdout.strip().splitlines()[-1])
            print(f"| {n} | {s['windows']} | {s['aligned']} | {s['fallback']} | "
                  f"{s['seconds']:.1f} | {s['windows_per_minute']:.0f} | {s['peak_rss_mb']:.0f} |")


if __name__ == "__main__":
    main()
