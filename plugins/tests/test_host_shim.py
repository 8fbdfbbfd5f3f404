"""The host shims are part of the test oracle: the kernels' CPU runs are only as strict
as the mapping of CUDA's rules. These check that the mapping computes what CUDA defines
(shuffles, wmma products in both operand layouts and both store layouts) and that what the
GPU leaves undefined (misaligned or badly strided fragments, shuffles in a partial warp)
stops the host run instead of passing quietly."""
import signal
import subprocess

import pytest


def run(exe, mode):
    return subprocess.run([str(exe), mode], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("mode", ["shuffle", "wmma"])
def test_shim_computes_what_cuda_defines(shim_test, mode):
    res = run(shim_test, mode)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("mode,message", [
    ("misaligned", "not 256-bit aligned"),
    ("bad_ldm", "multiple of 16 bytes"),
    ("partial_warp", "full warp"),
])
def test_shim_aborts_on_what_the_gpu_leaves_undefined(shim_test, mode, message):
    res = run(shim_test, mode)
    assert res.returncode == -signal.SIGABRT, (res.returncode, res.stderr)
    assert message in res.stderr
