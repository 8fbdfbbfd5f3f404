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


@pytest.fixture(scope="session")
def host_harness(tmp_path_factory) -> Path:
    """The kernel source compiled for the CPU (cached by source hash)."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler (g++) to build the host-executed kernel harness")
    srcs = [CSRC / "attention" / "attention_launch.cu", CSRC / "host_tests" / "attention_host_test.cpp"]
    deps = list(CSRC.rglob("*.h")) + list(CSRC.rglob("*.cuh")) + srcs
    out_dir = ROOT / "plugins" / "build" / "host"
    out_dir.mkdir(parents=True, exist_ok=True)
    exe = out_dir / f"attention_host_test-{sources_hash(deps)}"
    if not exe.exists():
        cmd = [cxx, "-std=c++20", "-O2", "-pthread", "-Wall", "-Wextra", "-Werror",
               "-x", "c++", str(srcs[0]), "-x", "c++", str(srcs[1]), "-o", str(exe)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        assert res.returncode == 0, f"host build failed:\n{' '.join(cmd)}\n{res.stderr}"
    return exe
