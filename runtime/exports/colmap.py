"""A COLMAP sparse model of predicted cameras and a point cloud: cameras, images and
points3D, as text (.txt) and binary (.bin), readable by COLMAP's model_converter /
model_analyzer / GUI and by pycolmap.Reconstruction.

Format (COLMAP's doc/format.rst and scripts/python/read_write_model.py):
- one PINHOLE camera per image (the model predicts intrinsics per frame), params
  fx fy cx cy in the input image's pixels; camera and image ids both count from 1;
- images: IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME, the world-to-camera rotation
  (Hamilton quaternion, scalar first) and translation, i.e. our extrinsic [R|t]; the
  second line per image (its 2D keypoints) is empty: the points are not tracked;
- points3D: POINT3D_ID X Y Z R G B ERROR with an empty track (ERROR 0: no reprojection
  was measured).
- binary: little endian; cameras uint64 count, then (int32 id, int32 model id, uint64
  width, uint64 height, float64 params[4]); images uint64 count, then (int32 id, float64
  q[4], float64 t[3], int32 camera id, NUL-terminated name, uint64 number of 2D points);
  points3D uint64 count, then (uint64 id, float64 xyz[3], uint8 rgb[3], float64 error,
  uint64 track length).

COLMAP puts the centre of the top-left pixel at (0.5, 0.5), OpenCV (and this project) at
(0, 0): principal points are shifted by +0.5 on the way out.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import RuntimeDataError
from ..layout import atomic_write
from ..postprocess import mat_to_quat

__all__ = ["ColmapImage", "write_colmap", "colmap_pinhole", "export_points", "PINHOLE_ID",
           "COLMAP_DIR", "MAX_EXPORT_POINTS"]

PINHOLE_ID = 1  # COLMAP's model id of PINHOLE (fx, fy, cx, cy)
COLMAP_DIR = "sparse"
# COLMAP and GLB get a random subsample of the confident points: tools that draw or match
# every point slow down long before PLY viewers do (the PLY keeps them all).
MAX_EXPORT_POINTS = 100_000


def export_points(points: np.ndarray, colors: np.ndarray, limit: int = MAX_EXPORT_POINTS,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """At most ``limit`` of the points (a fixed-seed random subsample, so reruns agree)."""
    if len(points) <= limit:
        return points, colors
    idx = np.sort(np.random.default_rng(seed).choice(len(points), limit, replace=False))
    return points[idx], colors[idx]


@dataclass(frozen=True)
class ColmapImage:
    name: str                 # relative to the image folder COLMAP is pointed at
    extrinsic: np.ndarray     # [3, 4] camera-from-world (OpenCV axes, as COLMAP's)
    intrinsic: np.ndarray     # [3, 3] in the image's pixels, OpenCV pixel centres
    width: int
    height: int


def colmap_pinhole(K: np.ndarray) -> tuple[float, float, float, float]:
    """OpenCV K -> COLMAP PINHOLE (fx, fy, cx, cy) with COLMAP's half-pixel origin."""
    K = np.asarray(K, np.float64)
    return float(K[0, 0]), float(K[1, 1]), float(K[0, 2]) + 0.5, float(K[1, 2]) + 0.5


