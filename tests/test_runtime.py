"""runtime/: onnxruntime-backed inference end to end on a tiny exported bucket with real
frames, bucket dispatch and padding, feed checks, engine sidecar checks, input errors,
import hygiene. TensorRT/GPU tests skip here, saying which piece is missing."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from runtime.dispatch import (
    BucketIndex,
    FeedError,
    Selection,
    UnknownBucketError,
    check_feeds,
    pad_feeds,
    trim_outputs,
)
from runtime.errors import (
    ImageReadError,
    MissingFrameError,
    NonFiniteError,
    NotEnoughFramesError,
    RuntimeDataError,
)
from conftest import with_field_of_view
from runtime.outputs import read_ply
from runtime.predictor import NPZ_NAME, PLY_NAME, Predictor
from runtime.layout import Bucket, sha256_file, sidecar_path_for
from runtime.trt.env import GpuUnavailableError, detect_gpu, require_gpu
from runtime.trt.sidecar import (
    EnvironmentInfo,
    SidecarError,
    SidecarMismatchError,
    check_sidecar,
    make_sidecar,
    read_sidecar,
    write_sidecar,
)

ROOT = Path(__file__).resolve().parents[1]
T_, N_, H_, W_ = 2, 2, 42, 56
BUCKET = f"T{T_}_N{N_}_{H_}x{W_}"


# ------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def bucket_root(tmp_path_factory):
    """One tiny exported bucket (real exporter, random weights, no validation pass)."""
    torch = pytest.importorskip("torch")
    from export.buckets import Bucket
    from export.exporter import export_bucket
    from vggt_mv.config import tiny_config
    from vggt_mv.models import VGGTMV

    root = tmp_path_factory.mktemp("runtime_buckets")
    torch.manual_seed(0)
    model = with_field_of_view(VGGTMV(tiny_config()).eval())
    export_bucket(model, Bucket(T_, N_, H_, W_), root, log=lambda s: None)
    return root


def _have_reference_ops() -> bool:
    try:
        import plugins.reference.ort_ops  # noqa: F401
    except ImportError:
        return False
    return True


# The plugin graph is what TensorRT builds; it runs in onnxruntime through the CPU
# reference ops (plugins/reference). Until those exist the portable graph stands in, and
# test_plugin_graph_runs_with_reference_ops says so by skipping.
GRAPH = "model.plugins.onnx" if _have_reference_ops() else "model.onnx"


def ort_session(path: Path):
    import onnxruntime as ort

    if path.name.endswith(".plugins.onnx"):
        from plugins.reference.ort_ops import session_options

        so = session_options()
    else:
        so = ort.SessionOptions()
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def predictor(bucket_root):
    with Predictor(bucket_root, backend="onnx", graph=GRAPH, threads=1) as p:
        yield p


@pytest.fixture
def small_scene(mv_scene, tmp_path):
    """time_00..time_01 x view0..view1 of the real scene, copied so tests may damage it."""
    dst = tmp_path / "scene"
    for t in range(2):
        d = dst / "images" / f"time_{t:02d}"
        d.mkdir(parents=True)
        for v in range(2):
            shutil.copy(mv_scene / "images" / f"time_{t:02d}" / f"view{v}.png", d)
    return dst


def app() -> typer.Typer:
    import cli as command_line  # the real command line: runtime's commands as users see them

    return command_line.app


# ------------------------------------------------------------------- end to end (ORT)
def test_predictor_writes_every_output(predictor, mv_scene, tmp_path):
    pred = predictor.predict(mv_scene, T=T_, N=N_)
    assert pred.bucket == BUCKET and pred.backend == "onnx" and pred.pad == (0, 0)
    written = pred.write_outputs(tmp_path / "out")
    with np.load(written["npz"]) as z:
        keys = set(z.files)
        assert {"pose_enc", "depth", "depth_conf", "world_points", "world_points_conf",
                "extrinsics", "intrinsics", "colors", "conf_mask",
                "world_points_from_depth", "frame_paths"} <= keys
        assert z["extrinsics"].shape == (T_, N_, 3, 4)
        assert z["intrinsics"].shape == (T_, N_, 3, 3)
        assert z["world_points_from_depth"].shape == (T_, N_, H_, W_, 3)
        assert z["frame_paths"][1, 0].endswith("time_01/view0.png")
    ply = read_ply(tmp_path / "out" / PLY_NAME)
    assert set(ply) == {"x", "y", "z", "red", "green", "blue"}
    assert len(ply["x"]) == written["points"] > 0
    # percentile 50 keeps about half of the pixels
    assert 0.3 * T_ * N_ * H_ * W_ < len(ply["x"]) <= 0.7 * T_ * N_ * H_ * W_
    pngs = sorted((tmp_path / "out").rglob("*.png"))
    assert len(pngs) == T_ * N_ * 2
    from PIL import Image

    with Image.open(tmp_path / "out" / "depth" / "depth_t01_view1.png") as im:
        assert im.size == (W_, H_) and im.mode == "RGB"
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["bucket"] == BUCKET and run["timing_s"]["inference"] > 0


def test_outputs_equal_a_direct_ort_run(predictor, bucket_root, mv_scene):
    from runtime.preprocess import load_clip

    clip = load_clip(mv_scene, 0, T_, N_, (H_, W_))
    sess = ort_session(bucket_root / BUCKET / GRAPH)
    names = [o.name for o in sess.get_outputs()]
    direct = dict(zip(names, sess.run(names, {"images": clip["images"]})))
    pred = predictor.predict(mv_scene, T=T_, N=N_)
    assert set(pred.outputs) == set(direct)
    for k in direct:
        np.testing.assert_array_equal(pred.outputs[k], direct[k], err_msg=k)
    # derived values come from those outputs, frame for frame
    from runtime.postprocess import pose_encoding_to_extri_intri

    with np.errstate(divide="ignore"):  # random weights: some fields of view are 0
        extr, _ = pose_encoding_to_extri_intri(direct["pose_enc"][0], (H_, W_))
    np.testing.assert_array_equal(pred.extrinsics, extr)
    np.testing.assert_array_equal(pred.depth, direct["depth"][0, ..., 0])


def test_predict_arrays_equals_predict(predictor, mv_scene):
    from runtime.preprocess import load_clip

    clip = load_clip(mv_scene, 4, T_, N_, (H_, W_), views=[1, 3])
    by_folder = predictor.predict(mv_scene, T=T_, t0=4, views=[1, 3])
    by_array = predictor.predict_arrays(clip["images"][0], times=[4, 5], views=[1, 3])
    for k, v in by_folder.outputs.items():
        np.testing.assert_array_equal(by_array.outputs[k], v, err_msg=k)
    assert by_array.times == by_folder.times == [4, 5] and by_folder.views == [1, 3]
    with pytest.raises(RuntimeDataError, match=r"\[T, N, 3, H, W\]"):
        predictor.predict_arrays(clip["images"][0, 0])


def test_plugin_graph_runs_with_reference_ops(bucket_root, mv_scene):
    if not _have_reference_ops():
        pytest.skip("plugins/reference/ort_ops.py (CPU reference plugin ops) not available")
    with Predictor(bucket_root, backend="onnx", graph="model.plugins.onnx", threads=1) as p:
        sess = p.session(p.index[BUCKET])
        assert sess.path.name == "model.plugins.onnx" and sess.uses_plugins
        plug = p.predict(mv_scene, T=T_, N=N_)
    with Predictor(bucket_root, backend="onnx", threads=1) as p:  # default: portable graph
        port = p.predict(mv_scene, T=T_, N=N_)
    assert "model.onnx" in port.backend_detail and not port.notes
    for k, v in port.outputs.items():
        np.testing.assert_allclose(plug.outputs[k], v, rtol=1e-3, atol=1e-4, err_msg=k)


def test_default_graph_rule(tmp_path, monkeypatch):
    """runtime/graphs.py: explicit graph > model.onnx while its dense logits fit 60% of the
    available memory > model.plugins.onnx with a notice; refuses when neither can run."""
    import runtime.graphs as graphs
    from runtime.session import SessionError
    from vggt_mv.config import tiny_config

    d = _fake_bucket(tmp_path, 2, 2)
    manifest = json.loads((d / "manifest.json").read_text())
    assert graphs.choose_graph(d, manifest).graph == "model.plugins.onnx"  # no model.onnx
    (d / "model.onnx").write_bytes(b"not read")
    manifest["model_config"] = tiny_config().to_dict()
    need = graphs.dense_logits_bytes(manifest["model_config"], Bucket.from_dict(manifest["bucket"]))
    # F = 1 + 4 registers + 3 x 4 patches = 17 tokens per frame, 4 heads, T = N = 2
    assert need == 2 * 4 * 2 * 4 * (2 * 17) ** 2
    assert graphs.choose_graph(d, manifest, available=int(need / 0.6) + 1).graph == "model.onnx"
    small = graphs.choose_graph(d, manifest, available=need)
    assert small.graph == "model.plugins.onnx" and "60% of" in small.notice
    assert graphs.choose_graph(d, manifest, "model.native.onnx", available=1).graph == \
        "model.native.onnx"
    monkeypatch.setattr(graphs, "have_reference_ops", lambda: False)
    with pytest.raises(SessionError, match="pip install onnxruntime-extensions"):
        graphs.choose_graph(d, manifest, available=need)


def test_default_graph_falls_back_to_tiled_plugin_graph(bucket_root, mv_scene, monkeypatch):
    if not _have_reference_ops():
        pytest.skip("plugins/reference/ort_ops.py (CPU reference plugin ops) not available")
    from runtime.graphs import AVAILABLE_MEMORY_ENV

    monkeypatch.setenv(AVAILABLE_MEMORY_ENV, "1000")
    with Predictor(bucket_root, backend="onnx", threads=1) as p:
        pred = p.predict(mv_scene, T=T_, N=N_)
    assert "model.plugins.onnx" in pred.backend_detail
    assert any("dense attention needs" in n for n in pred.notes), pred.notes


def test_plugin_graph_without_extensions_names_the_package(bucket_root, mv_scene, tmp_path,
                                                           monkeypatch):
    import runtime.session as session

    monkeypatch.setattr(session, "have_reference_ops", lambda: False)
    res = CliRunner().invoke(app(), ["infer", "--onnx", str(bucket_root), "--input",
                                     str(mv_scene), "--T", "2", "--N", "2", "--out",
                                     str(tmp_path / "o"), "--graph", "model.plugins.onnx"])
    assert res.exit_code != 0
    assert "pip install onnxruntime-extensions" in res.output, res.output
    assert "--graph model.onnx" in res.output and "internal error" not in res.output
    assert not (tmp_path / "o").exists()


def test_infer_cli_end_to_end(bucket_root, mv_scene, tmp_path):
    res = CliRunner().invoke(app(), ["infer", "--onnx", str(bucket_root), "--input",
                                     str(mv_scene), "--T", "2", "--N", "2", "--t0", "3",
                                     "--out", str(tmp_path / "o"), "--threads", "1",
                                     "--graph", GRAPH])
    assert res.exit_code == 0, res.output
    assert "inference" in res.output and "preprocess" in res.output
    assert (tmp_path / "o" / NPZ_NAME).is_file() and (tmp_path / "o" / PLY_NAME).is_file()
    names = {p.name for p in (tmp_path / "o").rglob("*.png")}
    assert names == {f"{k}_t{t:02d}_view{v}.png" for k in ("depth", "conf")
                     for t in (3, 4) for v in (0, 1)}


def _strict_json(text: str):
    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def _read_colmap(folder: Path, ext: str, tmp: Path):
    """pycolmap's reader on the .bin or the .txt files alone (it prefers .bin when both)."""
    pycolmap = pytest.importorskip("pycolmap")
    only = tmp / f"colmap_{ext}"
    only.mkdir()
    for name in ("cameras", "images", "points3D"):
        shutil.copy(folder / f"{name}.{ext}", only)
    return pycolmap.Reconstruction(str(only))


