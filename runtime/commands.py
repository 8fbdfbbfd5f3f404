"""`infer` and `build-engine` commands (typer), registered by cli.py:

    from runtime.commands import build_engine, infer
    app.command("infer")(infer)
    app.command("build-engine")(build_engine)

Heavy imports (onnxruntime, TensorRT) happen inside the commands so `--help`
stays instant and this module imports on a device that only has runtime/.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table
from rich.text import Text

from .console import console, flag, os_error_message, warn
from .console import fail as _fail

__all__ = ["infer", "build_engine"]


def _parse_views(text: Optional[str]) -> Optional[list[int]]:
    if not text:
        return None
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        _fail(f"--views expects view numbers separated by commas, got {text!r}")
    return None


def _parse_budget(text: Optional[str], has_engine: bool) -> Optional[int]:
    if text is None:
        return None
    if not has_engine:
        _fail("--weight-budget applies to --engine (TensorRT weight streaming)")
    from .trt.build import EngineBuildError, parse_workspace
    from .trt.weights import AUTO_BUDGET

    if text.strip().lower() == "auto":
        return AUTO_BUDGET
    try:
        return parse_workspace(text)
    except EngineBuildError as e:
        _fail(str(e).replace("--workspace", "--weight-budget"))
    return None


def infer(
    engine: Optional[Path] = typer.Option(
        None, "--engine", help="Bucket folder, or export root of bucket folders, holding "
        "TensorRT engines (model.<precision>.engine + .json sidecar). Needs TensorRT, "
        "cuda-python and a GPU."),
    onnx: Optional[Path] = typer.Option(
        None, "--onnx", help="Bucket folder or export root; runs the ONNX graph in "
        "onnxruntime (plugin ops via the CPU reference implementations)."),
    input: Path = typer.Option(
        ..., "--input", "-i", help="Clip folder, one of: [images/]time_TT/viewV.png (+ "
        "masks/ for ext_mask buckets); one folder per camera of time-ordered frames "
        "(cam0/000123.png, cam1/..., or left/, right/: views and frames in natural order, "
        "equal counts); a flat folder of images (single-view buckets); with --stream also "
        "one video per view (view0.mp4, ...)."),
    out: Path = typer.Option(Path("outputs"), "--out",
                             help="Output folder (created; files are replaced atomically)."),
    T: Optional[int] = typer.Option(None, "--T", help="Time steps to run (default: all "
                                    "from --t0)."),
    N: Optional[int] = typer.Option(None, "--N", help="Views to run (default: all)."),
    t0: int = typer.Option(0, "--t0", min=0, help="First time step (position in the sorted "
                           "sequence)."),
    views: Optional[str] = typer.Option(None, "--views", help="Views to use, e.g. 0,2,3 "
                                        "(default: the first N)."),
    pad: bool = flag(False, "--pad", help="Allow running in a larger bucket by "
                             "repeating the last time step / view; outputs are trimmed. "
                             "Copies take part in attention, so results shift slightly."),
    graph: Optional[str] = typer.Option(
        None, "--graph", help="ONNX graph in the bucket for --onnx: model.onnx, "
        "model.plugins.onnx or model.native.onnx. Default: model.onnx (fastest on "
        "onnxruntime), unless its dense attention logits would exceed 60% of the available "
        "memory: then model.plugins.onnx (tiled reference ops), with a notice."),
    attention: Optional[str] = typer.Option(
        None, "--attention", help="--engine: run the native or the plugin engine where a "
        "bucket has both (default: native first)."),
    provider: str = typer.Option("cpu", "--provider", help="onnxruntime execution "
                                 "providers for --onnx, comma separated: cpu, cuda."),
    precision: Optional[str] = typer.Option(None, "--precision", help="Engine precision "
                                            "for --engine: fp16, int8, fp32 (default: "
                                            "fp16, else int8, else fp32)."),
    plugins: Optional[Path] = typer.Option(None, "--plugins", help="libvggt_mv_plugins.so "
                                           "for --engine (default: $VGGT_MV_PLUGINS or "
                                           "the one built in plugins/)."),
    cuda_graph: bool = flag(False, "--cuda-graph", help="Capture the engine in a "
                                    "CUDA graph after the first run (--engine)."),
    weight_budget: Optional[str] = typer.Option(
        None, "--weight-budget", help="--engine built with --weight-streaming: GPU memory "
        "for weights, e.g. 2G, 512M (MiB without a unit), or auto (TensorRT chooses); the "
        "rest stream from host memory. Refused below the engine's minimum."),
    conf_percentile: Optional[float] = typer.Option(
        50.0, "--conf-percentile", help="Keep points at or above this confidence "
        "percentile in the PLY (VGGT demo default 50; negative disables)."),
    conf_threshold: Optional[float] = typer.Option(None, "--conf-threshold",
                                                   help="Also require confidence >= this."),
    points_from: str = typer.Option("auto", "--points-from", help="PLY points from "
                                    "'depth' (depth + cameras), 'head' (point map) or "
                                    "'auto' (depth when both heads exist)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="onnxruntime intra-op "
                                          "threads."),
    repeats: int = typer.Option(1, "--repeats", min=1, help="Timed inference runs; with "
                                "more than one, the mean of those after the first is "
                                "reported (the first run is a warm-up)."),
    repeat_alias: Optional[int] = typer.Option(None, "--repeat", min=1, hidden=True,
                                               help="old spelling of --repeats"),
    warmup: int = typer.Option(0, "--warmup", min=0, help="Untimed runs between the first "
                               "run and the timed ones."),
    compress: bool = flag(False, "--compress", help="Compress predictions.npz."),
    stream: bool = flag(False, "--stream", help="Long videos at constant memory: "
                                "run every time step of --input (a frame folder, or one "
                                "video per view: view0.mp4, ...) in windows of --window "
                                "steps sharing --overlap steps, chained into one world frame "
                                "(cameras.jsonl, TUM trajectories, bounded points.ply, depth "
                                "PNGs, sparse/ COLMAP model, scene.glb, windows.json)."),
    window: Optional[int] = typer.Option(None, "--window", min=2, help="--stream: time steps per "
                                         "window (a bucket with this T; default its T)."),
    overlap: int = typer.Option(1, "--overlap", help="--stream: time steps shared by "
                                "consecutive windows (>= 1, < --window)."),
    loops: int = typer.Option(1, "--loops", min=1, help="--stream: replay the input this "
                              "many times (benchmarks of constant memory)."),
    fps: Optional[float] = typer.Option(None, "--fps", help="--stream: frame rate for the "
                                        "TUM timestamps (t / fps; default: the videos' "
                                        "rate for video input, else 1)."),
    max_points: int = typer.Option(500_000, "--max-points", min=1, help="--stream: bound of "
                                   "the merged point cloud (voxels coarsen beyond it)."),
    overwrite: bool = flag(False, "--overwrite", help="--stream: replace a "
                                   "non-empty --out folder."),
    shortest: bool = flag(False, "--shortest", help="--stream from view videos: when "
                                  "they differ in length or one is cut short, stop every "
                                  "view at the shortest complete one (with a warning) "
                                  "instead of refusing. `calibrate --shortest` is the same."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="--stream: infer "
                                          "the windows on this many Ray actors in parallel, "
                                          "chained in order here (pip install -e "
                                          "'.\\[batch]'; joins $RAY_ADDRESS if set)."),
    allow_nonfinite: bool = flag(False, "--allow-nonfinite", help="Keep results "
                                         "whose raw outputs are more than 1% NaN/Inf (frames "
                                         "flagged in run.json) instead of failing the run."),
) -> None:
    """Run VGGT_MV on a multi-view clip: writes predictions.npz, a colored PLY point
    cloud, depth and confidence PNGs per (time step, view), cameras.jsonl and TUM
    trajectories, a COLMAP sparse model (sparse/: cameras, images, points3D as .txt and
    .bin), scene.glb (points + camera frustums) and run.json; intrinsics are in the input
    frames' own pixels. Prints timing."""
    from .dispatch import UnknownBucketError
    from .errors import RuntimeDataError
    from .health import NonFiniteOutputError
    from .predictor import Predictor
    from .session import SessionError
    from .trt.sidecar import SidecarError

    if (engine is None) == (onnx is None):
        _fail("give exactly one of --engine DIR (TensorRT) or --onnx DIR (onnxruntime)")
    if engine is not None and precision not in (None, "fp16", "int8", "fp32"):
        _fail(f"--precision must be fp16, int8 or fp32, got {precision!r}")
    if attention is not None and (engine is None or attention not in ("native", "plugin")):
        _fail("--attention native|plugin chooses between engines of --engine buckets; for "
              "--onnx pick the graph with --graph model.native.onnx")
    repeats = repeat_alias or repeats
    budget = _parse_budget(weight_budget, engine is not None)
    view_list = _parse_views(views)
    pct = None if conf_percentile is not None and conf_percentile < 0 else conf_percentile
    if workers is not None and not stream:
        _fail("--workers runs the windows of --stream in parallel; for many clips use "
              "`batch`")
    if shortest and not stream:
        _fail("--shortest applies to view videos, which `infer` reads with --stream")
    if stream:
        _infer_stream(engine or onnx, "trt" if engine else "onnx", input, out, window,
                      overlap, N, view_list, loops, fps, max_points, overwrite, workers,
                      shortest,
                      dict(graph=graph, precision=precision, providers=provider,
                           plugin_lib=plugins, use_cuda_graph=cuda_graph, allow_pad=pad,
                           threads=threads, conf_percentile=pct, weight_budget=budget,
                           conf_threshold=conf_threshold, points_from=points_from,
                           attention=attention, allow_nonfinite=allow_nonfinite))
        return
    t_start = time.perf_counter()
    try:
        pred_obj = Predictor(engine or onnx, backend="trt" if engine else "onnx",
                             graph=graph, precision=precision,
                             providers=provider, plugin_lib=plugins,
                             use_cuda_graph=cuda_graph, allow_pad=pad, threads=threads,
                             conf_percentile=pct, conf_threshold=conf_threshold,
                             points_from=points_from, attention=attention,
                             weight_budget=budget, allow_nonfinite=allow_nonfinite)
        with pred_obj as predictor:
            pred = predictor.predict(input, T=T, N=N, t0=t0, views=view_list)
            runs = [pred.timing["inference"]]
            if repeats > 1 or warmup:
                entry = predictor.index[pred.bucket]
                sel = predictor.select(pred.T, pred.N, entry.spec.H, entry.spec.W)
                for _ in range(warmup):
                    predictor.run_selection(sel, pred.feeds)
                for _ in range(repeats - 1):
                    t1 = time.perf_counter()
                    predictor.run_selection(sel, pred.feeds)
                    runs.append(time.perf_counter() - t1)
            written = pred.write_outputs(out, compress=compress)
    except NonFiniteOutputError as e:  # the run went through and produced garbage
        _fail(str(e), code=1)
    except OSError as e:
        _fail(*os_error_message(e))
    except (UnknownBucketError, RuntimeDataError, SessionError, SidecarError,
            ValueError) as e:
        _fail(str(e))
    title = (f"infer: {pred.bucket} on {pred.backend_detail or pred.backend} "
             f"(T={pred.T}, N={pred.N}"
             + (f", padded +{pred.pad[0]} t / +{pred.pad[1]} views" if any(pred.pad) else "")
             + ")")
    table = Table(title=Text(title))
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for k in ("preprocess", "session_load", "refit", "inference", "postprocess", "write"):
        if k in pred.timing:
            table.add_row(k, f"{pred.timing[k]:.3f}")
    if len(runs) > 1:
        steady = runs[1:]
        table.add_row(f"inference mean of {len(steady)} (after {1 + warmup} warm-up)",
                      f"{sum(steady) / len(steady):.3f}")
    table.add_row("total", f"{time.perf_counter() - t_start:.3f}")
    console.print(table)
    for note in pred.notes:
        warn(note)
    extra = "".join(f", {written[k]}" for k in ("cameras_jsonl", "colmap", "glb") if k in written)
    console.print(f"wrote {written['npz']}, {written['ply']} ({written['points']:,} points), "
                  f"{len(written['depth_png'])} depth + {len(written['confidence_png'])} "
                  f"confidence PNGs{extra}, {written['run_json']}",
                  markup=False, soft_wrap=True)


