"""TensorRT backend: `TrtSession` runs a bucket engine built by `python cli.py build-engine`.

Dependencies (imported through env.py): numpy, the TensorRT Python bindings (10.3 on JetPack 6, 10.x / 11.x on x86)
and cuda-python for memory, streams and CUDA graphs. Everything is imported when a
session is created, never at module import.

Lifecycle: the engine's sidecar is read and checked against this machine (TensorRT
version, GPU, plugin library sha256) before a byte of the engine is deserialized, so a
mismatch is a sentence, not a crash. One device buffer and one pinned host buffer per I/O
tensor are allocated once and reused by every call; tensor addresses are bound once.

Thread safety: one session owns one execution context and one stream, which TensorRT
does not allow two threads to use at a time, so ``run`` holds a lock: concurrent calls are
safe but serialised. For parallel inference create one TrtSession per thread (each gets
its own context, stream and buffers; the GPU memory cost is per session).
"""
from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..dispatch import check_feeds
from ..layout import PRECISIONS, Bucket, engine_filenames, sha256_bytes, sha256_file
from ..session import ClosingSession, SessionError
from .env import (
    MIN_TENSORRT,
    TENSORRT_LIBRARY_ENV,
    GpuUnavailableError,
    TrtUnavailableError,
    import_cudart,
    import_tensorrt,
    make_logger,
    require_gpu,
    version_label,
)
from .plugins import PluginLoadError, load_plugin_library, resolve_plugin_library
from .sidecar import (
    EnvironmentInfo,
    SidecarMismatchError,
    check_sidecar,
    engine_needs_plugins,
    read_sidecar,
    sidecar_path_for,
    stale_source_problems,
)
from .weights import WeightsError, apply_weight_budget, check_refit_weights, refit_engine

__all__ = ["TrtSession", "TrtUnavailableError", "CudaError", "find_engine", "engine_library",
           "load_plugin_library", "PRECISION_PREFERENCE", "MIN_TENSORRT"]

# Without an explicit precision: FP16 is the deployment default; INT8 trades accuracy.
PRECISION_PREFERENCE = ("fp16", "int8", "fp32")


class CudaError(RuntimeError):
    pass


def engine_library(sidecar: Mapping[str, Any], explicit: str | None = None) -> str | None:
    """The TensorRT library to run an engine with: ``explicit``, else $VGGT_MV_TENSORRT,
    else `tensorrt_rtx` for an engine `build-engine --target rtx` wrote (only TensorRT for
    RTX deserializes those), else None (import_tensorrt's default: tensorrt)."""
    if explicit:
        return explicit
    if os.environ.get(TENSORRT_LIBRARY_ENV, "").strip():
        return None  # import_tensorrt reads (and validates) it
    return "tensorrt_rtx" if (sidecar.get("build_options") or {}).get("target") == "rtx" \
        else None


def find_engine(engine_dir: str | Path, precision: str | None = None,
                target: str | None = None, attention: str | None = None) -> Path:
    """The engine file in a bucket folder: model.<precision>[.native].engine (full
    TensorRT) or model.<precision>[.native].rtx.engine (TensorRT for RTX); ``target``
    ("trt"/"rtx") and ``attention`` ("native"/"plugin") restrict the search, else full
    TensorRT's is taken first and, per target, the native engine first."""
    folder = Path(engine_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"engine folder not found: {folder}")
    present = {}
    for p in PRECISIONS:
        found = [folder / n for n in engine_filenames(p, target, attention)
                 if (folder / n).is_file()]
        if found:
            present[p] = found[0]
    flag = ("" if target in (None, "trt") else f" --target {target}") + \
        ("" if attention is None else f" --attention {attention}")
    if precision is not None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if precision not in present:
            raise FileNotFoundError(
                f"no {precision} engine in {folder} (expected "
                f"{' or '.join(engine_filenames(precision, target, attention))}; present: "
                f"{sorted(present) or 'none'}){_passed_over(folder, target, attention)}; "
                f"build it with `python cli.py "
                f"build-engine --{precision}{flag} --bucket {folder}`")
        return present[precision]
    for p in PRECISION_PREFERENCE:
        if p in present:
            return present[p]
    passed_over = _passed_over(folder, target, attention)  # only said when nothing is found
    if passed_over:
        raise FileNotFoundError(f"no usable TensorRT engine in {folder}"
                                f"{passed_over}; or build one with `python cli.py build-engine "
                                f"--fp16{flag} --bucket {folder}`")
    raise FileNotFoundError(f"no TensorRT engine in {folder} (model.fp16.engine, "
                            f"model.int8.engine, model.fp32.engine, their .native.engine "
                            f"and .rtx.engine twins); build one with `python cli.py build-engine --fp16{flag} "
                            f"--bucket {folder}`")


