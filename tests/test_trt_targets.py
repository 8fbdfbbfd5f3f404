"""TensorRT for RTX as a build target (`build-engine --target rtx`), the runtime's choice of
TensorRT library, and the idempotent plugin loader. The real builds need `tensorrt-rtx`
(in the test extra) and no GPU; they skip with the reason where it is absent."""
import importlib.util
import json
import sys
import types
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from runtime.layout import load_manifest, sidecar_path_for
from runtime.trt import plugins as trt_plugins
from runtime.trt.env import TrtUnavailableError, import_tensorrt, version_label
from runtime.trt.rtx import parse_compute_capabilities
from runtime.trt.sidecar import EnvironmentInfo, check_sidecar, read_sidecar

HAS_RTX = importlib.util.find_spec("tensorrt_rtx") is not None
needs_rtx = pytest.mark.skipif(not HAS_RTX, reason="TensorRT for RTX not installed "
                               "(pip install -e .[test])")


def test_compute_capabilities_parse_and_refuse():
    assert parse_compute_capabilities("86,89,120") == ["8.6", "8.9", "12.0"]
    assert parse_compute_capabilities("8.6, 86") == ["8.6"]
    with pytest.raises(ValueError, match="Orin.*full TensorRT"):
        parse_compute_capabilities("86,87")
    with pytest.raises(ValueError, match="Hopper"):
        parse_compute_capabilities("90")
    with pytest.raises(ValueError, match="'70'.*75, 8.0|'70'"):
        parse_compute_capabilities("70")
    with pytest.raises(ValueError, match="at least one"):
        parse_compute_capabilities("")


@needs_rtx
def test_runtime_picks_tensorrt_rtx_when_it_is_the_only_tensorrt(monkeypatch):
    monkeypatch.delenv("VGGT_MV_TENSORRT", raising=False)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # full TensorRT absent
    trt = import_tensorrt()
    assert trt.__name__ == "tensorrt_rtx"
    assert version_label(trt).endswith("-rtx")
    with pytest.raises(TrtUnavailableError):  # building with full TensorRT: no fallback
        import_tensorrt(need_builder=True)


def test_explicit_library_choice(monkeypatch):
    monkeypatch.setenv("VGGT_MV_TENSORRT", "tensorrt_bogus")
    with pytest.raises(TrtUnavailableError, match="VGGT_MV_TENSORRT.*tensorrt, tensorrt_rtx"):
        import_tensorrt()
    monkeypatch.setenv("VGGT_MV_TENSORRT", "tensorrt_rtx")
    if HAS_RTX:
        assert import_tensorrt().__name__ == "tensorrt_rtx"
    else:
        with pytest.raises(TrtUnavailableError, match="pip install tensorrt-rtx"):
            import_tensorrt()


def _fake_module(monkeypatch, name, version):
    """A stand-in TensorRT module in sys.modules (with a spec, so find_spec sees it)."""
    import importlib.machinery

    mod = types.ModuleType(name)
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None)
    mod.__version__ = version
    mod.Builder = mod.OnnxParser = object
    monkeypatch.setitem(sys.modules, name, mod)
    return mod


def test_library_choice_with_fake_modules(monkeypatch):
    """tensorrt by default even where both are installed; tensorrt_rtx by argument (which
    beats the environment), by $VGGT_MV_TENSORRT, or as the only one, and never for a
    full-TensorRT build."""
    monkeypatch.delenv("VGGT_MV_TENSORRT", raising=False)
    full = _fake_module(monkeypatch, "tensorrt", "10.3.0.26")
    rtx = _fake_module(monkeypatch, "tensorrt_rtx", "1.7.1.116")
    assert import_tensorrt() is full and import_tensorrt(need_builder=True) is full
    assert import_tensorrt(library="tensorrt_rtx") is rtx
    monkeypatch.setenv("VGGT_MV_TENSORRT", "tensorrt_rtx")
    assert import_tensorrt() is rtx and import_tensorrt(library="tensorrt") is full
    with pytest.raises(TrtUnavailableError, match="library='trt'"):
        import_tensorrt(library="trt")
    monkeypatch.delenv("VGGT_MV_TENSORRT")
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # only TensorRT for RTX installed
    assert import_tensorrt() is rtx and version_label(rtx) == "1.7.1.116-rtx"
    with pytest.raises(TrtUnavailableError, match="not installed"):
        import_tensorrt(need_builder=True)


