"""`export-triton`, `serve` and `infer` (local or `--server`) commands, registered by
cli.py. Heavy and optional imports (tritonclient) happen inside the commands."""
from __future__ import annotations

import inspect
import signal
import threading
import time
import typing
from pathlib import Path
from typing import List, Optional

import typer

from runtime import commands as runtime_commands
from runtime.console import console, flag, os_error_message, warn
from runtime.console import fail as _fail

__all__ = ["export_triton", "serve", "infer"]


def export_triton(
    bucket: List[Path] = typer.Option(..., "--bucket", help="Bucket folder (repeatable) or "
                                      "an export root (all buckets in it)."),
    out: Path = typer.Option(..., "--out", help="Model repository folder (replaced "
                             "whole, only when everything was written)."),
    max_batch_size: int = typer.Option(4, "--max-batch-size", help="Python model: most "
                                       "requests one execution takes (dynamic batching)."),
    max_queue_delay_us: int = typer.Option(2000, "--max-queue-delay-us", help="Dynamic "
                                           "batcher: how long to wait to fill a batch."),
    instances: int = typer.Option(1, "--instances", help="Python model instances."),
    kind: str = typer.Option("KIND_CPU", "--kind", help="Python model placement: KIND_CPU, "
                             "KIND_GPU, KIND_AUTO."),
    backend: str = typer.Option("onnx", "--backend", help="What the Python model runs: "
                                "onnx (portable graph, onnxruntime) or trt (the engine)."),
    trt_instances: int = typer.Option(1, "--trt-instances", help="TensorRT model instances "
                                      "per GPU."),
    precision: Optional[str] = typer.Option(None, "--precision", help="Engine for the "
                                            "TensorRT model (default fp16, int8, fp32)."),
    plugins: Optional[Path] = typer.Option(None, "--plugins", help="libvggt_mv_plugins.so "
                                           "copied next to the TensorRT model (default: "
                                           "$VGGT_MV_PLUGINS or plugins/ build)."),
    onnx_model: bool = flag(True, "--onnx-model/--no-onnx-model",
                                    help="Write the onnxruntime model."),
    trt_model: bool = flag(True, "--trt-model/--no-trt-model",
                                   help="Write the TensorRT model (when an engine exists)."),
    conf_percentile: float = typer.Option(50.0, "--conf-percentile", help="Python model's "
                                          "confidence filter (negative disables)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="onnxruntime threads "
                                          "per Python-model instance."),
) -> None:
    """Write a Triton model repository for exported buckets: per bucket a Python-backend
    model (frames -> poses, depth, points), an onnxruntime model of model.onnx and a
    TensorRT model of the bucket's engine."""
    from runtime.trt.plugins import resolve_plugin_library

    from .pbtxt import ConfigError
    from .repository import RepositoryError, RepositoryOptions, export_repository

    try:
        lib = resolve_plugin_library(plugins) if trt_model else None
        opts = RepositoryOptions(max_batch_size=max_batch_size,
                                 max_queue_delay_us=max_queue_delay_us, instances=instances,
                                 kind=kind, backend=backend, trt_instances=trt_instances,
                                 precision=precision, plugins=lib, include_onnx=onnx_model,
                                 include_trt=trt_model, threads=threads,
                                 conf_percentile=None if conf_percentile < 0
                                 else conf_percentile)
        index = export_repository(bucket, out, opts,
                                  log=lambda s: console.print(s, markup=False))
    except (RepositoryError, ConfigError, FileNotFoundError, ValueError) as e:
        _fail(str(e))
    n = len(index["buckets"])
    console.print(f"wrote {out} ({n} bucket{'s' * (n != 1)}); start it with "
                  f"`python cli.py serve --repo {out}`", markup=False, soft_wrap=True)


