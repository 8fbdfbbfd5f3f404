"""Faults in view videos (issue #21): `infer --stream` and `calibrate` read them through one
reader (runtime/video.py) with one rule. Each fault ends in the right result or a refusal
naming the file and the remedy (exit 2, VideoError from the API), nothing half-written.
Videos are made from the real scene's frames (conftest.write_view_videos, MJPG in AVI)."""
import tempfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import cut_file, write_view_videos
from runtime.video import VideoError, ViewVideos, find_view_videos

cv2 = pytest.importorskip("cv2", reason="OpenCV (opencv-python-headless) not installed")


@pytest.fixture(scope="module")
def bucket(tmp_path_factory) -> Path:
    from conftest import export_tiny

    return export_tiny(tmp_path_factory.mktemp("faults_vid")).folder


@pytest.fixture
def scratch(tmp_path, monkeypatch) -> Path:
    """calibrate's scratch folder lands here, so a test can see that it was removed."""
    d = tmp_path / "tmpdir"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


def cli(*args: object):
    import cli as command_line

    return CliRunner().invoke(command_line.app, [str(a) for a in args])


def stream(bucket: Path, videos: Path, out: Path, *extra: str):
    return cli("infer", "--stream", "--onnx", bucket.parent, "--graph", "model.onnx",
               "--input", videos, "--window", "2", "--out", out, *extra)


def calibrate(bucket: Path, videos: Path, out: Path, *extra: str):
    return cli("calibrate", "--bucket", bucket, "--input", videos, "--clips", "2",
               "--out", out, *extra)


def _png(scene: Path, t: int, v: int) -> np.ndarray:
    im = cv2.imread(str(scene / "images" / f"time_{t:02d}" / f"view{v}.png"))
    return cv2.resize(im, (112, 84), interpolation=cv2.INTER_AREA).astype(float)


def test_video_cut_at_45_percent_is_refused_by_both_commands(mv_scene, bucket, tmp_path,
                                                             scratch):
    vids = write_view_videos(mv_scene, tmp_path / "rig", frames=10)
    cut_file(vids / "view1.avi", 0.45)  # the AVI header still claims 10 frames; 4 decode
    with pytest.raises(VideoError, match=r"view1.avi: only 4 of the 10 frames .* --shortest"):
        list(ViewVideos(vids))
    r = stream(bucket, vids, tmp_path / "out")
    assert r.exit_code == 2 and "view1.avi: only 4 of the 10 frames" in r.output, r.output
    assert not (tmp_path / "out").exists()
    before = sorted(p.name for p in bucket.iterdir())
    r = calibrate(bucket, vids, tmp_path / "c" / "calib.npz")
    assert r.exit_code == 2 and "view1.avi: only 4 of the 10" in r.output, r.output
    assert not (tmp_path / "c" / "calib.npz").exists() and not list(scratch.iterdir())
    assert sorted(p.name for p in bucket.iterdir()) == before


def test_shortest_leaves_out_the_half_garbled_frame_at_the_cut(mv_scene, bucket, tmp_path,
                                                              scratch):
    vids = write_view_videos(mv_scene, tmp_path / "rig", frames=10)
    cut_file(vids / "view1.avi", 0.45)
    cap = cv2.VideoCapture(str(vids / "view1.avi"))
    raw = [cap.read()[1] for _ in range(4)]  # OpenCV hands out frame 3 without an error
    err = [np.abs(im.astype(float) - _png(mv_scene, t, 1)).mean() for t, im in enumerate(raw)]
    # measured: 3.9 for each whole frame, 5.0 for the one at the cut
    assert err[3] > 1.2 * max(err[:3])
    with ViewVideos(vids, shortest=True) as v:
        steps = list(v)
        assert any("frame (3, at the cut) was left out" in n for n in v.notes)
    assert len(steps) == 3
    for t, frames in enumerate(steps):  # RGB from the reader, BGR from cv2.imread
        assert np.abs(frames[1][..., ::-1] - _png(mv_scene, t, 1)).mean() < 4.5
    r = stream(bucket, vids, tmp_path / "out", "--shortest")
    assert r.exit_code == 0 and "at the cut) was left out" in r.output, r.output
    assert "stream: 2 windows" in r.output
    r = calibrate(bucket, vids, tmp_path / "calib.npz", "--shortest")
    assert r.exit_code == 0 and "left out" in r.output, r.output
    assert (tmp_path / "calib.npz").is_file() and not list(scratch.iterdir())


