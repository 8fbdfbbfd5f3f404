"""Faults and bad input end in the right result, or a non-zero exit with a message naming
the thing, never a silent wrong answer or a traceback (tiny preset, real frames)."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import runtime.layout as layout
from runtime.errors import RuntimeDataError
from runtime.layout import ArtifactIntegrityError
from runtime.preprocess import preprocess_rgb
from runtime.session import OnnxSession

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, env=None):
    import os

    e = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *map(str, args)],
                          capture_output=True, text=True, env=e, timeout=600)


@pytest.fixture(scope="module")
def bucket(tmp_path_factory) -> Path:
    from conftest import export_tiny

    return export_tiny(tmp_path_factory.mktemp("faults")).folder


@pytest.fixture
def damaged(bucket, tmp_path) -> Path:
    copy = tmp_path / bucket.name
    shutil.copytree(bucket, copy)
    return copy


def _flip_byte(path: Path, at: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x10
    path.write_bytes(bytes(data))


def test_bit_flipped_graph_is_refused_naming_the_file(damaged, mv_scene, tmp_path):
    _flip_byte(damaged / "model.onnx")
    out = tmp_path / "out"
    r = run_cli("infer", "--onnx", damaged, "--graph", "model.onnx", "--input", mv_scene,
                "--T", 2, "--N", 2, "--out", out)
    assert r.returncode == 2, r.stderr
    assert "model.onnx" in r.stderr and "sha256" in r.stderr and "re-export" in r.stderr
    assert "Traceback" not in r.stderr and not out.exists()


def test_truncated_graph_is_refused_by_size(damaged):
    p = damaged / "model.plugins.onnx"
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(ArtifactIntegrityError, match="model.plugins.onnx is 1,000 bytes"):
        OnnxSession(damaged, graph="model.plugins.onnx")


def test_hash_verdict_is_cached_and_can_be_skipped(damaged, monkeypatch):
    calls = []
    real = layout.sha256_file
    monkeypatch.setattr(layout, "sha256_file", lambda p, *a: calls.append(p) or real(p, *a))
    OnnxSession(damaged, graph="model.onnx")
    OnnxSession(damaged, graph="model.onnx")  # same size and mtime: not hashed again
    assert len(calls) == 1
    _flip_byte(damaged / "model.onnx")  # rewritten: mtime changes, hashed again, refused
    with pytest.raises(ArtifactIntegrityError):
        OnnxSession(damaged, graph="model.onnx")
    monkeypatch.setenv("VGGT_MV_NO_VERIFY", "1")  # the opt-out skips hashing, not sizes
    calls.clear()
    OnnxSession(damaged, graph="model.onnx")
    assert calls == []


def _frame(mv_scene) -> Image.Image:
    return Image.open(mv_scene / "images" / "time_00" / "view0.png").convert("L")


def test_16_bit_png_is_scaled_not_clipped(mv_scene, tmp_path):
    grey = np.asarray(_frame(mv_scene))
    p16 = tmp_path / "grey16.png"
    Image.fromarray(grey.astype(np.uint16) * 257).save(p16)  # full 16-bit range
    im16 = Image.open(p16)
    assert im16.mode.startswith("I")
    a = preprocess_rgb(im16, (42, 56))
    b = preprocess_rgb(Image.fromarray(grey), (42, 56))
    assert np.abs(a - b).max() <= 1 / 255 + 1e-6 and a.mean() < 0.9  # not an all-white frame


@pytest.mark.parametrize("size", [(1, 1), (4000, 10), (20, 300)])
def test_frames_a_resize_would_destroy_are_refused(mv_scene, size):
    im = _frame(mv_scene).convert("RGB").resize(size)
    with pytest.raises(RuntimeDataError, match=rf"frame\.png is {size[0]}x{size[1]}"):
        preprocess_rgb(im, (42, 56), name="frame.png")


def test_predictor_arrays_refuse_other_dtypes_and_ranges(bucket):
    from runtime.predictor import Predictor

    ok = np.random.default_rng(0).random((2, 2, 3, 42, 56), dtype=np.float32)
    with Predictor(bucket.parent, backend="onnx", graph="model.onnx") as p:
        assert p.predict_arrays(ok).depth.shape[:2] == (2, 2)
        with pytest.raises(RuntimeDataError, match="dtype uint8"):
            p.predict_arrays((ok * 255).astype(np.uint8))
        with pytest.raises(RuntimeDataError, match="divided by 255"):
            p.predict_arrays(ok * 255)
        bad = ok.copy()
        bad[0, 0, 0, 0, 0] = np.nan
        with pytest.raises(RuntimeDataError, match="NaN"):
            p.predict_arrays(bad)


@pytest.mark.parametrize("args,needle", [
    (["model-info", "--T", "2", "--N", "2", "--height", "57"], "nearest: 56x518"),
    (["model-info", "--T", "2", "--N", "2", "-o", "depth=abc"], "depth='abc'"),
    (["bench", "--bucket", "{tmp}/no_such_bucket"], "no_such_bucket"),
    # torch.onnx used to fall back to opset 18 silently while the manifest said 5
    (["export", "--preset", "tiny", "--opset", "5", "--out", "{tmp}/no_such_bucket"],
     "--opset 5 is not supported"),
    # --window 0 used to mean "the bucket's T"
    (["infer", "--stream", "--onnx", "{tmp}", "--input", "{tmp}", "--window", "0", "--out",
      "{tmp}/no_such_bucket"], "--window"),
])
def test_cli_errors_are_one_line_with_exit_2(args, needle, tmp_path):
    r = run_cli(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert r.returncode == 2, r.stdout + r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "no_such_bucket").exists()


def test_out_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "taken"
    f.write_text("a file")
    r = run_cli("export", "--preset", "tiny", "--T", 2, "--N", 2, "--height", 42, "--width", 56,
                "--out", f, "--no-validate")
    assert r.returncode == 2 and "taken" in r.stderr and "Traceback" not in r.stderr
    assert f.read_text() == "a file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # nothing left beside it


EXPORT = ["export", "--preset", "tiny", "--T", "2", "--N", "2", "--height", "42", "--width",
          "56", "--no-validate"]


def test_kill_during_export_is_recovered_by_the_next_run(tmp_path):
    out = tmp_path / "art"
    r = run_cli(*EXPORT, "--out", out, env={"VGGT_MV_TEST_KILL_AT": "in-scratch"})
    assert r.returncode == 137
    assert not (out / "T2_N2_42x56").exists() and list(out.glob(".T2_N2_42x56.partial-*"))
    r = run_cli(*EXPORT, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "left by an interrupted run" in r.stderr
    assert (out / "T2_N2_42x56" / "manifest.json").is_file()
    assert not list(out.glob(".T2_N2_42x56.*"))
    # killed between the two renames of the swap: the good bucket is hidden as .old-PID
    r = run_cli(*EXPORT, "--out", out, env={"VGGT_MV_TEST_KILL_AT": "between-renames"})
    assert r.returncode == 137 and not (out / "T2_N2_42x56").exists()
    assert list(out.glob(".T2_N2_42x56.old-*"))
    from runtime.layout import recover_leftovers

    done = recover_leftovers(out / "T2_N2_42x56")  # what every bucket writer does first
    assert any("restored" in d for d in done) and any("removed" in d for d in done)
    assert (out / "T2_N2_42x56" / "manifest.json").is_file()
    assert not list(out.glob(".T2_N2_42x56.*"))


def test_infer_output_folder_is_replaced_whole_never_mixed(bucket, mv_scene, tmp_path):
    from runtime.predictor import Predictor

    out = tmp_path / "out"
    with Predictor(bucket.parent, backend="onnx", graph="model.onnx") as p:
        p.predict(mv_scene, T=2, N=2, t0=4).write_outputs(out)
        assert (out / "depth" / "depth_t04_view0.png").is_file()
        written = p.predict(mv_scene, T=2, N=2, t0=0).write_outputs(out)
    names = sorted(x.name for x in (out / "depth").iterdir())
    assert names == ["depth_t00_view0.png", "depth_t00_view1.png", "depth_t01_view0.png",
                     "depth_t01_view1.png"]  # yesterday's t04/t05 are gone, not mixed in
    assert written["npz"] == out / "predictions.npz" and written["npz"].is_file()
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"not ours")
    with Predictor(bucket.parent, backend="onnx", graph="model.onnx") as p:
        with pytest.raises(RuntimeDataError, match="not an earlier infer output"):
            p.predict(mv_scene, T=2, N=2).write_outputs(foreign)
    assert [x.name for x in foreign.iterdir()] == ["holiday.jpg"]


def test_checkpoint_that_does_not_fit_is_refused_unless_opted_in(tmp_path):
    from vggt_mv.config import tiny_config
    from vggt_mv.models import VGGTMV

    torch.manual_seed(0)
    sd = VGGTMV(tiny_config()).state_dict()
    good, bad = tmp_path / "good.pt", tmp_path / "bad.pt"
    torch.save(sd, good)
    torch.save({k: torch.zeros([n + 1 for n in v.shape]) for k, v in sd.items()}, bad)
    out = tmp_path / "art"
    r = run_cli(*EXPORT, "--checkpoint", bad, "--out", out)
    assert r.returncode == 2, r.stderr
    assert "does not fit configuration" in r.stderr and "2/475 tensors loaded" in r.stderr
    assert "--allow-partial-load" in r.stderr and not out.exists()
    r = run_cli(*EXPORT, "--checkpoint", bad, "--out", out, "--allow-partial-load")
    assert r.returncode == 0 and "partial load" in r.stderr
    r = run_cli(*EXPORT, "--checkpoint", good, "--out", tmp_path / "ok")
    assert r.returncode == 0 and "partial load" not in r.stderr, r.stderr


def test_vggt_checkpoint_into_page4d_config_is_an_expected_gap(state_dict_refs):
    from vggt_mv.weights import load_weights
    from vggt_mv.config import get_config
    from vggt_mv.models import VGGTMV

    with torch.device("meta"):
        model = VGGTMV(get_config())
    r = load_weights(model, checkpoint=state_dict_refs / "vggt_1b.json")
    assert len(r.missing) == 8 and r.gaps() == []  # the mask head is new by design


# ------------------------------------------------ quantized graphs, engines, re-export
@pytest.fixture(scope="module")
def calib_npz(mv_scene, tmp_path_factory) -> Path:
    from calib.dataset import build_calibration_set

    return build_calibration_set(mv_scene, 2, 2, (42, 56), 4,
                                 tmp_path_factory.mktemp("calib") / "calib.npz")


def test_quantize_killed_midway_is_refused_then_recovered(damaged):
    from calib.precision import make_precision

    make_precision(damaged, "fp16", log=lambda s: None)
    OnnxSession(damaged, graph="model.fp16.onnx")  # a finished quantize loads
    r = run_cli("quantize", "--fp16", "--bucket", damaged,
                env={"VGGT_MV_TEST_KILL_AT": "quantize-graphs-written"})
    assert r.returncode == 137
    # new graphs, and no old report beside them claiming figures for other graphs
    assert not (damaged / "precision_fp16.json").exists()
    with pytest.raises(ArtifactIntegrityError, match="has no precision_fp16.json.*quantize"):
        OnnxSession(damaged, graph="model.fp16.onnx")
    r = run_cli("build-engine", "--fp16", "--dry-run", "--bucket", damaged)
    assert r.returncode == 1 and "has no precision_fp16.json" in r.stdout + r.stderr
    r = run_cli("quantize", "--fp16", "--bucket", damaged)
    assert r.returncode == 0, r.stderr
    assert "an interrupted quantize" in r.stdout
    OnnxSession(damaged, graph="model.fp16.plugins.onnx")


def test_precision_report_of_another_export_is_stale(damaged):
    import json

    from calib.precision import make_precision

    make_precision(damaged, "fp16", log=lambda s: None)
    rep = damaged / "precision_fp16.json"
    rec = json.loads(rep.read_text())
    rec["source"]["sha256"] = "0" * 64  # as if quantized from an earlier model.onnx
    rep.write_text(json.dumps(rec))
    with pytest.raises(ArtifactIntegrityError, match="made from another model.onnx"):
        OnnxSession(damaged, graph="model.fp16.plugins.onnx")


def test_build_engine_dry_run_refuses_what_would_not_build(damaged, calib_npz, tmp_path):
    from calib.precision import make_precision

    text = tmp_path / "libvggt_mv_plugins.so"
    text.write_text("not a library\n")
    r = run_cli("build-engine", "--fp32", "--dry-run", "--bucket", damaged, "--plugins", text)
    assert r.returncode == 1 and "is not a shared library (no ELF header)" in r.stdout, r.stdout
    from conftest import stand_in_shared_library

    other = stand_in_shared_library(tmp_path / "libother.so")  # an ELF for this CPU ...
    other.write_bytes(other.read_bytes().replace(b"VggtSparseAttention", b"SomeoneElsesOp"))
    r = run_cli("build-engine", "--fp32", "--dry-run", "--bucket", damaged, "--plugins", other)
    assert r.returncode == 1 and "holds no vggt_mv plugin creators (missing: " \
        "VggtSparseAttention)" in r.stdout, r.stdout  # ... that registers nothing of ours
    p = damaged / "model.plugins.onnx"
    p.write_bytes(p.read_bytes()[:1000])
    r = run_cli("build-engine", "--fp32", "--dry-run", "--bucket", damaged, "--plugins", text)
    assert r.returncode == 1 and "model.plugins.onnx is 1,000 bytes" in r.stdout, r.stdout
    # INT8: the calibration set the precision report names changed after quantize
    npz = tmp_path / "calib.npz"
    shutil.copy(calib_npz, npz)
    make_precision(damaged, "int8", npz, backend="builtin", log=lambda s: None)
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["images"] = arrays["images"][::-1].copy()
    np.savez(npz, **arrays)
    r = run_cli("build-engine", "--int8", "--dry-run", "--bucket", damaged, "--plugins", text)
    assert r.returncode == 1 and "changed since model.int8.plugins.onnx was calibrated" in \
        r.stdout, r.stdout
    assert "Traceback" not in r.stdout + r.stderr


def test_engine_built_from_an_older_graph_is_refused(damaged):
    from runtime.trt.session import TrtSession
    from runtime.trt.sidecar import EnvironmentInfo, SidecarMismatchError, make_sidecar, \
        write_sidecar

    manifest = layout.load_manifest(damaged)
    engine = damaged / "model.fp32.engine"
    engine.write_bytes(b"serialized engine")
    side = make_sidecar(engine_file=engine.name, engine_sha256=layout.sha256_file(engine),
                        env=EnvironmentInfo("10.3.0", "GPU", "8.6", None, None),
                        bucket=manifest["bucket"], precision="fp32",
                        source_onnx="model.plugins.onnx", source_onnx_sha256="0" * 64,
                        build_options={}, inputs=manifest["inputs"],
                        outputs=manifest["outputs"])
    write_sidecar(layout.sidecar_path_for(engine), side)
    with pytest.raises(SidecarMismatchError, match="built from another model.plugins.onnx"):
        # refused before TensorRT is even imported (none here can run it)
        TrtSession(damaged, precision="fp32", tensorrt_library="tensorrt")


def test_reexport_keeps_notes_and_drops_what_the_old_graphs_made(tmp_path):
    from export.buckets import Bucket
    from export.exporter import export_bucket
    from vggt_mv.config import tiny_config
    from vggt_mv.models import VGGTMV

    torch.manual_seed(0)
    model = VGGTMV(tiny_config()).eval()
    folder = export_bucket(model, Bucket(2, 1, 28, 28), tmp_path, log=lambda s: None).folder
    for name in ("NOTES.md", "calib.npz", "model.fp16.onnx", "precision_fp16.json",
                 "model.fp16.engine", "model.fp16.engine.json", "bench.json"):
        (folder / name).write_text("x")
    (folder / "check").mkdir()
    said = []
    export_bucket(model, Bucket(2, 1, 28, 28), tmp_path, log=said.append)
    left = sorted(p.name for p in folder.iterdir())
    assert left == sorted(["NOTES.md", "calib.npz", "manifest.json", "model.onnx",
                           "model.native.onnx", "model.plugins.onnx"]), left
    text = "\n".join(said)
    assert "keeps files it does not make: NOTES.md, calib.npz" in text, text
    assert "removes what was made from its previous graphs" in text
    assert "model.fp16.engine" in text and "precision_fp16.json" in text


def test_bad_input_folder_is_reported_before_the_model_is_built(tmp_path):
    empty = tmp_path / "frames"
    (empty / "images").mkdir(parents=True)
    out = tmp_path / "art"
    r = run_cli("export", "--preset", "tiny", "--T", 2, "--N", 2, "--height", 42, "--width",
                56, "--input", empty, "--out", out)
    assert r.returncode == 2, r.stdout + r.stderr
    assert str(empty) in r.stderr and "Traceback" not in r.stderr
    assert "RANDOM" not in r.stdout + r.stderr  # refused before the model was built
    assert not out.exists()


def test_missing_bucket_hint_names_every_export_option(bucket):
    from runtime.dispatch import BucketIndex, UnknownBucketError

    with pytest.raises(UnknownBucketError) as e:
        BucketIndex.scan(bucket.parent).select(3, 2)
    assert "python cli.py export --preset tiny --T 3 --N 2 --height 42 --width 56" in \
        str(e.value)


def test_check_refuses_a_checkpoint_that_changed_since_export(tmp_path):
    from vggt_mv.config import tiny_config
    from vggt_mv.models import VGGTMV

    torch.manual_seed(0)
    sd = VGGTMV(tiny_config()).state_dict()
    ckpt = tmp_path / "model.pt"
    torch.save(sd, ckpt)
    out = tmp_path / "art"
    r = run_cli(*EXPORT, "--checkpoint", ckpt, "--out", out)
    assert r.returncode == 0, r.stderr
    sd[next(iter(sd))] += 1.0  # fine-tuned in place after the export
    torch.save(sd, ckpt)
    r = run_cli("check", "--bucket", out / "T2_N2_42x56", "--out", tmp_path / "report")
    assert r.returncode == 2, r.stdout + r.stderr
    assert str(ckpt) in r.stderr and "not the checkpoint this bucket was exported from" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "report").exists()
    ckpt.unlink()
    r = run_cli("check", "--bucket", out / "T2_N2_42x56", "--out", tmp_path / "report")
    assert r.returncode == 2 and "is not found" in r.stderr, r.stderr


# ------------------------------------------------ found by scripts/fault_sweep.py
def test_quantize_names_a_truncated_source_graph(damaged):
    from calib.precision import make_precision

    p = damaged / "model.onnx"
    p.write_bytes(p.read_bytes()[:5000])  # was a protobuf DecodeError traceback
    with pytest.raises(ArtifactIntegrityError, match="model.onnx is 5,000 bytes"):
        make_precision(damaged, "fp16", log=lambda s: None)
    assert not list(damaged.glob("model.fp16*"))


def test_bad_profiles_file_is_a_message(tmp_path):
    from export.compare import load_profiles

    bad = tmp_path / "p.json"
    for text, says in (("{fp16: loose}", "cannot read it as JSON"), ('["fp16"]', "expected an "
                       "object"), ('{"fp16": {"atool": 1}}', "unknown field(s) ['atool']")):
        bad.write_text(text)
        with pytest.raises(RuntimeDataError, match=re.escape(says)):
            load_profiles(bad)
    bad.write_text('{"fp16": {"atol": 0.5}}')
    assert load_profiles(bad)["fp16"].atol == 0.5


def test_a_folder_never_replaces_a_file(tmp_path):
    f = tmp_path / "repo"
    f.write_text("the user's file")
    with pytest.raises(RuntimeDataError, match="is a file"):
        with layout.atomic_directory(f):
            pass
    assert f.read_text() == "the user's file" and sorted(tmp_path.iterdir()) == [f]


def test_out_given_as_a_link_replaces_what_the_link_names(bucket, mv_scene, tmp_path):
    from runtime.predictor import Predictor

    run = tmp_path / "run_07"
    latest = tmp_path / "latest"
    with Predictor(bucket.parent, backend="onnx", graph="model.onnx") as p:
        p.predict(mv_scene, T=2, N=2, t0=4).write_outputs(run)
        latest.symlink_to(run.name)
        p.predict(mv_scene, T=2, N=2, t0=0).write_outputs(latest)
    assert latest.is_symlink() and latest.resolve() == run.resolve()
    assert (run / "depth" / "depth_t00_view0.png").is_file()
    assert not (run / "depth" / "depth_t04_view0.png").exists()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["latest", "run_07"]  # no .old-*


@pytest.mark.parametrize("edit", ["T", "shape"])
def test_a_hand_edited_manifest_is_named_not_the_clip(damaged, mv_scene, tmp_path, edit):
    import json

    m = json.loads((damaged / "manifest.json").read_text())
    if edit == "T":
        m["bucket"]["T"] = 3
    else:
        m["inputs"]["images"]["shape"][-1] = 70
    (damaged / "manifest.json").write_text(json.dumps(m))
    r = run_cli("infer", "--onnx", damaged, "--graph", "model.onnx", "--input", mv_scene,
                "--T", 2, "--N", 2, "--pad", "--out", tmp_path / "out")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "manifest.json is inconsistent" in r.stderr and "edited by hand" in r.stderr
    assert "--pad" not in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()


def test_a_failed_write_takes_the_folders_it_created_with_it(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with layout.atomic_directory(tmp_path / "new" / "deeper" / "T2_N2"):
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "mine").mkdir()
    with pytest.raises(RuntimeError):
        with layout.atomic_directory(tmp_path / "mine" / "T2_N2"):
            raise RuntimeError("fails")
    assert list(tmp_path.iterdir()) == [tmp_path / "mine"]  # the user's folder stays


def test_calibration_clips_are_distinct_or_refused(mv_scene):
    from calib.dataset import sample_clips
    from runtime.preprocess import discover_scene

    scene = discover_scene(mv_scene)
    clips = sample_clips(scene, 2, 2, 90)  # 15 starts x 6 view pairs: every clip once
    assert len(set(clips)) == 90
    assert len(set(sample_clips(scene, 2, 4, 15))) == 15
    with pytest.raises(RuntimeDataError, match="only 90 distinct clips"):
        sample_clips(scene, 2, 2, 91)  # a repeat could sit on both sides of the holdout


def test_fault_sweep_script_runs_and_judges(tmp_path):
    """The sweep's plumbing (export, per-fault process, verdicts, JSON), on its manifest
    faults; the whole sweep is a script, run by hand (README)."""
    import json

    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "fault_sweep.py"), "-k",
                        "manifest", "--json", str(tmp_path / "rows.json")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert len(rows) == 4 and all(x["verdict"] == "refused" for x in rows), rows
    assert all(x["message"].startswith("error:") for x in rows), rows


# ------------------------------------------------ disk and memory, before tracing
def _full_size():
    from vggt_mv.config import get_config
    from vggt_mv.models import VGGTMV

    cfg = get_config("vggt_mv_1b")
    with torch.device("meta"):
        return cfg, VGGTMV(cfg).num_parameters()


def test_resource_estimates_reproduce_the_measured_runs():
    from export.resources import estimate
    from runtime.layout import Bucket

    cfg, params = _full_size()
    # measured (README): 4.80 GB written, peak RSS 16.4 GB with validation (22 GB free)
    n = estimate(cfg, Bucket(2, 2, 392, 518), params, True, available_memory=22e9)
    assert 4.8e9 <= n.disk_bytes <= 1.1 * 4.8e9
    assert 16.4e9 <= n.memory_bytes <= 1.15 * 16.4e9 and n.dense_validated
    # export --no-validate at T=8, N=4, 518x518: peak RSS 5.5 GB
    n = estimate(cfg, Bucket(8, 4, 518, 518), params, False)
    assert 5.5e9 <= n.memory_bytes <= 1.25 * 5.5e9


def test_memory_refusal_names_the_largest_bucket_that_fits(monkeypatch, tmp_path):
    from export.resources import ResourceError, check_resources
    from runtime.layout import Bucket

    cfg, params = _full_size()
    monkeypatch.setenv("VGGT_MV_TEST_AVAILABLE_MEMORY", "30e9")
    with pytest.raises(ResourceError, match=r"T4_N4_518x518 needs ~40\.\d GB.*30\.0 GB "
                                            r"available: --T 3 --N 3 fits"):
        check_resources(cfg, [Bucket(4, 4, 518, 518)], params, True, tmp_path)
    monkeypatch.setenv("VGGT_MV_TEST_AVAILABLE_MEMORY", "12e9")
    with pytest.raises(ResourceError, match="no 392x518 bucket fits; --no-validate fits"):
        check_resources(cfg, [Bucket(2, 2, 392, 518)], params, True, tmp_path)


def test_export_refuses_a_disk_too_small_up_front(tmp_path):
    out = tmp_path / "art"
    r = run_cli(*EXPORT, "--out", out, env={"VGGT_MV_TEST_FREE_DISK": "1000"})
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"not enough disk under {tmp_path}" in r.stderr and "GB are free" in r.stderr
    assert "RANDOM" not in r.stdout + r.stderr and not out.exists()  # before the model
    r = run_cli(*EXPORT, "--out", out, "--skip-resource-check",
                env={"VGGT_MV_TEST_FREE_DISK": "1000"})
    assert r.returncode == 0 and (out / "T2_N2_42x56" / "manifest.json").is_file(), r.stderr


def test_disk_full_while_writing_names_the_path_and_leaves_nothing(tmp_path):
    out = tmp_path / "art"
    r = run_cli(*EXPORT, "--out", out, env={"VGGT_MV_TEST_DISK_FULL_AT": "export-graph"})
    assert r.returncode == 1, r.stdout + r.stderr
    assert "disk full writing" in r.stderr and "model.onnx" in r.stderr
    assert "this export needs ~" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists() or not list(out.iterdir())  # no bucket, no .partial-* folder


def test_full_disk_while_writing_outputs_names_the_out_folder(bucket, mv_scene, tmp_path):
    out = tmp_path / "out"
    r = run_cli("infer", "--onnx", bucket.parent, "--graph", "model.onnx", "--input", mv_scene,
                "--T", 2, "--N", 2, "--out", out, env={"VGGT_MV_TEST_DISK_FULL_AT": "outputs"})
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"disk full writing {out}: free space there or choose another --out" in r.stderr
    assert ".partial" not in r.stderr and "Traceback" not in r.stderr
    assert sorted(tmp_path.iterdir()) == []


@pytest.mark.parametrize("err,says,code", [
    ("ENOSPC", "disk full writing {out}: free space there or choose another --out", 1),
    ("EDQUOT", "disk quota exceeded writing {out}", 1),
    ("EROFS", "read-only file system: {out}: choose a writable folder with --out", 2),
    ("EACCES", "permission denied: {out}: choose a folder you can write with --out", 2),
])
def test_os_errors_name_the_folder_asked_for(tmp_path, err, says, code):
    import errno
    import os

    from runtime.console import os_error_message

    scratch = tmp_path / ".out.partial-41-ab12" / "depth" / "d.png"
    n = getattr(errno, err)
    e = (PermissionError if err == "EACCES" else OSError)(n, os.strerror(n), str(scratch))
    msg, got = os_error_message(e)
    assert msg.startswith(says.format(out=tmp_path / "out")) and got == code, msg
    assert ".partial" not in msg
    assert os_error_message(FileNotFoundError("no exported buckets in x")) == (
        "no exported buckets in x", 2)  # ours: its own sentence


def test_public_path_names_the_folder_a_scratch_path_stands_for(tmp_path):
    assert layout.public_path(tmp_path / ".out.partial-41-ab12" / "depth" / "d.png") == \
        tmp_path / "out"
    assert layout.public_path(tmp_path / ".T2_N2.old-7") == tmp_path / "T2_N2"
    assert layout.public_path(tmp_path / "out" / ".x.png.tmp") == tmp_path / "out" / ".x.png.tmp"


# ------------------------------------------------ check must compare what it was asked to
@pytest.mark.parametrize("backend,code,needle", [
    ("onnxrt:model.onxx", 2, "unknown backend(s) ['onnxrt:model.onxx']"),
    ("onnxrt:model.fp16.onnx", 1, "model.fp16.onnx not in the bucket"),
])
def test_check_refuses_a_backend_it_cannot_compare(bucket, tmp_path, backend, code, needle):
    r = run_cli("check", "--bucket", bucket, "--backend", backend, "--out", tmp_path / "r")
    assert r.returncode == code, r.stdout + r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert code == 1 or "'onnxrt:model.onnx'" in r.stderr  # the valid names are listed
    assert not (tmp_path / "r").exists()


def test_check_verifies_graphs_before_the_pytorch_run(damaged, tmp_path, monkeypatch):
    import accuracy.runners as runners

    _flip_byte(damaged / "model.plugins.onnx")
    torch_ran = []
    monkeypatch.setattr(runners.TorchRunner, "activate_impl",
                        lambda self: torch_ran.append(1))
    from accuracy.check import run_check

    with pytest.raises(ArtifactIntegrityError, match="model.plugins.onnx does not match"):
        run_check(damaged, [{}], tmp_path / "r", log=lambda s: None)
    assert not torch_ran and not (tmp_path / "r").exists()
    r = run_cli("check", "--bucket", damaged, "--out", tmp_path / "r")
    assert r.returncode == 2 and "model.plugins.onnx" in r.stderr, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "r").exists()
    assert not list(tmp_path.glob(".r.*"))  # no scratch folder either


def test_check_never_replaces_a_folder_that_is_not_its_report(bucket, tmp_path):
    from accuracy.check import run_check

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "holiday.jpg").write_bytes(b"the user's")
    reads = "which this run reads"
    for out, says in ((bucket, reads), (bucket.parent, reads),
                      (photos, "not an earlier check report")):
        with pytest.raises(RuntimeDataError, match=says):
            run_check(bucket, [{}], out, log=lambda s: None)
    assert (photos / "holiday.jpg").read_bytes() == b"the user's"
    assert (bucket / "manifest.json").is_file()


@pytest.mark.parametrize("name", ["model.onnx", "manifest.json", "calib.npz", "."])
def test_bench_out_never_replaces_an_artifact_of_a_bucket(damaged, name):
    before = {p.name: p.read_bytes() for p in damaged.iterdir() if p.is_file()}
    r = run_cli("bench", "--bucket", damaged, "--repeats", 1, "--out", damaged / name)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stdout + r.stderr
    assert ("is a folder" if name == "." else "is an artifact of the bucket") in r.stderr
    assert {p.name: p.read_bytes() for p in damaged.iterdir() if p.is_file()} == before


def test_profile_for_an_unknown_precision_is_refused(tmp_path):
    from export.compare import load_profiles

    bad = tmp_path / "p.json"
    bad.write_text('{"fp61": {"atol": 0.5}}')
    with pytest.raises(RuntimeDataError, match=r"unknown precision\(s\) \['fp61'\]"):
        load_profiles(bad)


# ------------------------------------------------ every run checks its outputs
def _flip_exponent_bit(graph: Path, weight: str) -> None:
    """One weight's bit 30 flipped in place, the file's size unchanged."""
    import onnx

    init = next(i for i in onnx.load(str(graph)).graph.initializer if i.name == weight)
    data = bytearray(graph.read_bytes())
    at = data.find(init.raw_data[:64])
    assert at > 0 and data.find(init.raw_data[:64], at + 1) == -1
    data[at + 3] ^= 0x40  # little-endian float32: byte 3 holds the exponent's top bits
    graph.write_bytes(bytes(data))


def test_non_finite_outputs_fail_the_run_whatever_the_verification(damaged, mv_scene,
                                                                   tmp_path):
    import json

    _flip_exponent_bit(damaged / "model.onnx", "model.depth_head.scratch.output_conv2.0.weight")
    args = ["infer", "--onnx", damaged.parent, "--graph", "model.onnx", "--input", mv_scene,
            "--T", 2, "--N", 2, "--out", tmp_path / "out"]
    r = run_cli(*args, env={"VGGT_MV_NO_VERIFY": "1"})
    assert r.returncode == 1, r.stdout + r.stderr
    assert re.search(r"depth: [\d,]+ of 9,408 values \(9\d\.\d%\)", r.stderr), r.stderr
    assert "--allow-nonfinite" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()
    r = run_cli(*args, "--allow-nonfinite", env={"VGGT_MV_NO_VERIFY": "1"})
    assert r.returncode == 0 and "non-finite model outputs" in r.stderr, r.stderr
    health = json.loads((tmp_path / "out" / "run.json").read_text())["nonfinite_outputs"]
    assert health["outputs"]["depth"]["share"] > 0.9 and len(health["frames"]) == 4
    assert health["outputs"]["pose_enc"]["nonfinite"] == 0  # only the depth head was hit


# ------------------------------------------------ quantize never writes into the bucket's graph
def test_int8_quantize_leaves_the_source_graph_untouched(damaged, calib_npz, monkeypatch):
    import modelopt.onnx.quantization as mo

    from calib.precision import make_precision
    from calib.quantize import QuantizationError

    before = layout.sha256_file(damaged / "model.onnx")
    make_precision(damaged, "int8", calib_npz, backend="builtin", log=lambda s: None)
    assert layout.sha256_file(damaged / "model.onnx") == before

    def rewrites_its_input_then_dies(path, **kw):  # what a kill -9 inside ModelOpt leaves
        Path(path).write_bytes(b"")
        raise RuntimeError("killed midway")

    monkeypatch.setattr(mo, "quantize", rewrites_its_input_then_dies)
    with pytest.raises(QuantizationError, match="killed midway"):
        make_precision(damaged, "int8", calib_npz, backend="modelopt", log=lambda s: None)
    assert layout.sha256_file(damaged / "model.onnx") == before
    OnnxSession(damaged, graph="model.onnx")  # the bucket still verifies and loads
    assert not list(damaged.glob(".modelopt-*"))


# ------------------------------------------------ a bucket hidden by a killed swap
def test_every_reader_restores_a_bucket_hidden_by_a_killed_swap(bucket, mv_scene, tmp_path):
    from runtime.dispatch import BucketIndex

    gone = subprocess.Popen(["true"])
    gone.wait()  # a PID that no longer runs, as after kill -9 between the renames
    root = tmp_path / "art"
    root.mkdir()
    hidden = root / f".{bucket.name}.old-{gone.pid}"

    def hide():
        shutil.copytree(bucket, hidden)
        assert not (root / bucket.name).exists()

    hide()
    assert [e.name for e in BucketIndex.scan(root)] == [bucket.name]  # folder of buckets
    shutil.rmtree(root / bucket.name)
    hide()
    assert layout.load_manifest(root / bucket.name)["bucket"]  # the bucket named directly
    shutil.rmtree(root / bucket.name)
    hide()
    r = run_cli("infer", "--onnx", root, "--graph", "model.onnx", "--input", mv_scene,
                "--T", 2, "--N", 2, "--out", tmp_path / "out")
    assert r.returncode == 0 and f"restored {root / bucket.name}" in r.stderr, r.stderr
    assert sorted(p.name for p in root.iterdir()) == [bucket.name]
