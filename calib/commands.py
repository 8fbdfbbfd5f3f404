"""`calibrate` and `quantize` commands (registered in cli.py); heavy imports inside."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.table import Table

from runtime.console import console, flag, warn
from runtime.console import fail as _fail

# The shared data sit beside the checkout: resolved from this file, not the working folder.
DEFAULT_SCENE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mv_scene"


def calibrate(
    bucket: list[Path] = typer.Option(..., help="exported bucket folder(s); each one's T, N, "
                                      "height and width shape its clips (repeat --bucket)"),
    scene: Optional[Path] = typer.Option(
        None, "--input", "-i", help="folder of real frames laid out time_TT/viewV.png, or of "
        "one synchronized video per view (view0.mp4, view1.mp4, ...); default: "
        "../shared/data/mv_scene beside the repository (wherever you run from)"),
    scene_alias: Optional[Path] = typer.Option(None, "--scene", hidden=True,
                                               help="old spelling of --input"),
    clips: int = typer.Option(8, help="T x N clips sampled across the sequence; `quantize` "
                              "keeps the last --holdout fraction of them for evaluation"),
    out: Optional[Path] = typer.Option(None, help="npz to write (default: <bucket>/calib.npz; "
                                       "only with a single --bucket)"),
    seed: int = typer.Option(0, help="clip sampling seed"),
    shortest: bool = flag(False, "--shortest", help="view videos that differ in length or "
                          "one cut short: use the steps every view has whole (with a "
                          "warning) instead of refusing, as `infer --stream --shortest`"),
) -> None:
    """Build a calibration set of real multi-view clips for each bucket, preprocessed exactly
    like the runtime does (used by `quantize --int8`, and for held-out accuracy). View
    videos are decoded once into a scratch folder under $TMPDIR, removed afterwards."""
    from calib.dataset import build_calibration_set
    from runtime.errors import RuntimeDataError
    from runtime.layout import load_manifest, output_file

    scene = scene_alias or scene
    if scene is None:
        scene = DEFAULT_SCENE
        if not scene.is_dir():
            _fail(f"no --input given and the default {scene} does not exist; pass --input "
                  f"FOLDER (frames time_TT/viewV.png or one video per view)")
    if out is not None and len(bucket) > 1:
        _fail("--out names one file; give one --bucket, or let each bucket get its calib.npz")
    if out is not None:
        try:
            output_file(out, "calib.npz")
        except RuntimeDataError as e:
            _fail(str(e))
    buckets = []
    for b_dir in bucket:  # every bucket is checked before any video is decoded
        try:
            buckets.append((b_dir, load_manifest(b_dir)["bucket"]))
        except (FileNotFoundError, ValueError, RuntimeError) as e:
            _fail(f"{b_dir}: {e}")
    table = Table(title="calibration sets")
    for col in ("bucket", "clips", "T x N", "H x W", "file"):
        table.add_column(col)
    with _calibration_frames(scene, shortest) as frames:
        for b_dir, b in buckets:
            n = 1 if b.get("single_view") else b["N"]
            try:
                path = build_calibration_set(frames, b["T"], n, (b["H"], b["W"]), clips,
                                             out or b_dir / "calib.npz",
                                             with_masks=bool(b.get("ext_mask")), seed=seed)
            except (FileNotFoundError, ValueError, RuntimeError, RuntimeDataError) as e:
                _fail(f"{b_dir}: {e}")
            table.add_row(b_dir.name, str(clips), f"{b['T']} x {n}", f"{b['H']} x {b['W']}",
                          str(path))
    console.print(table)


@contextlib.contextmanager
def _calibration_frames(scene: Path, shortest: bool) -> Iterator[Path]:
    """``scene`` itself when it holds frames. When it holds view videos, their frames
    decoded (runtime/video.py's reader and rule, as `infer --stream`) into a scratch
    folder under $TMPDIR that lives only as long as this command: never in a bucket,
    removed on success, failure and Ctrl-C; what a killed run left there goes first."""
    from calib.videos import extract_view_videos
    from runtime.layout import recover_leftovers
    from runtime.video import VideoError, is_video_input

    try:
        videos = is_video_input(scene)
    except VideoError as e:
        _fail(str(e))
    if not videos:
        yield scene
        return
    base = Path(tempfile.gettempdir()) / "vggt_mv_calib_frames"
    for msg in recover_leftovers(base, log=False):  # .vggt_mv_calib_frames.partial-PID-*
        warn(msg)
    scratch = Path(tempfile.mkdtemp(prefix=f".{base.name}.partial-{os.getpid()}-",
                                    dir=base.parent))
    try:
        try:
            frames = extract_view_videos(scene, scratch / "frames", shortest=shortest,
                                         warn=warn)
        except (VideoError, OSError) as e:
            _fail(str(e))
        console.print(f"decoded the view videos of {scene} into {scratch} (removed at the "
                      f"end)", markup=False)
        yield frames
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def quantize(
    bucket: list[Path] = typer.Option(..., help="exported bucket folder(s) (repeat --bucket)"),
    fp16: bool = flag(False, "--fp16", help="FP16 weight layers and FP16 q, k, v "
                              "into every attention site (softmax statistics FP32 inside "
                              "the kernel); LayerNorm, softmax, reductions and head "
                              "activations stay FP32"),
    int8: bool = flag(False, "--int8", help="explicit INT8 Q/DQ on MatMul/Gemm/Conv, "
                              "calibrated on real clips; sensitive layers stay FP32"),
    calib: Optional[Path] = typer.Option(None, help="calibration npz (default: "
                                         "<bucket>/calib.npz, see `calibrate`)"),
    holdout: float = typer.Option(0.34, help="fraction of the calibration clips (the last "
                                  "ones, at least one) kept out of calibration to measure "
                                  "accuracy vs FP32"),
    exclude: list[str] = typer.Option([], help="extra PyTorch module-path or node-name "
                                      "patterns (fnmatch) to keep in FP32, e.g. "
                                      "'*camera_head*' (repeatable)"),
    backend: str = typer.Option("auto", help="INT8 quantizer: modelopt (NVIDIA ModelOpt ONNX "
                                "PTQ), builtin (numpy calibration), auto (ModelOpt if it "
                                "imports and keeps the attention sites, else builtin)"),
    method: str = typer.Option("entropy", help="ModelOpt activation calibration: entropy | max"),
    profiles: Optional[Path] = typer.Option(None, help="JSON overriding the tolerance "
                                            "profiles, as `check --profiles`, e.g. "
                                            "{\"int8\": {\"max_translation_dir_deg\": 6}}"),
) -> None:
    """Make model.<fp16|int8>.onnx (runs in onnxruntime) and model.<fp16|int8>.plugins.onnx
    (for TensorRT) for each bucket: convert the portable graph, then surgery, then measure
    both against FP32 on held-out real clips. Writes precision_<mode>.json next to
    manifest.json (files, sha256, calibration set and clips, excluded nodes, error table).
    The verdict is `check`'s: the precision's tensor tolerances and its task limits
    (rotation, translation direction, depth AbsRel / delta1.25; export/compare.py).
    Exit 1 when one is exceeded."""
    from calib.graph_utils import DEFAULT_EXCLUDE
    from calib.precision import PrecisionError, make_precision
    from calib.quantize import BACKENDS, CALIBRATION_METHODS, QuantizationError

    if fp16 == int8:
        _fail("choose exactly one of --fp16 / --int8")
    if backend not in BACKENDS:
        _fail(f"--backend must be one of {', '.join(BACKENDS)}")
    if method not in CALIBRATION_METHODS:
        _fail(f"--method must be one of {', '.join(CALIBRATION_METHODS)}")
    if not 0.0 <= holdout < 1.0:
        _fail("--holdout must be in [0, 1)")
    mode = "fp16" if fp16 else "int8"
    table = Table(title=f"{mode} graphs vs FP32 on held-out real clips")
    for col in ("bucket", "backend", "converted", "kept FP32", "plugin sites", "pose rel L2",
                "depth rel p95", "max abs (worst output)", "result"):
        table.add_column(col)
    ok = True
    for b in bucket:
        npz = calib or (b / "calib.npz")
        if not npz.is_file():
            if mode == "int8" or calib is not None:
                _fail(f"{b}: calibration set {npz} not found; build it with "
                      f"`python cli.py calibrate --bucket {b}`")
            npz = None
        try:
            rec = make_precision(b, mode, npz, holdout, tuple(DEFAULT_EXCLUDE) + tuple(exclude),
                                 log=lambda s: console.print(s, markup=False),
                                 backend=backend, method=method, profiles_json=profiles)
        except (PrecisionError, QuantizationError, FileNotFoundError, ValueError) as e:
            _fail(f"{b}: {e}")
        conv = rec["conversion"]
        acc = rec["accuracy_vs_fp32"][f"model.{mode}.plugins.onnx"]
        rel = acc["relative"]
        worst = max(acc["rows"], key=lambda r: r["max_abs"])
        fmt = lambda v: "-" if v is None else f"{v:.2e}"  # noqa: E731
        table.add_row(b.name, conv.get("backend", "cast"),
                      str(conv.get("converted_nodes", conv.get("quantized_nodes"))),
                      str(conv.get("excluded_nodes", conv.get("fp32_weight_nodes"))),
                      str(sum(rec["surgery"]["totals"].values())),
                      fmt(rel.get("pose_enc", {}).get("rel_l2")),
                      fmt(rel.get("depth", {}).get("rel_p95")),
                      f"{worst['max_abs']:.2e} ({worst['output']})",
                      "PASS" if rec["passed"] else "FAIL: " + "; ".join(sorted(
                          {f for a in rec["accuracy_vs_fp32"].values()
                           for f in a.get("failures", [])}))[:80])
        ok &= rec["passed"]
    console.print(table)
    if not ok:
        raise typer.Exit(1)