def test_session_runs_rtx_engines_with_tensorrt_rtx_and_says_why_not_here(tmp_path, monkeypatch):
    """TrtSession picks the library from the engine's sidecar (tensorrt_rtx for
    --target rtx); without a GPU it stops with a clear error before deserializing."""
    from runtime.trt import session as trt_session
    from runtime.trt.env import GpuUnavailableError
    from runtime.trt.sidecar import write_sidecar

    monkeypatch.delenv("VGGT_MV_TENSORRT", raising=False)
    side = _rtx_sidecar(["8.6"])
    assert trt_session.engine_library(side) == "tensorrt_rtx"
    assert trt_session.engine_library(side, "tensorrt") == "tensorrt"
    assert trt_session.engine_library({"build_options": {}}) is None
    monkeypatch.setenv("VGGT_MV_TENSORRT", "tensorrt")
    assert trt_session.engine_library(side) is None  # the environment decides
    monkeypatch.delenv("VGGT_MV_TENSORRT")

    (tmp_path / "model.fp32.rtx.engine").write_bytes(b"not deserialized without a GPU")
    side["engine"] = "model.fp32.rtx.engine"
    side["bucket"] = {"T": 2, "N": 2, "H": 28, "W": 28}
    write_sidecar(tmp_path / "model.fp32.rtx.engine.json", side)
    asked = []
    rtx = _fake_module(monkeypatch, "tensorrt_rtx", "1.7.1.116")
    monkeypatch.setattr(trt_session, "import_tensorrt",
                        lambda **kw: asked.append(kw.get("library")) or rtx)
    monkeypatch.setattr(trt_session, "import_cudart", lambda: object())

    def no_gpu(device=0):
        raise GpuUnavailableError("no CUDA driver on this machine")

    monkeypatch.setattr(trt_session, "require_gpu", no_gpu)
    with pytest.raises(TrtUnavailableError, match="cannot run .*model.fp32.rtx.engine.*no CUDA"):
        trt_session.TrtSession(tmp_path)
    assert asked == []  # no GPU: said before any TensorRT library is imported
    # Both kinds in the bucket: full TensorRT's is taken where tensorrt is installed, the
    # RTX one where tensorrt_rtx is the only TensorRT.
    (tmp_path / "model.fp32.engine").write_bytes(b"full TensorRT's")
    write_sidecar(tmp_path / "model.fp32.engine.json",
                  dict(side, engine="model.fp32.engine", tensorrt_version="10.3.0",
                       build_options={}))
    _fake_module(monkeypatch, "tensorrt", "10.3.0")
    with pytest.raises(TrtUnavailableError, match=r"cannot run .*model\.fp32\.engine"):
        trt_session.TrtSession(tmp_path)
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(TrtUnavailableError, match="cannot run .*model.fp32.rtx.engine"):
        trt_session.TrtSession(tmp_path)
    assert asked == []


OURS = ("VggtBiasedAttention", "VggtSparseAttention")


def _creator(name, version="1"):
    return types.SimpleNamespace(name=name, plugin_version=version, plugin_namespace="vggt_mv")


class _FakeRegistry:
    """Lists creators like TensorRT's registry and refuses a second registration of the
    same creators, as TensorRT for RTX does ("exists already")."""

    def __init__(self, present=(), result="handle"):
        self.all_creators = [_creator(n) for n in present]
        self.loads = []
        self.result = result

    def load_library(self, path):
        self.loads.append(path)
        if any(c.name in OURS for c in self.all_creators):
            raise AssertionError("load_library would register the creators twice")
        if self.result is None:
            return None
        self.all_creators += [_creator(n) for n in OURS]
        return object()


def _fake_trt(name, registry):
    return types.SimpleNamespace(__name__=name, get_plugin_registry=lambda: registry)


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    monkeypatch.setattr(trt_plugins, "_HANDLES", {})
    lib = tmp_path / "libvggt_mv_plugins.so"
    lib.write_bytes(b"stand-in")
    return lib


def test_plugin_loader_is_idempotent(stand_in):
    reg = _FakeRegistry()
    trt = _fake_trt("fake_trt_a", reg)
    h1 = trt_plugins.load_plugin_library(trt, stand_in)
    h2 = trt_plugins.load_plugin_library(trt, stand_in.parent / "." / stand_in.name)
    link = stand_in.parent / "link.so"
    link.symlink_to(stand_in)
    h3 = trt_plugins.load_plugin_library(trt, link)  # a symlink resolves to the same file
    assert h1 is h2 is h3 and len(reg.loads) == 1


