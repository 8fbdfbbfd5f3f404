"""Faults in streaming, serving and the Python API (issue #21): each ends in the right
result, or a refusal that names the file / value (exit 2 from the CLI, an exception from
the API) with nothing half-written. Tiny preset, real frames, no tritonserver needed: the
checks `serve` makes run before it looks for a server."""
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from runtime.errors import RuntimeDataError
from runtime.layout import PathEscapeError, inside

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bucket(tmp_path_factory) -> Path:
    from conftest import export_tiny

    return export_tiny(tmp_path_factory.mktemp("faults_ss")).folder


@pytest.fixture(scope="module")
def predictor(bucket):
    from runtime.predictor import Predictor

    with Predictor(bucket.parent, backend="onnx", graph="model.onnx") as p:
        yield p


@pytest.fixture(scope="module")
def repo(bucket, tmp_path_factory) -> Path:
    from serving.repository import RepositoryOptions, export_repository

    out = tmp_path_factory.mktemp("faults_repo") / "repo"
    export_repository([bucket], out, RepositoryOptions(threads=1))
    return out


def cli(*args: object, env=None):
    import cli as command_line

    return CliRunner().invoke(command_line.app, [str(a) for a in args], env=env)


def gapped_scene(mv_scene: Path, dst: Path, labels=(0, 1, 5, 6, 10, 11), views=2) -> Path:
    for t in labels:
        (dst / "images" / f"time_{t:02d}").mkdir(parents=True)
        for v in range(views):
            shutil.copy(mv_scene / "images" / f"time_{t:02d}" / f"view{v}.png",
                        dst / "images" / f"time_{t:02d}" / f"view{v}.png")
    return dst


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------ paths from files
def test_inside_refuses_escapes_naming_file_key_and_path(tmp_path):
    (tmp_path / "a").mkdir()
    assert inside(tmp_path, "a/x.so", source="f.json", key="k") == (tmp_path / "a/x.so").resolve()
    os.symlink("/tmp", tmp_path / "a" / "link")
    for bad in ("../../../tmp/x.so", "/tmp/x.so", "a/link/x.so", ""):
        with pytest.raises(PathEscapeError) as e:
            inside(tmp_path, bad, source="serving.json", key="buckets[0].trt_plugins")
        assert "serving.json" in str(e.value) and "buckets[0].trt_plugins" in str(e.value)


def test_trt_plugins_outside_the_repository_is_refused(repo, tmp_path):
    from serving.server import ServingEnv, TritonServer

    r = shutil.copytree(repo, tmp_path / "repo")
    index = json.loads((r / "serving.json").read_text())
    escape = "../" * 40 + "tmp/x.so"  # as many ../ as it takes to reach /
    index["buckets"][0]["trt_plugins"] = escape
    (r / "serving.json").write_text(json.dumps(index))
    srv = TritonServer(r, env=ServingEnv(python=Path(sys.executable),
                                        tritonserver=Path("tritonserver")))
    with pytest.raises(PathEscapeError, match=rf"serving.json: buckets\[0\].trt_plugins = "
                                              rf"'{escape}' resolves to /tmp/x.so, outside"):
        srv.command(None)  # never becomes --backend-config tensorrt,plugins=/tmp/x.so
    res = cli("serve", "--repo", r, "--timeout", 5)
    assert res.exit_code == 2 and "trt_plugins" in res.output and "/tmp/x.so" in res.output
    assert "Traceback" not in res.output


def test_config_parameters_and_manifest_names_stay_inside(repo, bucket, tmp_path,
                                                          monkeypatch):
    from runtime.session import OnnxSession

    r = shutil.copytree(repo, tmp_path / "repo")
    cfg = next(r.glob("vggt_mv_*[0-9]/config.pbtxt"))
    cfg.write_text(cfg.read_text().replace('key: "plugins"\n  value {\n    string_value: ""',
                                           'key: "plugins"\n  value {\n    string_value: '
                                           '"../../../lib/evil.so"'))
    assert "evil.so" in cfg.read_text()
    res = cli("serve", "--repo", r)
    assert res.exit_code == 2 and "parameters.plugins" in res.output and str(cfg) in res.output
    # the Python model itself (inside tritonserver) refuses the same escapes
    import serving.triton_model as tm

    here = r / cfg.parent.name / "1"
    monkeypatch.setattr(tm, "HERE", here)
    monkeypatch.setattr(tm, "REPO", r)
    monkeypatch.setattr(sys, "path", list(sys.path))
    tm._extend_sys_path(os.pathsep.join([str(here / "runtime"), "bucket"]))  # inside: fine
    with pytest.raises(PathEscapeError, match="parameters.extra_sys_path"):
        tm._extend_sys_path("../../../elsewhere")
    b = shutil.copytree(bucket, tmp_path / bucket.name)
    m = json.loads((b / "manifest.json").read_text())
    # an external-data record the graph's check would hash: it must not leave the bucket
    m["files"].append({"name": "../../elsewhere/model.onnx.data", "bytes": 1})
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(PathEscapeError, match=r"manifest.json: files\[\]\.name = "
                                              r"'../../elsewhere/model.onnx.data'"):
        OnnxSession(b, graph="model.onnx")


