"""One synchronized video per view, decoded one time step at a time: the one reader of view
videos (``infer --stream`` and ``calibrate`` both read through it, with one rule).

A capture rig records ``view0.mp4``, ``view1.mp4``, ... in one folder. Streaming must not
hold a video in memory, so ``ViewVideos`` keeps one open decoder per view and yields, per
time step, the N frames (RGB uint8 [H, W, 3]). Views are synchronized by frame index, so
a frame that is missing or garbled in one view would shift or spoil every later step. The
rule, checked per frame:

- a video whose container claims more frames (CAP_PROP_FRAME_COUNT) than decode is cut
  short (an interrupted copy) or corrupt: refused, naming the file and both counts. Its
  last decoded frame is the one at the cut and may be half-garbled (FFmpeg's MJPEG decoder
  returns it with "overread" and no error), so each view is read one frame ahead and that
  frame is never handed out;
- a frame FFmpeg reports as damaged (on stderr: OpenCV's read() succeeds, the damage
  concealed) is refused, as is one that decodes at another shape than frame 0;
- views at different frame rates are refused (frame k would not be one moment);
- views of unequal length (claimed up front, or found when one ends) are refused, naming
  each video and its frame count, unless ``shortest=True`` (``--shortest``): then every
  view stops at the shortest complete one and ``notes`` says what was left out.

OpenCV (``pip install opencv-python-headless``, the ``video`` extra) is imported only when
videos are opened; on a Jetson the system OpenCV works too.
"""
from __future__ import annotations

import os
import re
import tempfile
from collections import deque
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .errors import RuntimeDataError

__all__ = ["VIDEO_SUFFIXES", "VideoError", "find_view_videos", "is_video_input", "ViewVideos",
           "SHORTEST_HINT"]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
# "view3", "view_3", "rig-view3"; not "preview3" (a letter before "view" is another word).
_VIEW = re.compile(r"(?<![a-z])view[_-]?(\d+)$", re.IGNORECASE)
SHORTEST_HINT = "pass --shortest (shortest=True) to stop every view at the shortest one"


class VideoError(RuntimeDataError):
    """A view video is missing, cannot be opened, is cut short or decodes a bad frame."""


def find_view_videos(folder: str | Path) -> dict[int, Path]:
    """{view index: file} for files named view0.mp4, view_1.avi, ... in ``folder``.

    Gaps in the numbering are kept (views [0, 2, 3] stay 0, 2, 3). Two files for one view
    (view0.mkv beside view0.avi, view0 beside view00) are refused naming both: which one
    is camera 0 is not guessed. Hidden files (``._view0.mp4`` from macOS, our own
    scratch files) are not videos of the rig."""
    out: dict[int, Path] = {}
    d = Path(folder)
    for p in sorted(d.iterdir()) if d.is_dir() else []:
        m = _VIEW.search(p.stem)
        if m and p.suffix.lower() in VIDEO_SUFFIXES and p.is_file() \
                and not p.name.startswith("."):
            v = int(m.group(1))
            if v in out:
                raise VideoError(f"view {v} has two videos in {d}: {out[v].name} and "
                                 f"{p.name}; keep one (move or rename the other)")
            out[v] = p
    return out


def is_video_input(path: str | Path) -> bool:
    """Whether ``path`` is a folder of view videos (rather than of frames). A folder that
    holds both view videos and time_TT frame folders is refused: which one was meant is
    not guessed (the stream and calibrate share this rule)."""
    videos = find_view_videos(path)
    p = Path(path)
    frames = p.is_dir() and ((p / "images").is_dir()
                             or any(d.name.startswith("time_") for d in p.iterdir()))
    if videos and frames:
        raise VideoError(f"{path} holds both view videos ({sorted(videos)}) and time_TT "
                         f"frame folders; point --input at one of them")
    return bool(videos)


def _cv2() -> Any:
    try:
        import cv2  # noqa: PLC0415 - optional dependency, only for video input
    except ImportError as e:
        raise VideoError("reading videos needs OpenCV: pip install opencv-python-headless "
                         "(or extract frames to time_TT/viewV.png)") from e
    return cv2


# FFmpeg reports a damaged frame only on stderr: OpenCV's read() still returns True with
# the damage concealed (a smeared or repeated block). OpenCV sets FFmpeg's log level to
# errors unless OPENCV_FFMPEG_LOGLEVEL / OPENCV_FFMPEG_DEBUG ask for more, so a line
# "[mjpeg @ 0x...] ..." written during one read is an error in that frame. The decoders
# OpenCV drives report synchronously (measured: MJPEG, frame 5 of 16 damaged, the error
# comes with frame 5's read).
_FFMPEG_LINE = re.compile(rb"^\[[\w:. -]+ @ (0x)?[0-9a-fA-F]+\] (.*)$")