def _infer_stream(root: Path, backend: str, input: Path, out: Path, window: int | None,
                  overlap: int, N: int | None, views: list[int] | None, loops: int,
                  fps: float | None, max_points: int, overwrite: bool,
                  workers: int | None, shortest: bool, opts: dict) -> None:
    from .dispatch import UnknownBucketError
    from .errors import RuntimeDataError
    from .health import NonFiniteOutputError
    from .layout import replaceable_folder
    from .predictor import Predictor
    from .session import SessionError
    from .streaming import StreamingPredictor
    from .trt.sidecar import SidecarError

    pool = None
    try:
        # even with --overwrite: `--out .` must not delete the frames or the buckets it reads
        replaceable_folder(out, marker=None, keep=[input, root], overwrite=True)
        with Predictor(root, backend=backend, **opts) as predictor:
            T = window or max(e.spec.T for e in predictor.index)
            runner = predictor
            if workers:  # windows on Ray actors; alignment stays here, in order
                from .batch.command import default_gpus, ray_pool
                from .batch.run import ParallelWindows

                pool, _ = ray_pool(root, backend, opts, workers, 1.0,
                                   default_gpus(backend, opts["providers"]), None, None)
                runner = ParallelWindows(predictor, pool)
            s = StreamingPredictor(runner, T, overlap, out, N=N, views=views, fps=fps,
                                   max_points=max_points, overwrite=overwrite,
                                   shortest=shortest, warn=warn,
                                   log=lambda m: console.print(m, markup=False))
            try:
                s.run_input(input, loops=loops)  # frame folder or one video per view
                summary = s.close()
                for note in predictor.graph_notices.values():  # why the slower graph ran
                    warn(note)
            except BaseException:
                s.abort()
                raise
    except NonFiniteOutputError as e:  # the run went through and produced garbage
        _fail(str(e), code=1)
    except OSError as e:
        _fail(*os_error_message(e))
    except (UnknownBucketError, RuntimeDataError, SessionError, SidecarError,
            ValueError) as e:
        _fail(str(e))
    finally:
        if pool is not None:
            pool.close()
    console.print(f"stream: {summary['windows']} windows ({summary['aligned']} aligned, "
                  f"{summary['fallback']} fallback) in {summary['seconds']:.1f} s "
                  f"({summary['windows_per_minute']:.1f} windows/min); wrote {summary['out']}: "
                  f"{summary['frames']} frames, {summary['points']:,} cloud points",
                  markup=False, soft_wrap=True)


