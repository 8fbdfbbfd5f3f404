"""One synchronized video per view, decoded one time step at a time (streaming input).

A capture rig records ``view0.mp4``, ``view1.mp4``, ... in one folder. Streaming must not
hold a video in memory, so ``ViewVideos`` keeps one open decoder per view and yields, per
time step, the N frames (RGB uint8 [H, W, 3]). Views are synchronized by frame index;
when one video ends the stream ends, and if another still had frames that is said
(``unequal_lengths``), never silently dropped.

OpenCV (``pip install opencv-python-headless``, the ``video`` extra) is imported only when
videos are opened; on a Jetson the system OpenCV works too.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import RuntimeDataError

__all__ = ["VIDEO_SUFFIXES", "VideoError", "find_view_videos", "ViewVideos"]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
_VIEW = re.compile(r"view[_-]?(\d+)$", re.IGNORECASE)


class VideoError(RuntimeDataError):
    """A view video is missing, cannot be opened or decodes no frame."""


def find_view_videos(folder: str | Path) -> dict[int, Path]:
    """{view index: file} for files named view0.mp4, view_1.avi, ... in ``folder``."""
    out: dict[int, Path] = {}
    d = Path(folder)
    for p in sorted(d.iterdir()) if d.is_dir() else []:
        m = _VIEW.search(p.stem)
        if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES and m:
            v = int(m.group(1))
            if v in out:
                raise VideoError(f"view {v} has two videos in {d}: {out[v].name} and "
                                 f"{p.name}; keep one")
            out[v] = p
    return out


def _cv2() -> Any:
    try:
        import cv2  # noqa: PLC0415 - optional dependency, only for video input
    except ImportError as e:
        raise VideoError("reading videos needs OpenCV: pip install opencv-python-headless "
                         "(or extract frames to time_TT/viewV.png)") from e
    return cv2


class ViewVideos:
    """Synchronized view videos of one folder, read a time step at a time.

        with ViewVideos("rig/") as vids:
            for frames in vids:          # list of N RGB uint8 [H, W, 3], one per view
                ...
    """

    def __init__(self, folder: str | Path, views: list[int] | None = None):
        self.folder = Path(folder)
        found = find_view_videos(self.folder)
        if not found:
            raise VideoError(f"no view videos (view0.mp4, view1.avi, ...) in {self.folder}")
        if views is None:
            views = sorted(found)
        missing = [v for v in views if v not in found]
        if missing:
            raise VideoError(f"views {missing} have no video in {self.folder}; found views "
                             f"{sorted(found)}")
        self.views = list(views)
        self.paths = [found[v] for v in self.views]
        self._caps: list[Any] = []
        self.fps: float | None = None
        self.steps = 0
        self.unequal_lengths: str = ""  # set when one view ended before the others
        self._open()

    def _open(self) -> None:
        cv2 = _cv2()
        self.close()
        fps = []
        for p in self.paths:
            cap = cv2.VideoCapture(str(p))
            if not cap.isOpened():
                self.close()
                raise VideoError(f"cannot open video {p} (corrupt or unsupported codec)")
            self._caps.append(cap)
            fps.append(float(cap.get(cv2.CAP_PROP_FPS) or 0.0))
        good = [f for f in fps if f > 0]
        self.fps = good[0] if good else None

    def rewind(self) -> None:
        """Start again from the first frame (replays, benchmarks)."""
        self._open()
        self.steps = 0

    def read(self) -> list[np.ndarray] | None:
        """The next time step's N RGB frames, or None at the end of the shortest video."""
        cv2 = _cv2()
        frames: list[np.ndarray | None] = []
        for cap in self._caps:
            ok, img = cap.read()
            frames.append(img if ok else None)
        ended = [v for v, f in zip(self.views, frames) if f is None]
        if not ended:
            self.steps += 1
            return [cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in frames]
        if len(ended) < len(frames):
            longer = [v for v, f in zip(self.views, frames) if f is not None]
            self.unequal_lengths = (f"view videos differ in length: view(s) {ended} ended "
                                    f"after {self.steps} frames while {longer} had more; "
                                    f"the stream stops at the shortest")
        if self.steps == 0:
            raise VideoError(f"video(s) of view(s) {ended} in {self.folder} have no "
                             f"decodable frames")
        return None

    def __iter__(self) -> Iterator[list[np.ndarray]]:
        while True:
            frames = self.read()
            if frames is None:
                return
            yield frames

    def close(self) -> None:
        for cap in self._caps:
            cap.release()
        self._caps = []

    def __enter__(self) -> "ViewVideos":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