def _cam_from_world(image) -> np.ndarray:
    cfw = image.cam_from_world
    return (cfw() if callable(cfw) else cfw).matrix()


def test_infer_camera_folders_writes_colmap_glb_at_input_size(bucket_root, mv_scene, tmp_path):
    """Frames in a folder per camera (left/, right/; 9.png before 10.png), cropped to 640x400
    so that preprocessing crops too; COLMAP (read by pycolmap, text and binary), GLB
    (reloaded by trimesh), cameras.jsonl and TUM all at the input's 640x400 pixels."""
    from PIL import Image

    from runtime.exports.colmap import MAX_EXPORT_POINTS
    from runtime.preprocess import plan_resize, transform_intrinsics

    rig = tmp_path / "rig"
    for v, cam in enumerate(("left", "right")):
        (rig / cam).mkdir(parents=True)
        for i, t in enumerate((2, 3)):
            with Image.open(mv_scene / "images" / f"time_{t:02d}" / f"view{v}.png") as im:
                im.crop((0, 40, 640, 440)).save(rig / cam / f"{9 + i}.png")
    out = tmp_path / "o"
    res = CliRunner().invoke(app(), ["infer", "--onnx", str(bucket_root), "--input", str(rig),
                                     "--out", str(out), "--threads", "1", "--graph", GRAPH])
    assert res.exit_code == 0, res.output
    assert "sparse" in res.output and "scene.glb" in res.output
    run = _strict_json((out / "run.json").read_text())
    plan = plan_resize((400, 640), (H_, W_))
    assert run["input_size"] == {"width": 640, "height": 400}
    assert run["preprocess"]["crop_left"] == plan.left > 0  # a real crop, not a plain resize
    with np.load(out / NPZ_NAME) as z:
        E, frame_paths = z["extrinsics"], z["frame_paths"]
    assert frame_paths[0, 0].endswith("left/9.png") and frame_paths[1, 1].endswith("right/10.png")
    cams = [_strict_json(line) for line in (out / "cameras.jsonl").read_text().splitlines()]
    assert [(c["t"], c["view"], c["image"]) for c in cams] == [
        (0, 0, "left/9.png"), (0, 1, "right/9.png"), (1, 0, "left/10.png"),
        (1, 1, "right/10.png")]
    for c in cams:  # input-pixel K, mapped forward like the frames were, is the model's K
        assert c["finite"] and (c["width"], c["height"]) == (640, 400)
        np.testing.assert_allclose(transform_intrinsics(np.array(c["intrinsic"]), (400, 640),
                                                        (H_, W_)), c["model_intrinsic"],
                                   atol=2e-3)
    for v in (0, 1):
        lines = (out / f"trajectory_view{v}.tum").read_text().splitlines()
        assert len([ln for ln in lines if not ln.startswith("#")]) == 2
    n_points = min(run["ply_points"], MAX_EXPORT_POINTS)
    assert run["colmap"] == {"images": 4, "points": n_points} and n_points > 0
    by_name = {c["image"]: c for c in cams}
    for ext in ("bin", "txt"):
        rec = _read_colmap(out / "sparse", ext, tmp_path)
        assert rec.num_images() == 4 and rec.num_cameras() == 4
        assert rec.num_points3D() == n_points
        for image in rec.images.values():
            c = by_name[image.name]
            cam = rec.cameras[image.camera_id]
            assert (cam.width, cam.height) == (640, 400)
            K = np.array(c["intrinsic"])
            np.testing.assert_allclose(cam.params, [K[0, 0], K[1, 1], K[0, 2] + 0.5,
                                                    K[1, 2] + 0.5], rtol=1e-6)
            np.testing.assert_allclose(_cam_from_world(image), E[c["t"], c["view"]],
                                       atol=1e-5)
        if shutil.which("colmap"):  # Debian's COLMAP too, where installed (apt: colmap)
            r = subprocess.run(["colmap", "model_analyzer", "--path",
                                str(tmp_path / f"colmap_{ext}")], capture_output=True,
                               text=True, timeout=120)
            said = r.stdout + r.stderr
            assert r.returncode == 0 and "Images: 4" in said, said
            assert f"Points: {n_points}" in said, said
    trimesh = pytest.importorskip("trimesh")
    scene = trimesh.load(out / "scene.glb")
    assert len(scene.geometry["points"].vertices) == n_points
    assert len([k for k in scene.geometry if k.startswith("frustum_")]) == 4


