"""runtime/trt/build.py: build plans and `build-engine --dry-run` (run anywhere); the real
TensorRT build is covered in test_runtime.py and skips without TensorRT and a GPU."""
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from runtime.trt.build import (
    GRAPH_FOR_PRECISION,
    EngineBuildError,
    build_engines,
    format_plan,
    parse_workspace,
    plan_build,
)
from runtime.layout import sha256_file


def _bucket(root: Path, name="T2_N2_42x56", graphs=("model.plugins.onnx",), sites=14,
            ir=10, opset=20) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({
        "bucket": {"T": 2, "N": 2, "H": 42, "W": 56, "batch": 1, "single_view": False,
                   "ext_mask": False, "name": name},
        "inputs": {}, "outputs": {}, "ir_version": ir, "opset": opset,
        "attention_sites": {"VggtBiasedAttention": sites, "VggtSparseAttention": 0},
        "contract_version": "1.1.0"}))
    for g in graphs:
        (d / g).write_bytes(b"graph bytes: the plan checks presence only")
    return d


@pytest.fixture
def lib(tmp_path) -> Path:
    from conftest import stand_in_shared_library

    return stand_in_shared_library(tmp_path / "libvggt_mv_plugins.so")


def cli() -> typer.Typer:
    import cli as command_line  # the real command line: runtime's commands as users see them

    return command_line.app


def test_parse_workspace():
    assert parse_workspace("4G") == 4 << 30
    assert parse_workspace("512M") == 512 << 20
    assert parse_workspace("1.5GiB") == 3 << 29
    assert parse_workspace("2048") == 2048 << 20
    assert parse_workspace("auto") is None and parse_workspace(None) is None
    for bad in ("lots", "-1G", "0"):
        with pytest.raises(EngineBuildError, match="--workspace"):
            parse_workspace(bad)


def test_valid_plan(tmp_path, lib):
    _bucket(tmp_path / "art")
    _bucket(tmp_path / "art", "T4_N2_42x56", graphs=("model.plugins.onnx",
                                                      "model.fp16.plugins.onnx"))
    plan = plan_build([tmp_path / "art"], "fp32", plugins=lib, workspace="2G",
                      timing_cache=tmp_path / "art" / "timing.cache")
    assert plan.ok, plan.all_problems
    assert [i.bucket_name for i in plan.items] == ["T2_N2_42x56", "T4_N2_42x56"]
    assert plan.items[0].engine_path.name == "model.fp32.engine"
    assert plan.items[0].sidecar_path.name == "model.fp32.engine.json"
    assert plan.plugin_sha256 == sha256_file(lib) and plan.workspace_bytes == 2 << 30
    text = format_plan(plan)
    assert "plan is valid" in text and "2.00 GiB" in text and "(created)" in text
    assert "strongly typed" in text


def test_plan_names_missing_graphs_and_how_to_make_them(tmp_path, lib):
    d = _bucket(tmp_path, ir=11, opset=23)
    for prec, word in (("fp16", "--fp16"), ("int8", "--calib")):
        plan = plan_build([d], prec, plugins=lib)
        assert not plan.ok
        (problem,) = plan.all_problems
        assert GRAPH_FOR_PRECISION[prec] in problem and word in problem
    text = format_plan(plan)
    assert "BLOCKED" in text and "TensorRT 10.3" in text and "nothing will be built" in text


def test_plan_problems_are_all_listed(tmp_path):
    plan = plan_build([tmp_path / "missing", _bucket(tmp_path)], "fp16",
                      calib=tmp_path / "nocalib", plugins=tmp_path / "nolib.so",
                      workspace="huge")
    probs = "\n".join(plan.all_problems)
    for needle in ("missing does not exist", "model.fp16.plugins.onnx not found",
                   "--calib", "--workspace", "plugin library not found"):
        assert needle in probs, needle
    with pytest.raises(EngineBuildError, match="plan is invalid"):
        build_engines(plan)


def test_plan_without_plugin_sites_needs_no_library(tmp_path, monkeypatch):
    monkeypatch.delenv("VGGT_MV_PLUGINS", raising=False)
    plan = plan_build([_bucket(tmp_path, sites=0)], "fp32")
    assert plan.ok, plan.all_problems
    assert not plan.items[0].needs_plugins


