"""Streaming windows chained into one world frame (runtime/align.py, runtime/streaming.py).

Known geometry: the real cameras of ../shared/data/mv_scene (intrinsics, camera-from-world
extrinsics) and synthetic depth give per-(t, view) world points; each window's
"prediction" is that geometry in the window's own frame (its first step's view-0 camera,
a random scale) plus noise and outliers. Chaining must give back the true cameras."""
import json
import tracemalloc

import numpy as np
import pytest

from conftest import with_field_of_view
from runtime.align import Sim3, align_robust, umeyama
from runtime.errors import RuntimeDataError
from runtime.postprocess import camera_centers, depth_to_camera_points
from runtime.preprocess import discover_scene
from runtime.streaming import StreamingPredictor, WorldChainer, iter_windows, tum_line

H, W = 24, 32


def _rot(rng, deg_max=180.0):
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    a = np.deg2rad(rng.uniform(-deg_max, deg_max))
    K = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(a) * K + (1 - np.cos(a)) * K @ K


def _rot_err_deg(Ra, Rb):
    c = (np.trace(Ra @ Rb.T) - 1) / 2
    return float(np.degrees(np.arccos(np.clip(c, -1, 1))))


@pytest.fixture(scope="module")
def scene_geometry(mv_scene):
    """Real cameras of mv_scene at H x W, and world points of a synthetic depth per (t, v)."""
    scene = discover_scene(mv_scene)
    T, N = scene.num_times, scene.num_views
    E = np.zeros((T, N, 3, 4))
    K = np.zeros((T, N, 3, 3))
    for i, t in enumerate(scene.times):
        for j, v in enumerate(scene.views):
            k, e = scene.camera(t, v)
            k = k.astype(np.float64).copy()
            k[:2] *= W / 640.0  # the frames are 640 x 480
            R = e[:3, :3].astype(np.float64)
            u, _, vt = np.linalg.svd(R)  # stored as float32: make it exactly a rotation
            K[i, j], E[i, j] = k, np.concatenate([u @ vt, e[:3, 3:].astype(np.float64)], 1)
    yy, xx = np.mgrid[0:H, 0:W]
    P = np.zeros((T, N, H, W, 3))
    for i in range(T):
        for j in range(N):
            depth = 4.0 + 0.8 * np.sin(xx / 5.0 + i * 0.2) + 0.5 * np.cos(yy / 4.0 + j)
            cam = depth_to_camera_points(depth, K[i, j])
            R, t = E[i, j, :, :3], E[i, j, :, 3]
            P[i, j] = (cam - t) @ R  # X_world = R^T (X_cam - t)
    return E, K, P


def _window_frame(E, t0, rng):
    """World -> window frame: the window's first view-0 camera, at a random scale."""
    s = float(rng.uniform(0.3, 3.0))
    return Sim3(s, E[t0, 0, :, :3], s * E[t0, 0, :, 3])


def _chain(geom, window, overlap, noise, outliers, seed=0, drop_overlap_at=None):
    E, K, P = geom
    rng = np.random.default_rng(seed)
    T = E.shape[0]
    chainer = WorldChainer()
    got = {}
    reports = []
    frames = None
    for idx, times in enumerate(iter_windows(T, window, overlap)):
        G = _window_frame(E, times[0], rng)
        if frames is None:
            frames = G  # world of the chain = the first window's frame
        pts = G.apply(P[times])
        spread = np.sqrt(np.mean(np.sum((pts - pts.reshape(-1, 3).mean(0)) ** 2, -1)))
        pts = pts + rng.normal(scale=noise * spread, size=pts.shape)
        bad = rng.random(pts.shape[:-1]) < outliers
        pts[bad] += rng.normal(scale=spread, size=(bad.sum(), 3))
        w = rng.uniform(0.5, 2.0, size=pts.shape[:-1])
        if idx == drop_overlap_at:
            w[:overlap] = 0.0  # nothing confident in the shared steps
        win = chainer.add(times, G.extrinsics(E[times]), pts, w)
        reports.append(win.report)
        for i, t in enumerate(times):
            if t in win.report.new_times:
                got[t] = win.extrinsics[i]
    truth = frames.extrinsics(E)
    rot = max(_rot_err_deg(got[t][j, :, :3], truth[t, j, :, :3])
              for t in got for j in range(E.shape[1]))
    c_true = camera_centers(truth)
    c_got = np.stack([camera_centers(got[t]) for t in range(T)])
    scene_size = np.linalg.norm(c_true.reshape(-1, 3) - c_true.reshape(-1, 3).mean(0), axis=1).max()
    center = float(np.abs(c_got - c_true).max() / scene_size)
    return rot, center, reports, sorted(got)