def test_plugin_loader_skips_creators_this_file_registered_at_dlopen(stand_in, monkeypatch):
    monkeypatch.setattr(trt_plugins, "_loaded_in_process", lambda p: p == str(stand_in))
    monkeypatch.setattr(trt_plugins, "_keep_loaded", lambda p: ("kept", p))
    reg = _FakeRegistry(present=OURS)
    trt = _fake_trt("fake_trt_b", reg)
    handle = trt_plugins.load_plugin_library(trt, stand_in)
    assert handle == ("kept", str(stand_in)) and reg.loads == []
    assert trt_plugins.load_plugin_library(trt, stand_in) is handle


def test_plugin_loader_refuses_creators_from_another_library(stand_in, monkeypatch):
    """Creators registered by another file (an older build, the Python contract creators)
    would build/run other code than the sidecar's sha256 names: an error, not a skip."""
    monkeypatch.setattr(trt_plugins, "_loaded_in_process", lambda p: False)
    reg = _FakeRegistry(present=OURS)
    with pytest.raises(trt_plugins.PluginLoadError, match="not from .*one plugin library"):
        trt_plugins.load_plugin_library(_fake_trt("fake_trt_c", reg), stand_in)
    assert reg.loads == [] and trt_plugins._HANDLES == {}


def test_plugin_loader_refuses_a_partial_registration(stand_in, monkeypatch):
    monkeypatch.setattr(trt_plugins, "_loaded_in_process", lambda p: True)
    reg = _FakeRegistry(present=OURS[:1])
    with pytest.raises(trt_plugins.PluginLoadError, match="VggtSparseAttention"):
        trt_plugins.load_plugin_library(_fake_trt("fake_trt_d", reg), stand_in)
    reg = _FakeRegistry()  # another plugin version is not ours either: load_library runs
    reg.all_creators = [_creator(n, "2") for n in OURS]
    reg.load_library = lambda path: "loaded"
    assert trt_plugins.load_plugin_library(_fake_trt("fake_trt_e", reg), stand_in) == "loaded"


def test_plugin_loader_reports_a_refused_library_and_caches_nothing(stand_in):
    reg = _FakeRegistry(result=None)
    with pytest.raises(trt_plugins.PluginLoadError, match="could not load"):
        trt_plugins.load_plugin_library(_fake_trt("fake_trt_f", reg), stand_in)
    assert trt_plugins._HANDLES == {}


def test_loaded_in_process_reads_the_process_map():
    import ctypes.util

    assert trt_plugins._loaded_in_process(__file__) is False  # a file, never mapped
    libc = next((ln.split(None, 5)[5] for ln in Path("/proc/self/maps").read_text().splitlines()
                 if "/libc" in ln and ln.split(None, 5)[5:]), None) if Path(
        "/proc/self/maps").exists() else None
    if libc is None or ctypes.util.find_library("c") is None:
        pytest.skip("no /proc/self/maps with libc here")
    assert trt_plugins._loaded_in_process(libc) is True


def _rtx_sidecar(caps):
    return {"sidecar_version": 1, "engine": "model.fp32.engine", "engine_sha256": "0" * 64,
            "tensorrt_version": "1.7.1.116-rtx",
            "gpu": {"name": "any", "compute_capability": ",".join(caps)},
            "plugins": None, "contract_version": "1.1.0", "bucket": {}, "precision": "fp32",
            "source_onnx": {"name": "model.plugins.onnx", "sha256": "0" * 64},
            "build_options": {"target": "rtx", "compute_capabilities": caps},
            "inputs": {}, "outputs": {}, "built_at": "2026-11-28T00:00:00Z"}


