import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "plugins" / "csrc"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def sources_hash(paths) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def build_host_program(name: str, srcs: list[Path], defines: tuple[str, ...] = ()) -> Path:
    """Compiles CUDA-flavoured sources for the CPU (cached by the hash of everything in csrc
    and the -D `defines`, which the mutation tests use to switch parts of a kernel off)."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler (g++) to build the host-executed kernel harness")
    deps = list(CSRC.rglob("*.h")) + list(CSRC.rglob("*.cuh")) + srcs
    out_dir = ROOT / "plugins" / "build" / "host"
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = hashlib.sha256(" ".join(defines).encode()).hexdigest()[:8] if defines else ""
    exe = out_dir / f"{name}-{sources_hash(deps)}{'-' + tag if tag else ''}"
    if not exe.exists():
        cmd = [cxx, "-std=c++20", "-O2", "-pthread", "-Wall", "-Wextra", "-Werror"]
        cmd += [f"-D{d}" for d in defines]
        for src in srcs:
            cmd += ["-x", "c++", str(src)]
        tmp = exe.with_suffix(".partial")
        res = subprocess.run(cmd + ["-o", str(tmp)], capture_output=True, text=True)
        assert res.returncode == 0, f"host build failed:\n{' '.join(cmd)}\n{res.stderr}"
        tmp.replace(exe)
    return exe


@pytest.fixture(scope="session")
def host_harness() -> Path:
    """The kernel source compiled for the CPU."""
    return build_host_program("attention_host_test", [CSRC / "attention" / "attention_launch.cu",
                                                      CSRC / "host_tests" / "attention_host_test.cpp"])


@pytest.fixture(scope="session")
def shim_test() -> Path:
    """Self-checks of the CUDA / PTX host shims."""
    return build_host_program("shim_test", [CSRC / "host_tests" / "shim_test.cpp"])