def test_dry_run_prints_the_plan(tmp_path, lib):
    d = _bucket(tmp_path / "art")
    r = CliRunner().invoke(cli(), ["build-engine", "--fp32", "--bucket", str(d),
                                   "--plugins", str(lib), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "plan is valid" in r.output and "model.fp32.engine" in r.output
    assert str(tmp_path / "art" / "timing.cache") in r.output
    assert not (d / "model.fp32.engine").exists()
    r = CliRunner().invoke(cli(), ["build-engine", "--fp32", "--bucket", str(d),
                                   "--plugins", str(lib), "--dry-run", "--opt-level", "5",
                                   "--version-compatible", "--no-timing-cache"])
    assert r.exit_code == 0, r.output
    assert "version_compatible" in r.output and "builder_optimization_level: 5" in r.output
    assert "timing cache   : none" in r.output
    r = CliRunner().invoke(cli(), ["build-engine", "--fp16", "--bucket", str(d),
                                   "--plugins", str(lib), "--dry-run"])
    assert r.exit_code == 1 and "model.fp16.plugins.onnx not found" in r.output
    r = CliRunner().invoke(cli(), ["build-engine", "--fp16", "--int8", "--dry-run"])
    assert r.exit_code == 2 and "exactly one precision" in r.output


def test_build_without_tensorrt_says_what_is_missing(tmp_path, lib):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here; this test covers machines without it")
    except ImportError:
        pass
    d = _bucket(tmp_path / "art")
    plan = plan_build([d], "fp32", plugins=lib)
    with pytest.raises(EngineBuildError, match="TensorRT is not installed.*dry-run"):
        build_engines(plan)
    r = CliRunner().invoke(cli(), ["build-engine", "--fp32", "--bucket", str(d),
                                   "--plugins", str(lib)])
    assert r.exit_code == 2 and "TensorRT is not installed" in r.output
    assert not (d / "model.fp32.engine").exists()


def test_build_without_gpu_says_so(tmp_path, lib):
    pytest.importorskip("tensorrt", reason="TensorRT not installed")
    from runtime.trt.env import detect_gpu

    if detect_gpu() is not None:
        pytest.skip("a GPU is present; this test covers TensorRT without a GPU")
    plan = plan_build([_bucket(tmp_path)], "fp32", plugins=lib)
    with pytest.raises(EngineBuildError, match="no GPU"):
        build_engines(plan)


def test_tensorrt_messages_reach_python_logging(caplog):
    """-v / --log-file reach TensorRT: its ILogger forwards to the vggt_mv.tensorrt logger
    at the matching level, and keeps warnings for error messages (a stand-in module with
    TensorRT's ILogger shape, since TensorRT is absent here)."""
    import enum
    import logging
    import types

    from runtime.trt.env import make_logger

    class ILogger:
        class Severity(enum.IntEnum):
            INTERNAL_ERROR = 0
            ERROR = 1
            WARNING = 2
            INFO = 3
            VERBOSE = 4

        def __init__(self):
            pass

    trt = types.SimpleNamespace(ILogger=ILogger)
    sink: list[str] = []
    logger = make_logger(trt, sink)
    tlog = logging.getLogger("vggt_mv.tensorrt")
    seen = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda r: seen.append((r.levelno, r.getMessage()))
    tlog.addHandler(handler)
    old = tlog.level
    tlog.setLevel(logging.DEBUG)
    try:
        logger.log(ILogger.Severity.VERBOSE, "tactic timing")
        logger.log(ILogger.Severity.WARNING, "weights are fp32")
    finally:
        tlog.removeHandler(handler)
        tlog.setLevel(old)
    assert seen == [(logging.DEBUG, "tactic timing"), (logging.WARNING, "weights are fp32")]
    assert sink == ["[WARNING] weights are fp32"]


def test_log_file_gets_the_errors(tmp_path):
    import cli as command_line

    log = tmp_path / "run.log"
    r = CliRunner().invoke(command_line.app, ["--log-file", str(log), "build-engine", "--fp16",
                                              "--int8", "--dry-run"])
    assert r.exit_code == 2, r.output
    assert "choose exactly one precision" in log.read_text()


def test_plan_names_missing_and_corrupt_manifests(tmp_path, lib):
    good = _bucket(tmp_path / "root")
    bad = tmp_path / "root" / "T4_N2_42x56"
    bad.mkdir()
    (bad / "manifest.json").write_text("{not json")
    plan = plan_build([good.parent, tmp_path / "nowhere"], "fp32", plugins=lib)
    problems = "\n".join(plan.all_problems)
    assert "corrupt" in problems and "re-export" in problems
    assert "does not exist" in problems
    assert not plan.ok and [i.bucket_dir.name for i in plan.items] == [
        "T2_N2_42x56", "T4_N2_42x56", "nowhere"]