def test_rtx_sidecar_accepts_any_listed_gpu_and_refuses_full_tensorrt():
    side = _rtx_sidecar(["8.6", "8.9"])
    on_4090 = EnvironmentInfo("1.7.1.116-rtx", "NVIDIA GeForce RTX 4090", "8.9")
    on_a6000 = EnvironmentInfo("1.7.1.116-rtx", "NVIDIA RTX A6000", "8.6")
    on_5090 = EnvironmentInfo("1.7.1.116-rtx", "NVIDIA GeForce RTX 5090", "12.0")
    on_orin = EnvironmentInfo("10.3.0", "Orin", "8.7")
    assert check_sidecar(side, on_4090) == [] and check_sidecar(side, on_a6000) == []
    assert any("architecture mismatch" in p for p in check_sidecar(side, on_5090))
    refused = " ".join(check_sidecar(side, on_orin))
    assert "built with TensorRT for RTX" in refused and "tensorrt_rtx" in refused
    back = dict(side, tensorrt_version="10.3.0", build_options={})
    assert "build-engine --target rtx" in " ".join(check_sidecar(back, on_4090))


@pytest.fixture(scope="module")
def tiny_bucket(tmp_path_factory) -> Path:
    from export.buckets import Bucket
    from export.exporter import export_bucket
    from vggt_mv.config import tiny_config
    from vggt_mv.models import VGGTMV

    torch.manual_seed(0)
    res = export_bucket(VGGTMV(tiny_config()).eval(), Bucket(2, 2, 28, 28),
                        tmp_path_factory.mktemp("rtx_target"), log=lambda s: None)
    return res.folder


def _cli():
    import cli as command_line

    return command_line.app


def test_build_engine_rtx_refuses_orin_and_dry_runs(tiny_bucket):
    r = CliRunner().invoke(_cli(), ["build-engine", "--fp32", "--target", "rtx",
                                    "--compute-capability", "87", "--bucket", str(tiny_bucket)])
    assert r.exit_code != 0 and "Orin" in r.output
    r = CliRunner().invoke(_cli(), ["build-engine", "--fp32", "--compute-capability", "86",
                                    "--bucket", str(tiny_bucket)])
    assert r.exit_code != 0 and "--target rtx" in r.output
    from conftest import stand_in_shared_library

    lib = stand_in_shared_library(tiny_bucket / "stand-in.so")  # the dry run hashes it
    r = CliRunner().invoke(_cli(), ["build-engine", "--fp32", "--target", "rtx",
                                    "--compute-capability", "86,120", "--bucket",
                                    str(tiny_bucket), "--plugins", str(lib), "--dry-run"])
    lib.unlink()
    assert r.exit_code == 0, r.output
    assert "compute_capabilities" in r.output and "8.6" in r.output and "12.0" in r.output
    assert not (tiny_bucket / "model.fp32.rtx.engine").exists()


@needs_rtx
def test_rtx_build_writes_engine_and_sidecar_without_a_gpu(tiny_bucket, monkeypatch):
    """The ahead-of-time build of build-engine end to end (child process, engine, sidecar)
    as a new user runs it: the native graph of a dense bucket needs no plugin library, so
    it builds on a machine where the library does not exist (no TensorRT headers)."""
    from runtime.trt.build import plan_build

    monkeypatch.setenv("VGGT_MV_PLUGINS", str(tiny_bucket / "no-such-library.so"))
    monkeypatch.chdir(tiny_bucket)  # no plugins/ build in reach either
    r = CliRunner().invoke(_cli(), ["build-engine", "--fp32", "--attention", "native",
                                    "--target", "rtx", "--compute-capability", "86",
                                    "--bucket", str(tiny_bucket)])
    assert r.exit_code == 0, r.output
    assert "no plugin library needed" in r.output and "native" in r.output
    engine = tiny_bucket / "model.fp32.native.rtx.engine"  # per route and target
    side = read_sidecar(sidecar_path_for(engine))
    assert side["tensorrt_version"].endswith("-rtx") and side["plugins"] is None
    assert side["build_options"]["attention"] == "native"
    sites = load_manifest(tiny_bucket)["attention_sites"]
    assert side["build_options"]["attention_layers"] == sites["VggtBiasedAttention"] > 0
    assert side["source_onnx"]["name"] == "model.native.onnx"
    assert side["build_options"]["compute_capabilities"] == ["8.6"]
    assert side["gpu"]["compute_capability"] == "8.6"
    assert side["outputs"]["pose_enc"]["shape"][-1] == 9
    assert engine.stat().st_size > 0
    assert not list(tiny_bucket.glob(".rtx-*"))  # the child's scratch folder is gone
    # auto picks the same route for TensorRT for RTX; plugin asks for the library
    plan = plan_build([tiny_bucket], "fp32", options={"target": "rtx",
                                                      "compute_capabilities": ["8.6"]})
    assert plan.items[0].route == "native" and plan.ok, plan.all_problems
    plan = plan_build([tiny_bucket], "fp32", options={"target": "rtx", "attention": "plugin",
                                                      "compute_capabilities": ["8.6"]})
    assert plan.items[0].route == "plugin" and plan.items[0].needs_plugins
    assert any("plugin library" in p for p in plan.all_problems), plan.all_problems
    engine.unlink()
    sidecar_path_for(engine).unlink()


