"""Find, build and load libvggt_mv_plugins.so (the TensorRT plugins).

Search order: $VGGT_MV_PLUGINS_LIB, plugins/build/libvggt_mv_plugins.so. Building needs
nvcc, CMake and TensorRT headers; every missing piece is named in the error.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILD_DIR = HERE / "build"
LIB_NAME = "libvggt_mv_plugins.so"


class PluginBuildError(RuntimeError):
    pass


def library_path() -> Path | None:
    """Where the library is, without building anything (None when absent)."""
    env = os.environ.get("VGGT_MV_PLUGINS_LIB")
    if env:
        return Path(env) if Path(env).is_file() else None
    cand = BUILD_DIR / LIB_NAME
    return cand if cand.is_file() else None


def sha256(path: str | Path | None = None) -> str:
    path = Path(path) if path else library_path()
    if path is None:
        raise PluginBuildError("no plugin library to hash; build it first (python -c 'import plugins; plugins.load()')")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def missing_tools() -> list[str]:
    missing = []
    if shutil.which("cmake") is None:
        missing.append("cmake (apt install cmake / pip install cmake)")
    if shutil.which("nvcc") is None and not os.environ.get("CUDACXX"):
        missing.append("nvcc, the CUDA compiler (CUDA toolkit; on Jetson it ships with JetPack)")
    inc = os.environ.get("TENSORRT_INCLUDE_DIR") or os.environ.get("TENSORRT_ROOT")
    if not inc and not any(Path(p, "NvInferRuntime.h").is_file() for p in
                           ("/usr/include/x86_64-linux-gnu", "/usr/include/aarch64-linux-gnu", "/usr/include")):
        missing.append("TensorRT headers (NvInferRuntime.h): install TensorRT 10.3+ or set "
                       "TENSORRT_ROOT / TENSORRT_INCLUDE_DIR")
    return missing


def build(archs: str | None = None) -> Path:
    missing = missing_tools()
    if missing:
        raise PluginBuildError("cannot build " + LIB_NAME + "; missing:\n  - " + "\n  - ".join(missing))
    args = ["cmake", "-S", str(HERE), "-B", str(BUILD_DIR), "-DCMAKE_BUILD_TYPE=Release"]
    if os.environ.get("TENSORRT_ROOT"):
        args.append(f"-DTENSORRT_ROOT={os.environ['TENSORRT_ROOT']}")
    if os.environ.get("TENSORRT_INCLUDE_DIR"):
        args.append(f"-DTENSORRT_INCLUDE_DIR={os.environ['TENSORRT_INCLUDE_DIR'].split(os.pathsep)[0]}")
    if archs:
        args.append(f"-DCMAKE_CUDA_ARCHITECTURES={archs}")
    for cmd in (args, ["cmake", "--build", str(BUILD_DIR), "--target", "vggt_mv_plugins", "-j2"]):
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise PluginBuildError(f"{' '.join(cmd)} failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    lib = BUILD_DIR / LIB_NAME
    if not lib.is_file():
        raise PluginBuildError(f"build finished but {lib} is missing")
    return lib


def load(path: str | Path | None = None, build_if_missing: bool = True) -> ctypes.CDLL:
    """Load the plugin library (RTLD_GLOBAL so TensorRT's registry sees getCreators)."""
    lib = Path(path) if path else library_path()
    if lib is None:
        if not build_if_missing:
            raise PluginBuildError(f"{LIB_NAME} not found (set VGGT_MV_PLUGINS_LIB or build it)")
        lib = build()
    if not lib.is_file():
        raise PluginBuildError(f"plugin library {lib} does not exist")
    return ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
