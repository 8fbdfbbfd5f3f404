"""Build libvggt_mv_plugins.so (the TensorRT plugins) with CMake into plugins/build/.

Building needs nvcc, CMake and TensorRT headers; every missing piece is named in the
error. Finding and loading the library (explicit path, $VGGT_MV_PLUGINS, then the build
here) is runtime/trt/plugins.py's job, through TensorRT's plugin registry.

    python plugins/build.py [--archs "80;86;87;89;90"]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUILD_DIR = HERE / "build"
LIB_NAME = "libvggt_mv_plugins.so"


class PluginBuildError(RuntimeError):
    pass


def built_library() -> Path | None:
    """The library this module built, or None (nothing is built here)."""
    cand = BUILD_DIR / LIB_NAME
    return cand if cand.is_file() else None


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


def main() -> None:
    ap = argparse.ArgumentParser(description="build " + LIB_NAME + " into " + str(BUILD_DIR))
    ap.add_argument("--archs", help='CUDA architectures, e.g. "80;86;87;89;90"')
    args = ap.parse_args()
    try:
        print(build(args.archs))
    except PluginBuildError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
