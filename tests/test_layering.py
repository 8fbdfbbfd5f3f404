"""The import layers hold: data moves forward on disk (export -> calib -> build -> run)
and code only imports downwards. Bottom to top:

    vggt_mv, plugins  ->  runtime  ->  export, calib  ->  accuracy, serving  ->  cli

and runtime/ (including runtime/trt) imports with torch, onnx, polygraphy and
onnx_graphsurgeon absent, as on a Jetson that only has numpy + TensorRT."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"vggt_mv": 0, "plugins": 0, "runtime": 1, "export": 2, "calib": 2, "accuracy": 3,
          "serving": 3, "cli": 4}


def _sources():
    yield ROOT / "cli.py"
    for pkg in LAYERS:
        folder = ROOT / pkg
        if folder.is_dir():
            for p in sorted(folder.rglob("*.py")):
                if "tests" not in p.relative_to(ROOT).parts:
                    yield p


def _module_of(path: Path) -> list[str]:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imports(path: Path):
    """(line, top-level package) of every import in the file, function-level ones and
    relative ones (resolved against the file's package) included."""
    tree = ast.parse(path.read_text(), str(path))
    mod = _module_of(path)
    pkg = mod if path.name == "__init__.py" else mod[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[:len(pkg) - node.level + 1]
                yield node.lineno, (base or [node.module or ""])[0]
            elif node.module:
                yield node.lineno, node.module.split(".")[0]


def backward_imports() -> list[str]:
    bad = []
    for path in _sources():
        own = _module_of(path)[0]
        for line, target in _imports(path):
            if target in LAYERS and LAYERS[target] > LAYERS[own]:
                bad.append(f"{path.relative_to(ROOT)}:{line} ({own}, layer {LAYERS[own]}) "
                           f"imports {target} (layer {LAYERS[target]})")
    return bad


def test_no_import_runs_back_up_the_layers():
    assert backward_imports() == []


def test_the_layer_walk_sees_imports(tmp_path, monkeypatch):
    """The checker itself: a function-level relative import upwards is caught."""
    fake = tmp_path / "runtime"
    fake.mkdir()
    (fake / "bad.py").write_text("def f():\n    from accuracy import check\n")
    (tmp_path / "cli.py").write_text("import runtime\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert backward_imports() == [
        "runtime/bad.py:2 (runtime, layer 1) imports accuracy (layer 3)"]


_BLOCKER = r"""
import importlib, pkgutil, sys
BLOCKED = ("torch", "onnx", "polygraphy", "onnx_graphsurgeon", "onnxscript", "export",
           "calib", "accuracy", "vggt_mv")

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: runtime/ must not need it")
        return None

sys.meta_path.insert(0, Blocker())
import runtime
names = sorted(m.name for m in pkgutil.walk_packages(runtime.__path__, "runtime."))
for name in names:
    importlib.import_module(name)
for name in runtime.__all__:
    getattr(runtime, name)
print(" ".join(names))
"""


def test_runtime_imports_without_torch_onnx_polygraphy():
    res = subprocess.run([sys.executable, "-c", _BLOCKER], cwd=ROOT, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    imported = res.stdout.split()
    for must in ("runtime.layout", "runtime.trt.build", "runtime.trt.session",
                 "runtime.trt.plugins", "runtime.trt.sidecar", "runtime.trt.env",
                 "runtime.predictor", "runtime.commands"):
        assert must in imported


def test_the_blocker_blocks():
    code = _BLOCKER.replace("import runtime\n", "import torch\n", 1)
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True)
    assert res.returncode != 0 and "torch is blocked" in res.stderr


@pytest.mark.parametrize("name", ["VGGT_MV_PLUGINS", "VGGT_MV_PLUGINS_LIB"])
def test_one_plugin_library_variable(tmp_path, monkeypatch, name):
    """runtime/trt/plugins.py is the one place that finds the library; the old variable
    still works, with a deprecation warning."""
    import warnings

    from runtime.trt.plugins import resolve_plugin_library

    lib = tmp_path / "libvggt_mv_plugins.so"
    lib.write_bytes(b"x")
    monkeypatch.delenv("VGGT_MV_PLUGINS", raising=False)
    monkeypatch.delenv("VGGT_MV_PLUGINS_LIB", raising=False)
    monkeypatch.setenv(name, str(lib))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert resolve_plugin_library() == lib.resolve()
    assert bool(w) == (name == "VGGT_MV_PLUGINS_LIB")
    monkeypatch.setenv(name, str(tmp_path / "missing.so"))
    with pytest.raises(FileNotFoundError, match="missing.so"), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        resolve_plugin_library()
