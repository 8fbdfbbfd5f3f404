"""The batch on Ray Data: one row per item, ``map_batches`` over a fixed pool of stateful
actors (``ItemMapper``, one loaded session each), one item per batch and per block.

Fault tolerance is Ray Data's: an actor that dies is restarted (a fresh session load) and
its task retried (``max_restarts`` / ``max_task_retries``). Ray does not tell the actor
which try it is on, so each try counts itself in ``OUT/.batch/attempts/<item>`` first: a
retry is reported as one (``attempts``), and an item that keeps killing its actor is given
up after ``max_attempts`` instead of being retried for ever. Each actor also keeps
``OUT/.batch/actors/<worker>.json`` (session loads, peak RSS): the driver holds no actor
handles here, and an actor that died before returning a row still counts. Ray is imported
inside these functions only.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from ..layout import atomic_write_json
from .items import Item, ItemResult

__all__ = ["ActorSpec", "ItemMapper", "RUN_DIR", "stream_items", "read_actor_records"]

RUN_DIR = ".batch"  # under OUT: this run's attempt counters and actor records
_RESULT_FIELDS = ("name", "input", "status", "message", "seconds", "attempts", "worker",
                  "written", "bucket")


@dataclass(frozen=True)
class ActorSpec:
    """What every actor loads (``Predictor(root, backend, **predictor_opts)``) and what
    Ray reserves for it."""

    root: str
    backend: str
    predictor_opts: Mapping[str, Any] = field(default_factory=dict)
    workers: int = 2
    cpus: float = 1.0
    gpus: float = 0.0


def _count_attempt(run_dir: Path, name: str) -> int:
    """This try's number: one more than the tries of ``name`` before it in this run."""
    f = run_dir / "attempts" / name
    n = int(f.read_text()) + 1 if f.is_file() else 1
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_name(f".{name}.tmp")
    tmp.write_text(str(n))
    tmp.replace(f)
    return n


class ItemMapper:
    """The ``map_batches`` callable class: a SessionWorker per actor; a batch is one row
    (``name``, ``input``) and comes back as that item's ItemResult columns."""

    def __init__(self, spec: ActorSpec, out: str, infer: Mapping[str, Any],
                 max_attempts: int = 3):
        from .worker import SessionWorker

        self.worker = SessionWorker(spec.root, spec.backend, spec.predictor_opts)
        self.out, self.infer, self.max_attempts = out, dict(infer), max_attempts
        self.run_dir = Path(out) / RUN_DIR
        self._record()

    def _record(self) -> None:
        d = self.run_dir / "actors"
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_json(d / f"{self.worker.id.replace(':', '_')}.json", self.worker.info())

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, list]:
        rows = [self.run_one(str(n), str(i)) for n, i in zip(batch["name"], batch["input"])]
        return {k: [getattr(r, k) for r in rows] for k in _RESULT_FIELDS}

    def run_one(self, name: str, input: str) -> ItemResult:
        attempt = _count_attempt(self.run_dir, name)
        if attempt > self.max_attempts:
            return ItemResult(name, input, "failed", attempts=attempt - 1, worker=self.worker.id,
                              message=f"{name}: its actor died {attempt - 1} time(s) running "
                              f"it; given up")
        res = self.run_item(name, input, attempt)
        self._record()
        return res

    def run_item(self, name: str, input: str, attempt: int) -> ItemResult:
        return self.worker.run_item(name, input, self.out, self.infer, attempt=attempt)


def stream_items(items: Sequence[Item], out: str | Path, spec: ActorSpec,
                 infer: Mapping[str, Any], mapper: type[ItemMapper] = ItemMapper,
                 max_attempts: int = 3) -> Iterator[ItemResult]:
    """Runs ``items`` on ``spec.workers`` actors; yields each ItemResult as it finishes
    (in finishing order). Closing the generator stops the run and its actors."""
    from .pool import import_ray

    ray = import_ray()
    import ray.data  # noqa: F401,PLC0415 - pandas and pyarrow: the ray[data] extra

    run_dir = Path(out) / RUN_DIR
    shutil.rmtree(run_dir, ignore_errors=True)  # attempt counts are per run
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours (tqdm, per item) replaces Ray Data's
    ctx.print_on_execution_start = False
    _quiet_ray_data()
    ds = ray.data.from_items([{"name": it.name, "input": it.input} for it in items],
                             override_num_blocks=len(items))  # one task per item
    # Restarting a dead actor and retrying its task are Ray Data's defaults for actor pools
    # (max_restarts=-1, max_task_retries=-1 in 2.60; passing them is deprecated there).
    ds = ds.map_batches(
        mapper, batch_size=1, batch_format="numpy", num_cpus=spec.cpus,
        num_gpus=spec.gpus or None,
        # one item in flight per actor: a slow clip has none queued behind it, and an
        # actor's death retries only the item it was running
        compute=ray.data.ActorPoolStrategy(size=spec.workers,
                                           max_tasks_in_flight_per_actor=1),
        fn_constructor_kwargs={"spec": spec, "out": str(out), "infer": dict(infer),
                               "max_attempts": max_attempts})
    rows = iter(ds.iter_rows())
    try:
        for row in rows:
            yield ItemResult(**{k: _plain(row[k]) for k in _RESULT_FIELDS})
    finally:
        close = getattr(rows, "close", None)
        if close is not None:
            close()


def _quiet_ray_data() -> None:
    """Ray Data's INFO lines (execution started / finished) and its notice that its own
    progress bars are off stay out of the console; its warnings and errors do not."""
    import logging  # noqa: PLC0415

    from ray.util.debug import log_once  # noqa: PLC0415

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    log_once("ray_data_progress_manager_disabled")  # the notice is logged once: now spent


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def read_actor_records(out: str | Path) -> list[dict[str, Any]]:
    """Every actor of the last run that loaded its session (restarted ones included)."""
    d = Path(out) / RUN_DIR / "actors"
    if not d.is_dir():
        return []
    return [json.loads(p.read_text()) for p in sorted(d.glob("*.json"))]
