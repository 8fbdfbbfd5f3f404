"""Builds of the C entry point (attention_launch.cu + attention_capi.cu) for
scripts/gpu_check.py: with nvcc and the flags the plugin library ships with, or with g++
through the CUDA host shim (the same source, executed on the CPU), and the CUDA tools the
check needs. stdlib only.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
CSRC = HERE / "csrc"
SOURCES = [CSRC / "attention" / "attention_launch.cu", CSRC / "attention" / "attention_capi.cu"]
CACHE = HERE / "build" / "gpu_check"


class ToolMissing(RuntimeError):
    pass


def shipped_nvcc_flags(cmake: Path = HERE / "CMakeLists.txt", build_py: Path = HERE / "build.py") -> list[str]:
    """The CUDA flags libvggt_mv_plugins.so is compiled with, read from CMakeLists.txt (the
    CUDA standard and the CUDA-language compile options) and the build type plugins/build.py
    selects (Release adds -DNDEBUG), so the check measures the code that ships."""
    text = cmake.read_text()
    std = re.search(r"set\(CMAKE_CUDA_STANDARD\s+(\d+)\)", text)
    opts = re.search(r"target_compile_options\(vggt_mv_plugins\s+PRIVATE\s+\$<\$<COMPILE_LANGUAGE:CUDA>:([^>]*)>",
                     text)
    if std is None or opts is None:
        raise RuntimeError(f"{cmake}: CMAKE_CUDA_STANDARD or the CUDA compile options of vggt_mv_plugins "
                           "not found; keep plugins/capi_build.py in step with it")
    flags = [f"-std=c++{std.group(1)}", *opts.group(1).split()]
    if "-DCMAKE_BUILD_TYPE=Release" in build_py.read_text():
        flags.append("-DNDEBUG")
    return flags


def nvcc_command(nvcc: str, arch: str, out: Path) -> list[str]:
    """-lineinfo on top of the shipped flags: compute-sanitizer reports then name source
    lines; it changes no generated instruction."""
    return [nvcc, *shipped_nvcc_flags(), "-lineinfo", f"-arch=sm_{arch}", "-shared", "-Xcompiler", "-fPIC",
            *map(str, SOURCES), "-o", str(out)]


def host_command(cxx: str, out: Path) -> list[str]:
    # The flags of plugins/tests/conftest.py's host harness: the CPU tests and the dry run
    # execute the same build of the kernels.
    cmd = [cxx, "-std=c++20", "-O2", "-pthread", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC"]
    for src in SOURCES:
        cmd += ["-x", "c++", str(src)]
    return cmd + ["-o", str(out)]


def sources_hash(extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for p in sorted([*CSRC.rglob("*.h"), *CSRC.rglob("*.cuh"), *SOURCES]):
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def build(kind: str, tool: str, arch: str = "80", timeout: float | None = None) -> tuple[Path, list[str]]:
    """(library, command): kind "nvcc" or "host", cached under plugins/build/gpu_check by the
    hash of the sources and the command. Raises RuntimeError with the compiler's output."""
    CACHE.mkdir(parents=True, exist_ok=True)
    probe = nvcc_command(tool, arch, Path("OUT")) if kind == "nvcc" else host_command(tool, Path("OUT"))
    lib = CACHE / f"libvggt_attention_{kind}-{sources_hash(' '.join(probe))}.so"
    cmd = nvcc_command(tool, arch, lib) if kind == "nvcc" else host_command(tool, lib)
    if lib.is_file():
        return lib, cmd
    tmp = lib.with_name(lib.name + ".partial")
    res = subprocess.run([*cmd[:-1], str(tmp)], capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-3000:]}")
    tmp.replace(lib)
    return lib, cmd


def find_nvcc() -> str | None:
    """$NVCC, nvcc on PATH, then $CUDA_HOME/bin/nvcc."""
    for cand in (os.environ.get("NVCC"), shutil.which("nvcc"),
                 os.environ.get("CUDA_HOME") and str(Path(os.environ["CUDA_HOME"], "bin", "nvcc"))):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def sanitizer_candidates(nvcc: str | None) -> list[Path]:
    """Where compute-sanitizer may be, in order: beside nvcc (the directory it is called
    from and the one it resolves to), $CUDA_HOME, then PATH. A toolkit keeps the binary in
    compute-sanitizer/ with a bin/ entry; both are tried."""
    roots: list[Path] = []
    if nvcc:
        for d in (Path(nvcc).parent, Path(nvcc).resolve().parent):
            roots += [d, d.parent / "compute-sanitizer"]
    if os.environ.get("CUDA_HOME"):
        home = Path(os.environ["CUDA_HOME"])
        roots += [home / "bin", home / "compute-sanitizer"]
    cands = [r / "compute-sanitizer" for r in roots]
    if hit := shutil.which("compute-sanitizer"):
        cands.append(Path(hit))
    return cands


def find_sanitizer(nvcc: str | None) -> str:
    cands = sanitizer_candidates(nvcc)
    for c in cands:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    raise ToolMissing("compute-sanitizer not found (looked in " + ", ".join(map(str, dict.fromkeys(cands)))
                      + " and PATH); it ships with the CUDA toolkit beside nvcc")
