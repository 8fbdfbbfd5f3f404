"""Calibration from one synchronized video per view (frames of the real scene)."""
import numpy as np
import pytest

from calib.dataset import build_calibration_set, load_calibration_set
from calib.videos import VideoError, extract_view_videos, find_view_videos

cv2 = pytest.importorskip("cv2", reason="OpenCV (opencv-python-headless) not installed")


def write_videos(scene, out, views=2, frames=4):
    for v in range(views):
        imgs = [cv2.imread(str(scene / "images" / f"time_{t:02d}" / f"view{v}.png"))
                for t in range(frames)]
        h, w = imgs[0].shape[:2]
        # MJPG in AVI decodes everywhere OpenCV does (no ffmpeg codec needed)
        vw = cv2.VideoWriter(str(out / f"view{v}.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
        for im in imgs:
            vw.write(im)
        vw.release()


def test_videos_become_a_calibration_set(tmp_path, mv_scene):
    vids = tmp_path / "videos"
    vids.mkdir()
    write_videos(mv_scene, vids)
    assert sorted(find_view_videos(vids)) == [0, 1]
    frames = extract_view_videos(vids, tmp_path / "frames")
    assert sorted(p.name for p in frames.iterdir()) == [f"time_{t:02d}" for t in range(4)]
    npz = build_calibration_set(frames, 2, 2, (42, 56), 2, tmp_path / "c.npz")
    data = load_calibration_set(npz, T=2, N=2, size_hw=(42, 56))
    ref = build_calibration_set(mv_scene, 2, 2, (42, 56), 2, tmp_path / "r.npz",
                                clips=data["clips"])
    ref_imgs = load_calibration_set(ref)["images"].astype(np.float32)
    # same clips, through a lossy codec: close to the PNG frames, not identical
    diff = np.abs(data["images"].astype(np.float32) - ref_imgs).mean()
    assert 0 < diff < 0.05


def test_video_errors(tmp_path):
    with pytest.raises(VideoError, match="no view videos"):
        extract_view_videos(tmp_path, tmp_path / "out")
    (tmp_path / "view0.mp4").write_bytes(b"not a video")
    with pytest.raises(VideoError, match="view0.mp4"):
        extract_view_videos(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
