"""A merged point cloud of bounded size: confidence-filtered points, one per voxel.

Streaming adds every window's confident points; the cloud keeps, per occupied voxel, the
running confidence-weighted mean position and colour. When the voxel count passes
``max_points`` the voxel edge doubles and the cloud is re-binned, so memory stays
bounded however long the video is (the resolution is what gives).
"""
from __future__ import annotations

import numpy as np

__all__ = ["VoxelCloud"]


class VoxelCloud:
    def __init__(self, voxel: float, max_points: int = 500_000):
        if not voxel > 0:
            raise ValueError(f"voxel size must be positive, got {voxel}")
        if max_points < 1:
            raise ValueError(f"max_points must be >= 1, got {max_points}")
        self.voxel = float(voxel)
        self.max_points = int(max_points)
        self._keys = np.empty((0, 3), np.int64)
        self._wsum = np.empty(0, np.float64)
        self._psum = np.empty((0, 3), np.float64)   # weighted position sums
        self._csum = np.empty((0, 3), np.float64)   # weighted colour sums
        self.coarsened = 0

    def __len__(self) -> int:
        return len(self._wsum)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self._keys, self._wsum, self._psum, self._csum))

    def add(self, points: np.ndarray, colors: np.ndarray, weights: np.ndarray) -> None:
        """points [M, 3] (world), colors [M, 3] uint8, weights [M] > 0 (confidence)."""
        p = np.asarray(points, np.float64).reshape(-1, 3)
        c = np.asarray(colors, np.float64).reshape(-1, 3)
        w = np.asarray(weights, np.float64).reshape(-1)
        ok = np.isfinite(p).all(1) & np.isfinite(w) & (w > 0)
        p, c, w = p[ok], c[ok], w[ok]
        if not len(p):
            return
        keys = np.floor(p / self.voxel).astype(np.int64)
        self._merge(np.concatenate([self._keys, keys]),
                    np.concatenate([self._wsum, w]),
                    np.concatenate([self._psum, p * w[:, None]]),
                    np.concatenate([self._csum, c * w[:, None]]))
        while len(self) > self.max_points:
            self.voxel *= 2.0
            self.coarsened += 1
            pos = self._psum / self._wsum[:, None]
            self._merge(np.floor(pos / self.voxel).astype(np.int64), self._wsum, self._psum,
                        self._csum)

    def _merge(self, keys, wsum, psum, csum) -> None:
        uniq, inv = np.unique(keys, axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        n = len(uniq)
        self._keys = uniq
        self._wsum = np.bincount(inv, wsum, n)
        self._psum = np.stack([np.bincount(inv, psum[:, k], n) for k in range(3)], 1)
        self._csum = np.stack([np.bincount(inv, csum[:, k], n) for k in range(3)], 1)

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """(positions float32 [K, 3], colours uint8 [K, 3])."""
        if not len(self):
            return np.empty((0, 3), np.float32), np.empty((0, 3), np.uint8)
        pos = (self._psum / self._wsum[:, None]).astype(np.float32)
        col = np.clip(np.rint(self._csum / self._wsum[:, None]), 0, 255).astype(np.uint8)
        return pos, col