def test_frames_without_finite_cameras_are_left_out(predictor, mv_scene, tmp_path):
    pred = predictor.predict(mv_scene, T=T_, N=N_)
    pred.intrinsics[0, 1, 0, 0] = np.inf  # as an untrained camera head gives (FoV 0)
    written = pred.write_outputs(tmp_path / "o")
    cams = [_strict_json(line) for line in written["cameras_jsonl"].read_text().splitlines()]
    bad = [c for c in cams if not c["finite"]]
    assert [(c["t"], c["view"]) for c in bad] == [(0, 1)] and bad[0]["intrinsic"][0][0] is None
    keep = pred.conf_mask & np.isfinite(pred.points).all(-1)
    keep[0, 1] = False
    assert written["points"] == int(keep.sum()) == len(read_ply(written["ply"])["x"])
    rec = _read_colmap(written["colmap"], "bin", tmp_path)
    assert rec.num_images() == 3
    assert "time_00/view1.png" not in {im.name for im in rec.images.values()}
    assert any("1 of 4 frames" in n for n in pred.notes)
    run = _strict_json((tmp_path / "o" / "run.json").read_text())
    assert run["nonfinite_frames"] == 1 and run["nonfinite_examples"] == [[0, 1]]
    pred.intrinsics[...] = np.inf  # no frame placeable: an empty model, no GLB, a notice
    written = pred.write_outputs(tmp_path / "none")
    assert written["points"] == 0 and "glb" not in written
    assert _read_colmap(written["colmap"], "txt", tmp_path / "none").num_images() == 0
    assert any("scene.glb not written" in n for n in pred.notes)