# ------------------------------------------------------------------ export-triton, serve
def _elf(path: Path, machine: int, cls: int = 2) -> Path:
    path.write_bytes(b"\x7fELF" + bytes([cls]) + b"\x01\x01" + bytes(9) + (3).to_bytes(2, "little")
                     + machine.to_bytes(2, "little") + bytes(40))
    return path


def test_export_triton_refuses_a_plugin_that_is_not_a_library_for_this_machine(bucket,
                                                                             tmp_path):
    text = tmp_path / "libvggt_mv_plugins.so"
    text.write_text("not a library\n")
    other = 183 if platform.machine() == "x86_64" else 62
    foreign = _elf(tmp_path / "foreign.so", other)
    here = 62 if platform.machine() == "x86_64" else 183
    not_ours = _elf(tmp_path / "libother.so", here)  # loads here, registers nothing of ours
    for lib, says in ((text, "is not a shared library (no ELF header)"),
                      (foreign, "AArch64 library" if other == 183 else "x86-64 library"),
                      (not_ours, "holds no vggt_mv plugin creators (missing: "
                                 "VggtBiasedAttention, VggtSparseAttention, vggt_mv, "
                                 "getCreators)")):
        res = cli("export-triton", "--bucket", bucket, "--out", tmp_path / "repo",
                  env={"VGGT_MV_PLUGINS": str(lib)})
        assert res.exit_code == 2 and says in res.output and str(lib) in res.output, res.output
        assert not (tmp_path / "repo").exists() and hidden(tmp_path) == []


