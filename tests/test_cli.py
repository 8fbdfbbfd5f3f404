"""The command line: exit codes, messages and files, through typer's runner."""
import json

import pytest
from typer.testing import CliRunner

import cli

runner = CliRunner()


def invoke(*args):
    return runner.invoke(cli.app, [str(a) for a in args], catch_exceptions=False)


def test_help_lists_commands():
    res = invoke("--help")
    assert res.exit_code == 0
    for cmd in ("export", "model-info", "inspect-checkpoint", "check", "bench", "infer",
                "build-engine", "calibrate", "quantize"):
        assert cmd in res.output


def test_version():
    res = invoke("--version")
    assert res.exit_code == 0 and res.output.startswith("vggt-mv-deploy ")


def test_conventions_are_the_same_in_every_command():
    """--input reads frames, --repeats / --warmup time, -o is a config override only."""
    import re

    helps = {c: re.sub(r"\x1b\[[0-9;]*m", "", invoke(c, "--help").output)
             for c in ("export", "check", "calibrate", "infer", "bench", "model-info")}
    for c in ("export", "check", "calibrate", "infer"):
        assert "--input" in helps[c] and "--inputs" not in helps[c], c
    for c in ("infer", "bench"):
        assert "--repeats" in helps[c] and "--warmup" in helps[c], c
    for c, text in helps.items():
        if " -o " in text:
            assert "--option" in text, c


def test_bad_override_is_an_error_not_a_traceback():
    res = invoke("model-info", "--preset", "tiny", "-o", "no_equals_sign")
    assert res.exit_code == 2 and "key=value" in res.output


def test_export_tiny_two_buckets_real_frames(tmp_path, mv_scene):
    res = invoke("export", "--preset", "tiny", "--T", "1,2", "--N", "2", "--height", 28,
                 "--width", 42, "--input", mv_scene, "--out", tmp_path)
    assert res.exit_code == 0, res.output
    assert "RANDOM" in res.output and "export summary" in res.output
    for name in ("T1_N2_28x42", "T2_N2_28x42"):
        m = json.loads((tmp_path / name / "manifest.json").read_text())
        assert m["validation"]["passed"]
        assert m["weights"]["source"] == "random init, seed 0"


def test_export_rejects_bad_bucket_without_writing(tmp_path):
    res = invoke("export", "--preset", "tiny", "--T", "2", "--N", "2", "--height", 30,
                 "--inputs", tmp_path, "--out", tmp_path)  # the old spelling still parses
    assert res.exit_code == 2 and "multiples of 14" in res.output
    assert not any(tmp_path.iterdir())


def test_export_bad_option_and_missing_checkpoint(tmp_path):
    res = invoke("export", "--preset", "tiny", "-o", "sparse_strategy=nope", "--out", tmp_path)
    assert res.exit_code == 2 and "sparse_strategy" in res.output
    res = invoke("export", "--preset", "tiny", "--checkpoint", tmp_path / "missing.pt",
                 "--out", tmp_path)
    assert res.exit_code == 2 and "missing.pt" in res.output


def test_model_info_full_size_without_weights():
    res = invoke("model-info", "--T", 8, "--N", 4)
    assert res.exit_code == 0
    assert "1,256,559,023" in res.output and "10992" in res.output


def test_inspect_checkpoint_manifest_and_corrupt_file(tmp_path, state_dict_refs):
    res = invoke("inspect-checkpoint", state_dict_refs / "page4d.json")
    assert res.exit_code == 0 and "1,256,559,023" in res.output
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x02garbage")
    res = invoke("inspect-checkpoint", bad)
    assert res.exit_code == 2 and "bad.pt" in res.output


def test_flags_show_no_value_placeholder():
    """On/off flags take no value (`--fp16 true` is an error): help shows none."""
    import typer
    from typer.core import TyperOption

    group = typer.main.get_command(cli.app)
    ctx = typer.Context(group)
    shown = {(name, p.name): p.display_type_rich(ctx)
             for name, cmd in group.commands.items() for p in cmd.params
             if isinstance(p, TyperOption) and p.is_flag and p.name != "help"}
    assert len(shown) > 20
    assert {k: v for k, v in shown.items() if v} == {}
    res = invoke("build-engine", "--help")
    assert "<bool>" not in res.output.split("--fp32")[0]


def test_calibrate_default_input_is_found_from_any_folder(tmp_path, monkeypatch):
    from pathlib import Path

    import calib.commands as cc

    repo = Path(cli.__file__).resolve().parent
    assert cc.DEFAULT_SCENE == repo.parent / "shared" / "data" / "mv_scene"
    monkeypatch.chdir(tmp_path)  # ../shared does not exist from here
    monkeypatch.setattr(cc, "DEFAULT_SCENE", tmp_path / "nowhere")
    res = invoke("calibrate", "--bucket", tmp_path)
    assert res.exit_code == 2 and "no --input given" in res.output and "nowhere" in res.output
