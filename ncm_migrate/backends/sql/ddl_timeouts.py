"""How long a step's statements may wait on locks (`ddl.*`, a revision's `lock_timeout` /
`statement_timeout` headers), the statements that say so to the server, and a step's
attempts: retried with jittered backoff (tenacity) when a lock wait ran out or a deadlock
picked it, within `ddl.retries` and `ddl.retry_budget_s`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from tenacity import RetryCallState, Retrying, retry_if_exception, wait_random_exponential

from ...config import DdlSettings, duration_ms
from ...model import Revision

log = logging.getLogger(__name__)

# PostgreSQL: lock_not_available (lock_timeout ran out, or NOWAIT) and deadlock_detected.
_PG_LOCK_STATES = {"55P03": "lock timeout", "40P01": "deadlock"}
# MySQL/MariaDB: ER_LOCK_WAIT_TIMEOUT (metadata and row locks) and ER_LOCK_DEADLOCK.
_MYSQL_LOCK_CODES = {1205: "lock timeout", 1213: "deadlock"}
_MYSQL_MAX_WAIT_S = 31_536_000  # a year: MySQL's and MariaDB's largest lock_wait_timeout
MAX_BACKOFF_S = 10.0
"""The longest pause between two attempts (the first pauses are shorter, with jitter)."""


@dataclass(frozen=True)
class StepTimeouts:
    """One step's timeouts in milliseconds: 0 is none; None leaves the server's own."""

    lock_ms: int | None
    statement_ms: int | None

    @property
    def lock_s(self) -> float:
        return (self.lock_ms or 0) / 1000


def step_timeouts(settings: DdlSettings, revision: Revision) -> StepTimeouts:
    """The revision's header values where it has them, else the environment's `ddl.*`."""

    def pick(header: str | None, default: int | None) -> int | None:
        if header is None:
            return default
        ms = duration_ms(header)  # checked when the header was read
        return None if ms is None or ms < 0 else ms

    return StepTimeouts(pick(revision.lock_timeout, settings.lock_timeout_ms),
                        pick(revision.statement_timeout, settings.statement_timeout_ms))


def _pg_value(ms: int) -> str:
    return "0" if ms == 0 else f"{ms}ms"


def offline_statements(dialect: str, timeouts: StepTimeouts) -> list[str]:
    """The `SET` statements a step starts with, as `sqlmigrate` and `migrate --sql` show
    them (and squawk reads them): `SET LOCAL` in the step's transaction on PostgreSQL."""
    if dialect == "postgresql":
        return [f"SET LOCAL {name} = '{_pg_value(ms)}'"
                for name, ms in (("lock_timeout", timeouts.lock_ms),
                                 ("statement_timeout", timeouts.statement_ms)) if ms is not None]
    if dialect in ("mysql", "mariadb") and timeouts.lock_ms is not None:
        return [f"SET SESSION lock_wait_timeout = {_mysql_seconds(timeouts.lock_ms)}, "
                f"innodb_lock_wait_timeout = {_mysql_seconds(timeouts.lock_ms)}"]
    return []


def _mysql_seconds(ms: int) -> int:
    """MySQL's lock waits are whole seconds, at least one; 0 (none) is its longest."""
    return _MYSQL_MAX_WAIT_S if ms == 0 else max(1, math.ceil(ms / 1000))


def set_timeouts(conn: sa.Connection, dialect: str, timeouts: StepTimeouts) -> None:
    """Tell the server `timeouts`, on the step's connection and in its transaction (on
    PostgreSQL, `set_config(..., true)`: `SET LOCAL`, in one statement). Called once the
    service's lock is held, so they never shorten the wait for it."""
    if dialect == "postgresql":
        pairs = [(name, _pg_value(ms)) for name, ms in (("lock_timeout", timeouts.lock_ms),
                 ("statement_timeout", timeouts.statement_ms)) if ms is not None]
        if pairs:
            calls = ", ".join(f"set_config('{name}', '{value}', true)" for name, value in pairs)
            conn.exec_driver_sql(f"SELECT {calls}")
        return
    for statement in offline_statements(dialect, timeouts):
        conn.exec_driver_sql(statement)


def lock_failure(exc: BaseException) -> str | None:
    """"lock timeout" or "deadlock" when `exc` (a driver error, or SQLAlchemy's around one)
    says the statement waited too long for a lock or was a deadlock's victim; else None."""
    if not isinstance(exc, sa.exc.DBAPIError):
        return None
    orig = exc.orig
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if isinstance(state, str) and state in _PG_LOCK_STATES:
        return _PG_LOCK_STATES[state]
    # PyMySQL gives its errors a SQLSTATE too (HY000 for both): the error number says.
    args: tuple[object, ...] = getattr(orig, "args", ())
    return _MYSQL_LOCK_CODES.get(args[0]) if args and isinstance(args[0], int) else None


class Attempts:
    """The attempts of one step: which one is running, how long the step has waited, and
    a tenacity `Retrying` that runs them (`retrying`)."""

    def __init__(self, settings: DdlSettings, timeouts: StepTimeouts,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, what: str = "a step") -> None:
        self.settings = settings
        self.what = what  # "service:revision", for the log
        self.timeouts = timeouts
        self.sleep = sleep
        self.clock = clock
        self.number = 1
        self.started = clock()
        self.attempt_started = self.started

    @property
    def waited_ms(self) -> float:
        """How long the step has waited, on locks and between attempts, before the
        attempt under way began."""
        return (self.attempt_started - self.started) * 1000

    def elapsed_ms(self) -> float:
        return (self.clock() - self.started) * 1000

    def retrying(self, retryable: Callable[[BaseException], bool],
                 on_retry: Callable[[BaseException], None]) -> Retrying:
        """Attempts run as `for attempt in retrying(...): with attempt: ...`: one that
        fails with an error `retryable` allows is retried after `on_retry` (which records
        it) and a jittered pause, while `ddl.retries` and `ddl.retry_budget_s` allow;
        otherwise its error goes on up."""

        def stop(state: RetryCallState) -> bool:
            if state.attempt_number > self.settings.retries:
                return True
            # The next attempt must be able to wait its whole lock_timeout within the budget.
            spent = self.clock() - self.started
            return spent + state.upcoming_sleep + self.timeouts.lock_s > self.settings.retry_budget_s

        def before_sleep(state: RetryCallState) -> None:
            assert state.outcome is not None
            exc = state.outcome.exception()
            assert exc is not None
            on_retry(exc)
            log.warning("%s: attempt %d ended in a %s, rolled back; retrying in %.2fs", self.what,
                        self.number, lock_failure(exc), state.upcoming_sleep)

        return Retrying(
            sleep=self._pause,
            stop=stop,
            wait=wait_random_exponential(multiplier=max(0.05, self.timeouts.lock_s / 4),
                                         max=MAX_BACKOFF_S),
            retry=retry_if_exception(retryable),
            before_sleep=before_sleep,
            reraise=True,
        )

    def _pause(self, seconds: float) -> None:
        """The pause before the next attempt, which it then counts."""
        self.sleep(seconds)
        self.number += 1
        self.attempt_started = self.clock()
