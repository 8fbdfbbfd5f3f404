"""One robust colour range for maps that arrive one at a time (a stream's depth maps).

The range is the 2nd..98th percentile of a uniform sample of every finite value seen so
far (reservoir sampling, algorithm R), so memory stays fixed however long the stream runs,
and a scene that moves away from the camera after the first steps still spans the scale.
"""
from __future__ import annotations

import numpy as np

__all__ = ["RobustRange", "PERCENTILES"]

PERCENTILES = (2.0, 98.0)  # the same clip of outliers as infer's per-clip range


class RobustRange:
    def __init__(self, capacity: int = 262_144, per_map: int = 4096, seed: int = 0):
        self._sample = np.empty(capacity, np.float64)
        self._per_map = per_map
        self._seen = 0  # finite values offered to the reservoir
        self._rng = np.random.default_rng(seed)  # seeded: the same stream, the same PNGs

    @property
    def seen(self) -> int:
        return self._seen

    def add(self, values: np.ndarray) -> None:
        """Offer a map's finite values (a strided subset of at most ``per_map``)."""
        v = np.asarray(values, np.float64).ravel()
        v = v[np.isfinite(v)]
        if v.size > self._per_map:
            v = v[:: -(-v.size // self._per_map)]
        if not v.size:
            return
        cap = self._sample.size
        idx = self._seen + np.arange(v.size)
        fill = idx < cap
        self._sample[idx[fill]] = v[fill]
        rest = ~fill
        if rest.any():
            # value number i replaces a random slot with probability cap / (i + 1)
            slot = self._rng.integers(0, idx[rest] + 1)
            keep = slot < cap
            self._sample[slot[keep]] = v[rest][keep]
        self._seen += v.size

    def range(self) -> tuple[float, float]:
        """(lo, hi) with hi > lo; (0, 1) before any finite value."""
        n = min(self._seen, self._sample.size)
        if not n:
            return 0.0, 1.0
        lo, hi = (float(x) for x in np.percentile(self._sample[:n], PERCENTILES))
        return lo, hi if hi > lo else lo + 1.0