def test_padding_runs_in_a_larger_bucket_and_trims(bucket_root, mv_scene):
    with Predictor(bucket_root, backend="onnx", graph=GRAPH, threads=1) as strict:
        with pytest.raises(UnknownBucketError, match="--pad"):
            strict.predict(mv_scene, T=1, N=1)
    with Predictor(bucket_root, backend="onnx", graph=GRAPH, allow_pad=True, threads=1) as p:
        pred = p.predict(mv_scene, T=1, N=1, t0=5, views=[2])
        assert pred.pad == (1, 1) and pred.bucket == BUCKET
        assert pred.outputs["depth"].shape == (1, 1, 1, H_, W_, 1)
        assert pred.extrinsics.shape == (1, 1, 3, 4) and pred.times == [5]
        assert pred.views == [2]
        # the same as running the padded clip (last step/view repeated) by hand
        from runtime.preprocess import load_clip

        one = load_clip(mv_scene, 5, 1, 1, (H_, W_), views=[2])["images"]
        full = np.repeat(np.repeat(one, 2, axis=1), 2, axis=2)
        ref = p.session(p.index[BUCKET]).run({"images": full})
        np.testing.assert_array_equal(pred.outputs["depth"], ref["depth"][:, :1, :1])


def test_onnx_session_is_shareable_between_threads(bucket_root, mv_scene):
    from concurrent.futures import ThreadPoolExecutor

    from runtime.preprocess import load_clip
    from runtime.session import OnnxSession

    feeds = [{"images": load_clip(mv_scene, t, T_, N_, (H_, W_))["images"]} for t in (0, 7)]
    with OnnxSession(bucket_root / BUCKET, graph=GRAPH, threads=1) as sess:
        serial = [sess.run(f) for f in feeds]
        with ThreadPoolExecutor(2) as pool:
            parallel = list(pool.map(sess.run, feeds * 2))
    assert not np.array_equal(serial[0]["depth"], serial[1]["depth"])
    for got, ref in zip(parallel, serial * 2):
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k])


def test_onnx_session_reports_a_dropped_provider(bucket_root):
    import onnxruntime as ort

    from runtime.session import OnnxSession, SessionError

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(SessionError, match="not available"):
            OnnxSession(bucket_root / BUCKET, graph=GRAPH, providers="cuda,cpu")
        return
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sess = OnnxSession(bucket_root / BUCKET, graph=GRAPH, providers="cuda,cpu")
    if "CUDAExecutionProvider" in sess.active_providers:
        assert sess.dropped_providers == []
    else:  # this machine: no GPU, onnxruntime falls back to the CPU
        assert sess.dropped_providers == ["CUDAExecutionProvider"]
        assert any("CUDAExecutionProvider" in str(w.message) for w in caught)


