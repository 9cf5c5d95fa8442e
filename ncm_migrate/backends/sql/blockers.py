"""The sessions that block a step on PostgreSQL, seen while it waits: once its statement
fails with lock_not_available it no longer waits, and `pg_blocking_pids` says nothing more,
so a watcher on a second connection reads them during the wait."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger(__name__)

QUERY_CHARS = 200
"""How much of a blocking session's query is shown."""

_BLOCKERS = sa.text(
    "SELECT pid, application_name, state, query_start, left(query, :chars) "
    "FROM pg_stat_activity WHERE pid = ANY(pg_blocking_pids(:pid)) ORDER BY pid"
)


@dataclass(frozen=True)
class Blocker:
    """A session that held a lock the step waited for."""

    pid: int
    application: str
    state: str
    query_start: str
    query: str

    def describe(self) -> str:
        app = f"application '{self.application}'" if self.application else "no application name"
        query = " ".join(self.query.split())
        return (f"pid {self.pid} ({app}, {self.state or 'state unknown'}, query started "
                f"{self.query_start or 'unknown'}: {query!r})")


def read_blockers(conn: Connection, pid: int) -> list[Blocker]:
    """The sessions blocking the backend `pid` right now (none when it does not wait)."""
    rows = conn.execute(_BLOCKERS, {"pid": pid, "chars": QUERY_CHARS}).all()
    conn.rollback()
    return [Blocker(int(r[0]), r[1] or "", r[2] or "", r[3].isoformat() if r[3] else "",
                    r[4] or "") for r in rows]


class BlockerWatch:
    """Reads, from its own connection, who blocks the session `pid` while a step runs.

    `watching()` starts a thread that first waits `first_s` (a step that finishes sooner
    costs no connection), then reads the blockers every `every_s` until the step ends; the
    last non-empty reading is kept in `blockers`. The connection is made once, on first
    need, and closed by `close()`."""

    def __init__(self, make_engine: Callable[[], Engine], pid: int, first_s: float,
                 every_s: float) -> None:
        self.make_engine = make_engine
        self.pid = pid
        self.first_s = first_s
        self.every_s = every_s
        self.blockers: list[Blocker] = []
        self._engine: Engine | None = None
        self._conn: Connection | None = None
        self._failed = False

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        done = threading.Event()
        self.blockers = []
        thread = threading.Thread(target=self._watch, args=(done,), name="ncm-blockers",
                                  daemon=True)
        thread.start()
        try:
            yield
        finally:
            done.set()
            thread.join(timeout=10)

    def _watch(self, done: threading.Event) -> None:
        wait = self.first_s
        while not done.wait(wait) and not self._failed:
            wait = self.every_s
            try:
                if self._conn is None:
                    self._engine = self.make_engine()
                    self._conn = self._engine.connect()
                found = read_blockers(self._conn, self.pid)
            except sa.exc.DBAPIError as exc:
                log.debug("could not read the sessions blocking pid %d: %s", self.pid, exc)
                self._failed = True  # the step's own error is what matters: stop trying
                return
            if found:
                self.blockers = found

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self._conn is not None:
                self._conn.close()
        if self._engine is not None:
            self._engine.dispose()
        self._engine, self._conn = None, None
