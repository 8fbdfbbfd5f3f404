"""The TensorRT IPluginV3 wrappers, compiled against TensorRT's public headers and driven
on the CPU (creator -> createPlugin -> types/shapes/formats -> serialize -> recreate ->
clone -> enqueue through the host-executed kernel).

Needs TENSORRT_INCLUDE_DIR (an include/ folder of NVIDIA/TensorRT, e.g. a local checkout
of release/10.3 or main; never committed) and the CUDA headers (cuda_runtime_api.h).
"""
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from plugins.reference import numpy_ref

CSRC = Path(__file__).resolve().parents[1] / "csrc"


def cuda_include() -> Path | None:
    for base in (os.environ.get("CUDA_HOME"), "/usr/local/cuda", "/usr/local/cuda-13.0"):
        if base and (Path(base) / "include" / "cuda_runtime_api.h").is_file():
            return Path(base) / "include"
    nvcc = shutil.which("nvcc")
    if nvcc:
        res = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", "/dev/null"],
                             capture_output=True, text=True)
        for tok in res.stderr.split():
            if tok.startswith("-I") and (Path(tok[2:].strip('"')) / "cuda_runtime_api.h").is_file():
                return Path(tok[2:].strip('"'))
    return None


def include_dirs() -> list[Path]:
    raw = os.environ.get("TENSORRT_INCLUDE_DIR")
    if not raw:
        pytest.skip("TENSORRT_INCLUDE_DIR is not set (point it at an include/ folder of the "
                    "public NVIDIA/TensorRT repo to compile-check the plugin wrappers)")
    dirs = [Path(d) for d in raw.split(os.pathsep)]
    for d in dirs:
        if not (d / "NvInferRuntime.h").is_file():
            pytest.skip(f"{d} has no NvInferRuntime.h")
    return dirs


@pytest.mark.parametrize("which", [0, 1])
def test_wrappers_compile_and_run_on_cpu(tmp_path, which):
    dirs = include_dirs()
    if which >= len(dirs):
        pytest.skip("only one TensorRT include dir given (use os.pathsep to give 10.3 and 11.x)")
    cuda = cuda_include()
    if cuda is None:
        pytest.skip("CUDA headers (cuda_runtime_api.h) not found; set CUDA_HOME")
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("no g++")
    exe = tmp_path / "plugin_wrapper_test"
    cmd = [cxx, "-std=c++20", "-O1", "-pthread", "-Wall", "-Wextra", "-Werror",
           "-isystem", str(dirs[which]), "-isystem", str(cuda),
           str(CSRC / "host_tests" / "plugin_wrapper_test.cpp"),
           str(CSRC / "attention" / "attentionPlugin.cpp"), str(CSRC / "registration.cpp"),
           "-x", "c++", str(CSRC / "attention" / "attention_launch.cu"), "-o", str(exe)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    qkv = np.random.default_rng(0).standard_normal((1, 2, 24, 8)).astype(np.float32)
    qkv.tofile(tmp_path / "qkv.bin")
    rng = np.random.default_rng(1)
    qkv16 = rng.standard_normal((1, 2, 24, 16)).astype(np.float16)
    rc = rng.standard_normal((2, 24)).astype(np.float32)
    qkv16.tofile(tmp_path / "qkv16.bin")
    rc.tofile(tmp_path / "rc.bin")
    run = subprocess.run([str(exe)], cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0 and "OK" in run.stdout, run.stderr
    out = np.fromfile(tmp_path / "out.bin", np.float32).reshape(1, 2, 24, 8)
    ref = numpy_ref.sparse_attention(qkv, qkv, qkv, np.zeros((1, 1), np.int32), 0.125, 1, 3, 4, 2,
                                     0, 0b110)
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=2e-5)
    # fp16 through the biased wrapper runs the tensor-core kernel
    out16 = np.fromfile(tmp_path / "out16.bin", np.float16).reshape(1, 2, 24, 16)
    x = qkv16.astype(np.float32)
    ref16 = numpy_ref.biased_attention(x, x, x, rc[:1], rc[1:], 0.125, 1)
    np.testing.assert_allclose(out16.astype(np.float32), ref16, atol=2e-3, rtol=2e-3)
