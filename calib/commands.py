"""`calibrate` and `quantize` commands (registered in cli.py); heavy imports inside."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

# Logs redirected to files should not squeeze tables to 80 columns.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def _fail(msg: str, code: int = 2) -> None:
    Console(stderr=True).print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(code)


def calibrate(
    bucket: Path = typer.Option(..., help="exported bucket folder (its T, N, size are used)"),
    scene: Path = typer.Option(Path("../shared/data/mv_scene"), help="folder of real frames laid out time_TT/viewV.png, or of one synchronized video per view (view0.mp4, view1.mp4, ...)"),
    clips: int = typer.Option(8, help="number of T x N clips sampled across the sequence"),
    out: Optional[Path] = typer.Option(None, help="npz to write (default: <bucket>/calib.npz)"),
    seed: int = typer.Option(0, help="clip sampling seed"),
) -> None:
    """Build a calibration set of real multi-view clips for a bucket, preprocessed exactly
    like the runtime does (reused by `quantize --int8`)."""
    from calib.dataset import build_calibration_set
    from export.exporter import load_manifest

    from calib.videos import VideoError, extract_view_videos, find_view_videos

    try:
        m = load_manifest(bucket)
        b = m["bucket"]
        if find_view_videos(scene):
            scene = extract_view_videos(scene, bucket / "calib_frames")
            console.print(f"extracted view videos into {scene}")
        path = build_calibration_set(scene, b["T"], 1 if b.get("single_view") else b["N"],
                                     (b["H"], b["W"]), clips, out or bucket / "calib.npz",
                                     with_masks=bool(b.get("ext_mask")), seed=seed)
    except (FileNotFoundError, ValueError, RuntimeError, VideoError) as e:
        _fail(str(e))
    console.print(f"wrote {path} ({clips} clips of T={b['T']}, N={b['N']}, {b['H']}x{b['W']})")


def quantize(
    bucket: list[Path] = typer.Option(..., help="exported bucket folder(s)"),
    fp16: bool = typer.Option(False, "--fp16", help="FP16 weights/matmuls, norms/softmax/attention FP32"),
    int8: bool = typer.Option(False, "--int8", help="explicit INT8 Q/DQ calibrated on real clips"),
    calib: Optional[Path] = typer.Option(None, help="calibration npz (default: <bucket>/calib.npz); held-out clips measure accuracy"),
    holdout: float = typer.Option(0.34, help="fraction of the calibration clips kept for evaluation"),
    exclude: list[str] = typer.Option([], help="extra module-path patterns to keep in FP32 (fnmatch)"),
) -> None:
    """Make model.<fp16|int8>.onnx and model.<fp16|int8>.plugins.onnx for each bucket
    (convert the portable graph, then surgery) and measure them against FP32 on held-out
    real clips; writes precision_<mode>.json. Exit 1 when a tolerance is exceeded."""
    from calib.graph_utils import DEFAULT_EXCLUDE
    from calib.precision import PrecisionError, make_precision

    if fp16 == int8:
        _fail("choose exactly one of --fp16 / --int8")
    mode = "fp16" if fp16 else "int8"
    table = Table(title=f"{mode} graphs")
    for col in ("bucket", "converted", "kept FP32", "plugin sites", "max pose_enc err", "result"):
        table.add_column(col)
    ok = True
    for b in bucket:
        npz = calib or (b / "calib.npz")
        npz = npz if npz.is_file() else None
        try:
            rec = make_precision(b, mode, npz, holdout, tuple(DEFAULT_EXCLUDE) + tuple(exclude),
                                 log=console.print)
        except (PrecisionError, FileNotFoundError, ValueError) as e:
            _fail(f"{b}: {e}")
        conv = rec["conversion"]
        rows = rec["accuracy_vs_fp32"][f"model.{mode}.plugins.onnx"]["rows"]
        pose = next((r["max_abs"] for r in rows if r["output"] == "pose_enc"), float("nan"))
        table.add_row(b.name, str(conv.get("converted_nodes", conv.get("quantized_nodes"))),
                      str(conv["excluded_nodes"]), str(sum(rec["surgery"]["totals"].values())),
                      f"{pose:.2e}", "PASS" if rec["passed"] else "FAIL")
        ok &= rec["passed"]
    console.print(table)
    if not ok:
        raise typer.Exit(1)