def test_umeyama_recovers_an_exact_similarity():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(500, 3))
    R, s, t = _rot(rng), 2.7, rng.normal(size=3)
    fit = umeyama(src, s * src @ R.T + t)
    assert abs(fit.s - s) < 1e-9 and np.abs(fit.R - R).max() < 1e-9
    assert np.abs(fit.t - t).max() < 1e-9


def test_robust_fit_ignores_outliers_that_break_least_squares():
    rng = np.random.default_rng(2)
    src = rng.normal(size=(2000, 3))
    R, s, t = _rot(rng), 0.4, rng.normal(size=3)
    dst = s * src @ R.T + t + rng.normal(scale=0.002, size=src.shape)
    bad = rng.random(len(src)) < 0.3
    dst[bad] += rng.normal(scale=3.0, size=(bad.sum(), 3))
    plain = umeyama(src, dst)
    fit = align_robust(src, dst)
    assert _rot_err_deg(fit.sim3.R, R) < 0.2 and abs(fit.sim3.s / s - 1) < 5e-3
    assert _rot_err_deg(plain.R, R) > 1.0 or abs(plain.s / s - 1) > 0.05  # it matters
    assert 0.6 < fit.inlier_fraction < 0.8 and fit.residual < 0.05


def test_chained_windows_recover_the_true_cameras(scene_geometry):
    rot, center, reports, times = _chain(scene_geometry, window=4, overlap=2, noise=0.005,
                                         outliers=0.1)
    assert times == list(range(16))  # every time step once
    assert [r.status for r in reports][0] == "first"
    assert all(r.status == "aligned" for r in reports[1:]), [r.reason for r in reports]
    # bounds: rotation within 0.5 deg, camera centres within 1% of the rig's size
    assert rot < 0.5 and center < 0.01, (rot, center)


def test_alignment_degrades_gracefully_with_noise(scene_geometry):
    runs = [_chain(scene_geometry, 4, 1, noise, 0.05, seed=3) for noise in
            (0.0, 0.01, 0.03, 0.06)]
    rots = [r[0] for r in runs]
    centers = [r[1] for r in runs]
    residuals = [max(w.residual for w in r[2][1:]) for r in runs]
    assert all(w.status == "aligned" for r in runs for w in r[2][1:])
    assert rots[0] < 1e-4 and centers[0] < 1e-6  # exact inliers: exact chain (arccos floor)
    assert rots[1] < 0.5 and centers[1] < 0.01
    assert rots[3] < 2.0 and centers[3] < 0.05  # 6% noise per point: bounded, no jump
    assert centers == sorted(centers) and residuals == sorted(residuals)


def test_fallback_when_the_overlap_has_no_confident_points(scene_geometry):
    rot, center, reports, _ = _chain(scene_geometry, 4, 1, 0.0, 0.0, drop_overlap_at=2)
    assert reports[2].status == "fallback" and "confident points" in reports[2].reason
    assert all(r.status == "aligned" for r in reports[3:])
    # chained through the shared camera: orientation stays right; scale is the previous
    # window's (unknown for this window), so positions may drift but not jump to nonsense
    assert rot < 1e-3, rot


