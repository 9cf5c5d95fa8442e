"""The attempts of the steps of one SQL `apply`: each step's timeouts told to the server once
the service's lock is held, who blocks it seen while it waits (PostgreSQL), the statements
its code runs counted (MySQL/MariaDB), and what may be retried after a lock wait ran out
or a deadlock picked it: on PostgreSQL any attempt (its transaction rolled back, nothing
stays); on MySQL/MariaDB, whose DDL commits as it goes, only one whose first statement was
the one that timed out.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ...model import Revision, Step
from .blockers import Blocker, BlockerWatch
from .ddl_timeouts import Attempts, lock_failure, set_timeouts, step_timeouts
from .invalid_indexes import drop_concurrently, find_invalid

if TYPE_CHECKING:
    from .backend import SqlBackend

WATCH_FIRST_S = 1.0
"""The longest a step waits before its blockers are looked for (sooner when lock_timeout
is shorter): a step that ends sooner costs no second connection."""


class StepAttempts:
    """The current step's `Attempts` (`current`), and what its attempts need besides."""

    def __init__(self, backend: SqlBackend, retry: bool = True) -> None:
        self.backend = backend
        # False where a rolled-back step cannot be run again from here: PostgreSQL under the
        # service's env.py, whose transactions are Alembic's own loop's.
        self.retry = retry
        self.ddl = backend.ddl
        self.dialect = backend.dialect
        self.current: Attempts | None = None
        self.watch: BlockerWatch | None = None
        self.blockers: list[Blocker] = []
        # MySQL/MariaDB: the statements the current attempt's code has sent so far;
        # PostgreSQL: its commits (an `autocommit_block()`, for CREATE INDEX CONCURRENTLY).
        self.statements = 0
        self.commits = 0
        self._counted: sa.Connection | None = None

    def begin(self, revision: Revision) -> Attempts:
        """A step's first attempt begins."""
        self.current = Attempts(self.ddl, step_timeouts(self.ddl, revision),
                                what=f"{revision.service}:{revision.revision}")
        self.blockers = []
        return self.current

    @property
    def attempts(self) -> Attempts:
        assert self.current is not None
        return self.current

    def prepare(self, conn: sa.Connection) -> None:
        """In the attempt's transaction, before the step's code: its timeouts."""
        set_timeouts(conn, self.dialect, self.attempts.timeouts)
        self.statements = self.commits = 0

    # -- INVALID indexes (PostgreSQL) -------------------------------------------------------

    def clear_invalid(self, conn: sa.Connection, revision: Revision) -> None:
        """Before a step runs (again): the indexes it names that a failed concurrent build
        left INVALID, dropped concurrently, so that it builds them afresh."""
        if self.dialect == "postgresql":
            found = find_invalid(conn, [revision])
            if found:
                drop_concurrently(conn, found)

    def invalid_note(self, conn: sa.Connection, revision: Revision) -> str:
        """After a step failed: the INVALID indexes it left, and what to do about them."""
        if self.dialect != "postgresql":
            return ""
        try:
            found = find_invalid(conn, [revision])
        except sa.exc.DBAPIError:
            return ""
        if not found:
            return ""
        names = ", ".join(i.name for i in found)
        return (f"; it left the INVALID index {names} (a CREATE INDEX CONCURRENTLY that failed):"
                f" `manage.py repair {revision.service}` drops it, and running the revision "
                "again drops and builds it afresh")

    # -- who blocks (PostgreSQL) ----------------------------------------------------------

    def watch_blockers(self, conn: sa.Connection) -> None:
        """Be ready to see who blocks the steps run on `conn` (PostgreSQL, with a
        lock_timeout): its server process id, read without a query where the driver has it."""
        if self.dialect != "postgresql" or self.watch is not None:
            return
        self.watch = BlockerWatch(self.backend.side_engine, _backend_pid(conn), 0.0, 0.0)

    @contextlib.contextmanager
    def waiting(self) -> Iterator[None]:
        """Around an attempt: its blockers read while it waits (the last ones seen kept)."""
        lock_s = self.attempts.timeouts.lock_s
        if self.watch is None or lock_s <= 0:
            yield
            return
        self.watch.first_s = min(WATCH_FIRST_S, lock_s / 2)
        self.watch.every_s = max(0.05, min(WATCH_FIRST_S, lock_s / 4))
        try:
            with self.watch.watching():
                yield
        finally:
            if self.watch.blockers:
                self.blockers = self.watch.blockers

    # -- what each attempt ran (MySQL/MariaDB) ----------------------------------------------

    def count_statements(self, conn: sa.Connection) -> None:
        """Count the statements and commits of each attempt on `conn`."""
        if self._counted is None:
            sa.event.listen(conn, "before_cursor_execute", self._count)
            sa.event.listen(conn, "commit", self._count_commit)
            self._counted = conn

    def _count(self, *_args: Any) -> None:
        self.statements += 1

    def _count_commit(self, *_args: Any) -> None:
        self.commits += 1

    # -- which failures are retried -----------------------------------------------------------

    def retryable_in_transaction(self, exc: BaseException) -> bool:
        """PostgreSQL: a lock timeout or deadlock, its transaction rolled back, when the
        step's code committed nothing of its own before (in an `autocommit_block()`)."""
        return (self.retry and self.dialect == "postgresql" and lock_failure(exc) is not None
                and not self.commits)

    def retryable_first_statement(self, exc: BaseException) -> bool:
        """MySQL/MariaDB: a lock timeout or deadlock of the step's first statement, before
        which nothing of the step was committed."""
        return (self.dialect in ("mysql", "mariadb") and lock_failure(exc) is not None
                and self.statements <= 1)

    def left_nothing(self, exc: BaseException, transactional: bool) -> bool:
        """Whether a step that failed with `exc` waiting on a lock left nothing behind."""
        if lock_failure(exc) is None:
            return False
        return (transactional and not self.commits) or (not transactional and self.statements <= 1)

    # -- messages -----------------------------------------------------------------------------

    def explained(self, message: str, step: Step, exc: BaseException, blocked: bool,
                  conn: sa.Connection | None, revision: Revision) -> str:
        """A failed step's `message`, told as a lock wait that ran out (`blocked`), or with
        why its lock timeout was not retried, and the INVALID indexes it left (read on
        `conn`, if it is still usable)."""
        if blocked:
            message = self.blocked_message(step, exc)
        elif self.current is not None and lock_failure(exc) is not None:
            message += self.not_retried_note(exc)
        return message + (self.invalid_note(conn, revision) if conn is not None else "")

    def blocked_message(self, step: Step, exc: BaseException) -> str:
        """Why a step gave up on its locks: its attempts, the settings, who blocked it."""
        attempts = self.attempts
        timeouts = attempts.timeouts
        setting = "lock_wait_timeout" if self.dialect in ("mysql", "mariadb") else "lock_timeout"
        wait = f"{timeouts.lock_ms} ms" if timeouts.lock_ms else "none"
        blockers = "; ".join(b.describe() for b in self.blockers)
        if self.dialect == "postgresql":
            blockers = f" Blocking it: {blockers}." if blockers else (
                " No blocking session was seen (it may have ended meanwhile).")
        tries = "attempt" if attempts.number == 1 else f"{attempts.number} attempts"
        policy = (f"ddl.retries = {self.ddl.retries}, ddl.retry_budget_s = "
                  f"{self.ddl.retry_budget_s:g}" if self.retry else
                  "not retried: with use_env_py the service's env.py runs its own loop")
        return (
            f"Revision {step.service}:{step.revision} could not take its locks: its {tries} "
            f"over {attempts.elapsed_ms() / 1000:.1f}s ended in a {lock_failure(exc)} "
            f"({setting} {wait}; {policy}).{blockers} Nothing of it stays; when the sessions "
            "holding its tables' locks are done, run the same command again."
        )

    def not_retried_note(self, exc: BaseException) -> str:
        """Why a lock timeout was not retried: part of the step was committed before it."""
        if self.dialect == "postgresql":
            return (f" (a {lock_failure(exc)} after its code committed part of it, in an "
                    "autocommit_block(), so it was not retried)")
        return (f" (a {lock_failure(exc)} at its statement {self.statements}: the statements "
                "before it were committed, as MySQL commits DDL as it runs, so it was not retried)")

    def close(self) -> None:
        if self.watch is not None:
            self.watch.close()
        if self._counted is not None:
            with contextlib.suppress(Exception):
                sa.event.remove(self._counted, "before_cursor_execute", self._count)
                sa.event.remove(self._counted, "commit", self._count_commit)
            self._counted = None


def _backend_pid(conn: sa.Connection) -> int:
    """The server process of `conn`: psycopg's `info.backend_pid`, psycopg2's
    `get_backend_pid()` (both libpq's, no query), else `pg_backend_pid()`."""
    dbapi = conn.connection.dbapi_connection
    info = getattr(dbapi, "info", None)
    pid = getattr(info, "backend_pid", None)
    if isinstance(pid, int):
        return pid
    get = getattr(dbapi, "get_backend_pid", None)
    if callable(get):
        return int(get())
    found = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
    conn.commit()
    return int(found or 0)
