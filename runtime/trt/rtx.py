"""TensorRT for RTX (`pip install tensorrt-rtx`) made usable for parsing graphs with plugins.

The ONNX parser of TensorRT for RTX dlopens `libtensorrt_rtx.so` when a graph has a plugin
node, but the wheel ships only `libtensorrt_rtx.so.1`; without the plain name the process
dies ("terminate called without an active exception"). A symlink of that name in a
private cache folder fixes it, but only through LD_LIBRARY_PATH, which the dynamic loader
reads at process start: loading the link with RTLD_GLOBAL in-process was tried and does
not satisfy the parser's dlopen (glibc matches an already-loaded object by soname, which
is .so.1). So builds run in a child process with `subprocess_env()`, and `prepare()`
refuses (an exception, never a dead process) where this process cannot parse plugins.
Self-contained (stdlib only) so it can move with the TensorRT runtime code.
"""
from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

LINK_NAME = "libtensorrt_rtx.so"


class TrtRtxUnavailable(RuntimeError):
    pass


def _cache_dir() -> Path:
    base = os.environ.get("VGGT_MV_CACHE") or os.environ.get("XDG_CACHE_HOME") or \
        str(Path.home() / ".cache")
    return Path(base) / "vggt_mv" / "trt_rtx"


def library_file() -> Path:
    """libtensorrt_rtx.so.1 of the installed wheel (TrtRtxUnavailable when absent)."""
    import importlib.util

    spec = importlib.util.find_spec("tensorrt_rtx_libs")
    if spec is None or not spec.submodule_search_locations:
        raise TrtRtxUnavailable("TensorRT for RTX is not installed (pip install tensorrt-rtx)")
    for folder in spec.submodule_search_locations:
        for name in (LINK_NAME, LINK_NAME + ".1"):
            if (Path(folder) / name).is_file():
                return Path(folder) / name
    raise TrtRtxUnavailable(f"tensorrt_rtx_libs has no {LINK_NAME}.1: reinstall tensorrt-rtx")


def _link(target: Path) -> Path:
    """A symlink named libtensorrt_rtx.so to `target`, created atomically (rename)."""
    folder = _cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / LINK_NAME
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return link
    tmp = folder / f".{LINK_NAME}.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    tmp.replace(link)
    return link


def link_folder() -> Path:
    """The folder holding a libtensorrt_rtx.so link (the wheel's own folder if it has one)."""
    target = library_file()
    if target.name == LINK_NAME:
        return target.parent
    try:
        return _link(target.resolve()).parent
    except OSError as e:
        raise TrtRtxUnavailable(f"cannot create the {LINK_NAME} link in {_cache_dir()} "
                                f"(set VGGT_MV_CACHE to a writable folder): {e}") from e


def subprocess_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a child process whose ONNX parser can load plugin graphs."""
    env = dict(os.environ if base is None else base)
    old = env.get("LD_LIBRARY_PATH", "")
    env["LD_LIBRARY_PATH"] = str(link_folder()) + (os.pathsep + old if old else "")
    return env


def parser_ready() -> bool:
    """Whether this process started with a libtensorrt_rtx.so on its LD_LIBRARY_PATH."""
    return any(d and (Path(d) / LINK_NAME).exists()
               for d in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep))


def prepare() -> ModuleType:
    """tensorrt_rtx, in a process whose parser can load plugin graphs; TrtRtxUnavailable
    (with the remedy) otherwise."""
    library_file()
    if not parser_ready():
        raise TrtRtxUnavailable(
            f"this process cannot parse plugin graphs with TensorRT for RTX: start it with "
            f"LD_LIBRARY_PATH={link_folder()} (runtime.trt.rtx.subprocess_env())")
    import tensorrt_rtx

    return tensorrt_rtx


# --------------------------------------------------------------- ahead-of-time targets
# Compute capabilities TensorRT for RTX 1.7 builds for (its ComputeCapability enum). Orin
# (8.7) and Hopper (9.0) are not RTX targets: full TensorRT builds those, on the device.
RTX_TARGETS = {"7.5": "SM75", "8.0": "SM80", "8.6": "SM86", "8.9": "SM89", "12.0": "SM120",
               "12.1": "SM121"}
_NOT_RTX = {"8.7": "Jetson Orin", "9.0": "Hopper (H100/H200)", "10.0": "Blackwell datacenter"}


def parse_compute_capabilities(text: str) -> list[str]:
    """'86,89,120' or '8.6, 12.0' -> ['8.6', '8.9', '12.0'] (ordered, unique); ValueError
    naming the value and the supported list otherwise."""
    out: list[str] = []
    for raw in str(text).replace(" ", "").split(","):
        if not raw:
            continue
        cc = raw if "." in raw else (f"{raw[:-1]}.{raw[-1]}" if raw.isdigit() and len(raw) >= 2
                                     else raw)
        if cc in _NOT_RTX:
            raise ValueError(f"compute capability {raw} ({_NOT_RTX[cc]}) is not a TensorRT for "
                             f"RTX target; build that engine with full TensorRT on the device "
                             f"(`build-engine --target trt`)")
        if cc not in RTX_TARGETS:
            raise ValueError(f"compute capability {raw!r} is not one TensorRT for RTX builds "
                             f"for; choose from {', '.join(RTX_TARGETS)} (e.g. 86,89,120)")
        if cc not in out:
            out.append(cc)
    if not out:
        raise ValueError("--compute-capability needs at least one value, e.g. 86,89,120")
    return out


def configure_targets(trt: ModuleType, config, capabilities: list[str]) -> None:
    """Ahead-of-time targets on a builder config: no GPU is needed to build for them."""
    config.num_compute_capabilities = len(capabilities)
    for i, cc in enumerate(capabilities):
        config.set_compute_capability(getattr(trt.ComputeCapability, RTX_TARGETS[cc]), i)