class _StderrTap:
    """What is written to file descriptor 2 while one read runs (the C library's stderr,
    where FFmpeg writes). Anything that is not FFmpeg's goes on to the real stderr."""

    def __init__(self) -> None:
        self.active = not (os.environ.get("OPENCV_FFMPEG_LOGLEVEL")
                           or os.environ.get("OPENCV_FFMPEG_DEBUG"))
        self._file = tempfile.TemporaryFile() if self.active else None

    def read(self, cap: Any) -> tuple[bool, Any, list[str]]:
        if not self.active:
            ok, img = cap.read()
            return ok, img, []
        saved = os.dup(2)
        try:
            os.dup2(self._file.fileno(), 2)
            ok, img = cap.read()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        self._file.seek(0)
        text = self._file.read()
        self._file.seek(0)
        self._file.truncate()
        errors, other = [], []
        for line in text.splitlines(keepends=True):
            m = _FFMPEG_LINE.match(line.rstrip(b"\r\n"))
            (errors.append(m.group(2).decode(errors="replace")) if m else other.append(line))
        if other:
            os.write(2, b"".join(other))
        return ok, img, errors

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class _Track:
    """One view's decoder, read one frame ahead: a frame is handed out only once the
    frame after it decoded, or the video ended where its container says it ends. So the
    last decoded frame of a cut video (the one at the cut) is never handed out."""

    def __init__(self, view: int, path: Path):
        cv2 = _cv2()
        self.view, self.path = view, path
        self.cap = cv2.VideoCapture(str(path))
        if not self.cap.isOpened():
            self.cap.release()
            hint = (" (an .mp4 / .mov cut short has lost its index, the moov atom at its "
                    "end)" if path.suffix.lower() in (".mp4", ".mov") else "")
            raise VideoError(f"cannot open video {path}: truncated, corrupt or an "
                             f"unsupported codec{hint}; re-copy or re-encode it")
        claimed = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.claimed: int | None = claimed if claimed > 0 else None  # None: not said
        self.fps = float(self.cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.decoded = 0        # frames decoded so far, the look-ahead included
        self.given = 0          # frames handed out
        self.shape: tuple[int, ...] | None = None
        self._ahead: deque[tuple[np.ndarray, list[str]]] = deque()  # (frame, FFmpeg errors)
        self._eof = False
        self._tap = _StderrTap()

    @property
    def cut(self) -> bool:
        """Ended before the frame count its container claims: cut short or corrupt."""
        return self._eof and self.claimed is not None and self.decoded < self.claimed

    def next(self) -> np.ndarray | None:
        """The next frame (BGR, as decoded), or None where this view ends."""
        while len(self._ahead) < 2 and not self._eof:
            got = self._decode()
            if got is None:
                self._eof = True
            else:
                self._ahead.append(got)
        if not self._ahead or (self.cut and len(self._ahead) == 1):
            return None  # the end, or the frame at a cut (it may be half-garbled)
        img, errors = self._ahead.popleft()
        if errors:  # checked only here: the frame at a cut is expected to be damaged
            raise VideoError(f"{self.path}: frame {self.given} is damaged (FFmpeg: "
                             f"{'; '.join(errors[:3])}); OpenCV decodes it with the damage "
                             f"hidden. Re-copy or re-encode the video")
        self.given += 1
        return img

    def _decode(self) -> tuple[np.ndarray, list[str]] | None:
        ok, img, errors = self._tap.read(self.cap)
        if not ok or img is None:
            return None
        shape = getattr(img, "shape", None)
        if img.dtype != np.uint8 or shape is None or len(shape) != 3 or shape[2] != 3:
            raise VideoError(f"{self.path}: frame {self.decoded} decodes as {img.dtype} "
                             f"{shape}, not 8-bit colour; re-encode the video")
        if self.shape is None:
            self.shape = shape
        elif shape != self.shape:
            raise VideoError(f"{self.path}: frame {self.decoded} decodes at {shape[1]}x"
                             f"{shape[0]}, frame 0 at {self.shape[1]}x{self.shape[0]}; "
                             f"re-encode the video at one size")
        self.decoded += 1
        return img, errors

    def release(self) -> None:
        self.cap.release()
        self._tap.close()


class ViewVideos:
    """Synchronized view videos of one folder, read a time step at a time.

        with ViewVideos("rig/") as vids:
            for frames in vids:          # list of N RGB uint8 [H, W, 3], one per view
                ...

    Raises VideoError where the videos cannot give whole, synchronized steps (see the
    module's rule); with ``shortest=True`` unequal or cut videos stop at the shortest
    complete view instead, and ``notes`` (``unequal_lengths``) say what was left out.
    """

    def __init__(self, folder: str | Path, views: list[int] | None = None,
                 shortest: bool = False):
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
        self.shortest = shortest
        self._tracks: list[_Track] = []
        self.fps: float | None = None
        self.steps = 0
        self.notes: list[str] = []
        self.unequal_lengths: str = ""  # set when views differ in length (shortest=True)
        self._open()

    def _open(self) -> None:
        self.close()
        try:
            for v, p in zip(self.views, self.paths):
                self._tracks.append(_Track(v, p))
        except BaseException:
            self.close()
            raise
        good = [t.fps for t in self._tracks if t.fps > 0]
        self.fps = good[0] if good else None
        self._check_frame_rates()
        self._check_claimed_lengths()

    def _check_frame_rates(self) -> None:
        """Views are paired by frame index: at different rates frame k of each view is a
        different moment (10 vs 30 fps: 1 s apart by frame 15), so that is refused."""
        rated = [t for t in self._tracks if t.fps > 0]
        if rated and max(t.fps for t in rated) > min(t.fps for t in rated) * (1 + 5e-4):
            rates = ", ".join(f"{t.path.name}: {t.fps:g} fps" for t in rated)
            raise VideoError(f"view videos in {self.folder} have different frame rates "
                             f"({rates}): frame k of each would not be one moment; "
                             f"resample them to one rate (ffmpeg -i IN -r 10 OUT), or where "
                             f"the frames are in step and a header is wrong, rewrite it "
                             f"(ffmpeg -r 10 -i IN OUT)")

    def _check_claimed_lengths(self) -> None:
        """Unequal lengths the containers already state are refused before any work."""
        claimed = {t.claimed for t in self._tracks if t.claimed is not None}
        if len(claimed) > 1:
            counts = ", ".join(f"{t.path.name}: {t.claimed}" for t in self._tracks)
            msg = f"view videos in {self.folder} differ in length (frames: {counts})"
            if not self.shortest:
                raise VideoError(f"{msg}; trim them to one length, or {SHORTEST_HINT}")
            self.unequal_lengths = f"{msg}; every view stops at the shortest (--shortest)"
            self.notes.append(self.unequal_lengths)

    def rewind(self) -> None:
        """Start again from the first frame (replays, benchmarks)."""
        self.notes, self.unequal_lengths = [], ""
        self._open()
        self.steps = 0

    def read(self) -> list[np.ndarray] | None:
        """The next time step's N RGB frames, or None at the end of the shortest video."""
        cv2 = _cv2()
        frames = [t.next() for t in self._tracks]
        if all(f is not None for f in frames):
            self.steps += 1
            return [cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in frames]
        self._finish([t for t, f in zip(self._tracks, frames) if f is None])
        return None

    def _finish(self, ended: list[_Track]) -> None:
        """The end of the stream at ``self.steps``: right, refused, or (shortest) noted."""
        empty = [t for t in ended if t.decoded == 0]
        if empty:
            raise VideoError(f"video(s) {', '.join(str(t.path) for t in empty)} have no "
                             f"decodable frames; re-copy or re-encode them")
        cut = [t for t in ended if t.cut]
        for t in cut:
            self._cut(t)
        # Where every view that ended is cut, the cut is the reason: said already.
        if len(ended) < len(self._tracks) and len(cut) < len(ended):
            self._unequal(ended)
        if self.steps == 0:
            raise VideoError(f"the view videos in {self.folder} have no complete time step "
                             f"(every view decoding a whole frame)")

    def _cut(self, t: _Track) -> None:
        msg = (f"{t.path}: only {t.decoded} of the {t.claimed} frames its container claims "
               f"decode: cut short (an interrupted copy?) or corrupt at frame {t.decoded}")
        if not self.shortest:
            raise VideoError(f"{msg}; re-copy or re-encode it, or {SHORTEST_HINT} (here "
                             f"{self.steps} steps: frame {t.decoded - 1}, at the cut, may be "
                             f"half-garbled and is left out)")
        self.notes.append(f"{msg}; its last decoded frame ({t.decoded - 1}, at the cut) was "
                          f"left out, every view stops after {self.steps} steps (--shortest)")

    def _unequal(self, ended: list[_Track]) -> None:
        if self.unequal_lengths:  # the containers said so up front: noted then
            return
        counts = ", ".join(f"{t.path.name}: {t.given}" if t in ended else
                           f"{t.path.name}: more than {self.steps}" for t in self._tracks)
        msg = f"view videos in {self.folder} differ in length (frames: {counts})"
        if not self.shortest:
            raise VideoError(f"{msg}; trim them to one length, or {SHORTEST_HINT}")
        self.unequal_lengths = (f"{msg}; view(s) {[t.view for t in ended]} ended after "
                                f"{self.steps} frames, every view stops there (--shortest)")
        self.notes.append(self.unequal_lengths)

    def __iter__(self) -> Iterator[list[np.ndarray]]:
        while True:
            frames = self.read()
            if frames is None:
                return
            yield frames

    def close(self) -> None:
        for t in self._tracks:
            t.release()
        self._tracks = []

    def __enter__(self) -> "ViewVideos":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
