"""Logging set-up shared by the CLI and worker processes, with passwords redacted."""

from __future__ import annotations

import logging
import sys
import threading
import traceback
from types import TracebackType

from .urls import redact_known

PACKAGE = "ncm_migrate"
SQL_LOGGERS = ("sqlalchemy.engine", "alembic.runtime.migration")


class RedactingFilter(logging.Filter):
    """Hides every known password in a record before it is written."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact_known(record.getMessage())
        record.args = None
        return True


class RedactingFormatter(logging.Formatter):
    """Hides every known password in the whole record as written, the traceback of
    `exc_info` (logged at -vv) included, which a filter on the message cannot reach."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_known(super().format(record))


def redacted_traceback(exc: BaseException) -> str:
    """The traceback Python would print for `exc`, with every known password hidden."""
    return redact_known("".join(traceback.format_exception(exc)))


def _redacted_excepthook(
    kind: type[BaseException], exc: BaseException | None, tb: TracebackType | None
) -> None:
    sys.stderr.write(redact_known("".join(traceback.format_exception(kind, exc, tb))))


def _redacted_thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if issubclass(args.exc_type, SystemExit):
        return  # as Python's own hook: a thread that exits says nothing
    name = args.thread.name if args.thread else "?"
    sys.stderr.write(f"Exception in thread {name}:\n")
    _redacted_excepthook(args.exc_type, args.exc_value, args.exc_traceback)


def redact_tracebacks() -> None:
    """Print the traceback of a bug that nothing handled, in any thread, with every known
    password hidden, as the log does. (Typer installs its own hook around a command, which
    hands over to the one it found at import: `cli.main` prints a command's bug itself.)"""
    sys.excepthook = _redacted_excepthook
    threading.excepthook = _redacted_thread_excepthook


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is when a record comes, not when it was made."""

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        return None


def verbosity_levels(verbosity: int) -> dict[str, int]:
    """Logger levels for -q (-1), default (0), -v (1: adds the SQL being run), -vv (2)."""
    levels = {PACKAGE: {-1: logging.ERROR, 0: logging.WARNING}.get(verbosity, logging.INFO)}
    levels.update(dict.fromkeys(SQL_LOGGERS, logging.INFO if verbosity >= 1 else logging.WARNING))
    if verbosity >= 2:
        levels[PACKAGE] = logging.DEBUG
    return levels


def configure_logging(levels: dict[str, int]) -> None:
    """One stderr handler, redacting, for each named logger."""
    handler = _StderrHandler()
    handler.setFormatter(RedactingFormatter("%(message)s"))
    handler.addFilter(RedactingFilter())
    for name, level in levels.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False
    # Another library's warnings, with no handler of their own, reach Python's last resort.
    last_resort = _StderrHandler()
    last_resort.setLevel(logging.WARNING)
    last_resort.setFormatter(RedactingFormatter("%(message)s"))
    logging.lastResort = last_resort


def current_levels() -> dict[str, int]:
    """The levels configured in this process, to hand to worker processes."""
    names = (PACKAGE, *SQL_LOGGERS)
    return {n: logging.getLogger(n).level for n in names if logging.getLogger(n).level}
