"""One glTF binary scene (scene.glb): the coloured point cloud and a wire frustum per
camera, for any glTF viewer (Blender, three.js, the online glTF viewers).

Written with trimesh, imported here only (``pip install trimesh``, or the ``glb`` extra):
a device that lacks it writes everything else. The world is turned from OpenCV axes (y
down, z forward) into glTF's (y up, camera looking down -z) by flipping y and z, so the
first camera's view comes up the right way in a viewer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import RuntimeDataError
from ..layout import atomic_write_bytes
from ..postprocess import camera_to_world
from .colmap import ColmapImage

__all__ = ["write_glb", "frustum_corners", "GLB_NAME"]

GLB_NAME = "scene.glb"
_TO_GLTF = np.diag([1.0, -1.0, -1.0])


def frustum_corners(im: ColmapImage, depth: float) -> np.ndarray:
    """[5, 3] world points: the camera centre and the image's four corners at ``depth``."""
    K = np.asarray(im.intrinsic, np.float64)
    # Corners of the pixel area: centres run 0..W-1, so its edges are -0.5 and W-0.5.
    uv = np.array([[-0.5, -0.5], [im.width - 0.5, -0.5], [im.width - 0.5, im.height - 0.5],
                   [-0.5, im.height - 0.5]])
    rays = np.column_stack([uv, np.ones(4)]) @ np.linalg.inv(K).T
    cam = np.vstack([np.zeros(3), rays * (depth / rays[:, 2:3])])
    return camera_to_world(cam, np.asarray(im.extrinsic, np.float64))


def _frustum_size(points: np.ndarray, images: Sequence[ColmapImage]) -> float:
    """A tenth of the scene's robust extent, so frustums stay visible at any scale."""
    ref = points if len(points) >= 2 else np.array([camera_to_world(np.zeros(3), im.extrinsic)
                                                    for im in images])
    if len(ref) < 2:
        return 0.1
    lo, hi = np.percentile(ref, 5, axis=0), np.percentile(ref, 95, axis=0)
    size = float(np.linalg.norm(hi - lo)) / 10.0
    return size if np.isfinite(size) and size > 0 else 0.1


def write_glb(path: str | Path, images: Sequence[ColmapImage], points: np.ndarray,
              colors: np.ndarray, labels: Sequence[str] | None = None) -> dict[str, int]:
    """Writes the scene atomically; ``labels`` name each frustum's node (default:
    frustum_<image name>). Returns {"points": ..., "frustums": ...}. Nothing to draw (no
    finite camera, no point) is a RuntimeDataError: glTF has no empty scene."""
    try:
        import trimesh  # noqa: PLC0415 - optional: only GLB output needs it
        from trimesh.path import Path3D  # noqa: PLC0415
        from trimesh.path.entities import Line  # noqa: PLC0415
    except ImportError as e:
        raise ImportError("scene.glb needs trimesh: pip install trimesh (or the project's "
                          "'glb' extra)") from e
    pts = np.asarray(points, np.float64).reshape(-1, 3)
    cols = np.asarray(colors, np.uint8).reshape(-1, 3)
    if not len(pts) and not len(images):
        raise RuntimeDataError("nothing to draw: no finite camera and no confident point")
    scene = trimesh.Scene()
    if len(pts):
        rgba = np.column_stack([cols, np.full(len(cols), 255, np.uint8)])
        scene.add_geometry(trimesh.PointCloud(pts @ _TO_GLTF, colors=rgba), geom_name="points")
    depth = _frustum_size(pts, images)
    names = list(labels) if labels is not None else [f"frustum_{im.name}" for im in images]
    edges = [[0, 1], [0, 2], [0, 3], [0, 4], [1, 2, 3, 4, 1]]
    for im, name in zip(images, names):
        corners = frustum_corners(im, depth) @ _TO_GLTF
        scene.add_geometry(Path3D(entities=[Line(e) for e in edges], vertices=corners),
                           geom_name=name)
    atomic_write_bytes(path, scene.export(file_type="glb"))
    return {"points": len(pts), "frustums": len(images)}
