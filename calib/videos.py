"""One video per view -> the time_TT/viewV.png layout everything else reads.

Calibration (and `infer`) work on synchronized frames; extracting them once into the
frame layout keeps a single preprocessing path (runtime/preprocess.py) for both inputs,
so a clip from videos is preprocessed exactly like one from images. OpenCV is an optional
dependency (pip install opencv-python-headless), imported only here.
"""
from __future__ import annotations

import re
from pathlib import Path

from runtime.layout import atomic_directory

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
_VIEW = re.compile(r"view[_-]?(\d+)$", re.IGNORECASE)


class VideoError(ValueError):
    pass


def find_view_videos(folder: str | Path) -> dict[int, Path]:
    """{view index: file} for files named view0.mp4, view_1.avi, ... in a folder."""
    out: dict[int, Path] = {}
    for p in sorted(Path(folder).iterdir()) if Path(folder).is_dir() else []:
        m = _VIEW.search(p.stem)
        if p.suffix.lower() in VIDEO_SUFFIXES and m:
            out[int(m.group(1))] = p
    return out


def extract_view_videos(folder: str | Path, out_dir: str | Path, every: int = 1,
                        max_frames: int | None = None) -> Path:
    """Decode every view's video into out_dir/time_TT/viewV.png (atomically: the folder
    appears only when all frames are written). Views are truncated to the shortest video
    so every time step has every view (they must be synchronized)."""
    try:
        import cv2
    except ImportError as e:
        raise VideoError("reading videos needs OpenCV: pip install opencv-python-headless") from e
    videos = find_view_videos(folder)
    if not videos:
        raise VideoError(f"no view videos (view0.mp4, view1.mp4, ...) in {folder}")
    frames: dict[int, list] = {}
    for v, path in videos.items():
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            raise VideoError(f"cannot open video {path} (corrupt or unsupported codec)")
        got, k = [], 0
        while max_frames is None or len(got) < max_frames:
            ok, img = cap.read()
            if not ok:
                break
            if k % every == 0:
                got.append(img)
            k += 1
        cap.release()
        if not got:
            raise VideoError(f"video {path} has no decodable frames")
        frames[v] = got
    T = min(len(f) for f in frames.values())
    sizes = {f[0].shape for f in frames.values()}
    if len(sizes) != 1:
        raise VideoError(f"view videos have different frame sizes {sorted(sizes)}")
    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        for t in range(T):
            d = tmp / f"time_{t:02d}"
            d.mkdir()
            for v in sorted(frames):
                if not cv2.imwrite(str(d / f"view{v}.png"), frames[v][t]):
                    raise VideoError(f"cannot write {d / f'view{v}.png'}")
    return out_dir