def test_a_frame_that_fails_to_decode_mid_video_is_refused(mv_scene, tmp_path):
    """Frame 3's JPEG data zeroed: OpenCV stops there (read() is False) as if the video
    ended; the views would lose sync after it."""
    vids = write_view_videos(mv_scene, tmp_path / "rig", frames=6)
    p = vids / "view0.avi"
    data = bytearray(p.read_bytes())
    soi = [i for i in range(len(data) - 2) if data[i:i + 3] == b"\xff\xd8\xff"]
    data[soi[3]:soi[3] + 400] = bytes(400)
    p.write_bytes(bytes(data))
    with pytest.raises(VideoError, match=r"view0.avi: only 3 of the 6 frames .* corrupt at "
                                         r"frame 3"):
        list(ViewVideos(vids))


def test_a_frame_ffmpeg_conceals_damage_in_is_refused_by_both_commands(mv_scene, bucket,
                                                                        tmp_path, scratch):
    """300 random bytes inside frame 5: OpenCV's read() succeeds with the damage hidden
    (a smeared block); FFmpeg says so only on stderr, which the reader listens to."""
    vids = write_view_videos(mv_scene, tmp_path / "rig", frames=8)
    p = vids / "view1.avi"
    data = bytearray(p.read_bytes())
    soi = [i for i in range(len(data) - 2) if data[i:i + 3] == b"\xff\xd8\xff"]
    at = soi[5] + (soi[6] - soi[5]) // 3
    data[at:at + 300] = np.random.default_rng(0).integers(0, 256, 300, np.uint8).tobytes()
    p.write_bytes(bytes(data))
    cap = cv2.VideoCapture(str(p))
    assert all(cap.read()[0] for _ in range(8))  # OpenCV alone sees nothing wrong
    with pytest.raises(VideoError, match=r"view1.avi: frame 5 is damaged \(FFmpeg: "):
        list(ViewVideos(vids, shortest=True))
    for r in (stream(bucket, vids, tmp_path / "out"),
              calibrate(bucket, vids, tmp_path / "calib.npz")):
        assert r.exit_code == 2 and "view1.avi: frame 5 is damaged" in r.output, r.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "calib.npz").exists()
    assert not list(scratch.iterdir())


def test_stderr_tap_passes_on_what_is_not_ffmpeg(capfd, monkeypatch):
    import os

    from runtime.video import _StderrTap

    class Cap:
        def read(self):
            os.write(2, b"[mjpeg @ 0x55d0] error y=4 x=5\nsomeone else's line\n")
            return True, None

    monkeypatch.delenv("OPENCV_FFMPEG_LOGLEVEL", raising=False)
    monkeypatch.delenv("OPENCV_FFMPEG_DEBUG", raising=False)
    tap = _StderrTap()
    assert tap.read(Cap())[2] == ["error y=4 x=5"]
    tap.close()
    assert capfd.readouterr().err == "someone else's line\n"


def test_truncated_mp4_is_refused_naming_the_file(mv_scene, bucket, tmp_path, scratch):
    vids = write_view_videos(mv_scene, tmp_path / "rig", suffix=".mp4", fourcc="mp4v")
    cut_file(vids / "view0.mp4", 0.45)  # the index (moov atom) sits at the end: gone
    with pytest.raises(VideoError, match=r"cannot open video .*view0.mp4.*moov"):
        ViewVideos(vids)
    r = stream(bucket, vids, tmp_path / "out")
    assert r.exit_code == 2 and "view0.mp4" in r.output and "re-copy" in r.output
    r = calibrate(bucket, vids, tmp_path / "calib.npz")
    assert r.exit_code == 2 and "view0.mp4" in r.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "calib.npz").exists()
    assert not list(scratch.iterdir())