# ------------------------------------------------------------------------- dispatch
def _fake_bucket(root: Path, T, N, H=42, W=56, engines=(), ext_mask=False) -> Path:
    name = f"T{T}_N{N}_{H}x{W}" + ("_mask" if ext_mask else "")
    d = root / name
    d.mkdir(parents=True)
    ins = {"images": {"shape": [1, T, N, 3, H, W], "dtype": "float32"}}
    manifest = {"bucket": {"T": T, "N": N, "H": H, "W": W, "batch": 1, "single_view": False,
                           "ext_mask": ext_mask, "name": name},
                "inputs": ins, "outputs": {"depth": {"shape": [1, T, N, H, W, 1],
                                                     "dtype": "float32"}},
                "attention_sites": {"VggtBiasedAttention": 1}}
    (d / "manifest.json").write_text(json.dumps(manifest))
    (d / "model.plugins.onnx").write_bytes(b"not read by dispatch")
    for prec in engines:
        (d / f"model.{prec}.engine").write_bytes(b"engine")
    return d


def test_dispatch_picks_exact_then_smallest_padded(tmp_path):
    for t, n in ((2, 2), (4, 2), (4, 4), (8, 4)):
        _fake_bucket(tmp_path, t, n, engines=("fp16",) if t == 4 else ())
    _fake_bucket(tmp_path, 4, 4, H=518, W=518)
    idx = BucketIndex.scan(tmp_path)
    assert len(idx) == 5
    assert idx.select(4, 2).entry.name == "T4_N2_42x56"
    sel = idx.select(3, 3, allow_pad=True, H=42, W=56)
    assert sel.entry.name == "T4_N4_42x56" and (sel.pad_T, sel.pad_N) == (1, 1)
    # without a size or aspect the largest resolution wins
    assert idx.select(3, 3, allow_pad=True).entry.name == "T4_N4_518x518"
    # aspect breaks ties between resolutions
    assert idx.select(4, 4, aspect=1.0).entry.name == "T4_N4_518x518"
    assert idx.select(4, 4, aspect=56 / 42).entry.name == "T4_N4_42x56"
    assert idx.select(4, 4, H=518, W=518).entry.name == "T4_N4_518x518"
    assert idx.select(2, 2, allow_pad=True, require="fp16").entry.name == "T4_N2_42x56"
    # scanning a single bucket folder works too
    assert list(BucketIndex.scan(tmp_path / "T2_N2_42x56").entries) == ["T2_N2_42x56"]


def test_dispatch_errors_list_available_buckets(tmp_path):
    _fake_bucket(tmp_path, 2, 2)
    _fake_bucket(tmp_path, 4, 2)
    idx = BucketIndex.scan(tmp_path)
    with pytest.raises(UnknownBucketError) as e:
        idx.select(3, 2)
    msg = str(e.value)
    assert "T2_N2_42x56 (T=2, N=2, 42x56)" in msg and "T4_N2_42x56" in msg
    assert "--pad" in msg and "--T 2 --N 2" in msg
    with pytest.raises(UnknownBucketError, match="no exported bucket for T=9"):
        idx.select(9, 2, allow_pad=True)
    with pytest.raises(UnknownBucketError, match="build-engine --fp16"):
        idx.select(2, 2, require="fp16")
    with pytest.raises(FileNotFoundError, match="bucket folder not found"):
        BucketIndex.scan(tmp_path / "none")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no exported buckets"):
        BucketIndex.scan(empty)


def test_single_view_buckets_refuse_several_views(tmp_path):
    d = tmp_path / "S2_42x56"
    d.mkdir()
    bucket = Bucket(2, 1, 42, 56, single_view=True)
    (d / "manifest.json").write_text(json.dumps({
        "bucket": {**bucket.to_dict(), "name": bucket.name},
        "inputs": {"images": {"shape": [1, 2, 3, 42, 56], "dtype": "float32"}},
        "outputs": {}, "model_config": {"name": "tiny"}}))
    (d / "model.onnx").write_bytes(b"not read by dispatch")
    idx = BucketIndex.scan(tmp_path)
    assert idx.select(2, 1).entry.name == "S2_42x56"
    with pytest.raises(UnknownBucketError, match="single-view") as e:
        idx.select(1, 4, allow_pad=True)
    hint = str(e.value).split("`")[1]
    # the export that makes the missing bucket: multi-view, so no --single-view
    assert hint == "python cli.py export --preset tiny --T 1 --N 4 --height 42 --width 56"


def test_pad_and_trim_round_trip(tmp_path):
    idx = BucketIndex.scan(_fake_bucket(tmp_path, 4, 3))
    sel = Selection(idx["T4_N3_42x56"], 2, 1)
    img = np.random.default_rng(0).random((1, 2, 1, 3, 42, 56), dtype=np.float32)
    padded = pad_feeds({"images": img}, sel)["images"]
    assert padded.shape == (1, 4, 3, 3, 42, 56)
    np.testing.assert_array_equal(padded[:, :2, :1], img)
    for t in range(4):
        for n in range(3):
            np.testing.assert_array_equal(padded[0, t, n], img[0, min(t, 1), 0])
    out = trim_outputs({"depth": padded[:, :, :, :1, :, :, None]}, sel)
    np.testing.assert_array_equal(out["depth"][..., 0], img[:, :, :, :1])
    with pytest.raises(FeedError, match="T=2"):
        pad_feeds({"images": img[:, :1]}, sel)