def _passed_over(folder: Path, target: str | None, attention: str | None) -> str:
    """Why the engine files in a folder that the search did not take were left: "no engine"
    next to a file the user can see sends them looking for the wrong problem."""
    searched = {n for p in PRECISIONS for n in engine_filenames(p, target, attention)}
    ours = {n for p in PRECISIONS for n in engine_filenames(p)}
    other = sorted(p.name for p in folder.glob("*.engine") if p.name not in searched)
    if not other:
        return ""
    why = []
    full = [n for n in other if n in ours and not n.endswith(".rtx.engine")]
    rtx = [n for n in other if n in ours and n.endswith(".rtx.engine")]
    if target == "rtx" and full:
        why.append(f"{', '.join(full)}: built for full TensorRT, which is not installed here "
                   f"(only TensorRT for RTX is; pip install tensorrt to run them)")
    if target == "trt" and rtx:
        why.append(f"{', '.join(rtx)}: built for TensorRT for RTX, and full TensorRT was asked "
                   f"for (pip install tensorrt-rtx and unset $VGGT_MV_TENSORRT to run them)")
    rest = [n for n in other if not any(n in w for w in why)]
    route = [n for n in rest if n in ours]
    if route and attention is not None:
        why.append(f"{', '.join(route)}: not {attention}-attention engines (drop "
                   f"--attention {attention} to take them)")
    unknown = [n for n in rest if n not in ours]
    if unknown:
        why.append(f"{', '.join(unknown)}: not a name this toolkit writes (rename to "
                   f"model.<precision>[.native][.rtx].engine, or rebuild)")
    return "; present but not taken: " + "; ".join(why)


_TARGET_OF_LIBRARY = {"tensorrt": "trt", "tensorrt_rtx": "rtx"}


def _engine_target(named: str | None) -> str | None:
    """Which engines a session may pick: the named library's, else TensorRT for RTX's
    where it is the only TensorRT installed (it cannot run full TensorRT's), else any."""
    if named:
        return _TARGET_OF_LIBRARY.get(named)
    import importlib.util  # noqa: PLC0415

    if importlib.util.find_spec("tensorrt") is None and \
            importlib.util.find_spec("tensorrt_rtx") is not None:
        return "rtx"
    return None


def _check(result: Any, what: str) -> Any:
    """cuda-python returns (err, *values); raise on error, return the value(s)."""
    err, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
    if int(err) != 0:
        cudart = import_cudart()
        _, msg = cudart.cudaGetErrorString(err)
        raise CudaError(f"{what} failed: {err} {msg.decode() if isinstance(msg, bytes) else msg}")
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else rest


