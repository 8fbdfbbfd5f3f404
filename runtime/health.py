"""Every run checks its raw outputs: a graph corrupted after verification (VGGT_MV_NO_VERIFY,
or a file changed in place keeping its size and mtime) gives NaN / Inf depth and points,
which would otherwise be written as a sparse, plausible-looking result with exit 0.

Intrinsics are not judged here: a zero field of view from untrained weights makes them
infinite although pose_enc is finite; the predictor flags those frames separately."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import RuntimeDataError

# Shares up to this are tolerated (a few saturated confidences); corruption gives far more.
MAX_NONFINITE_SHARE = 0.01


class NonFiniteOutputError(RuntimeDataError):
    """Raw model outputs hold more NaN / Inf than MAX_NONFINITE_SHARE."""


@dataclass
class OutputHealth:
    counts: dict[str, tuple[int, int]]      # output -> (non-finite values, all values)
    frames: list[list[int]] = field(default_factory=list)  # [t, view] with any non-finite

    def share(self, name: str) -> float:
        bad, total = self.counts[name]
        return bad / total if total else 0.0

    @property
    def failing(self) -> list[str]:
        return [k for k in self.counts if self.share(k) > MAX_NONFINITE_SHARE]

    def describe(self) -> str:
        parts = [f"{k}: {self.counts[k][0]:,} of {self.counts[k][1]:,} values "
                 f"({self.share(k):.1%})" for k in self.counts if self.counts[k][0]]
        where = ", ".join(f"({t}, {v})" for t, v in self.frames[:8])
        more = " ..." if len(self.frames) > 8 else ""
        return (f"non-finite model outputs: {'; '.join(parts)}; in {len(self.frames)} frames "
                f"(t, view) {where}{more}")

    def to_json(self) -> dict[str, Any]:
        return {"outputs": {k: {"nonfinite": b, "values": n, "share": round(b / n, 6) if n else 0}
                            for k, (b, n) in self.counts.items()},
                "frames": self.frames, "max_share": MAX_NONFINITE_SHARE}


def output_health(outputs: Mapping[str, np.ndarray], times: Sequence[int],
                  views: Sequence[int]) -> OutputHealth:
    """Count NaN / Inf per raw output ([B=1, T, N, ...]) and list the frames that hold any."""
    counts: dict[str, tuple[int, int]] = {}
    per_frame = np.zeros((len(times), len(views)), bool)
    for name, arr in outputs.items():
        a = np.asarray(arr)
        if not np.issubdtype(a.dtype, np.floating):
            continue
        bad = ~np.isfinite(a)
        counts[name] = (int(bad.sum()), int(a.size))
        if bad.any() and a.ndim >= 3 and a.shape[1:3] == per_frame.shape:
            per_frame |= bad[0].reshape(per_frame.shape + (-1,)).any(axis=-1)
    frames = [[int(times[i]), int(views[j])] for i, j in zip(*np.nonzero(per_frame))]
    return OutputHealth(counts, frames)


def require_finite(health: OutputHealth, allowed: bool) -> str | None:
    """Raise NonFiniteOutputError when too much is non-finite and the user did not allow it;
    returns the note to attach to the result when anything is non-finite."""
    if not health.frames and not any(b for b, _ in health.counts.values()):
        return None
    text = health.describe()
    if health.failing and not allowed:
        raise NonFiniteOutputError(
            f"{text}: more than {MAX_NONFINITE_SHARE:.0%} of {', '.join(health.failing)} is "
            f"NaN/Inf, so the graph or engine is likely corrupted (re-export, or verify it "
            f"without VGGT_MV_NO_VERIFY); nothing was written. --allow-nonfinite keeps such "
            f"results, with those frames flagged in run.json")
    return text