def serve(
    repo: Path = typer.Option(..., "--repo", help="Model repository from export-triton."),
    http_port: int = typer.Option(8000, "--http-port", help="0 picks a free port."),
    grpc_port: int = typer.Option(8001, "--grpc-port", help="0 picks a free port."),
    metrics_port: int = typer.Option(8002, "--metrics-port", help="0 picks a free port."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 "
                             "exposes the server to the network)."),
    timeout: float = typer.Option(300.0, "--timeout", help="Seconds to wait for readiness."),
    log_file: Optional[Path] = typer.Option(None, "--server-log", help="tritonserver's log "
                                            "(default: a temporary file)."),
) -> None:
    """Start tritonserver on a repository, wait until it is ready, print the endpoints;
    Ctrl-C or SIGTERM stops it cleanly."""
    from runtime.errors import RuntimeDataError

    from .repository import RepositoryError
    from .server import ServerError, ServerInterrupted, TritonServer
    from .verify import verify_repository

    try:  # a foreign folder, a garbled config or edited graphs: named here, not in the log
        verify_repository(repo)
    except (RepositoryError, RuntimeDataError) as e:
        _fail(str(e))
    stop = threading.Event()

    def on_signal(signum, frame):  # noqa: ARG001 - only sets a flag (see start's abort)
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        srv = TritonServer(repo, http_port, grpc_port, metrics_port, host=host,
                           log_path=log_file)
        console.print(f"starting tritonserver on {repo} ...", markup=False)
        srv.start(timeout, abort=stop.is_set)
    except ServerInterrupted:
        for s, h in old.items():
            signal.signal(s, h)
        _fail("interrupted before the server was ready; it has been stopped", code=130)
    except ServerError as e:
        for s, h in old.items():
            signal.signal(s, h)
        _fail(str(e), code=1)
    try:
        for m, b in srv.skipped.items():
            warn(f"{m} not loaded: this tritonserver has no {b} backend (the bundled "
                 f"pytriton server has only the Python backend)")
        console.print(f"ready: HTTP http://{srv.http_url}  gRPC {srv.grpc_url}  metrics "
                      f"{srv.metrics_url}", markup=False)
        console.print(f"log: {srv.log_path}; Ctrl-C stops the server", markup=False)
        while not stop.is_set():
            if srv.proc.poll() is not None:
                _fail(f"tritonserver exited with code {srv.proc.returncode}:\n"
                      f"{srv.log_tail()}", code=1)
            stop.wait(0.5)
        console.print("stopping tritonserver ...", markup=False)
    finally:
        code = srv.stop()
        for s, h in old.items():
            signal.signal(s, h)
    console.print(f"stopped (exit code {code})", markup=False)


def _infer_remote(server: str, protocol: Optional[str], model: Optional[str], input: Path,
                  out: Path, T, N, t0, views, compress: bool, timeout: float) -> None:
    from runtime.errors import RuntimeDataError

    from .client import ServingClientError, TritonClient, load_frames

    t_start = time.perf_counter()
    try:
        clip = load_frames(input, T=T, N=N, t0=t0, views=views)
        with TritonClient(server, protocol, timeout=timeout) as client:
            pred = client.predict(clip, model)
        written = pred.write_outputs(out, compress=compress)
    except OSError as e:
        _fail(*os_error_message(e))
    except (ServingClientError, RuntimeDataError, ValueError) as e:
        _fail(str(e))
    console.print(f"infer: {pred.bucket} on {pred.backend_detail}: "
                  f"{pred.timing['inference']:.3f} s request, "
                  f"{time.perf_counter() - t_start:.3f} s total", markup=False)
    console.print(f"wrote {written['npz']}, {written['ply']} ({written['points']:,} points), "
                  f"{len(written['depth_png'])} depth + {len(written['confidence_png'])} "
                  f"confidence PNGs, {written['run_json']}", markup=False, soft_wrap=True)


def _infer(server=None, protocol=None, model=None, timeout=120.0, **kwargs) -> None:
    if server is None:
        return runtime_commands.infer(**kwargs)
    if kwargs.get("engine") or kwargs.get("onnx"):
        _fail("--server runs on the server: drop --engine / --onnx")
    if kwargs.get("pad"):
        _fail("--pad is not available with --server (the server has fixed buckets)")
    if kwargs.get("stream"):
        _fail("--stream is not available with --server yet: run --stream locally "
              "(--onnx / --engine), or send one clip per request")
    views = runtime_commands._parse_views(kwargs.get("views"))
    _infer_remote(server, protocol, model, kwargs["input"], kwargs["out"], kwargs.get("T"),
                  kwargs.get("N"), kwargs.get("t0", 0), views, kwargs.get("compress", False),
                  timeout)


_EXTRA = [
    inspect.Parameter("server", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str],
                      default=typer.Option(None, "--server", help="Run on a Triton server "
                                           "instead: http://HOST:PORT or grpc://HOST:PORT "
                                           "(needs tritonclient).")),
    inspect.Parameter("protocol", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str],
                      default=typer.Option(None, "--protocol", help="http or grpc (default: "
                                           "from the --server URL, else http).")),
    inspect.Parameter("model", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str],
                      default=typer.Option(None, "--model", help="Model name on the server "
                                           "(default: the one for the clip's T and N).")),
    inspect.Parameter("timeout", inspect.Parameter.KEYWORD_ONLY, annotation=float,
                      default=typer.Option(120.0, "--timeout", help="Seconds before a "
                                           "--server request is given up.")),
]


def _make_infer():
    """runtime's `infer` with the --server options added (runtime/ cannot import this
    layer, so the remote path is wired here and the local path is runtime's own)."""
    base = inspect.signature(runtime_commands.infer)
    hints = typing.get_type_hints(runtime_commands.infer)  # string annotations -> types
    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY,
                        annotation=hints.get(p.name, p.annotation))
              for p in base.parameters.values()]

    def infer(**kwargs) -> None:
        _infer(**kwargs)

    infer.__doc__ = (runtime_commands.infer.__doc__ or "") + (
        " With --server URL the clip runs on a Triton server (export-triton / serve) and "
        "the same files are written.")
    infer.__signature__ = base.replace(parameters=params + _EXTRA, return_annotation=None)
    return infer


infer = _make_infer()
