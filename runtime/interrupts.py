"""SIGTERM / Ctrl-C as a clean stop, never a native-code abort.

Python runs a signal handler between bytecodes of the main thread, wherever that is. When
the main thread is inside native code that calls back into Python (onnxruntime running the
CPU reference of a plugin op, ModelOpt's import of its C extensions), an exception raised
by the handler unwinds through C++ frames that cannot carry it: "terminate called ...",
a core dump, and none of the clean-up that removes partial outputs. So inside a
``deferred()`` section the handler only records the signal; the section raises it when the
native call has returned. Everywhere else it raises at once (a Python loop stops at the
next bytecode), so a run never waits for a checkpoint that might not come.

The exception is ``Interrupted``, a KeyboardInterrupt: every ``except BaseException``
clean-up (atomic_directory, the stream's partial folder, Ray actors) runs as for Ctrl-C.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

_local = threading.local()        # per thread: handlers run in the main thread only
_received: list[int] = []         # every signal taken, in order (the CLI reports the first)


class Interrupted(KeyboardInterrupt):
    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"interrupted by {signal_name(signum)}")


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _handler(signum: int, frame: object) -> None:
    _received.append(signum)
    if getattr(_local, "depth", 0):
        _local.pending = signum
        return
    raise Interrupted(signum)


def install() -> None:
    """SIGTERM and SIGINT raise Interrupted (outside deferred sections). Main thread only,
    as the signal module requires; a no-op elsewhere (an embedding application's threads)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, _handler)


def received() -> int | None:
    """The first signal taken by the handler, or None."""
    return _received[0] if _received else None


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Wrap a native call that may call back into Python: a signal during it is raised as
    Interrupted right after it returns. Nests; costs two attribute updates."""
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        yield
    finally:
        _local.depth -= 1
        pending = getattr(_local, "pending", None)
        if not _local.depth and pending is not None:
            _local.pending = None
            raise Interrupted(pending)