@needs_rtx
def test_build_engine_rtx_plugin_graph_with_the_library(tiny_bucket, tmp_path):
    from test_trt_rtx_build import plugin_library

    lib = plugin_library(tmp_path / "plugins_build")
    if lib is None:
        pytest.skip("plugin library not buildable here (TENSORRT_INCLUDE_DIR, nvcc, cmake)")
    r = CliRunner().invoke(_cli(), ["build-engine", "--fp32", "--target", "rtx",
                                    "--attention", "plugin",
                                    "--compute-capability", "86", "--bucket", str(tiny_bucket),
                                    "--plugins", str(lib)])
    assert r.exit_code == 0, r.output
    assert not (tiny_bucket / "model.fp32.engine").exists()  # full TensorRT's name, untouched
    side = json.loads(sidecar_path_for(tiny_bucket / "model.fp32.rtx.engine").read_text())
    assert side["plugins"]["sha256"] and side["build_options"]["target"] == "rtx"
    assert load_manifest(tiny_bucket)["attention_sites"]


def test_engine_names_per_target_and_which_one_a_session_finds(tmp_path):
    from runtime.layout import engine_filename, engine_filenames
    from runtime.trt.session import find_engine

    assert engine_filename("fp16") == "model.fp16.engine"
    assert engine_filename("fp16", "rtx") == "model.fp16.rtx.engine"
    assert engine_filenames("int8", route="plugin") == ["model.int8.engine",
                                                        "model.int8.rtx.engine"]
    with pytest.raises(ValueError, match="target"):
        engine_filename("fp16", "jetson")
    (tmp_path / "model.fp16.rtx.engine").write_bytes(b"rtx")
    assert find_engine(tmp_path).name == "model.fp16.rtx.engine"
    with pytest.raises(FileNotFoundError, match="model.fp16.engine; .*build-engine --fp16 "):
        find_engine(tmp_path, "fp16", target="trt")
    (tmp_path / "model.fp16.engine").write_bytes(b"trt")
    assert find_engine(tmp_path, "fp16").name == "model.fp16.engine"  # full TensorRT first
    assert find_engine(tmp_path, "fp16", target="rtx").name == "model.fp16.rtx.engine"
    with pytest.raises(FileNotFoundError, match="int8.rtx.engine.*--int8 --target rtx"):
        find_engine(tmp_path, "int8", target="rtx")
    # a native engine beside the plugin one: found first, unless the plugin route is asked
    (tmp_path / "model.fp16.native.engine").write_bytes(b"native")
    assert find_engine(tmp_path, "fp16").name == "model.fp16.native.engine"
    assert find_engine(tmp_path, "fp16", attention="plugin").name == "model.fp16.engine"
    with pytest.raises(FileNotFoundError, match="--attention native"):
        find_engine(tmp_path, "int8", attention="native")


def test_an_engine_left_out_of_the_search_is_named_with_the_reason(tmp_path):
    from runtime.trt.session import find_engine

    (tmp_path / "model.fp16.engine").write_bytes(b"trt")
    (tmp_path / "model-old.engine").write_bytes(b"?")
    with pytest.raises(FileNotFoundError) as e:  # only TensorRT for RTX installed
        find_engine(tmp_path, target="rtx")
    msg = str(e.value)
    assert msg.startswith(f"no usable TensorRT engine in {tmp_path}")
    assert "model.fp16.engine: built for full TensorRT, which is not installed here" in msg
    assert "model-old.engine: not a name this toolkit writes" in msg
    with pytest.raises(FileNotFoundError, match="model.fp16.engine: not native-attention"):
        find_engine(tmp_path, "fp16", attention="native")
    (tmp_path / "model-old.engine").unlink()
    (tmp_path / "model.fp16.rtx.engine").write_bytes(b"rtx")
    with pytest.raises(FileNotFoundError, match="model.fp16.rtx.engine: built for TensorRT for"):
        find_engine(tmp_path, "int8", target="trt")
