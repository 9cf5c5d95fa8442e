"""Logging set-up shared by the CLI and worker processes, with passwords redacted."""

from __future__ import annotations

import logging
import sys

from .urls import redact_known

PACKAGE = "ncm_migrate"
SQL_LOGGERS = ("sqlalchemy.engine", "alembic.runtime.migration")


class RedactingFilter(logging.Filter):
    """Hides every known password in a record before it is written."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact_known(record.getMessage())
        record.args = None
        return True


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
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(RedactingFilter())
    for name, level in levels.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level)
        logger.propagate = False


def current_levels() -> dict[str, int]:
    """The levels configured in this process, to hand to worker processes."""
    names = (PACKAGE, *SQL_LOGGERS)
    return {n: logging.getLogger(n).level for n in names if logging.getLogger(n).level}
