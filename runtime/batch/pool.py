"""Ray: start or join a cluster, and a pool of SessionWorker actors with retries, for the
windows of ``infer --stream --workers`` (their results must come back to the driver in
window order; clips go through Ray Data instead, data.py).

The pool keeps one call in flight per actor (a slow clip never has others queued behind
it) and hands calls out as actors free up. When an actor dies (killed, OOM, a lost node)
its call is handed to another actor, at most ``max_attempts`` times, and a fresh actor
(a fresh session load) takes the dead one's place, at most ``max_replacements`` times
in a run. Ray is imported inside these functions only.
"""
from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import RuntimeDataError

__all__ = ["RayUnavailableError", "import_ray", "start_ray", "stop_ray", "Call", "ActorPool"]


class RayUnavailableError(RuntimeDataError):
    """Ray is not installed (the optional ``batch`` extra)."""


def import_ray() -> Any:
    try:
        import ray  # noqa: PLC0415 - optional dependency
    except ImportError as e:
        raise RayUnavailableError(
            f"batch inference needs Ray: pip install -e '.[batch]' (or pip install "
            f"'ray[data]'); import failed: {e}") from None
    return ray


def start_ray(address: str | None = None, num_cpus: int | None = None,
              num_gpus: int | None = None, object_store_mb: int | None = None,
              temp_dir: str | None = None) -> float:
    """Join ``address`` (``auto``, ``ray://host:10001`` or ``host:6379``) or start a local
    instance sized by the other arguments; returns the seconds it took (0 when this
    process is already connected). No dashboard; logs stay under ``temp_dir`` (Ray's
    default /tmp/ray) instead of being echoed here."""
    ray = import_ray()
    if ray.is_initialized():
        return 0.0
    import logging  # noqa: PLC0415

    t0 = time.perf_counter()
    kw: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False,
                              logging_level=logging.WARNING, configure_logging=True)
    if address:
        ray.init(address=address, **kw)
    else:
        # Actors import this checkout's runtime/, not another copy on sys.path; on a
        # cluster (address given) every node has the package installed instead.
        repo = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus,
                 object_store_memory=None if object_store_mb is None
                 else int(object_store_mb) << 20,
                 _temp_dir=temp_dir, runtime_env={"env_vars": {"PYTHONPATH": path}}, **kw)
    return time.perf_counter() - t0


def stop_ray() -> None:
    ray = import_ray()
    if ray.is_initialized():
        ray.shutdown()


@dataclass
class Call:
    """One method call on some actor: ``method(*args[, attempt=n])``."""

    key: Any
    method: str
    args: tuple
    pass_attempt: bool = False
    attempts: int = 0
    done: bool = False
    result: Any = None
    error: BaseException | None = None
    actor: Any = field(default=None, repr=False)


class ActorPool:
    """``workers`` SessionWorker actors, each with ``cpus`` CPUs and ``gpus`` GPUs."""

    def __init__(self, root: str | Path, backend: str, predictor_opts: Mapping[str, Any],
                 workers: int, cpus: float = 1, gpus: float = 0, max_attempts: int = 3,
                 max_replacements: int | None = None):
        from .worker import SessionWorker  # noqa: PLC0415

        ray = import_ray()
        if workers < 1:
            raise RuntimeDataError(f"--workers must be at least 1, got {workers}")
        self._ray = ray
        self._cls = ray.remote(num_cpus=cpus, num_gpus=gpus, max_restarts=0)(SessionWorker)
        self._args = (str(root), backend, dict(predictor_opts))
        self.max_attempts = max_attempts
        self.max_replacements = workers * 2 if max_replacements is None else max_replacements
        self.replaced = 0
        self.started = 0
        self.actors: list[Any] = [self._spawn() for _ in range(workers)]
        self._idle: deque[Any] = deque(self.actors)
        self._busy: dict[Any, Call] = {}          # ObjectRef -> call
        self._queue: deque[Call] = deque()
        self.dead: list[str] = []

    def _spawn(self) -> Any:
        self.started += 1
        return self._cls.remote(*self._args)

    # ------------------------------------------------------------------ calls
    def submit(self, call: Call) -> Call:
        self._queue.append(call)
        self._dispatch()
        return call

    def pending(self) -> int:
        return len(self._queue) + len(self._busy)

    def busy_actors(self) -> list[Any]:
        return [c.actor for c in self._busy.values()]

    def _dispatch(self) -> None:
        while self._queue and self._idle:
            call, actor = self._queue.popleft(), self._idle.popleft()
            call.attempts += 1
            call.actor = actor
            kw = {"attempt": call.attempts} if call.pass_attempt else {}
            self._busy[getattr(actor, call.method).remote(*call.args, **kw)] = call

    def wait(self, timeout: float | None = None) -> list[Call]:
        """Blocks until at least one call finished (or ``timeout``); returns those that
        did. A call whose actor died is queued again, not returned."""
        ray = self._ray
        if not self._busy:
            self._dispatch()
            if not self._busy:
                if self._queue and not self.actors:  # every actor died, none replaced
                    lost = list(self._queue)
                    self._queue.clear()
                    for call in lost:
                        call.done = True
                        call.error = RuntimeDataError(f"{call.key}: no worker left to run it")
                    return lost
                return []
        ready, _ = ray.wait(list(self._busy), num_returns=1, timeout=timeout)
        finished = []
        for ref in ready:
            call = self._busy.pop(ref)
            try:
                call.result = ray.get(ref)
            except ray.exceptions.RayActorError as e:
                if not self._actor_died(call, e):
                    continue  # queued again for another actor
            except ray.exceptions.RayTaskError as e:
                call.error = getattr(e, "cause", None) or e
                self._idle.append(call.actor)
            else:
                self._idle.append(call.actor)
            call.done = True
            finished.append(call)
        self._dispatch()
        return finished

    def _actor_died(self, call: Call, e: BaseException) -> bool:
        """Replaces the dead actor; True when ``call`` is given up (its error set)."""
        actor = call.actor
        if actor in self.actors:
            self.dead.append(f"{call.method}({call.key!r}) attempt {call.attempts}: "
                             f"{type(e).__name__}")
            i = self.actors.index(actor)
            if self.replaced < self.max_replacements:
                self.replaced += 1
                self.actors[i] = self._spawn()
                self._idle.append(self.actors[i])
            else:
                del self.actors[i]
        if call.attempts >= self.max_attempts or not self.actors:
            why = "no worker left" if not self.actors else "given up"
            call.error = RuntimeDataError(
                f"{call.key}: its actor died {call.attempts} time(s) running it "
                f"({type(e).__name__}); {why}")
            return True
        self._queue.appendleft(call)  # retried first
        return False

    def result(self, call: Call) -> Any:
        """Waits for ``call``: its result, or its error raised."""
        while not call.done:
            self.wait()
        if call.error is not None:
            raise call.error
        return call.result

    # ------------------------------------------------------------------ workers
    def info(self) -> list[dict[str, Any]]:
        return self._ray.get([a.info.remote() for a in self.actors])

    def close(self) -> None:
        for a in self.actors:
            try:
                self._ray.kill(a)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.actors, self._busy, self._queue = [], {}, deque()
