"""An exclusive lock on an output folder for the whole of a run (POSIX flock).

Two runs into one new output folder would both pass a start-time "is it empty?" check and
the later one would replace the other's output at its final rename. The lock is a hidden
file beside the output, ``.NAME.lock``, holding the owner's PID so the refusal can name
it; the kernel drops a flock when its process dies (kill -9 included), so a crashed run
never blocks the next one.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from .errors import RuntimeDataError

__all__ = ["OutputLock", "OutputBusyError", "lock_path_for"]


class OutputBusyError(RuntimeDataError):
    """Another live run holds the output's lock."""


def lock_path_for(out: str | Path) -> Path:
    out = Path(out)
    return out.parent / f".{out.name}.lock"


class OutputLock:
    """``with OutputLock(out):`` or acquire() / release(); refuses with OutputBusyError
    naming the other run's PID."""

    def __init__(self, out: str | Path, what: str = "run"):
        self.out, self.what = Path(out), what
        self.path = lock_path_for(out)
        self._fd: int | None = None
        self._made: list[Path] = []  # parent folders created for the lock, removed after

    def acquire(self) -> "OutputLock":
        import fcntl  # noqa: PLC0415 - POSIX only; imported where a lock is taken

        missing = [p for p in [self.path.parent, *self.path.parent.parents] if not p.exists()]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._made = missing
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                if self._try_lock(fcntl, fd):
                    break
        except OSError as e:
            self._remove_made()
            raise RuntimeDataError(f"cannot write beside --out {self.out} ({e.strerror}): "
                                   f"choose a folder you can write (--out)") from e
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def _try_lock(self, fcntl: Any, fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = _read_pid(fd)
            os.close(fd)
            self._remove_made()
            mine = (" (this process: close() or abort() the earlier StreamingPredictor "
                    "first)" if other == os.getpid() else "")
            raise OutputBusyError(
                f"--out {self.out} is being written by another {self.what} (PID "
                f"{other or 'unknown'}, lock {self.path}){mine}; wait for it to finish or "
                f"choose another --out") from None
        # The holder before us may have unlinked the file between our open and our lock:
        # then we hold a lock nobody else can see; start again on the new file.
        try:
            same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
        return same

    def _remove_made(self) -> None:
        for p in self._made:  # deepest first; only folders still empty
            with contextlib.suppress(OSError):
                p.rmdir()
        self._made = []

    def release(self) -> None:
        if self._fd is None:
            return
        # unlink first, then unlock: a waiter that opened the old file sees it is gone
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)  # closing drops the flock
        self._fd = None
        self._remove_made()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
