"""The terminal of every command: one stdout / stderr console, one way to fail, and the
logging set-up that -v / --log-file control (TensorRT's logger included, see
trt/env.py). Messages are printed as plain text, never as rich markup: they quote lists
such as ['images'] and paths with [brackets] that markup would eat."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

__all__ = ["console", "err", "fail", "warn", "flag", "setup_logging", "LOGGER_NAME"]

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


def flag(default: bool, *names: str, **kwargs: Any) -> Any:
    """typer.Option for an on/off flag: help shows no `<bool>` value placeholder (typer
    0.29 prints one for every option, though `--fp16 true` is an error)."""
    return typer.Option(default, *names, metavar="", **kwargs)


def fail(msg: str, code: int = 2) -> NoReturn:
    """Print ``error: msg`` on stderr and exit with ``code`` (2: usage / input, 1: a
    step ran and failed)."""
    logging.getLogger(LOGGER_NAME).error(msg, extra=_ECHOED)
    err.print(Text("error: ", style="bold red") + Text(str(msg)), soft_wrap=True)
    raise typer.Exit(code)


def os_error_message(e: OSError) -> tuple[str, int]:
    """One line and an exit code for an OSError, naming the path the user knows: a
    scratch path (.out.partial-41-x/...) means nothing to them, so the folder they asked
    for (which the failed run left as it was) is named instead."""
    import errno  # noqa: PLC0415

    from .layout import public_path  # noqa: PLC0415

    if e.errno is None:  # ours, raised with a sentence of its own
        return str(e), 2
    path = public_path(e.filename) if getattr(e, "filename", None) else None
    at = f" {path}" if path else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "disk full" if e.errno == errno.ENOSPC else "disk quota exceeded"
        return (f"{what}{' writing' + at if at else ''}: free space there or choose another "
                f"--out; nothing half-written was kept", 1)
    if e.errno == errno.EROFS:
        return f"read-only file system{':' + at if at else ''}: choose a writable folder " \
               f"with --out", 2
    if isinstance(e, PermissionError):
        return (f"permission denied{':' + at if at else ''}: choose a folder you can write "
                f"with --out, or fix its permissions", 2)
    if isinstance(e, (FileNotFoundError, NotADirectoryError, IsADirectoryError,
                      FileExistsError)):
        return (f"{e.strerror or e}{':' + at if at else ''}: check the path (an output "
                f"folder must not be an existing file)", 2)
    return f"{type(e).__name__}: {e}", 1


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


def run_guarded(app) -> None:  # noqa: ANN001 - a typer.Typer
    """The CLI's one error boundary. Known failures become one line of cause and remedy
    (exit 2: the input was wrong; exit 1: a step ran and failed); SIGTERM (a timeout, a
    container stop) is handled like Ctrl-C, so the same clean-up runs; anything else keeps
    its traceback and asks to be reported, since it is a bug of ours."""
    import errno  # noqa: PLC0415
    import traceback  # noqa: PLC0415

    from . import interrupts  # noqa: PLC0415
    from .errors import RuntimeDataError  # noqa: PLC0415

    interrupts.install()
    code = 0
    try:
        app()  # typer handles usage errors, typer.Exit and Ctrl-C (exit 130) itself
    except SystemExit as e:
        signum = interrupts.received()
        if signum is not None and e.code == 130:
            _report_interrupt(signum)
        raise
    except KeyboardInterrupt as e:  # one raised outside typer's own handling
        _report_interrupt(getattr(e, "signum", None) or interrupts.received() or 2)
        code = 130
    except RuntimeDataError as e:
        code = _report(str(e), 2)
    except MemoryError:
        code = _report("out of memory: choose a smaller bucket (--T, --N, --height, --width) "
                       "or a machine with more memory", 1)
    except OSError as e:
        code = _report(*os_error_message(e))
    except Exception:  # noqa: BLE001 - the boundary: a bug, shown with its traceback
        traceback.print_exc()
        err.print(Text("internal error: ", style="bold red") + Text(
            "this is a bug in vggt-mv-deploy; please report it with the command line and the "
            "traceback above"))
        code = 1
    sys.exit(code)


def _report_interrupt(signum: int) -> None:
    from .interrupts import signal_name  # noqa: PLC0415

    command = next((a for a in sys.argv[1:] if not a.startswith("-")), "the command")
    _report(f"interrupted by {signal_name(signum)} during `{command}`: stopped cleanly; the "
            f"step in progress left nothing half-written (outputs finished before it are "
            f"kept)", 130)


def _report(msg: str, code: int) -> int:
    logging.getLogger(LOGGER_NAME).error(msg, extra=_ECHOED)
    err.print(Text("error: ", style="bold red") + Text(msg), soft_wrap=True)
    return code