def test_fallback_on_a_residual_beyond_the_bound(scene_geometry):
    E, _, P = scene_geometry
    chainer = WorldChainer()
    G = Sim3.identity()
    chainer.add([0, 1], E[:2], P[:2], np.ones(P.shape[:-1])[:2])
    scrambled = P[1:3].copy()
    rng = np.random.default_rng(0)
    scrambled = scrambled + rng.normal(scale=5.0, size=scrambled.shape)  # all garbage
    win = chainer.add([1, 2], G.extrinsics(E[1:3]), scrambled, np.ones(scrambled.shape[:-1]))
    assert win.report.status == "fallback" and "residual" in win.report.reason


@pytest.mark.parametrize("window,overlap,msg", [(4, 4, "smaller than"), (4, 0, "at least 1"),
                                                (1, 0, "at least 2")])
def test_bad_window_overlap_is_refused(window, overlap, msg):
    with pytest.raises(RuntimeDataError, match=msg):
        list(iter_windows(16, window, overlap))


def test_tum_line_is_the_camera_pose():
    E = np.array([[0, -1, 0, 1.0], [1, 0, 0, 2.0], [0, 0, 1, 3.0]])
    vals = [float(x) for x in tum_line(2.5, E).split()]
    assert vals[0] == 2.5
    assert np.allclose(vals[1:4], -(E[:, :3].T @ E[:, 3]))  # camera centre
    assert np.isclose(np.linalg.norm(vals[4:]), 1.0)


# ------------------------------------------------------------ real frames, tiny preset
@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    import torch

    from export.buckets import Bucket
    from export.exporter import export_bucket
    from vggt_mv.config import tiny_config
    from vggt_mv.models import VGGTMV

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("stream_bucket")
    export_bucket(with_field_of_view(VGGTMV(tiny_config()).eval()), Bucket(4, 4, 42, 56), root,
                  log=lambda s: None)
    return root


def _stream(tiny_root, mv_scene, out, loops=1, on_window=None, max_points=500_000):
    from runtime.predictor import Predictor

    with Predictor(tiny_root, backend="onnx", graph="model.onnx") as p:
        s = StreamingPredictor(p, window=4, overlap=1, out_dir=out, log=on_window or (lambda m: None),
                               warn=lambda m: None, max_points=max_points)
        s.run_folder(mv_scene, loops=loops)
        return s.close()


def test_real_frames_all_16_steps_write_every_output(tiny_root, mv_scene, tmp_path):
    out = tmp_path / "stream"
    summary = _stream(tiny_root, mv_scene, out)
    assert summary["windows"] == 5  # t 0-3, 3-6, 6-9, 9-12, 12-15
    cams = [json.loads(line) for line in (out / "cameras.jsonl").read_text().splitlines()]
    assert sorted({(c["t"], c["view"]) for c in cams}) == [(t, v) for t in range(16)
                                                           for v in range(4)]
    for v in range(4):
        lines = (out / f"trajectory_view{v}.tum").read_text().splitlines()
        assert len([ln for ln in lines if not ln.startswith("#")]) == 16
    assert len(list((out / "depth").glob("*.png"))) == 64
    assert (out / "points.ply").stat().st_size > 100 and summary["points"] > 0
    windows = json.loads((out / "windows.json").read_text())
    assert [w["status"] for w in windows][0] == "first" and len(windows) == 5
    assert all(w["status"] in ("aligned", "fallback") for w in windows[1:])
    assert not list(tmp_path.glob(".stream.partial-*"))
    # cameras at the frames' own 640x480, named as COLMAP finds them under images/
    assert all(c["finite"] and (c["width"], c["height"]) == (640, 480) for c in cams)
    assert cams[0]["image"] == "time_00/view0.png"
    pycolmap = pytest.importorskip("pycolmap")
    rec = pycolmap.Reconstruction(str(out / "sparse"))
    assert rec.num_images() == 64 and rec.num_points3D() == min(summary["points"], 100_000)
    by_name = {c["image"]: c for c in cams}
    for image in list(rec.images.values())[::9]:
        c = by_name[image.name]
        cam = rec.cameras[image.camera_id]
        assert (cam.width, cam.height) == (640, 480)
        assert cam.params[0] == pytest.approx(c["intrinsic"][0][0], rel=1e-6)
        cfw = image.cam_from_world
        np.testing.assert_allclose((cfw() if callable(cfw) else cfw).matrix(), c["extrinsic"],
                                   atol=1e-6)
    trimesh = pytest.importorskip("trimesh")
    scene = trimesh.load(out / "scene.glb")
    assert len([k for k in scene.geometry if k.startswith("frustum_")]) == 64


