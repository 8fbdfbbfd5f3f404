"""Both ways of loading libvggt_mv_plugins.so against TensorRT for RTX's real registry (no GPU
needed): a bare dlopen (trtexec --staticPlugins, polygraphy --plugins, ctypes) and
the registry's load_library; each in a fresh process. Then the toolkit's loader
(runtime/trt/plugins.py) after each route: one handle, nothing registered twice, and a
refusal when another copy of the library registered the creators first."""
import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

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


# The toolkit's one loader (runtime/trt/plugins.py) against the same registry: idempotent
# after each route, and refusing creators that came from another copy of the library.
LOADER = textwrap.dedent("""
    import ctypes, shutil, sys
    sys.path.insert(0, sys.argv[3])
    import tensorrt_rtx as trt
    from runtime.trt.plugins import PluginLoadError, load_plugin_library
    lib, route = sys.argv[1], sys.argv[2]
    reg = trt.get_plugin_registry()
    ours = lambda: sorted((c.name, c.plugin_version, c.plugin_namespace)
                          for c in reg.all_creators if c.name.startswith("Vggt"))
    if route == "dlopen":
        ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
    elif route == "registry":
        assert reg.load_library(lib) is not None
    elif route == "copy":   # another file with the same creators, loaded first
        other = sys.argv[4]
        shutil.copyfile(lib, other)
        ctypes.CDLL(other, mode=ctypes.RTLD_GLOBAL)
        try:
            load_plugin_library(trt, lib)
            print("A accepted")
        except PluginLoadError as e:
            print("A refused", "not from" in str(e))
        sys.exit(0)
    h1 = load_plugin_library(trt, lib)
    h2 = load_plugin_library(trt, lib)
    print("A", h1 is not None and h1 is h2, ours())
""")


@pytest.mark.parametrize("route", ["loader", "dlopen", "registry", "copy"])
def test_the_toolkit_loader_is_idempotent_on_the_real_registry(library, route, tmp_path):  # noqa: F811
    root = Path(__file__).resolve().parents[2]
    res = subprocess.run([sys.executable, "-c", LOADER, str(library), route, str(root),
                          str(tmp_path / "libvggt_mv_plugins_copy.so")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout.strip()
    if route == "copy":
        assert out == "A refused True", out + res.stderr[-1000:]
    else:
        assert out == f"A True {WANT}", out + res.stderr[-1000:]
    assert "exists already" not in res.stderr and "not registering" not in res.stderr