class TrtSession(ClosingSession):
    """A TensorRT engine with its sidecar checked; see the module docstring."""

    backend = "tensorrt"

    def __init__(self, engine_dir: str | Path, plugin_lib: str | Path | None = None,
                 use_cuda_graph: bool = False, precision: str | None = None,
                 device: int = 0, allow_gpu_model_mismatch: bool = False,
                 tensorrt_library: str | None = None, attention: str | None = None,
                 weight_streaming_budget: int | None = None):
        """``weight_streaming_budget``: bytes of weights kept on the GPU (the rest stream
        from host memory; weights.AUTO_BUDGET lets TensorRT choose) for engines built
        with --weight-streaming. A weight-stripped engine is refitted here from the
        bucket's ONNX weights, checked first against the sha256 in its sidecar; the
        seconds it took are in ``refit_seconds``. ``attention`` ("native" / "plugin")
        picks between the two engines of a bucket that has both."""
        self._closed = True
        self._lock = threading.Lock()
        self.folder = Path(engine_dir)
        # A library named up front (argument or $VGGT_MV_TENSORRT) runs only its own
        # engines; otherwise the engine found decides the library (engine_library).
        named = tensorrt_library or os.environ.get(TENSORRT_LIBRARY_ENV, "").strip() or None
        self.engine_path = find_engine(self.folder, precision, _engine_target(named), attention)
        self.sidecar = read_sidecar(sidecar_path_for(self.engine_path))
        self.precision = self.sidecar["precision"]
        self._bucket = Bucket.from_dict(self.sidecar["bucket"])
        stale = stale_source_problems(self.folder, self.sidecar)  # before any TensorRT work
        if stale:
            raise SidecarMismatchError(self.engine_path, stale)
        try:  # a stripped engine's weights, checked before TensorRT reads a byte of them
            refit_graph = check_refit_weights(self.folder, self.sidecar)
        except WeightsError as e:
            raise SidecarMismatchError(self.engine_path, [str(e)]) from e
        self.refit_seconds: float | None = None

        # The GPU first: on a machine without one, a missing TensorRT or cuda-python is
        # not the problem to report (require_gpu needs neither).
        try:
            gpu = require_gpu(device)
        except GpuUnavailableError as e:
            raise TrtUnavailableError(f"cannot run {self.engine_path}: no GPU found ({e}); "
                                      f"TensorRT engines run on an NVIDIA GPU, on this "
                                      f"machine use --onnx") from e
        trt = import_tensorrt(library=engine_library(self.sidecar, tensorrt_library))
        self.lean = trt.__name__.startswith("tensorrt_lean")
        version_compatible = bool(self.sidecar["build_options"].get("version_compatible"))
        if self.lean and not version_compatible:
            raise TrtUnavailableError(
                f"only the TensorRT lean runtime is installed, and it runs version-compatible "
                f"engines only; {self.engine_path.name} was built without "
                f"--version-compatible. Install the full tensorrt package or rebuild with "
                f"`python cli.py build-engine --version-compatible`")
        cudart = import_cudart()
        # A plugin-free engine (native attention, dense bucket) neither needs nor loads the
        # library, so it runs on a machine that has none.
        lib = resolve_plugin_library(plugin_lib) if engine_needs_plugins(self.sidecar) else None
        env = EnvironmentInfo(version_label(trt), gpu.name, gpu.compute_capability,
                              sha256_file(lib) if lib else None, str(lib) if lib else None)
        problems = check_sidecar(self.sidecar, env,
                                 allow_gpu_model_mismatch=allow_gpu_model_mismatch)
        data = self.engine_path.read_bytes()
        want = self.sidecar.get("engine_sha256")
        if want and sha256_bytes(data) != want:
            problems.append(f"{self.engine_path.name} is not the engine its sidecar describes "
                            f"(sha256 differs); rebuild it with `python cli.py build-engine`")
        if problems:
            raise SidecarMismatchError(self.engine_path, problems)
        self.environment = env

        _check(cudart.cudaSetDevice(device), "cudaSetDevice")
        self._trt, self._cudart = trt, cudart
        self._logger = make_logger(trt)
        if hasattr(trt, "init_libnvinfer_plugins"):  # absent from the lean runtime
            trt.init_libnvinfer_plugins(self._logger, "")
        try:
            self._plugin_handle = load_plugin_library(trt, lib) if lib is not None else None
        except PluginLoadError as e:
            raise SessionError(str(e)) from e
        self._runtime = trt.Runtime(self._logger)
        if version_compatible and not self.sidecar["build_options"].get(
                "exclude_lean_runtime", False):
            # The plan embeds a lean runtime (host code); we only get here after its
            # sidecar and sha256 matched, i.e. it is the engine build-engine wrote.
            self._runtime.engine_host_code_allowed = True
        self._engine = self._runtime.deserialize_cuda_engine(data)
        if self._engine is None:
            raise SessionError(f"TensorRT could not deserialize {self.engine_path} (see the "
                               f"TensorRT log above); rebuild it with `python cli.py "
                               f"build-engine`")
        try:
            if refit_graph is not None:
                self.refit_seconds = refit_engine(trt, self._engine, self._logger, refit_graph)
                logging.getLogger("vggt_mv").info(
                    "%s: refitted its weights from %s in %.2f s", self.engine_path.name,
                    refit_graph.name, self.refit_seconds)
            # the budget must be set before the context exists
            self.weight_budget = apply_weight_budget(self._engine, weight_streaming_budget,
                                                     self.engine_path.name)
        except WeightsError as e:
            raise SessionError(str(e)) from e
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise SessionError("TensorRT could not create an execution context (out of GPU "
                               "memory?)")
        self._io = self._read_io(trt)
        self._compare_io_with_sidecar()
        self._device: dict[str, int] = {}
        self._host_ptr: dict[str, int] = {}
        self._host: dict[str, np.ndarray] = {}
        self._graph = self._graph_exec = self._stream = None
        self._closed = False  # from here on close() frees whatever was allocated
        self._stream = _check(cudart.cudaStreamCreateWithFlags(
            cudart.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")
        for name, spec in self._io.items():
            nbytes = max(1, int(np.prod(spec["shape"])) * np.dtype(spec["dtype"]).itemsize)
            self._device[name] = int(_check(cudart.cudaMalloc(nbytes), f"cudaMalloc {name}"))
            ptr = int(_check(cudart.cudaMallocHost(nbytes), f"cudaMallocHost {name}"))
            self._host_ptr[name] = ptr
            buf = (ctypes.c_char * nbytes).from_address(ptr)
            self._host[name] = np.frombuffer(buf, dtype=spec["dtype"],
                                             count=int(np.prod(spec["shape"]))
                                             ).reshape(spec["shape"])
            if not self._context.set_tensor_address(name, self._device[name]):
                raise SessionError(f"set_tensor_address({name}) rejected by TensorRT")
        self.use_cuda_graph = use_cuda_graph
        self.last_timing: dict[str, float] = {}

    # -------------------------------------------------------------------------- I/O
    def _read_io(self, trt) -> dict[str, dict[str, Any]]:
        io = {}
        for i in range(self._engine.num_io_tensors):
            name = self._engine.get_tensor_name(i)
            shape = [int(d) for d in self._engine.get_tensor_shape(name)]
            if any(d < 0 for d in shape):
                raise SessionError(f"engine tensor {name} has a dynamic shape {shape}; bucket "
                                   f"engines are built with fixed shapes, rebuild it")
            io[name] = {"shape": shape,
                        "dtype": np.dtype(trt.nptype(self._engine.get_tensor_dtype(name))).name,
                        "input": self._engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT}
        return io

    def _compare_io_with_sidecar(self) -> None:
        problems = []
        for kind, want in (("inputs", True), ("outputs", False)):
            declared = self.sidecar[kind]
            actual = {n: s for n, s in self._io.items() if s["input"] is want}
            if set(declared) != set(actual):
                problems.append(f"engine {kind} {sorted(actual)} != sidecar {sorted(declared)}")
                continue
            for n, s in declared.items():
                if [int(d) for d in s["shape"]] != actual[n]["shape"]:
                    problems.append(f"{n}: engine shape {actual[n]['shape']} != sidecar "
                                    f"{s['shape']}")
        if problems:
            raise SidecarMismatchError(self.engine_path, problems)

    @property
    def inputs(self) -> dict[str, dict[str, Any]]:
        return {n: {"shape": s["shape"], "dtype": s["dtype"]}
                for n, s in self._io.items() if s["input"]}

    @property
    def outputs(self) -> dict[str, dict[str, Any]]:
        return {n: {"shape": s["shape"], "dtype": s["dtype"]}
                for n, s in self._io.items() if not s["input"]}

    @property
    def bucket(self) -> Bucket:
        return self._bucket

    # -------------------------------------------------------------------------- run
    def _enqueue(self) -> None:
        cudart = self._cudart
        if self._graph_exec is not None:
            _check(cudart.cudaGraphLaunch(self._graph_exec, self._stream), "cudaGraphLaunch")
            return
        if not self._context.execute_async_v3(int(self._stream)):
            raise SessionError("TensorRT execute_async_v3 failed (see the TensorRT log)")
        if self.use_cuda_graph and self._graph is None:
            self._capture()

    def _capture(self) -> None:
        # Captured after one plain enqueue: TensorRT finishes its lazy per-context setup
        # in the first enqueue, which must not end up inside the graph.
        cudart = self._cudart
        _check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        try:
            _check(cudart.cudaStreamBeginCapture(
                self._stream, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal),
                "cudaStreamBeginCapture")
            ok = self._context.execute_async_v3(int(self._stream))
            graph = _check(cudart.cudaStreamEndCapture(self._stream), "cudaStreamEndCapture")
            if not ok:
                raise CudaError("execute_async_v3 failed during capture")
            self._graph = graph
            self._graph_exec = _check(cudart.cudaGraphInstantiate(graph, 0),
                                      "cudaGraphInstantiate")
        except CudaError as e:
            # Some plugins or TensorRT versions refuse capture; plain enqueue still works.
            warnings.warn(f"CUDA graph capture failed, running without it: {e}",
                          RuntimeWarning, stacklevel=3)
            self.use_cuda_graph = False
            self._graph = self._graph_exec = None

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Copy inputs in, execute on this session's stream, copy outputs out.

        Returns fresh arrays (the pinned buffers are reused by the next call)."""
        arrays = check_feeds(self.inputs, feeds)
        cudart = self._cudart
        with self._lock:
            if self._closed:
                raise SessionError("session is closed")
            t0 = time.perf_counter()
            h2d, d2h = (cudart.cudaMemcpyKind.cudaMemcpyHostToDevice,
                        cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost)
            for name, a in arrays.items():
                np.copyto(self._host[name], a)
                _check(cudart.cudaMemcpyAsync(self._device[name], self._host_ptr[name],
                                              self._host[name].nbytes, h2d, self._stream),
                       f"copy {name} to device")
            self._enqueue()
            for name in self.outputs:
                _check(cudart.cudaMemcpyAsync(self._host_ptr[name], self._device[name],
                                              self._host[name].nbytes, d2h, self._stream),
                       f"copy {name} to host")
            _check(cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
            result = {n: self._host[n].copy() for n in self.outputs}
            self.last_timing = {"run": time.perf_counter() - t0}
        return result

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            cudart = self._cudart
            if self._graph_exec is not None:
                cudart.cudaGraphExecDestroy(self._graph_exec)
            if self._graph is not None:
                cudart.cudaGraphDestroy(self._graph)
            self._host.clear()  # drop numpy views before the pinned memory goes away
            for ptr in self._host_ptr.values():
                cudart.cudaFreeHost(ptr)
            for ptr in self._device.values():
                cudart.cudaFree(ptr)
            if self._stream is not None:
                cudart.cudaStreamDestroy(self._stream)
            # Context before engine before runtime: TensorRT's documented teardown order.
            self._context = None
            self._engine = None
            self._runtime = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown may have freed CUDA
            pass

    def __repr__(self) -> str:
        return (f"TrtSession({self.engine_path}, {self.precision}, "
                f"cuda_graph={self.use_cuda_graph})")