def test_check_feeds_reports_shape_dtype_and_nonfinite():
    spec = {"images": {"shape": [1, 2, 2, 3, 42, 56], "dtype": "float32"}}
    ok = np.zeros((1, 2, 2, 3, 42, 56), np.float32)
    assert check_feeds(spec, {"images": ok})["images"].flags.c_contiguous
    with pytest.raises(FeedError, match=r"missing the batch dimension"):
        check_feeds(spec, {"images": ok[0]})
    with pytest.raises(FeedError, match=r"float64 .*astype\(np.float32\)"):
        check_feeds(spec, {"images": ok.astype(np.float64)})
    with pytest.raises(FeedError, match=r"missing input\(s\) \['images'\].*unexpected"):
        check_feeds(spec, {"image": ok})
    bad = ok.copy()
    bad[0, 1, 1, 0, 0, :3] = np.nan
    with pytest.raises(NonFiniteError, match="3 of"):
        check_feeds(spec, {"images": bad})


# ------------------------------------------------------------------ input errors
def test_unreadable_image_is_named(predictor, small_scene):
    bad = small_scene / "images" / "time_01" / "view1.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ImageReadError, match="time_01/view1.png"):
        predictor.predict(small_scene, T=2, N=2)


def test_wrong_image_count_errors(predictor, small_scene):
    with pytest.raises(NotEnoughFramesError, match="2 time steps"):
        predictor.predict(small_scene, T=3, N=2)
    with pytest.raises(NotEnoughFramesError, match="N=3"):
        predictor.predict(small_scene, T=2, N=3)
    (small_scene / "images" / "time_01" / "view1.png").unlink()
    with pytest.raises(MissingFrameError, match="time step 1, view 1"):
        predictor.predict(small_scene, T=2, N=2)


