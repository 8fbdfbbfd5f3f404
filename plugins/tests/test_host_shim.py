"""The host shims are part of the test oracle: the kernels' CPU runs are only as strict
as the mapping of CUDA's rules. These check that the mapping computes what CUDA / the PTX
ISA define (shuffles; mma.sync m16n8k16 and ldmatrix .x1/.x2/.x4 (.trans) with their
documented lane layouts; cp.async landing at its wait_group, zero fill), that the bank
model counts wavefronts as the hardware serves them, and that what the GPU leaves
undefined or refuses (reads before a cp.async wait, uninitialised or racy shared memory,
launch limits, shuffles in a partial warp) stops the host run instead of passing quietly."""
import signal
import subprocess

import pytest


def run(exe, mode):
    return subprocess.run([str(exe), mode], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("mode", ["shuffle", "mma", "ldmatrix", "cp_async", "dynamic_opt_in"])
def test_shim_computes_what_cuda_defines(shim_test, mode):
    res = run(shim_test, mode)
    assert res.returncode == 0, res.stderr


def test_bank_model_counts_wavefronts(shim_test):
    res = run(shim_test, "bank")
    assert res.returncode == 0, res.stderr
    factors = dict((name, float(f)) for name, f in (line.split() for line in res.stdout.splitlines()))
    assert factors == {"consecutive": 1.0, "stride32": 32.0, "broadcast": 1.0,
                       "ldmatrix_rows128": 8.0}, factors


@pytest.mark.parametrize("mode,message", [
    ("read_early", "before the cp.async.wait_group"),
    ("uninit", "uninitialised shared word"),
    ("race", "warp 1 reads word 0 written by warp 0 without a __syncthreads"),
    ("war", "warp 1 overwrites word 0 accessed by another warp"),
    ("big_grid", "launch configuration the GPU refuses"),
    ("big_block", "launch configuration the GPU refuses"),
    ("big_smem", "static shared memory above 48 KB"),
    ("big_dynamic", "without the cudaFuncSetAttribute opt-in"),
    ("partial_warp", "full warp"),
])
def test_shim_aborts_on_what_the_gpu_leaves_undefined(shim_test, mode, message):
    res = run(shim_test, mode)
    assert res.returncode == -signal.SIGABRT, (res.returncode, res.stderr)
    assert message in res.stderr