def test_unequal_lengths_one_rule_for_both_commands(mv_scene, bucket, tmp_path, scratch):
    vids = write_view_videos(mv_scene, tmp_path / "rig", lengths=[6, 4])
    for r in (stream(bucket, vids, tmp_path / "out"),
              calibrate(bucket, vids, tmp_path / "calib.npz")):
        assert r.exit_code == 2, r.output
        assert "view0.avi: 6, view1.avi: 4" in r.output and "--shortest" in r.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "calib.npz").exists()
    r = stream(bucket, vids, tmp_path / "out", "--shortest")
    assert r.exit_code == 0 and "differ in length" in r.output, r.output
    assert "stream: 3 windows" in r.output  # 4 steps, windows of 2 sharing 1
    r = calibrate(bucket, vids, tmp_path / "calib.npz", "--shortest")
    assert r.exit_code == 0 and "differ in length" in r.output, r.output
    assert not list(scratch.iterdir())


def test_views_at_different_frame_rates_are_refused_by_both_commands(mv_scene, bucket,
                                                                     tmp_path, scratch):
    """Views are paired by frame index: at 10 and 30 fps frame 15 is 1 s apart."""
    vids = write_view_videos(mv_scene, tmp_path / "rig", frames=4)
    write_view_videos(mv_scene, vids, views=1, frames=4, fps=30)  # view0 at 30 fps
    for r in (stream(bucket, vids, tmp_path / "out"),
              calibrate(bucket, vids, tmp_path / "calib.npz")):
        assert r.exit_code == 2, r.output
        assert "view0.avi: 30 fps, view1.avi: 10 fps" in r.output and "ffmpeg" in r.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "calib.npz").exists()


def test_views_of_different_sizes(mv_scene, bucket, tmp_path, scratch):
    """The stream takes them (each view is preprocessed on its own, as from frames);
    calibrate refuses them as it does frames, naming the videos (not the scratch files)."""
    vids = write_view_videos(mv_scene, tmp_path / "rig", frames=4, size=(224, 168))
    write_view_videos(mv_scene, vids, views=1, frames=4)  # view0 at 112x84
    r = calibrate(bucket, vids, tmp_path / "calib.npz")
    assert r.exit_code == 2 and "view0.avi: 112x84, view1.avi: 224x168" in r.output, r.output
    assert str(scratch) not in r.output and not list(scratch.iterdir())
    r = stream(bucket, vids, tmp_path / "out")
    assert r.exit_code == 0 and "stream: 3 windows" in r.output, r.output


def test_two_videos_for_one_view_are_refused_by_both_commands(mv_scene, bucket, tmp_path,
                                                              scratch):
    vids = write_view_videos(mv_scene, tmp_path / "rig", frames=4)
    write_view_videos(mv_scene, tmp_path / "rig", views=1, frames=4, suffix=".mkv")
    with pytest.raises(VideoError, match=r"view 0 has two videos .*view0.avi and view0.mkv"):
        find_view_videos(vids)
    for r in (stream(bucket, vids, tmp_path / "out"),
              calibrate(bucket, vids, tmp_path / "calib.npz")):
        assert r.exit_code == 2 and "view0.avi and view0.mkv" in r.output, r.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "calib.npz").exists()


def test_view_names_gaps_and_hidden_files(mv_scene, tmp_path):
    """Gaps keep their numbers in both commands; macOS's ._view0.avi and preview1.avi are
    not cameras; a folder of both videos and frames is refused by calibrate as by the
    stream."""
    from calib.videos import extract_view_videos
    from runtime.video import is_video_input

    vids = write_view_videos(mv_scene, tmp_path / "rig", views=3, frames=3)
    (vids / "view1.avi").rename(vids / "preview1.avi")
    (vids / "._view0.avi").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    assert find_view_videos(vids) == {0: vids / "view0.avi", 2: vids / "view2.avi"}
    frames = extract_view_videos(vids, tmp_path / "frames")
    assert sorted(p.name for p in (frames / "time_00").iterdir()) == ["view0.png", "view2.png"]
    with ViewVideos(vids) as v:
        assert v.views == [0, 2]
    (vids / "time_00").mkdir()
    with pytest.raises(VideoError, match="both view videos"):
        is_video_input(vids)


