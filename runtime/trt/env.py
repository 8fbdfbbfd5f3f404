"""What this machine offers TensorRT: the bindings, cuda-python and a GPU.

The one place that imports tensorrt / cuda-python and decides whether they are usable;
every caller (build, session, sidecar, the accuracy check) asks here, so "TensorRT is
missing" reads the same everywhere and a missing GPU is an answer, not a crash.
"""
from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

from ..session import SessionError

__all__ = ["MIN_TENSORRT", "TrtUnavailableError", "GpuUnavailableError", "GpuInfo",
           "parse_version", "import_tensorrt", "import_cudart", "tensorrt_version", "version_label",
           "TENSORRT_LIBRARY_ENV",
           "unavailable_reason", "detect_gpu", "require_gpu", "make_logger"]

MIN_TENSORRT = (10, 3)  # JetPack 6: strongly typed networks, IPluginV3, execute_async_v3
# Which TensorRT runs engines: "tensorrt" (servers, Jetsons; the default) or "tensorrt_rtx"
# (TensorRT for RTX, RTX workstation GPUs). Unset: tensorrt, else tensorrt_rtx if only it
# is installed.
TENSORRT_LIBRARY_ENV = "VGGT_MV_TENSORRT"
_LIBRARIES = ("tensorrt", "tensorrt_rtx")


class TrtUnavailableError(SessionError):
    """TensorRT, cuda-python or a GPU is missing; the message says which and how to fix."""


class GpuUnavailableError(TrtUnavailableError):
    """No CUDA driver or no CUDA device on this machine."""


def parse_version(text: str) -> tuple[int, ...]:
    """'10.3.0.26' -> (10, 3, 0, 26); non-numeric suffixes ('11.4.1.post1') are dropped."""
    parts = []
    for tok in str(text).strip().split("."):
        m = re.match(r"\d+", tok)
        if m is None:
            break
        parts.append(int(m.group()))
    return tuple(parts)


def _import_lean():
    # The tensorrt-lean metapackage provides `tensorrt_lean`; the bare bindings wheel
    # (tensorrt-lean-cuXX-bindings) only `tensorrt_lean_bindings`.
    try:
        import tensorrt_lean as trt  # noqa: PLC0415
    except ImportError:
        import tensorrt_lean_bindings as trt  # noqa: PLC0415
    return trt


def import_tensorrt(*, allow_lean: bool = True, need_builder: bool = False,
                    library: str | None = None):
    """The TensorRT bindings, checked for version (and for the builder when building).

    allow_lean: fall back to the lean runtime, which only deserializes version-compatible
    engines (`build-engine --version-compatible`) and cannot build.
    The library is chosen once, here: ``library`` ("tensorrt" or "tensorrt_rtx"), else
    $VGGT_MV_TENSORRT, else `tensorrt`, else (to run engines, not to build)
    `tensorrt_rtx` when it is the one installed."""
    source = "library=" if library else f"${TENSORRT_LIBRARY_ENV}="
    choice = (library or os.environ.get(TENSORRT_LIBRARY_ENV, "")).strip()
    if choice and choice not in _LIBRARIES:
        raise TrtUnavailableError(f"{source}{choice!r}: choose one of "
                                  f"{', '.join(_LIBRARIES)}")
    rtx_only = (not choice and not need_builder and importlib.util.find_spec("tensorrt") is None
                and importlib.util.find_spec("tensorrt_rtx") is not None)
    if choice == "tensorrt_rtx" or rtx_only:
        try:
            import tensorrt_rtx as trt  # noqa: PLC0415
        except ImportError as e:
            raise TrtUnavailableError(f"{source}tensorrt_rtx but TensorRT for RTX is not "
                                      f"installed (pip install tensorrt-rtx)") from e
        return trt
    try:
        import tensorrt as trt  # noqa: PLC0415
    except ImportError as e:
        lean = any(importlib.util.find_spec(m) for m in ("tensorrt_lean",
                                                          "tensorrt_lean_bindings"))
        if need_builder and lean:
            raise TrtUnavailableError(
                "only the TensorRT lean runtime is installed; it runs engines but cannot "
                "build them (no Builder/OnnxParser): install the full `tensorrt` package"
            ) from e
        if not (allow_lean and lean):
            raise TrtUnavailableError(
                "TensorRT is not installed: x86: `pip install tensorrt` (10.3+ or 11.x, "
                "matching your CUDA, on a machine with an NVIDIA GPU); JetPack 6: `sudo apt "
                "install python3-libnvinfer python3-libnvinfer-dev` (TensorRT 10.3)"
                + (". `--dry-run` works without it." if need_builder else "")) from e
        trt = _import_lean()
    if parse_version(trt.__version__)[:2] < MIN_TENSORRT:
        raise TrtUnavailableError(
            f"TensorRT {trt.__version__} is too old: {'.'.join(map(str, MIN_TENSORRT))} "
            f"(JetPack 6) or newer is required (strongly typed networks, IPluginV3)")
    if need_builder and not (hasattr(trt, "Builder") and hasattr(trt, "OnnxParser")):
        raise TrtUnavailableError(
            f"the installed TensorRT {trt.__version__} is a runtime-only (lean/dispatch) "
            f"package without Builder/OnnxParser; install the full `tensorrt` package to "
            f"build engines")
    return trt


