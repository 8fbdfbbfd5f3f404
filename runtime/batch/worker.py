"""SessionWorker: what one Ray actor holds and runs (a plain class, so it runs and is
tested without Ray too). One Predictor, so a session loads once per worker, not per clip.
"""
from __future__ import annotations

import os
import resource
import socket
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .items import DONE_MARKER, ItemResult, is_done

__all__ = ["SessionWorker", "ITEM_ERRORS"]


def _item_errors() -> tuple[type[BaseException], ...]:
    from ..dispatch import UnknownBucketError
    from ..errors import RuntimeDataError
    from ..session import SessionError
    from ..trt.sidecar import SidecarError

    return (UnknownBucketError, RuntimeDataError, OSError, SessionError, SidecarError,
            ValueError)


ITEM_ERRORS = _item_errors()


class SessionWorker:
    """``Predictor(root, backend, **predictor_opts)`` behind ``run_item`` (a clip ->
    OUT/<item>/, as ``infer`` writes it) and ``predict_window`` (a stream window)."""

    def __init__(self, root: str, backend: str, predictor_opts: Mapping[str, Any]):
        from ..predictor import Predictor

        self.predictor = Predictor(root, backend=backend, **dict(predictor_opts))
        self.id = f"{socket.gethostname()}:{os.getpid()}"
        self.session_loads = 0
        self.items = 0

    def info(self) -> dict[str, Any]:
        """pid, session loads, and the peak resident memory of this process (MB)."""
        return {"worker": self.id, "pid": os.getpid(), "session_loads": self.session_loads,
                "code": str(Path(__file__).resolve().parents[2]),  # which checkout runs
                "items": self.items,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}

    def run_item(self, name: str, input: str, out: str, infer: Mapping[str, Any],
                 attempt: int = 1) -> ItemResult:
        """Never raises for a bad item: the failure is the result (the batch goes on)."""
        target = Path(out) / name
        res = ItemResult(name, input, "done", attempts=attempt, worker=self.id)
        if is_done(target):
            # Only a retry gets here (the driver skips finished items before submitting):
            # the attempt whose actor died had already moved the outputs into place.
            res.message = "written by an earlier attempt (its actor died after writing)"
            return res
        t0 = time.perf_counter()
        try:
            pred = self.predictor.predict(input, T=infer.get("T"), N=infer.get("N"),
                                          t0=infer.get("t0", 0), views=infer.get("views"))
            self.session_loads += "session_load" in pred.timing
            marker = {"item": name, "input": input, "worker": self.id, "attempt": attempt,
                      "bucket": pred.bucket, "finished_unix": time.time()}
            pred.write_outputs(target, compress=bool(infer.get("compress")),
                               extra_json={DONE_MARKER: marker})
        except ITEM_ERRORS as e:
            res.status, res.message = "failed", str(e)
        except Exception as e:  # noqa: BLE001 - one item's bug must not stop the batch
            res.status, res.message = "failed", f"{type(e).__name__}: {e}"
        else:
            res.written, res.bucket = True, pred.bucket
            self.items += 1
        res.seconds = time.perf_counter() - t0
        return res

    def predict_window(self, images: np.ndarray, times: Sequence[int],
                       views: Sequence[int]) -> Any:
        """One stream window -> its Prediction, without the model inputs and raw outputs
        (the driver has the frames; chaining needs only the derived arrays)."""
        pred = self.predictor.predict_arrays(images, times=times, views=views)
        self.session_loads += "session_load" in pred.timing
        pred.feeds, pred.outputs = {}, {}
        return pred

    def close(self) -> None:
        self.predictor.close()