def _qt(E: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    E = np.asarray(E, np.float64)
    x, y, z, w = mat_to_quat(E[:3, :3])
    return np.array([w, x, y, z]), E[:3, 3]


def _check(images: Sequence[ColmapImage], points: np.ndarray, colors: np.ndarray) -> None:
    names = [im.name for im in images]
    if len(set(names)) != len(names):
        raise RuntimeDataError("COLMAP image names must be unique")
    for im in images:
        if any(c.isspace() for c in im.name) or not im.name:
            # images.txt separates fields by spaces: a name with one cannot be read back.
            raise RuntimeDataError(f"COLMAP image name {im.name!r} is empty or holds a space")
        if not (np.isfinite(im.extrinsic).all() and np.isfinite(im.intrinsic).all()):
            raise RuntimeDataError(f"image {im.name}: camera is not finite (leave it out)")
    if points.shape != colors.shape or points.ndim != 2 or points.shape[1] != 3:
        raise RuntimeDataError(f"points {points.shape} and colors {colors.shape} must be "
                               f"[M, 3] alike")
    if len(points) and not np.isfinite(points).all():
        raise RuntimeDataError("COLMAP points must be finite")


def write_colmap(folder: str | Path, images: Sequence[ColmapImage], points: np.ndarray,
                 colors: np.ndarray, text: bool = True, binary: bool = True) -> dict[str, int]:
    """Writes cameras / images / points3D (.txt and/or .bin) into ``folder``, each file
    atomically. Returns {"images": ..., "points": ...}."""
    pts = np.asarray(points, np.float64).reshape(-1, 3)
    cols = np.asarray(colors).reshape(-1, 3)
    if cols.dtype != np.uint8:
        cols = np.clip(np.rint(cols), 0, 255).astype(np.uint8)
    _check(images, pts, cols)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    if text:
        _write_text(out, images, pts, cols)
    if binary:
        _write_binary(out, images, pts, cols)
    return {"images": len(images), "points": len(pts)}


def _write_text(out: Path, images: Sequence[ColmapImage], pts: np.ndarray,
                cols: np.ndarray) -> None:
    with atomic_write(out / "cameras.txt", "w") as f:
        f.write("# Camera list with one line of data per camera:\n"
                "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]\n"
                f"# Number of cameras: {len(images)}\n")
        for i, im in enumerate(images, 1):
            params = " ".join(repr(p) for p in colmap_pinhole(im.intrinsic))
            f.write(f"{i} PINHOLE {int(im.width)} {int(im.height)} {params}\n")
    with atomic_write(out / "images.txt", "w") as f:
        f.write("# Image list with two lines of data per image:\n"
                "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n"
                "#   POINTS2D[] as (X, Y, POINT3D_ID)\n"
                f"# Number of images: {len(images)}, mean observations per image: 0\n")
        for i, im in enumerate(images, 1):
            q, t = _qt(im.extrinsic)
            vals = " ".join(repr(float(v)) for v in (*q, *t))
            f.write(f"{i} {vals} {i} {im.name}\n\n")
    with atomic_write(out / "points3D.txt", "w") as f:
        f.write("# 3D point list with one line of data per point:\n"
                "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)\n"
                f"# Number of points: {len(pts)}, mean track length: 0\n")
        ids = np.arange(1, len(pts) + 1)
        # float32 predictions: 9 significant digits hold them exactly.
        rows = np.column_stack([ids, pts, cols, np.zeros(len(pts))])
        np.savetxt(f, rows, fmt=["%d", "%.9g", "%.9g", "%.9g", "%d", "%d", "%d", "%.1f"])


def _write_binary(out: Path, images: Sequence[ColmapImage], pts: np.ndarray,
                  cols: np.ndarray) -> None:
    with atomic_write(out / "cameras.bin") as f:
        f.write(struct.pack("<Q", len(images)))
        for i, im in enumerate(images, 1):
            f.write(struct.pack("<iiQQ4d", i, PINHOLE_ID, int(im.width), int(im.height),
                                *colmap_pinhole(im.intrinsic)))
    with atomic_write(out / "images.bin") as f:
        f.write(struct.pack("<Q", len(images)))
        for i, im in enumerate(images, 1):
            q, t = _qt(im.extrinsic)
            f.write(struct.pack("<i7di", i, *q, *t, i))
            f.write(im.name.encode("utf-8") + b"\0")
            f.write(struct.pack("<Q", 0))  # no 2D points
    rec = np.zeros(len(pts), dtype=[("id", "<u8"), ("xyz", "<f8", 3), ("rgb", "u1", 3),
                                    ("error", "<f8"), ("track", "<u8")])
    rec["id"] = np.arange(1, len(pts) + 1)
    rec["xyz"], rec["rgb"] = pts, cols
    with atomic_write(out / "points3D.bin") as f:
        f.write(struct.pack("<Q", len(pts)))
        f.write(rec.tobytes())