def test_memory_is_flat_over_4x_more_windows(tiny_root, mv_scene, tmp_path):
    """The same 16 frames looped 4 times: 4x the windows, the same peak of traced (numpy)
    memory once the first window has run."""
    peaks = []

    def on_window(_msg):
        peaks.append(tracemalloc.get_traced_memory()[0])

    tracemalloc.start()
    try:
        # A cloud bound the first pass fills: what grows after it is not the cloud's
        # (bounded) voxels but something kept per window.
        summary = _stream(tiny_root, mv_scene, tmp_path / "loop", loops=4, on_window=on_window,
                          max_points=20_000)
    finally:
        tracemalloc.stop()
    assert summary["windows"] >= 20
    first_pass = max(peaks[1:5])
    later = max(peaks[-5:])
    assert later < 1.25 * first_pass + (2 << 20), (first_pass, later, peaks)


def test_existing_output_folder_is_refused(tiny_root, mv_scene, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("user file")
    with pytest.raises(RuntimeDataError, match="not empty"):
        _stream(tiny_root, mv_scene, out)
    assert (out / "keep.txt").read_text() == "user file"


def test_cli_infer_stream(tiny_root, mv_scene, tmp_path):
    from typer.testing import CliRunner

    import cli as command_line

    out = tmp_path / "cli_stream"
    args = ["infer", "--stream", "--onnx", str(tiny_root), "--graph", "model.onnx", "--input",
            str(mv_scene), "--window", "4", "--overlap", "2", "--out", str(out)]
    r = CliRunner().invoke(command_line.app, args)
    assert r.exit_code == 0, r.output
    assert "window 0: t 0..3" in r.output and "stream: 7 windows" in r.output
    assert json.loads((out / "run.json").read_text())["windows"] == 7
    r = CliRunner().invoke(command_line.app, args)  # the folder is now full: refused
    assert r.exit_code != 0 and "not empty" in r.output
    r = CliRunner().invoke(command_line.app, args[:-4] + ["--window", "4", "--overlap", "4",
                                                         "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "smaller than --window" in r.output
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------- one video per view
def _write_view_videos(scene, out, frames=16, short_view=None, fps=10):
    """view0.avi ... view3.avi from the real frames at full size (conftest's writer)."""
    from conftest import write_view_videos

    lengths = [frames - 4 if v == short_view else frames for v in range(4)]
    return write_view_videos(scene, out, views=4, lengths=lengths, size=None, fps=fps)


def test_view_videos_read_one_step_at_a_time(mv_scene, tmp_path):
    from PIL import Image

    from runtime.video import VideoError, ViewVideos

    vids = _write_view_videos(mv_scene, tmp_path / "rig")
    with ViewVideos(vids) as v:
        assert v.views == [0, 1, 2, 3] and v.fps == pytest.approx(10.0)
        steps = list(v)
        assert v.unequal_lengths == ""
    assert len(steps) == 16 and all(len(s) == 4 for s in steps)
    png = np.asarray(Image.open(mv_scene / "images" / "time_05" / "view1.png").convert("RGB"))
    # RGB (not OpenCV's BGR) and the same picture, through a lossy codec (measured: mean
    # |diff| 2.4 grey levels as RGB, 17 with the channels swapped)
    got = steps[5][1].astype(float)
    assert got.shape == png.shape
    assert np.abs(got - png).mean() < 4.0 < 10.0 < np.abs(got[..., ::-1] - png).mean()

    short = _write_view_videos(mv_scene, tmp_path / "short", short_view=3)
    with pytest.raises(VideoError, match=r"view2.avi: 16, view3.avi: 12\); trim them"):
        ViewVideos(short)  # the containers say so: refused before any frame is decoded
    with ViewVideos(short, shortest=True) as v:
        assert len(list(v)) == 12 and "view3.avi: 12" in v.unequal_lengths
    with pytest.raises(VideoError, match=r"views \[5\] have no video"):
        ViewVideos(vids, views=[0, 5])
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "view0.mp4").write_bytes(b"not a video")
    with pytest.raises(VideoError, match="view0.mp4"):
        list(ViewVideos(bad))
    with pytest.raises(VideoError, match="no view videos"):
        ViewVideos(tmp_path / "nowhere")


def test_cli_infer_stream_from_view_videos(tiny_root, mv_scene, tmp_path):
    """The same 16 steps as one video per view: every output, TUM time stamps from the
    videos' 10 fps; views of different lengths refused, or (--shortest) cut to the
    shortest with a warning."""
    from typer.testing import CliRunner

    import cli as command_line

    vids = _write_view_videos(mv_scene, tmp_path / "rig")
    out = tmp_path / "vid_stream"
    args = ["infer", "--stream", "--onnx", str(tiny_root), "--graph", "model.onnx", "--input",
            str(vids), "--window", "4", "--overlap", "1", "--out", str(out)]
    r = CliRunner().invoke(command_line.app, args)
    assert r.exit_code == 0, r.output
    assert "stream: 5 windows" in r.output
    for v in range(4):
        rows = [ln.split() for ln in (out / f"trajectory_view{v}.tum").read_text().splitlines()
                if not ln.startswith("#")]
        assert [float(x[0]) for x in rows] == pytest.approx([t / 10.0 for t in range(16)])
    assert len(list((out / "depth").glob("*.png"))) == 64
    assert len((out / "cameras.jsonl").read_text().splitlines()) == 64
    assert len(json.loads((out / "windows.json").read_text())) == 5
    lo, hi = json.loads((out / "run.json").read_text())["depth_range_png"]  # one scale
    assert np.isfinite([lo, hi]).all() and lo < hi

    short = _write_view_videos(mv_scene, tmp_path / "short", short_view=0)  # 12 steps
    short_args = list(args)
    short_args[short_args.index(str(vids))] = str(short)
    short_args[-1] = str(tmp_path / "short_out")
    r = CliRunner().invoke(command_line.app, short_args)  # refused, naming each length
    assert r.exit_code == 2 and "view0.avi: 12, view1.avi: 16" in r.output, r.output
    assert "--shortest" in r.output and not (tmp_path / "short_out").exists()
    r = CliRunner().invoke(command_line.app, short_args + ["--shortest"])
    assert r.exit_code == 0, r.output
    assert "differ in length" in r.output and "stream: 4 windows" in r.output


def test_fallback_uses_another_shared_camera_when_view0_is_not_finite(scene_geometry):
    """Alignment fails (no confident shared points) and the new window's view-0 pose of the
    shared step is NaN: the chain goes through view 1 of that step instead, exactly."""
    E, _, P = scene_geometry
    rng = np.random.default_rng(7)
    chainer = WorldChainer()
    chainer.add([0, 1, 2], E[:3], P[:3], np.ones(P.shape[:-1])[:3])
    G = _window_frame(E, 2, rng)  # the new window's frame and scale
    E_win = G.extrinsics(E[2:5])
    E_win[0, 0] = np.nan
    w = np.ones(P.shape[:-1])[2:5]
    w[0] = 0.0
    # The chain's scale is G's inverse only if the previous scale equals it: start from it.
    chainer._scale = 1.0 / G.s
    win = chainer.add([2, 3, 4], E_win, G.apply(P[2:5]), w)
    assert win.report.status == "fallback" and "view index 1" in win.report.reason
    assert np.allclose(win.extrinsics[1:], E[3:5], atol=1e-6)


def test_fallback_without_any_finite_shared_camera_keeps_the_previous_transform(
        scene_geometry):
    E, _, P = scene_geometry
    chainer = WorldChainer()
    chainer.add([0, 1], E[:2], P[:2], np.ones(P.shape[:-1])[:2])
    E_bad = E[1:3].copy()
    E_bad[0] = np.nan  # every view of the shared step
    w = np.ones(P.shape[:-1])[1:3]
    w[0] = 0.0
    win = chainer.add([1, 2], E_bad, P[1:3], w)
    assert win.report.status == "fallback"
    assert "previous window's transform is kept" in win.report.reason
    assert np.isfinite(win.points[1]).all() and np.allclose(win.extrinsics[1], E[2])


def test_input_with_both_frames_and_videos_is_refused(mv_scene, tmp_path):
    """--input must be one kind: which one a folder holding both meant is not guessed."""
    both = tmp_path / "both"
    _write_view_videos(mv_scene, both, frames=2)
    (both / "time_00").mkdir()
    s = StreamingPredictor(None, window=4, overlap=1, out_dir=tmp_path / "out")
    with pytest.raises(RuntimeDataError, match="both view videos"):
        s.run_input(both)
    assert not (tmp_path / "out").exists()


def test_stream_depth_pngs_share_one_robust_range_and_infer_names(tmp_path):
    """A scene receding step by step (depth t+1 .. t+2): with the range of the first step
    every later PNG would be one flat colour; the stream's range spans all steps."""
    from PIL import Image

    from runtime.pointcloud import VoxelCloud
    from runtime.streaming import StreamWriter

    w = StreamWriter(tmp_path / "out", views=[0])
    K = np.array([[[20.0, 0, W / 2], [0, 20.0, H / 2], [0, 0, 1]]])
    E = np.concatenate([np.eye(3), np.zeros((3, 1))], axis=1)[None]
    ramp = np.linspace(0.0, 1.0, W)[None, :].repeat(H, 0)
    for t in range(16):
        w.write_step(t, E, K, (t + 1.0 + ramp)[None])
        if t in (7, 15):
            w.write_window({"window": t // 8})
    w.finish(VoxelCloud(0.1), {})
    out = tmp_path / "out"
    assert sorted(p.name for p in (out / "depth").iterdir()) == \
        [f"depth_t{t:02d}_view0.png" for t in range(16)]  # the names infer writes
    assert not (out / ".depth_maps").exists()
    run = json.loads((out / "run.json").read_text())
    lo, hi = run["depth_range_png"]
    so_far = [r["depth_range_so_far"] for r in json.loads((out / "windows.json").read_text())]
    assert so_far[0][1] < so_far[1][1] == pytest.approx(hi)  # updated as windows arrive
    everything = np.concatenate([(t + 1.0 + ramp).ravel() for t in range(16)])
    # 2nd..98th percentile of a sample of every depth (float16 maps, sampled reservoir)
    assert lo == pytest.approx(np.percentile(everything, 2), abs=0.1)
    assert hi == pytest.approx(np.percentile(everything, 98), abs=0.1)
    pngs = [np.asarray(Image.open(out / "depth" / f"depth_t{t:02d}_view0.png"))
            for t in (0, 8, 15)]
    assert not np.array_equal(pngs[1], pngs[2])  # later steps keep their own colours
    assert all(len(np.unique(p.reshape(-1, 3), axis=0)) > 1 for p in pngs)


def test_robust_range_is_a_uniform_sample_of_the_whole_stream():
    from runtime.colour_range import RobustRange

    r = RobustRange(capacity=1000, per_map=500)
    assert r.range() == (0.0, 1.0)
    for k in range(40):  # 20,000 values, 20x the reservoir: early maps must still count
        r.add(np.full(500, float(k)))
    lo, hi = r.range()
    assert r.seen == 20_000
    assert lo == pytest.approx(np.percentile(np.repeat(np.arange(40.0), 500), 2), abs=1.5)
    assert hi == pytest.approx(np.percentile(np.repeat(np.arange(40.0), 500), 98), abs=1.5)
    r.add(np.array([np.nan, np.inf]))
    assert r.seen == 20_000
