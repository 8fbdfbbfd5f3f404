"""One video per view -> the time_TT/viewV.png layout calibration reads.

Calibration works on synchronized frames; extracting them once into the frame layout
keeps a single preprocessing path (runtime/preprocess.py) for both inputs, so a clip from
videos is preprocessed exactly like one from images. The videos are read by the stream's
reader (runtime/video.py: ViewVideos), so both commands find the same views and refuse
the same faults (two videos for one view, a video cut short, unequal lengths unless
``shortest``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from PIL import Image

from runtime.layout import atomic_directory
from runtime.video import VideoError, ViewVideos, find_view_videos

__all__ = ["VideoError", "find_view_videos", "extract_view_videos"]


def extract_view_videos(folder: str | Path, out_dir: str | Path, shortest: bool = False,
                        warn: Callable[[str], None] | None = None) -> Path:
    """Decode every view's video into out_dir/time_TT/viewV.png, one time step at a time,
    atomically: ``out_dir`` appears only when every frame is written, and on an error
    nothing of it is left. View indices keep the files' numbers (view0, view2, ...).
    ``warn`` gets what ``shortest`` left out."""
    out_dir = Path(out_dir)
    with ViewVideos(folder, shortest=shortest) as vids, atomic_directory(out_dir) as tmp:
        for t, frames in enumerate(vids):  # labels sort as numbers: time_100 after time_99
            if t == 0:
                _check_one_size(vids, frames)
            d = tmp / f"time_{t:02d}"
            d.mkdir()
            for v, rgb in zip(vids.views, frames):
                Image.fromarray(rgb).save(d / f"view{v}.png")
        for note in vids.notes:
            (warn or print)(note)
    return out_dir


def _check_one_size(vids: ViewVideos, frames: list) -> None:
    """A calibration clip, like any clip `infer` runs, has one frame size (the stream
    alone takes views of different sizes). Said here, naming the videos: later it would
    name extracted frames in a scratch folder that is gone by then."""
    sizes = {f.shape[:2] for f in frames}
    if len(sizes) > 1:
        each = ", ".join(f"{p.name}: {f.shape[1]}x{f.shape[0]}"
                         for p, f in zip(vids.paths, frames))
        raise VideoError(f"view videos in {vids.folder} differ in frame size ({each}); "
                         f"calibration clips need one size: re-encode them at one size")