def test_repository_graphs_are_copies_and_serve_verifies_them(bucket, tmp_path):
    from serving.repository import RepositoryOptions, export_repository

    r = tmp_path / "repo"
    export_repository([bucket], r, RepositoryOptions(threads=1))
    copies = list(r.rglob("model.onnx"))
    assert len(copies) == 2  # the Python model's and the onnxruntime model's
    for c in copies:
        assert os.stat(c).st_ino != os.stat(bucket / "model.onnx").st_ino
    before = (bucket / "model.onnx").read_bytes()
    onnx_copy = next(r.glob("*_onnx/1/model.onnx"))
    data = bytearray(onnx_copy.read_bytes())
    data[len(data) // 2] ^= 0x10  # edited in place: same size
    onnx_copy.write_bytes(bytes(data))
    assert (bucket / "model.onnx").read_bytes() == before  # the bucket is not touched
    res = cli("serve", "--repo", r, "--timeout", 5)
    assert res.exit_code == 2 and str(onnx_copy) in res.output and "sha256" in res.output, \
        res.output


def test_engine_and_plugin_copies_are_checked_at_export_and_serve(bucket, tmp_path):
    from conftest import stand_in_shared_library
    from runtime.layout import sha256_file
    from serving.repository import RepositoryError, RepositoryOptions, export_repository

    b = shutil.copytree(bucket, tmp_path / "b" / bucket.name)
    (b / "model.fp16.engine").write_bytes(b"engine bytes")  # no TensorRT here: placeholders
    lib = stand_in_shared_library(tmp_path / "libvggt_mv_plugins.so")
    side = b / "model.fp16.engine.json"
    side.write_text(json.dumps({"plugins": {"sha256": "0" * 64}}))  # built with another one
    r = tmp_path / "repo"
    with pytest.raises(RepositoryError, match="is not the one model.fp16.engine was built"):
        export_repository([b], r, RepositoryOptions(plugins=lib))
    assert not r.exists() and hidden(tmp_path) == []
    side.write_text(json.dumps({"plugins": {"sha256": sha256_file(lib)}}))
    export_repository([b], r, RepositoryOptions(plugins=lib, threads=1))
    copy = next(r.glob("*_trt/plugins/" + lib.name))
    data = bytearray(copy.read_bytes())
    data[-1] ^= 0x01  # same size, other bytes: what tritonserver would dlopen
    copy.write_bytes(bytes(data))
    res = cli("serve", "--repo", r, "--timeout", 5)
    assert res.exit_code == 2 and str(copy) in res.output and "serving.json" in res.output, \
        res.output


def test_serve_refuses_foreign_folders_and_garbled_configs_naming_file_and_line(repo,
                                                                              tmp_path):
    res = cli("serve", "--repo", tmp_path / "missing")
    assert res.exit_code == 2 and "does not exist" in res.output
    (tmp_path / "photos").mkdir()
    res = cli("serve", "--repo", tmp_path / "photos")
    assert res.exit_code == 2 and "not a repository written by export-triton" in res.output
    r = shutil.copytree(repo, tmp_path / "repo")
    cfg = next(r.glob("vggt_mv_*_onnx/config.pbtxt"))
    lines = cfg.read_text().splitlines()
    at = next(i for i, ln in enumerate(lines) if "data_type" in ln)
    lines[at] = lines[at].replace("TYPE_FP32", "TYPE_F32")
    cfg.write_text("\n".join(lines) + "\n")
    res = cli("serve", "--repo", r)
    assert res.exit_code == 2 and str(cfg) in res.output and f"line {at + 1}:" in res.output, \
        res.output
    cfg.write_text("\n".join(lines[:at]) + "\n")  # cut short: a brace never closed
    res = cli("serve", "--repo", r)
    assert res.exit_code == 2 and str(cfg) in res.output and "missing '}'" in res.output
    assert "Traceback" not in res.output


# ------------------------------------------------------------------------- streaming
def _stream(predictor, out, **kw):
    from runtime.streaming import StreamingPredictor

    return StreamingPredictor(predictor, window=2, overlap=1, out_dir=out,
                              log=lambda m: None, **kw)


def test_stream_aborts_cleanly_on_exceptions_and_when_dropped(predictor, mv_scene, tmp_path):
    frames = [mv_scene / "images" / f"time_00/view{v}.png" for v in range(2)]
    nxt = [mv_scene / "images" / f"time_01/view{v}.png" for v in range(2)]
    out = tmp_path / "out"
    with pytest.raises(RuntimeDataError, match="3 frames"):
        with _stream(predictor, out) as s:
            s.push(frames)
            s.push(nxt)  # a window ran: the partial folder exists
            assert hidden(tmp_path) and any(".partial-" in h for h in hidden(tmp_path))
            s.push(frames + frames[:1])
    assert hidden(tmp_path) == [] and not out.exists()
    # a window that fails half-way (the first one was written) aborts the stream itself
    s = _stream(predictor, out)
    s.push(frames)
    s.push(nxt)
    real = predictor.predict_arrays
    try:
        predictor.predict_arrays = lambda *a, **k: (_ for _ in ()).throw(OSError("disk"))
        with pytest.raises(OSError):
            s.push([mv_scene / "images" / f"time_02/view{v}.png" for v in range(2)])
    finally:
        predictor.predict_arrays = real
    assert hidden(tmp_path) == [] and not out.exists()
    with pytest.raises(RuntimeDataError, match="aborted"):
        s.push(frames)
    # never closed: the finaliser removes the partial folder and the lock
    s = _stream(predictor, out)
    s.push(frames)
    s.push(nxt)
    assert hidden(tmp_path)
    del s
    gc.collect()
    assert hidden(tmp_path) == [] and not out.exists()
    # leaving the block normally closes: the output is in place
    with _stream(predictor, out) as s:
        s.push(frames)
        s.push(nxt)
    assert s.summary["windows"] == 1 and (out / "run.json").is_file()
    assert hidden(tmp_path) == []


def test_stale_partial_folder_of_a_killed_stream_is_removed_and_named(predictor, mv_scene,
                                                                     tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.partial-{dead.pid}"
    (stale / "depth").mkdir(parents=True)
    (stale / "cameras.jsonl").write_text("{}\n")
    said = []
    with _stream(predictor, tmp_path / "out", warn=said.append) as s:
        for t in range(2):
            s.push([mv_scene / "images" / f"time_{t:02d}/view{v}.png" for v in range(2)])
    assert not stale.exists() and hidden(tmp_path) == []
    assert any(stale.name in m and "interrupted run" in m for m in said), said


def test_second_stream_into_one_output_is_refused_naming_the_first(bucket, predictor,
                                                                  mv_scene, tmp_path):
    from runtime.locks import OutputLock

    out = tmp_path / "out"
    with OutputLock(out, "stream run"):  # as if another stream were running into it
        with pytest.raises(RuntimeDataError, match=rf"another stream run \(PID {os.getpid()}"):
            _stream(predictor, out)
        res = cli("infer", "--stream", "--onnx", bucket.parent, "--graph", "model.onnx",
                  "--input", mv_scene, "--N", 2, "--window", 2, "--out", out)
        assert res.exit_code == 2 and f"PID {os.getpid()}" in res.output, res.output
    assert not out.exists() and hidden(tmp_path) == []
    # something else fills the output while the stream runs: refused at the final rename
    s = _stream(predictor, out)
    for t in range(2):
        s.push([mv_scene / "images" / f"time_{t:02d}/view{v}.png" for v in range(2)])
    out.mkdir()
    (out / "theirs.txt").write_text("theirs")
    with pytest.raises(RuntimeDataError, match="filled by someone else"):
        s.close()
    assert [p.name for p in out.iterdir()] == ["theirs.txt"] and hidden(tmp_path) == []


# ------------------------------------------------------------------------ time labels
def test_time_labels_with_gaps_are_kept_and_said(bucket, predictor, mv_scene, tmp_path):
    scene = gapped_scene(mv_scene, tmp_path / "scene")
    said = []
    out = tmp_path / "stream"
    with _stream(predictor, out, warn=said.append, fps=2.0) as s:
        s.run_folder(scene)
    labels = [0, 1, 5, 6, 10, 11]
    cams = [json.loads(x) for x in (out / "cameras.jsonl").read_text().splitlines()]
    assert sorted({c["t"] for c in cams}) == labels
    tum = [x.split()[0] for x in (out / "trajectory_view0.tum").read_text().splitlines()
           if not x.startswith("#")]
    assert [float(x) for x in tum] == [t / 2.0 for t in labels]
    assert sorted(p.name for p in (out / "depth").glob("*_view0.png")) == \
        [f"depth_t{t:02d}_view0.png" for t in labels]  # infer's names
    assert any("not evenly spaced" in m for m in said), said
    pred = predictor.predict(scene, T=2, N=2, t0=1)  # time_01, time_05
    assert pred.times == [1, 5] and any("not evenly spaced" in n for n in pred.notes)
    w = pred.write_outputs(tmp_path / "clip")
    assert sorted(p.name for p in w["depth_png"]) == ["depth_t01_view0.png",
                                                      "depth_t01_view1.png",
                                                      "depth_t05_view0.png",
                                                      "depth_t05_view1.png"]


# ------------------------------------------------------------------- predict_arrays
@pytest.mark.parametrize("kw,says", [
    ({"times": [0]}, r"times=\[0\] has 1 entries but the images hold T=2 time steps "
                     r"\(bucket T2_N2_42x56: T=2\)"),
    ({"times": [3, 3]}, r"times=\[3, 3\] repeats \[3\]"),
    ({"views": [0, 1, 2]}, r"views=\[0, 1, 2\] has 3 entries but the images hold N=2 views"),
    ({"views": [1, 1]}, r"views=\[1, 1\] repeats \[1\]"),
    ({"times": [0.5, 1]}, r"must be non-negative integer labels"),
])
def test_predict_arrays_checks_labels_against_the_clip(predictor, kw, says, monkeypatch):
    images = np.random.default_rng(0).random((2, 2, 3, 42, 56), dtype=np.float32)
    ran = []
    monkeypatch.setattr(predictor, "run_selection", lambda *a: ran.append(a))
    with pytest.raises(ValueError, match=says):
        predictor.predict_arrays(images, **kw)
    assert ran == []  # refused before anything ran


# ----------------------------------------------------------------- 16-bit PNG, --server
def test_server_path_decodes_16_bit_pngs_like_local_infer(predictor, mv_scene, tmp_path):
    from serving.client import load_frames
    from serving.triton_model import TritonPythonModel

    scene = gapped_scene(mv_scene, tmp_path / "scene", labels=(0, 1))
    for p in (scene / "images").glob("time_*/view*.png"):
        grey = np.asarray(Image.open(p).convert("L")).astype(np.uint16) * 257
        Image.fromarray(grey).save(p)  # 16-bit greyscale, the full range
    assert Image.open(scene / "images" / "time_00" / "view0.png").mode.startswith("I")
    local = predictor.predict(scene, T=2, N=2)
    clip = load_frames(scene, T=2, N=2)  # what `infer --server` sends
    assert clip.frames.dtype == np.uint8 and clip.frames.mean() < 200  # not all white
    model = TritonPythonModel()  # the server side, without Triton around it
    model.np, model.predictor = np, predictor
    model.spec = next(iter(predictor.index)).spec
    from runtime.preprocess import preprocess_rgb

    model.preprocess_rgb = preprocess_rgb
    remote = model._one_clip(clip.frames)
    np.testing.assert_allclose(remote["pose_enc"], local.outputs["pose_enc"][0], atol=1e-6)
    np.testing.assert_array_equal(remote["colors"], local.colors)


# ------------------------------------------------ signals end a run cleanly
_SIGNAL_IN_PLUGIN_OP = """
import os, signal, sys
sys.path.insert(0, {root!r})
import plugins.reference.numpy_ref as ref
real = ref.biased_attention
def once(*a):
    if not getattr(once, "sent", False):
        once.sent = True
        os.kill(os.getpid(), signal.{sig})  # arrives while onnxruntime's C++ calls us
    return real(*a)
ref.biased_attention = once
sys.argv = ["cli.py", *{args!r}]
import cli
cli.main()
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_signal_inside_a_plugin_op_stops_the_stream_cleanly(bucket, mv_scene, tmp_path, sig):
    out = tmp_path / "out"
    args = ["infer", "--onnx", str(bucket.parent), "--graph", "model.plugins.onnx", "--input",
            str(mv_scene), "--T", "2", "--N", "2", "--stream", "--out", str(out)]
    r = subprocess.run([sys.executable, "-c", _SIGNAL_IN_PLUGIN_OP.format(
        root=str(ROOT), sig=sig, args=args)], capture_output=True, text=True, timeout=300,
        cwd=ROOT)
    assert r.returncode == 130, r.stdout + r.stderr
    assert f"interrupted by {sig} during `infer`" in r.stderr, r.stderr
    assert "terminate called" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not out.exists() and not list(tmp_path.glob(".out*")), list(tmp_path.iterdir())


def test_a_signal_in_a_deferred_section_is_raised_when_it_ends():
    import signal

    from runtime import interrupts

    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        interrupts.install()
        after = []
        with pytest.raises(interrupts.Interrupted, match="SIGTERM"):
            with interrupts.deferred():
                with interrupts.deferred():  # nested: raised only when the outer one ends
                    os.kill(os.getpid(), signal.SIGTERM)
                    after.append("inner")
                after.append("outer")
        assert after == ["inner", "outer"]
        with pytest.raises(interrupts.Interrupted, match="SIGINT"):  # outside: at once
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):
                pass
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def test_a_sidecar_that_is_not_an_object_never_ends_in_a_traceback(tmp_path):
    from runtime.trt.sidecar import engine_needs_plugins
    from serving.repository import RepositoryError, _check_plugin_matches_engine, _needs_plugins

    engine = tmp_path / "model.fp16.engine"
    engine.write_bytes(b"plan")
    lib = tmp_path / "lib.so"
    lib.write_bytes(b"lib")
    assert engine_needs_plugins({"plugins": "libvggt_mv_plugins.so"})  # hand-edited: load it
    for text in ("[1, 2]", '{"plugins": "x"}'):
        engine.with_name("model.fp16.engine.json").write_text(text)
        assert _needs_plugins(engine)
        with pytest.raises(RepositoryError, match="sidecar .* is unreadable"):
            _check_plugin_matches_engine(engine, lib)


def test_folders_replaced_whole_are_never_the_inputs_or_the_users(bucket, mv_scene, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"the user's")
    for out, says in ((bucket, "which this run reads"), (bucket.parent, "which this run reads"),
                      (photos, "not an earlier repository")):
        res = cli("export-triton", "--bucket", bucket, "--out", out, "--no-trt-model")
        assert res.exit_code == 2 and says in res.output, res.output
    scene = tmp_path / "scene"
    shutil.copytree(mv_scene, scene)
    for out in (scene, tmp_path):  # --overwrite does not extend to what the stream reads
        res = cli("infer", "--onnx", bucket.parent, "--input", scene, "--N", 2, "--stream",
                  "--out", out, "--overwrite")
        assert res.exit_code == 2 and "which this run reads" in res.output, res.output
    assert (photos / "a.jpg").read_bytes() == b"the user's" and (scene / "images").is_dir()
    assert (bucket / "manifest.json").is_file() and hidden(tmp_path) == []
