"""Both ways of loading libvggt_mv_plugins.so against TensorRT for RTX's real registry (no GPU
needed): a bare dlopen (trtexec --staticPlugins, polygraphy --plugins, ctypes) and
the registry's load_library; each in a fresh process."""
import importlib.util
import subprocess
import sys
import textwrap

import pytest

from .test_registry import library  # noqa: F401  (module fixture: builds the library)

pytestmark = pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None,
                                reason="TensorRT for RTX not installed (pip install -e .[test])")

SCRIPT = textwrap.dedent("""
    import ctypes, sys
    import tensorrt_rtx as trt
    lib, route = sys.argv[1], sys.argv[2]
    reg = trt.get_plugin_registry()
    ours = lambda: sorted((c.name, c.plugin_version, c.plugin_namespace)
                          for c in reg.all_creators if c.name.startswith("Vggt"))
    if route == "dlopen":
        ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
        print("A", ours())
        print("B", reg.load_library(lib) is not None, ours())   # registry after a bare load
    else:
        print("A", reg.load_library(lib) is not None, ours())
        ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
        print("B", ours())
""")
WANT = [("VggtBiasedAttention", "1", "vggt_mv"), ("VggtSparseAttention", "1", "vggt_mv")]


@pytest.mark.parametrize("route", ["dlopen", "registry"])
def test_both_routes_register_once(library, route):  # noqa: F811
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(library), route],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = dict(ln.split(" ", 1) for ln in res.stdout.splitlines())
    if route == "dlopen":
        assert lines["A"] == str(WANT)               # registered by the load-time initializer
        assert lines["B"] == f"True {WANT}"          # load_library afterwards: handed over once
    else:
        assert lines["A"] == f"True {WANT}"
        assert lines["B"] == str(WANT)
    assert "not registering" not in res.stderr