def test_wrong_bucket_cli_error(bucket_root, small_scene, tmp_path):
    res = CliRunner().invoke(app(), ["infer", "--onnx", str(bucket_root), "--input",
                                     str(small_scene), "--T", "1", "--N", "2", "--out",
                                     str(tmp_path / "o"), "--graph", GRAPH])
    assert res.exit_code == 2
    assert "for T=1, N=2. Available buckets" in res.output and BUCKET in res.output
    assert not (tmp_path / "o").exists()
    res = CliRunner().invoke(app(), ["infer", "--input", str(small_scene)])
    assert res.exit_code == 2 and "exactly one of --engine" in res.output
    res = CliRunner().invoke(app(), ["infer", "--engine", str(bucket_root), "--input",
                                     str(small_scene), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "with a TensorRT engine" in res.output
    assert "build-engine --fp16" in res.output


# ---------------------------------------------------------------------- sidecars
def _sidecar(**over):
    env = EnvironmentInfo("10.3.0.26", "Orin", "8.7", "ab" * 32, "/x/libvggt_mv_plugins.so")
    side = make_sidecar(engine_file="model.fp16.engine", engine_sha256="0" * 64, env=env,
                        bucket={"T": 2, "N": 2, "H": 42, "W": 56, "name": BUCKET},
                        precision="fp16", source_onnx="model.fp16.plugins.onnx",
                        source_onnx_sha256="1" * 64, build_options={"workspace_bytes": None},
                        inputs={"images": {"shape": [1, 2, 2, 3, 42, 56], "dtype": "float32"}},
                        outputs={"depth": {"shape": [1, 2, 2, 42, 56, 1], "dtype": "float32"}},
                        plugin_library=env.plugin_library, contract_version="1.1.0")
    side["build_options"].update(over)
    return side, env


def test_sidecar_matches_its_own_environment(tmp_path):
    side, env = _sidecar()
    assert check_sidecar(side, env) == []
    p = write_sidecar(sidecar_path_for(tmp_path / "model.fp16.engine"), side)
    assert p.name == "model.fp16.engine.json" and read_sidecar(p) == side


def test_sidecar_refuses_other_tensorrt():
    side, env = _sidecar()
    env.tensorrt_version = "10.4.0.1"
    (msg,) = check_sidecar(side, env)
    assert "TensorRT version mismatch" in msg and "10.3.0.26" in msg and "10.4.0.1" in msg
    assert "build-engine" in msg
    env.tensorrt_version = "10.3.0.30"  # same major.minor.patch: same release
    assert check_sidecar(side, env) == []
    vc, env2 = _sidecar(version_compatible=True)
    env2.tensorrt_version = "10.8.0"
    assert check_sidecar(vc, env2) == []
    env2.tensorrt_version = "11.4.1"
    assert check_sidecar(vc, env2) == []
    env2.tensorrt_version = "10.2.0"  # never on an older runtime
    assert "TensorRT version mismatch" in check_sidecar(vc, env2)[0]
    env2.tensorrt_version = None
    assert "not installed" in check_sidecar(vc, env2)[0]


def test_sidecar_refuses_other_gpu():
    side, env = _sidecar()
    env.gpu_name, env.compute_capability = "NVIDIA A100", "8.0"
    (msg,) = check_sidecar(side, env)
    assert "compute capability 8.7" in msg and "8.0" in msg and "rebuild" in msg
    env.gpu_name, env.compute_capability = "Orin NX", "8.7"
    (msg,) = check_sidecar(side, env)
    assert "GPU model mismatch" in msg
    assert check_sidecar(side, env, allow_gpu_model_mismatch=True) == []
    hw, env2 = _sidecar(hardware_compatibility="ampere_plus")
    env2.gpu_name, env2.compute_capability = "RTX A6000", "8.6"
    assert check_sidecar(hw, env2) == []
    env2.compute_capability = "7.5"
    assert "architecture mismatch" in check_sidecar(hw, env2)[0]
    env.compute_capability = None
    assert "no CUDA GPU" in check_sidecar(side, env)[0]


def test_sidecar_refuses_other_plugin_library():
    side, env = _sidecar()
    env.plugin_sha256 = "cd" * 32
    (msg,) = check_sidecar(side, env)
    assert "plugin library mismatch" in msg and "abababab" in msg and "cdcdcdcd" in msg
    env.plugin_sha256 = None
    assert "none is loaded" in check_sidecar(side, env)[0]


def test_environment_detection_here(tmp_path):
    import importlib.util

    lib = tmp_path / "libvggt_mv_plugins.so"
    lib.write_bytes(b"stand-in")
    env = EnvironmentInfo.detect(plugin_library=lib)
    assert env.plugin_sha256 == sha256_file(lib) and env.plugin_library == str(lib)
    # full TensorRT, else TensorRT for RTX (runtime/trt/env.py import_tensorrt)
    assert (env.tensorrt_version is None) == (importlib.util.find_spec("tensorrt") is None and
                                              importlib.util.find_spec("tensorrt_rtx") is None)
    gpu = detect_gpu()  # None, never an exception, where there is no GPU
    if gpu is None:
        assert env.gpu_name is None and env.compute_capability is None
        with pytest.raises(GpuUnavailableError):
            require_gpu()
    else:
        assert (env.gpu_name, env.compute_capability) == (gpu.name, gpu.compute_capability)


def test_malformed_sidecar_is_rejected(tmp_path):
    p = tmp_path / "model.fp16.engine.json"
    with pytest.raises(SidecarError, match="not found"):
        read_sidecar(p)
    p.write_text("{")
    with pytest.raises(SidecarError, match="corrupt"):
        read_sidecar(p)
    side, env = _sidecar()
    del side["gpu"]
    p.write_text(json.dumps(side))
    with pytest.raises(SidecarError, match="missing key 'gpu'"):
        read_sidecar(p)
    assert check_sidecar(side, env) == ["sidecar malformed: missing key 'gpu'"]


# --------------------------------------------------------------------- TensorRT
def _engine_folder(tmp_path) -> Path:
    d = _fake_bucket(tmp_path, 2, 2, engines=("fp16",))
    side, _ = _sidecar()
    write_sidecar(sidecar_path_for(d / "model.fp16.engine"), side)
    return d


def test_trt_session_without_tensorrt_names_what_is_missing(tmp_path, monkeypatch):
    from runtime.trt.session import TrtSession, TrtUnavailableError

    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)  # neither TensorRT library
    monkeypatch.delenv("VGGT_MV_TENSORRT", raising=False)

    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here; this test covers machines without it")
    except ImportError:
        pass
    import runtime.trt.session as trt_session
    from runtime.trt.env import GpuInfo

    d = _engine_folder(tmp_path)

    def no_gpu(device=0):
        raise GpuUnavailableError("no CUDA driver on this machine (libcuda.so.1 not found)")

    # no GPU: that is what to say, whatever TensorRT / cuda-python are missing besides
    monkeypatch.setattr(trt_session, "require_gpu", no_gpu)
    with pytest.raises(TrtUnavailableError, match="no GPU found.*use --onnx"):
        TrtSession(d)
    monkeypatch.setattr(trt_session, "require_gpu",
                        lambda device=0: GpuInfo("Fake GPU", "8.9", 0, 1024))
    with pytest.raises(TrtUnavailableError, match="TensorRT is not installed"):
        TrtSession(d)
    with pytest.raises(FileNotFoundError, match="build-engine --int8"):
        TrtSession(d, precision="int8")
    with pytest.raises(FileNotFoundError, match="no TensorRT engine"):
        TrtSession(_fake_bucket(tmp_path, 4, 4))
    (d / "model.fp16.engine.json").unlink()
    with pytest.raises(SidecarError, match="sidecar .* not found"):
        TrtSession(d)


def _require_trt_gpu():
    pytest.importorskip("tensorrt", reason="TensorRT not installed")
    try:
        require_gpu()
    except GpuUnavailableError as e:
        pytest.skip(f"no GPU: {e}")


def test_trt_session_refuses_mismatched_sidecar(tmp_path):
    _require_trt_gpu()
    from runtime.trt.session import TrtSession

    d = _engine_folder(tmp_path)
    side = read_sidecar(d / "model.fp16.engine.json")
    side["tensorrt_version"] = "9.0.0"
    write_sidecar(d / "model.fp16.engine.json", side)
    with pytest.raises(SidecarMismatchError, match="TensorRT version mismatch"):
        TrtSession(d)


def test_trt_session_matches_onnxruntime(bucket_root, mv_scene):
    _require_trt_gpu()
    from runtime.trt.build import build_engines, plan_build
    from runtime.trt.session import TrtSession

    plan = plan_build([bucket_root / BUCKET], "fp32")
    if not plan.ok:
        pytest.skip("cannot build here: " + "; ".join(plan.all_problems))
    (res,) = build_engines(plan, log=lambda s: None)
    assert res.status == "built", res.message
    from runtime.preprocess import load_clip

    feeds = {"images": load_clip(mv_scene, 0, T_, N_, (H_, W_))["images"]}
    with Predictor(bucket_root, backend="onnx", graph=GRAPH) as p:
        ref = p.session(p.index[BUCKET]).run(feeds)
    for graph in (False, True):
        with TrtSession(bucket_root / BUCKET, precision="fp32", use_cuda_graph=graph) as s:
            for _ in range(2):  # second call: reused buffers / captured graph
                got = s.run(feeds)
            for k in ref:
                np.testing.assert_allclose(got[k], ref[k], rtol=2e-3, atol=2e-3, err_msg=k)


# ---------------------------------------------------------------------- hygiene
def test_runtime_import_pulls_no_heavy_modules():
    code = ("import sys, runtime, runtime.dispatch, runtime.layout, runtime.session, "
            "runtime.trt.sidecar, runtime.trt.session, runtime.trt.build, runtime.trt.plugins, "
            "runtime.predictor, runtime.commands\n"
            "from runtime import Predictor, OnnxSession, TrtSession, BucketIndex, "
            "check_sidecar\n"
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'tensorrt', "
            "'onnx_graphsurgeon', 'export') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "[]"


_BLOCKED_RUN = r"""
import importlib.abc, json, sys
BLOCK = {"torch", "onnx", "onnxscript", "polygraphy", "onnx_graphsurgeon", "export", "calib"}
class Blocked(importlib.abc.MetaPathFinder):  # as on a device with the runtime install only
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCK:
            raise ImportError(f"{name} is blocked (runtime-only install)")
        return None
sys.meta_path.insert(0, Blocked())
root, scene, out, graph = sys.argv[1:5]
from runtime import Predictor
with Predictor(root, backend="onnx", threads=1, graph=graph or None) as p:
    pred = p.predict(scene, T=2, N=2)
    written = pred.write_outputs(out)
print(json.dumps({"detail": pred.backend_detail, "points": written["points"],
                  "loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCK)}))
"""


def test_predictor_runs_without_torch_or_onnx(bucket_root, mv_scene, tmp_path):
    """The runtime-only install (pip install '.[runtime-ort]'): importing runtime and running
    Predictor on a tiny bucket, default graph and plugin graph, with torch, onnx and
    polygraphy unimportable."""
    graphs = ["", "model.plugins.onnx"] if _have_reference_ops() else [""]
    for k, graph in enumerate(graphs):
        r = subprocess.run([sys.executable, "-c", _BLOCKED_RUN, str(bucket_root),
                            str(mv_scene), str(tmp_path / f"o{k}"), graph], cwd=ROOT,
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-3000:]
        res = json.loads(r.stdout.strip().splitlines()[-1])
        assert res["loaded"] == [] and res["points"] > 0
        assert (graph or "model.onnx") in res["detail"]
        assert (tmp_path / f"o{k}" / NPZ_NAME).is_file()


def test_runtime_install_route_brings_no_export_stack():
    """pip install . (+ runtime-ort / runtime-trt) is the runtime alone; the toolkit is the
    `export` extra, and scripts/setup.sh (the test venv) installs it."""
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = meta["optional-dependencies"]

    def names(reqs):
        return {r.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip() for r in reqs}

    heavy = {"torch", "onnx", "onnxscript", "polygraphy", "onnx-graphsurgeon", "safetensors"}
    for route in ("runtime", "runtime-ort", "runtime-trt"):
        assert not (names(meta["dependencies"]) | names(extras[route])) & heavy, route
    assert {"numpy", "pillow"} <= names(extras["runtime"])
    assert {"onnxruntime", "onnxruntime-extensions"} <= names(extras["runtime-ort"])
    assert {"tensorrt", "cuda-python"} <= names(extras["runtime-trt"])
    assert heavy <= names(extras["export"])
    assert ".[export," in (ROOT / "scripts" / "setup.sh").read_text()


@pytest.mark.slow
def test_runtime_installs_alone_in_a_fresh_venv(bucket_root, mv_scene, tmp_path):
    """A new venv (no system packages), `pip install '.[runtime-ort]'` from a copy of the
    checkout (not editable: the installed package, not this tree, is imported), then
    Predictor on a tiny bucket: no torch, onnx or polygraphy in that venv at all. Skips
    only when pip cannot reach a package index (offline machine)."""
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "tests", "artifacts", "build", "*.egg-info", "__pycache__", "docs",
        "*.onnx", "*.data", "*.engine", "*.so"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", f"{src}[runtime-ort]"],
                       capture_output=True, text=True, timeout=600)
    log = r.stdout + r.stderr
    if r.returncode != 0 and any(s in log for s in ("No matching distribution",
                                                    "Could not find a version",
                                                    "Failed to establish a new connection")):
        pytest.skip(f"no package index reachable: {log.strip().splitlines()[-1]}")
    assert r.returncode == 0, log[-3000:]
    code = ("import importlib.util, sys\n"
            "heavy = [m for m in ('torch', 'onnx', 'polygraphy', 'onnx_graphsurgeon') "
            "if importlib.util.find_spec(m)]\n"
            "import runtime\n"
            "from runtime import Predictor\n"
            "with Predictor(sys.argv[1], backend='onnx', threads=1) as p:\n"
            "    pred = p.predict(sys.argv[2], T=2, N=2)\n"
            "print(heavy, runtime.__file__, pred.bucket)\n")
    out = subprocess.run([str(py), "-c", code, str(bucket_root), str(mv_scene)],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith("[] "), line  # nothing of the export stack is installed
    assert str(venv) in line and "T2_N2_42x56" in line, line
