"""cameras.jsonl and TUM trajectories: one home for the per-frame camera files of ``infer``
and ``infer --stream``.

cameras.jsonl holds one strict-JSON object per (t, view): the camera-from-world extrinsic,
the intrinsics in the input image's own pixels (OpenCV convention: pixel centres at
integers) with its width and height, the intrinsics on the model's pixel grid (that of the
depth / confidence maps), and ``finite``. A number that is not finite is written as
``null`` and the frame gets ``"finite": false``: Python's json would write ``Infinity``,
which is not JSON and which most readers refuse.

Trajectories are in the TUM format (``timestamp tx ty tz qx qy qz qw``, the camera's pose
in the world), one file per view; a frame whose pose is not finite has no line there (the
format has no way to say "unknown"), so its gap stays visible as a missing timestamp.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..postprocess import closed_form_inverse_se3, mat_to_quat

__all__ = ["CAMERAS_JSONL", "CameraLog", "json_safe", "frame_is_finite", "camera_record",
           "read_cameras", "tum_line", "tum_name", "frame_name"]

CAMERAS_JSONL = "cameras.jsonl"


def frame_name(t: int, view: int, path: str | Path | None = None,
               image_root: str | Path | None = None) -> str:
    """The frame's name in cameras.jsonl and COLMAP's images: its path under the input's
    image folder when known (so COLMAP finds the image there), else t<T>_view<V>.png."""
    if path and image_root:
        try:
            name = Path(path).resolve().relative_to(Path(image_root).resolve()).as_posix()
            if name and not any(c.isspace() for c in name):  # COLMAP splits on spaces
                return name
        except ValueError:
            pass
    return f"t{int(t):05d}_view{int(view)}.png"


def tum_name(view: int) -> str:
    return f"trajectory_view{view}.tum"


def json_safe(value: Any) -> Any:
    """numpy arrays / scalars -> Python lists / numbers, every NaN or +-Inf -> None."""
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def frame_is_finite(extrinsic: np.ndarray | None, intrinsic: np.ndarray | None) -> bool:
    """A frame can be placed (PLY / COLMAP / GLB) only if its pose and intrinsics are finite
    and its focal lengths positive: an infinite focal length puts every pixel on the
    optical axis, so its points collapse onto a line."""
    if extrinsic is None or intrinsic is None:
        return False
    E, K = np.asarray(extrinsic, np.float64), np.asarray(intrinsic, np.float64)
    return bool(np.isfinite(E).all() and np.isfinite(K).all() and K[0, 0] > 0 and K[1, 1] > 0)


def camera_record(t: int, view: int, extrinsic: np.ndarray | None,
                  intrinsic: np.ndarray | None, width: int, height: int,
                  model_intrinsic: np.ndarray | None = None, image: str | None = None
                  ) -> dict[str, Any]:
    rec: dict[str, Any] = {"t": int(t), "view": int(view)}
    if image is not None:
        rec["image"] = image
    rec.update({
        "width": int(width), "height": int(height),
        "extrinsic": None if extrinsic is None else json_safe(np.round(
            np.asarray(extrinsic, np.float64), 7)),
        "intrinsic": None if intrinsic is None else json_safe(np.round(
            np.asarray(intrinsic, np.float64), 4)),
        "model_intrinsic": None if model_intrinsic is None else json_safe(np.round(
            np.asarray(model_intrinsic, np.float64), 4)),
        "finite": frame_is_finite(extrinsic, intrinsic),
    })
    return rec


def tum_line(timestamp: float, extrinsic: np.ndarray) -> str:
    """One TUM line: the camera's pose in the world (inverse of camera-from-world)."""
    E = np.concatenate([np.asarray(extrinsic, np.float64)[:3], [[0, 0, 0, 1]]])
    pose = closed_form_inverse_se3(E[None])[0]
    q = mat_to_quat(pose[:3, :3])
    tx, ty, tz = pose[:3, 3]
    return (f"{timestamp:.6f} {tx:.7f} {ty:.7f} {tz:.7f} "
            f"{q[0]:.7f} {q[1]:.7f} {q[2]:.7f} {q[3]:.7f}\n")


class CameraLog:
    """Appends frames to ``cameras.jsonl`` and the per-view TUM files of ``folder`` as they
    come (a stream of any length keeps nothing per frame in memory but the counts).

    The files are meant to live in a scratch folder that is moved into place whole
    (atomic_directory, StreamWriter), so a crash never leaves a half-written one in view.
    """

    def __init__(self, folder: str | Path, views: Sequence[int], fps: float = 1.0):
        self.folder = Path(folder)
        self.fps = float(fps)
        self.frames = 0
        self.nonfinite = 0
        self.nonfinite_examples: list[tuple[int, int]] = []  # the first few, for messages
        self._cams = open(self.folder / CAMERAS_JSONL, "w")
        self._tum = {int(v): open(self.folder / tum_name(int(v)), "w") for v in views}
        for f in self._tum.values():
            f.write("# timestamp tx ty tz qx qy qz qw (TUM: camera pose in the world frame)\n")

    def add(self, t: int, view: int, extrinsic: np.ndarray | None,
            intrinsic: np.ndarray | None, width: int, height: int,
            model_intrinsic: np.ndarray | None = None, image: str | None = None) -> bool:
        """Writes one frame; returns whether it is finite (placeable)."""
        rec = camera_record(t, view, extrinsic, intrinsic, width, height, model_intrinsic,
                            image)
        self._cams.write(json.dumps(rec, allow_nan=False) + "\n")
        if extrinsic is not None and np.isfinite(extrinsic).all():
            self._tum[int(view)].write(tum_line(t / self.fps, extrinsic))
        if not rec["finite"]:
            self.nonfinite += 1
            if len(self.nonfinite_examples) < 8:
                self.nonfinite_examples.append((int(t), int(view)))
        self.frames += 1
        return rec["finite"]

    def flush(self) -> None:
        self._cams.flush()
        for f in self._tum.values():
            f.flush()

    def close(self) -> None:
        self._cams.close()
        for f in self._tum.values():
            f.close()


def read_cameras(path: str | Path) -> list[dict[str, Any]]:
    """The records of a cameras.jsonl, in file order."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
