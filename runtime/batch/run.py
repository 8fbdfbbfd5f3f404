"""run_batch: items -> OUT/<item>/ on Ray Data actors (data.py); ParallelWindows: the
windows of one stream on a Ray Core ActorPool, chained in order by StreamingPredictor on
this (the driver's) side."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .data import ActorSpec, ItemMapper, read_actor_records, stream_items
from .items import ItemResult, Item, is_done, summarize, write_batch_json
from .pool import ActorPool, Call

__all__ = ["run_batch", "ParallelWindows"]


def run_batch(items: Sequence[Item], out: str | Path, spec: ActorSpec,
              infer: Mapping[str, Any], progress: Any = None,
              on_result: Callable[[ItemResult], None] | None = None,
              mapper: type[ItemMapper] = ItemMapper, max_attempts: int = 3,
              **summary_extra: Any) -> tuple[list[ItemResult], dict[str, Any]]:
    """Runs every item not done yet on ``spec.workers`` actors; returns the results in
    ``items`` order and the summary, both also in OUT/batch.json (written even when
    interrupted: the items not reached are listed as ``pending``, and their done markers
    make the next run resume). With nothing left to do no actor is started."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results: dict[str, ItemResult] = {}
    for it in items:
        if is_done(out / it.name):
            results[it.name] = ItemResult(it.name, it.input, "skipped",
                                          message="done in an earlier run")
    if progress is not None:
        progress.update(len(results))
    todo = [it for it in items if it.name not in results]
    first = None  # seconds to the first result: Ray Data's start, actor start, session load
    try:
        if todo:
            run = stream_items(todo, out, spec, infer, mapper=mapper,
                               max_attempts=max_attempts)
            try:
                for res in run:
                    if first is None:
                        first = time.perf_counter() - t0
                    results[res.name] = res
                    if progress is not None:
                        progress.update(1)
                    if on_result is not None:
                        on_result(res)
            finally:
                run.close()  # stops Ray Data's executor and its actors, also on Ctrl-C
    finally:
        wall = time.perf_counter() - t0
        workers = read_actor_records(out) if todo else []
        ordered = [results.get(it.name) or ItemResult(it.name, it.input, "pending")
                   for it in items]
        summary = summarize([r for r in ordered if r.status != "pending"], wall,
                            pending=sum(r.status == "pending" for r in ordered),
                            engine="ray.data", workers=spec.workers,
                            first_item_s=None if first is None else round(first, 3),
                            steady_clips_per_s=_steady(results.values(), wall, first),
                            workers_started=len(workers),
                            session_loads=sum(w["session_loads"] for w in workers),
                            workers_info=workers, **summary_extra)
        write_batch_json(out, ordered, summary)
    return ordered, summary


def _steady(results: Any, wall: float, first: float | None) -> float | None:
    """Items done after the first one over the time after it: the rate once the actors
    are up, which a long batch approaches."""
    done = sum(r.status == "done" for r in results)
    if first is None or done < 2 or wall <= first:
        return None
    return round((done - 1) / (wall - first), 3)


class ParallelWindows:
    """What StreamingPredictor needs of a predictor, with windows inferred on the pool:
    ``select`` (bucket choice, local), ``submit_window`` / ``result`` and
    ``max_pending`` (windows in flight: bounds the driver's memory)."""

    def __init__(self, predictor: Any, pool: ActorPool, max_pending: int | None = None):
        self._p, self.pool = predictor, pool
        self.max_pending = max_pending or 2 * len(pool.actors)
        self._n = 0

    def select(self, *args: Any, **kwargs: Any) -> Any:
        return self._p.select(*args, **kwargs)

    def submit_window(self, images: np.ndarray, times: Sequence[int],
                      views: Sequence[int]) -> Call:
        self._n += 1
        ref = self.pool._ray.put(images)  # once: a retry after an actor death reuses it
        return self.pool.submit(Call(f"window {self._n - 1} (t {times[0]}..{times[-1]})",
                                     "predict_window", (ref, list(times), list(views))))

    def result(self, call: Call) -> Any:
        return self.pool.result(call)