def build_engine(
    fp16: bool = flag(False, "--fp16", help="Build from model.fp16.native.onnx / "
                              "model.fp16.plugins.onnx (FP16 casts in the graph; "
                              "LayerNorm/softmax/reductions FP32)."),
    int8: bool = flag(False, "--int8", help="Build from model.int8.native.onnx / "
                              "model.int8.plugins.onnx (explicit Q/DQ in the graph)."),
    fp32: bool = flag(False, "--fp32", help="Build model.native.onnx / "
                              "model.plugins.onnx as exported (FP32 reference engine)."),
    attention: str = typer.Option(
        "auto", "--attention", help="native: TensorRT's own fused attention (ONNX "
        "Attention -> IAttention; TensorRT >= 10.14 or --target rtx; no plugin library "
        "unless the bucket has sparse sites); plugin: our plugins at every site (the only "
        "route on TensorRT 10.3 / JetPack 6); auto: native where the library has it."),
    calib: Optional[Path] = typer.Option(None, "--calib", help="Calibration set the INT8 "
                                         "graph was quantized with (recorded in the "
                                         "sidecar; TensorRT itself no longer calibrates)."),
    bucket: List[Path] = typer.Option([], "--bucket", help="Bucket folder (repeatable) or an "
                                      "export root; default: every bucket in ./artifacts."),
    plugins: Optional[Path] = typer.Option(None, "--plugins", help="libvggt_mv_plugins.so "
                                           "(default: $VGGT_MV_PLUGINS or plugins/ build)."),
    workspace: str = typer.Option("auto", "--workspace", help="Builder workspace limit, "
                                  "e.g. 4G, 512M, 2048 (MiB); auto = TensorRT default."),
    timing_cache: Optional[Path] = typer.Option(
        None, "--timing-cache", help="Timing cache file, reused and updated across builds "
        "(default: timing.cache next to the bucket folders)."),
    no_timing_cache: bool = flag(False, "--no-timing-cache",
                                         help="Build without a timing cache."),
    opt_level: Optional[int] = typer.Option(None, "--opt-level", min=0, max=5,
                                            help="Builder optimization level (TensorRT "
                                            "default 3)."),
    version_compatible: bool = flag(
        False, "--version-compatible", help="Build a version-compatible engine (runs on "
        "later TensorRT releases and on the lean runtime; may be slower)."),
    target: str = typer.Option("trt", "--target", help="trt: full TensorRT on the GPU that "
                               "will run the engine (servers, Jetsons); rtx: TensorRT for RTX "
                               "(pip install tensorrt-rtx), ahead of time, no GPU needed, for "
                               "RTX workstation GPUs."),
    compute_capability: Optional[str] = typer.Option(
        None, "--compute-capability", help="With --target rtx: the GPUs to build for, e.g. "
        "86,89,120 (offered: 75, 80, 86, 89, 120, 121; not Orin 87 nor Hopper 90)."),
    strip_weights: bool = flag(
        False, "--strip-weights", help="Build the plan without its weights (STRIP_PLAN + "
        "REFIT_IDENTICAL): the session refits it at load from the bucket's ONNX weights, "
        "checked against the sha256 in the sidecar. One copy of the weights on disk."),
    weight_streaming: bool = flag(
        False, "--weight-streaming", help="Build with WEIGHT_STREAMING: `infer "
        "--weight-budget` then keeps only part of the weights on the GPU."),
    dry_run: bool = flag(False, "--dry-run", help="Validate inputs and print the "
                                 "build plan; works without TensorRT or a GPU."),
) -> None:
    """Build one TensorRT engine per bucket from its native or plugin graph (--attention),
    strongly typed (the precision lives in the ONNX: works the same on TensorRT 10.3 /
    JetPack 6 and 11.x). Writes model.<precision>[.native][.rtx].engine and its .json
    sidecar (TensorRT version, GPU, compute capability, attention route, plugin sha256 when
    used, bucket, source ONNX sha256, options)."""
    from .layout import TIMING_CACHE, is_bucket
    from .trt.build import EngineBuildError, build_engines, format_plan, plan_build

    chosen = [p for p, on in (("fp16", fp16), ("int8", int8), ("fp32", fp32)) if on]
    if len(chosen) != 1:
        _fail("choose exactly one precision: --fp16, --int8 or --fp32")
    precision = chosen[0]
    dirs = list(bucket) or [Path("artifacts")]
    cache = None
    if not no_timing_cache:
        if timing_cache is not None:
            cache = timing_cache
        else:
            first = dirs[0]
            base = first.parent if is_bucket(first) else first
            cache = base / TIMING_CACHE
    opts = {"builder_optimization_level": opt_level} if opt_level is not None else {}
    from .layout import ATTENTION_ROUTES

    if attention not in ("auto",) + ATTENTION_ROUTES:
        _fail(f"--attention must be auto, native or plugin, got {attention!r}")
    opts["attention"] = attention
    if version_compatible:
        opts["version_compatible"] = True
    if strip_weights:
        opts["strip_weights"] = True
    if weight_streaming:
        opts["weight_streaming"] = True
    if target not in ("trt", "rtx"):
        _fail(f"--target must be trt or rtx, got {target!r}")
    if target == "rtx":
        from .trt.rtx import parse_compute_capabilities

        try:
            opts.update(target="rtx", compute_capabilities=parse_compute_capabilities(
                compute_capability or ""))
        except ValueError as e:
            _fail(str(e))
        if version_compatible:
            _fail("--version-compatible is a full-TensorRT option; TensorRT for RTX engines "
                  "are built per compute capability (--compute-capability)")
        cache = None  # TensorRT for RTX ignores timing caches when building ahead of time
    elif compute_capability is not None:
        _fail("--compute-capability applies to --target rtx; full TensorRT builds for the GPU "
              "it runs on")
    try:
        plan = plan_build(dirs, precision, calib=calib, plugins=plugins, workspace=workspace,
                          timing_cache=cache, options=opts)
    except EngineBuildError as e:
        _fail(str(e))
    console.print(format_plan(plan), markup=False, soft_wrap=True)
    if dry_run:
        raise typer.Exit(0 if plan.ok else 1)
    if not plan.ok:
        _fail("fix the problems above (see --dry-run); nothing was built", code=1)

    from tqdm import tqdm

    def bar(desc: str, total: int):
        return tqdm(total=total, desc=desc, unit="step", leave=False)

    try:
        results = build_engines(plan, log=lambda m: console.print(m, markup=False),
                                bar_factory=bar)
    except EngineBuildError as e:
        _fail(str(e))
    table = Table(title=f"build-engine summary ({precision})")
    for col in ("bucket", "status", "attention", "engine", "size", "seconds", "note"):
        table.add_column(col)
    for r in results:
        table.add_row(r.item.bucket_name, r.status, r.item.route, str(r.item.engine_path),
                      f"{r.engine_bytes / 1e6:,.1f} MB" if r.engine_bytes else "-",
                      f"{r.seconds:.1f}", r.message[:80])
    console.print(table)
    if any(r.status != "built" for r in results):
        raise typer.Exit(1)