def test_calibrate_never_writes_frames_into_the_bucket(mv_scene, bucket, tmp_path, scratch):
    vids = write_view_videos(mv_scene, tmp_path / "rig")
    before = sorted(p.name for p in bucket.iterdir())
    r = calibrate(bucket, vids, tmp_path / "elsewhere" / "calib.npz")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "elsewhere" / "calib.npz").is_file()
    assert sorted(p.name for p in bucket.iterdir()) == before  # no calib_frames/
    assert not list(scratch.iterdir())


def test_calibrate_removes_the_scratch_a_killed_run_left(mv_scene, bucket, tmp_path,
                                                         scratch):
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = scratch / f".vggt_mv_calib_frames.partial-{dead.pid}-abc" / "frames" / "time_00"
    left.mkdir(parents=True)
    vids = write_view_videos(mv_scene, tmp_path / "rig", frames=4)
    r = calibrate(bucket, vids, tmp_path / "calib.npz")
    assert r.exit_code == 0 and "left by an interrupted run" in r.output, r.output
    assert not list(scratch.iterdir())


def test_infer_without_stream_says_which_commands_read_videos(mv_scene, bucket, tmp_path):
    vids = write_view_videos(mv_scene, tmp_path / "rig", frames=2)
    r = cli("infer", "--onnx", bucket.parent, "--graph", "model.onnx", "--input", vids,
            "--out", tmp_path / "out")
    assert r.exit_code == 2 and "holds videos (view0.avi, view1.avi)" in r.output, r.output
    assert "infer --stream" in r.output and not (tmp_path / "out").exists()
    r = cli("infer", "--onnx", bucket.parent, "--input", mv_scene, "--shortest",
            "--out", tmp_path / "out")
    assert r.exit_code == 2 and "--shortest applies to view videos" in r.output


class FakeCapture:
    """cv2.VideoCapture stand-in: ``frames[path name]`` lists each frame's (height, width);
    the container claims ``claimed`` frames (0: it does not say, as some streams)."""
    frames: dict = {}
    claimed = 0

    def __init__(self, path):
        self.left = list(self.frames[Path(path).name])

    def isOpened(self):
        return True

    def get(self, prop):
        return self.claimed if prop == cv2.CAP_PROP_FRAME_COUNT else 10.0

    def read(self):
        if not self.left:
            return False, None
        return True, np.zeros((*self.left.pop(0), 3), np.uint8)

    def release(self):
        pass


@pytest.fixture
def fake_capture(tmp_path, monkeypatch):
    import runtime.video as video

    monkeypatch.setattr(video._cv2(), "VideoCapture", FakeCapture)
    monkeypatch.setattr(FakeCapture, "frames", {})

    def make(claimed=0, **views):
        monkeypatch.setattr(FakeCapture, "claimed", claimed)
        for name, sizes in views.items():
            (tmp_path / f"{name}.avi").write_bytes(b"x")
            FakeCapture.frames[f"{name}.avi"] = sizes
        return tmp_path
    return make


def test_a_frame_at_another_size_is_refused(fake_capture):
    """A decoder that changes size mid-video (a stream switching resolution): the frame
    is refused, not resized into the step."""
    folder = fake_capture(claimed=3, view0=[(84, 112), (84, 56), (84, 112)])
    with pytest.raises(VideoError, match=r"view0.avi: frame 1 decodes at 56x84, frame 0 at "
                                         r"112x84"):
        list(ViewVideos(folder))


def test_unequal_lengths_the_containers_do_not_state(fake_capture):
    """Without frame counts in the containers the difference shows only at the end of the
    shorter view: refused there (the stream aborts, nothing written), or cut to it."""
    folder = fake_capture(view0=[(84, 112)] * 5, view1=[(84, 112)] * 3)
    with pytest.raises(VideoError, match=r"view0.avi: more than 3, view1.avi: 3\); trim"):
        list(ViewVideos(folder))
    with ViewVideos(folder, shortest=True) as v:
        assert len(list(v)) == 3 and "view(s) [1] ended after 3" in v.unequal_lengths
