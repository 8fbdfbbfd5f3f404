"""The built shared library through TensorRT's own plugin registry (lean runtime wheels:
the registry works without a GPU), including the double-registration case.

Needs TENSORRT_INCLUDE_DIR (to build), nvcc + cmake, and tensorrt-lean bindings importable
(pip install tensorrt-lean-cu13-libs tensorrt-lean-cu13-bindings, or their folder on
VGGT_MV_TRT_LEAN_PATH)."""
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

PLUGINS = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trt_lean():
    extra = os.environ.get("VGGT_MV_TRT_LEAN_PATH")
    if extra and extra not in sys.path:
        sys.path.insert(0, extra)
    try:
        return importlib.import_module("tensorrt_lean_bindings")
    except ImportError:
        pytest.skip("tensorrt-lean bindings not installed (pip install tensorrt-lean-cu13-libs "
                    "tensorrt-lean-cu13-bindings, or set VGGT_MV_TRT_LEAN_PATH)")


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    inc = os.environ.get("TENSORRT_INCLUDE_DIR")
    if not inc:
        pytest.skip("TENSORRT_INCLUDE_DIR not set: cannot build the plugin library")
    for tool in ("cmake", "nvcc"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    build = tmp_path_factory.mktemp("plugins_build")
    for cmd in (["cmake", "-S", str(PLUGINS), "-B", str(build),
                 f"-DTENSORRT_INCLUDE_DIR={inc.split(os.pathsep)[0]}", "-DCMAKE_CUDA_ARCHITECTURES=87"],
                ["cmake", "--build", str(build), "--target", "vggt_mv_plugins", "-j2"]):
        res = subprocess.run(cmd, capture_output=True, text=True)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return build / "libvggt_mv_plugins.so"


def test_registry_loads_once_and_creates_plugins(trt_lean, library):
    trt = trt_lean
    reg = trt.get_plugin_registry()
    assert reg.load_library(str(library)) is not None
    assert reg.load_library(str(library)) is None  # double registration refused
    ours = sorted((c.name, c.plugin_version, c.plugin_namespace) for c in reg.all_creators
                  if c.name.startswith("Vggt"))
    assert ours == [("VggtBiasedAttention", "1", "vggt_mv"), ("VggtSparseAttention", "1", "vggt_mv")]
    # The bindings keep only pointers: the arrays must outlive create_plugin.
    keep = {"scale": np.array([0.125], np.float32)}
    keep.update({n: np.array([v], np.int32) for n, v in [
        ("num_heads", 2), ("strategy", 1), ("frame_len", 3), ("num_t", 4), ("num_n", 2),
        ("num_memory", 0), ("level_mask", 6)]})
    fields = [trt.PluginField(n, a, trt.PluginFieldType.FLOAT32 if a.dtype == np.float32
                              else trt.PluginFieldType.INT32) for n, a in keep.items()]
    creator = reg.get_creator("VggtSparseAttention", "1", "vggt_mv")
    assert [f.name for f in creator.field_names][:2] == ["scale", "num_heads"]
    assert creator.create_plugin("ok", trt.PluginFieldCollection(fields),
                                 trt.TensorRTPhase.BUILD) is not None
    assert creator.create_plugin("bad", trt.PluginFieldCollection(fields[:3]),
                                 trt.TensorRTPhase.BUILD) is None
