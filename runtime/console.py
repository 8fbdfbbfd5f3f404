"""The terminal of every command: one stdout / stderr console, one way to fail, and the
logging set-up that -v / --log-file control (TensorRT's logger included, see
trt/env.py). Messages are printed as plain text, never as rich markup: they quote lists
such as ['images'] and paths with [brackets] that markup would eat."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.text import Text

__all__ = ["console", "err", "fail", "warn", "setup_logging", "LOGGER_NAME"]

# Logs redirected to files should not wrap tables at 80 columns.
_WIDTH = None if sys.stdout.isatty() else 160
console = Console(highlight=False, width=_WIDTH)
err = Console(stderr=True, highlight=False, width=_WIDTH)
LOGGER_NAME = "vggt_mv"
# Without setup_logging (library use, tests) records go nowhere rather than to Python's
# last-resort stderr handler.
logging.getLogger(LOGGER_NAME).addHandler(logging.NullHandler())
_ECHOED = {"echoed": True}  # already printed by fail / warn: the log file only


def _not_echoed(record: logging.LogRecord) -> bool:
    return not getattr(record, "echoed", False)


def fail(msg: str, code: int = 2) -> NoReturn:
    """Print ``error: msg`` on stderr and exit with ``code`` (2: usage / input, 1: a
    step ran and failed)."""
    logging.getLogger(LOGGER_NAME).error(msg, extra=_ECHOED)
    err.print(Text("error: ", style="bold red") + Text(str(msg)), soft_wrap=True)
    raise typer.Exit(code)


def warn(msg: str) -> None:
    logging.getLogger(LOGGER_NAME).warning(msg, extra=_ECHOED)
    err.print(Text("warning: ", style="bold yellow") + Text(str(msg)), soft_wrap=True)


def setup_logging(verbose: int = 0, log_file: Path | None = None) -> None:
    """-v: INFO on stderr, -vv: DEBUG (TensorRT's VERBOSE); --log-file: everything down to
    DEBUG into a file. Without either only warnings reach stderr."""
    root = logging.getLogger(LOGGER_NAME)
    for old in list(root.handlers):
        root.removeHandler(old)
        if isinstance(old, logging.FileHandler):
            old.close()
    root.propagate = False
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    h = logging.StreamHandler(sys.stderr)
    h.setLevel(level)
    h.addFilter(_not_echoed)
    h.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root.addHandler(h)
    lowest = level
    if log_file is not None:
        fh = logging.FileHandler(log_file, encoding="utf-8")
        fh.setLevel(logging.DEBUG)
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(fh)
        lowest = logging.DEBUG
    root.setLevel(lowest)
