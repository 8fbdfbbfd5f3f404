"""The `batch` command (typer), registered by cli.py. Ray is imported when it runs."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..console import console, flag, warn
from ..console import fail as _fail

__all__ = ["batch", "ray_pool", "ray_start", "actor_opts", "default_gpus"]


def default_gpus(backend: str, provider: str) -> float:
    """One GPU per actor where the session runs on one (TensorRT, onnxruntime CUDA)."""
    return 1.0 if backend == "trt" or "cuda" in provider.lower() else 0.0


def actor_opts(backend: str, predictor_opts: dict, cpus_per_worker: float,
               gpus_per_worker: float) -> dict:
    if backend == "onnx" and predictor_opts.get("threads") is None and not gpus_per_worker:
        # ORT's default is one thread per core of the machine: K actors would each take
        # every core. One thread per reserved CPU instead.
        return {**predictor_opts, "threads": max(1, int(cpus_per_worker))}
    return predictor_opts


def ray_start(workers: int, cpus_per_worker: float, gpus_per_worker: float,
              address: str | None, object_store_mb: int | None) -> float:
    """Joins ``address`` (or $RAY_ADDRESS) or starts a local instance sized for
    ``workers`` actors; the seconds it took."""
    from .pool import start_ray

    address = address or os.environ.get("RAY_ADDRESS")  # ray.init's own convention
    num_cpus = None if address else max(1, int(round(workers * cpus_per_worker)))
    num_gpus = None if address or not gpus_per_worker else int(workers * gpus_per_worker + .999)
    return start_ray(address, num_cpus=num_cpus, num_gpus=num_gpus,
                     object_store_mb=object_store_mb)


def ray_pool(root: Path, backend: str, predictor_opts: dict, workers: int,
             cpus_per_worker: float, gpus_per_worker: float, address: str | None,
             object_store_mb: int | None):
    """Ray started (or joined) and a Ray Core pool of ``workers`` actors, for the windows
    of ``infer --stream --workers``: (pool, ray start-up s)."""
    from .pool import ActorPool

    started = ray_start(workers, cpus_per_worker, gpus_per_worker, address, object_store_mb)
    opts = actor_opts(backend, predictor_opts, cpus_per_worker, gpus_per_worker)
    return ActorPool(root, backend, opts, workers, cpus=cpus_per_worker,
                     gpus=gpus_per_worker), started


def batch(
    engine: Optional[Path] = typer.Option(None, "--engine", help="Bucket folder or export "
                                          "root with TensorRT engines (one GPU per worker)."),
    onnx: Optional[Path] = typer.Option(None, "--onnx", help="Bucket folder or export root; "
                                        "onnxruntime (CPU unless --provider cuda)."),
    input: Path = typer.Option(..., "--input", "-i", help="Folder whose sub-folders are the "
                               "clips, or a text file with one clip folder per line."),
    out: Path = typer.Option(..., "--out", help="OUT/<item>/ per clip (infer's outputs + "
                             "batch_done.json) and OUT/batch.json."),
    workers: int = typer.Option(2, "--workers", min=1, help="Ray actors, one loaded "
                                "session each."),
    cpus_per_worker: float = typer.Option(1.0, "--cpus-per-worker", min=0.1),
    gpus_per_worker: Optional[float] = typer.Option(
        None, "--gpus-per-worker", min=0.0, help="GPUs Ray reserves per actor (each sees "
        "its own); default 1 for --engine or --provider cuda, else 0."),
    address: Optional[str] = typer.Option(None, "--address", help="Join a running Ray "
                                          "cluster (auto, HOST:6379, ray://HOST:10001); "
                                          "default: start a local instance."),
    object_store_mb: Optional[int] = typer.Option(None, "--object-store-mb", min=75,
                                                  help="Local instance's object store "
                                                  "(default: Ray's, 30% of memory)."),
    T: Optional[int] = typer.Option(None, "--T"), N: Optional[int] = typer.Option(None, "--N"),
    t0: int = typer.Option(0, "--t0", min=0),
    views: Optional[str] = typer.Option(None, "--views", help="e.g. 0,2,3"),
    pad: bool = flag(False, "--pad"),
    graph: Optional[str] = typer.Option(None, "--graph", help="--onnx graph; default as "
                                        "in infer (model.onnx where it fits memory)."),
    provider: str = typer.Option("cpu", "--provider"),
    precision: Optional[str] = typer.Option(None, "--precision"),
    plugins: Optional[Path] = typer.Option(None, "--plugins"),
    threads: Optional[int] = typer.Option(None, "--threads", help="onnxruntime threads per "
                                          "worker (default: --cpus-per-worker)."),
    conf_percentile: float = typer.Option(50.0, "--conf-percentile"),
    compress: bool = flag(False, "--compress"),
) -> None:
    """Run many clips on Ray Data actors (each loads the session once): per clip the
    same files as `infer` in OUT/<item>/, a done marker so a re-run skips finished clips,
    failures recorded without stopping the others, OUT/batch.json and a summary table.
    Needs the batch extra (pip install -e '.\\[batch]')."""
    from tqdm import tqdm

    from ..commands import _parse_views
    from ..errors import RuntimeDataError
    from .data import ActorSpec
    from .items import discover_items
    from .run import run_batch

    if (engine is None) == (onnx is None):
        _fail("give exactly one of --engine DIR (TensorRT) or --onnx DIR (onnxruntime)")
    root, backend = (engine, "trt") if engine else (onnx, "onnx")
    if gpus_per_worker is None:
        gpus_per_worker = default_gpus(backend, provider)
    opts = dict(graph=graph, precision=precision, providers=provider, plugin_lib=plugins,
                allow_pad=pad, threads=threads,
                conf_percentile=None if conf_percentile < 0 else conf_percentile)
    infer = {"T": T, "N": N, "t0": t0, "views": _parse_views(views), "compress": compress}
    try:
        from ..dispatch import BucketIndex

        BucketIndex.scan(root)  # a wrong --onnx is one message, not one per actor
        items = discover_items(input)
        spec = ActorSpec(str(root), backend,
                         actor_opts(backend, opts, cpus_per_worker, gpus_per_worker),
                         workers, cpus=cpus_per_worker, gpus=gpus_per_worker)
        ray_s = ray_start(workers, cpus_per_worker, gpus_per_worker, address,
                          object_store_mb)
    except (RuntimeDataError, OSError, ValueError) as e:
        _fail(str(e))
    from .pool import import_ray

    ray = import_ray()
    try:
        with tqdm(total=len(items), desc="batch", unit="clip") as bar:
            results, s = run_batch(items, out, spec, infer, progress=bar,
                                   ray_start_s=round(ray_s, 3))
    except ray.exceptions.RayError as e:
        # The pipeline itself failed (actors that cannot start, a lost cluster); a bad
        # item never gets here. Finished items have their markers: a re-run resumes.
        _fail(f"batch stopped by Ray: {type(e).__name__}: {str(e)[:2000]}\n"
              f"{out / 'batch.json'} lists what finished; run again to resume", code=1)
    table = Table(title=f"batch: {len(items)} items on {workers} workers -> {out}")
    for col in ("done", "skipped", "failed", "clips/s", "after 1st", "1st item s",
                "latency p50 s", "latency p90 s", "session loads", "retried"):
        table.add_column(col, justify="right")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    table.add_row(str(s["done"]), str(s["skipped"]), str(s["failed"]), fmt(s["clips_per_s"]),
                  fmt(s["steady_clips_per_s"]), fmt(s["first_item_s"]), fmt(s["latency_p50_s"]), fmt(s["latency_p90_s"]),
                  str(s["session_loads"]), str(s["retried"]))
    console.print(table)
    for r in results:
        if r.status == "failed":
            warn(f"{r.name} ({r.input}): {r.message}")
    console.print(f"wrote {out / 'batch.json'}; Ray start-up {ray_s:.1f} s", markup=False)
    if s["failed"]:
        raise typer.Exit(1)