def version_label(trt) -> str:
    """The version recorded in sidecars and compared at load: TensorRT for RTX numbers its
    releases 1.x, so its engines are labelled '1.7.1.116-rtx' and never pass for another
    library's (parse_version reads the numeric part)."""
    v = str(trt.__version__)
    return f"{v}-rtx" if trt.__name__.split(".")[0] == "tensorrt_rtx" else v


def tensorrt_version() -> str | None:
    try:
        return version_label(import_tensorrt())
    except TrtUnavailableError:
        return None


def import_cudart():
    try:
        from cuda.bindings import runtime as cudart  # noqa: PLC0415
    except ImportError:
        try:
            from cuda import cudart  # noqa: PLC0415 - cuda-python < 12.6
        except ImportError as e:
            raise TrtUnavailableError(
                "cuda-python is not installed: `pip install cuda-python` with the major "
                "version of your CUDA (12.x on JetPack 6)") from e
    return cudart


# ------------------------------------------------------------------------------- GPU
@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "8.7": a string so JSON and comparisons stay exact
    index: int = 0
    total_memory_mb: int | None = None


def require_gpu(device: int = 0) -> GpuInfo:
    """Name and compute capability of CUDA device ``device``; GpuUnavailableError says why
    there is none. cuda-python when installed, else the driver API through ctypes, so
    "no GPU" is precise even where cuda-python is absent."""
    try:
        cudart = import_cudart()
    except TrtUnavailableError:
        return _gpu_from_driver(device)
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count == 0:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise GpuUnavailableError(f"no CUDA device visible (cudaGetDeviceCount: {err}, "
                                  f"CUDA_VISIBLE_DEVICES={visible!r})")
    if device >= count:
        raise GpuUnavailableError(f"CUDA device {device} requested, {count} present")
    err, prop = cudart.cudaGetDeviceProperties(device)
    if int(err) != 0:
        raise GpuUnavailableError(f"cudaGetDeviceProperties({device}) failed: {err}")
    name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
    return GpuInfo(name.rstrip("\x00"), f"{prop.major}.{prop.minor}", device,
                   int(prop.totalGlobalMem // (1 << 20)))


def detect_gpu(device: int = 0) -> GpuInfo | None:
    """The GPU, or None where there is none (require_gpu says why)."""
    try:
        return require_gpu(device)
    except GpuUnavailableError:
        return None


_CU_CC_MAJOR, _CU_CC_MINOR = 75, 76  # CUdevice_attribute values from cuda.h


def _gpu_from_driver(device: int) -> GpuInfo:
    lib: Any = None
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        raise GpuUnavailableError("no CUDA driver on this machine (libcuda.so.1 not found); "
                                  "TensorRT needs an NVIDIA GPU with its driver installed")
    rc = lib.cuInit(0)
    if rc != 0:
        raise GpuUnavailableError(f"CUDA driver present but cuInit failed (CUresult {rc}): "
                                  f"no usable GPU")
    count = ctypes.c_int(0)
    lib.cuDeviceGetCount(ctypes.byref(count))
    if count.value <= device:
        raise GpuUnavailableError(f"CUDA device {device} requested, {count.value} present")
    dev = ctypes.c_int(0)
    lib.cuDeviceGet(ctypes.byref(dev), device)
    buf = ctypes.create_string_buffer(256)
    lib.cuDeviceGetName(buf, 256, dev)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    lib.cuDeviceGetAttribute(ctypes.byref(major), _CU_CC_MAJOR, dev)
    lib.cuDeviceGetAttribute(ctypes.byref(minor), _CU_CC_MINOR, dev)
    return GpuInfo(buf.value.decode(errors="replace"), f"{major.value}.{minor.value}", device)


def unavailable_reason(device: int = 0) -> str | None:
    """Why TensorRT engines cannot run here (None: they can). Never raises."""
    try:
        import_tensorrt()
    except TrtUnavailableError as e:
        return str(e).split(":")[0] if "not installed" in str(e) else str(e)
    try:
        require_gpu(device)
    except GpuUnavailableError as e:
        return f"no NVIDIA GPU visible ({e})"
    return None


# ---------------------------------------------------------------------------- logging
_LOG = logging.getLogger("vggt_mv.tensorrt")


def make_logger(trt, sink: list[str] | None = None):
    """A trt.ILogger that forwards TensorRT's messages to Python logging
    ("vggt_mv.tensorrt", so -v / --log-file reach them); warnings and errors are also
    kept in ``sink`` for error messages. The lean runtime has no ILogger subclassing on
    some releases: its plain trt.Logger is returned there."""
    if not hasattr(trt, "ILogger"):
        return trt.Logger(trt.Logger.WARNING)
    sev = trt.ILogger.Severity
    levels = {int(sev.INTERNAL_ERROR): logging.CRITICAL, int(sev.ERROR): logging.ERROR,
              int(sev.WARNING): logging.WARNING, int(sev.INFO): logging.INFO,
              int(sev.VERBOSE): logging.DEBUG}

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity, msg) -> None:  # noqa: ANN001 - TensorRT callback
            level = levels.get(int(severity), logging.INFO)
            _LOG.log(level, msg)
            if sink is not None and level >= logging.WARNING:
                name = getattr(severity, "name", None) or str(severity).split(".")[-1]
                sink.append(f"[{name}] {msg}")

    return _Logger()
