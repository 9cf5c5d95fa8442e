"""The SQL backend's locks: one by name per database, held by the backend's connection
(PostgreSQL's advisory locks, MySQL/MariaDB's GET_LOCK, a lock file beside a SQLite file,
an in-process lock for an in-memory database).

Waiters wait in the server (`locking.wait_blocking`): a blocking `pg_advisory_lock` under
a `lock_timeout`, `GET_LOCK` with a timeout, so that the next runner goes on the moment the
lock is let go, where polling slept up to half a second past it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ...locking import BLOCKING_CHUNK_S, file_lock, lock_key, lock_name, wait_blocking
from ...urls import sqlite_file

if TYPE_CHECKING:
    from .backend import SqlBackend

log = logging.getLogger(__name__)
_memory_locks: dict[str, threading.Lock] = {}
T = TypeVar("T")


def _locking(backend: SqlBackend, fn: Callable[[], T]) -> T:
    with backend.database_errors("taking its migration lock"):
        return backend.in_driver(fn)


@contextmanager
def named_lock(backend: SqlBackend, name: str, timeout_s: float) -> Iterator[None]:
    """The lock `name` of `backend`'s database, waited for up to `timeout_s`."""
    config = backend.config
    what = f"service '{config.name}'"
    dialect = backend.dialect
    conn = backend.conn
    chunk = BLOCKING_CHUNK_S
    if backend.read_timeout_s > 0:  # a statement waiting longer would look like a lost server
        chunk = min(chunk, backend.read_timeout_s / 2)
    if dialect == "postgresql":
        key = lock_key(lock_name("pg", name))

        def take_pg(wait_s: float) -> bool:
            if wait_s <= 0:
                got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key})
                ok = bool(got.scalar())
                conn.commit()
                return ok
            try:
                # A lock_timeout of its own (for this transaction only) bounds the wait.
                conn.execute(sa.text("SELECT set_config('lock_timeout', :t, true)"),
                             {"t": f"{max(1, round(wait_s * 1000))}ms"})
                conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            except sa.exc.DBAPIError as exc:
                if _sqlstate(exc) != "55P03":  # lock_not_available: the wait ran out
                    raise
                conn.rollback()
                return False
            conn.commit()  # the advisory lock is the session's: it outlives the transaction
            return True

        wait_blocking(lambda s: _locking(backend, lambda: take_pg(s)), timeout_s, what, chunk)
        try:
            yield
        finally:
            _release(backend, sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    elif dialect in ("mysql", "mariadb"):
        db = _locking(backend, lambda: conn.exec_driver_sql("SELECT DATABASE()").scalar()) or ""
        mname = lock_name(str(db), name)

        def take_my(wait_s: float) -> bool:
            backend.lock_session = _thread_id(conn)  # a signal while waiting kills this one
            got = conn.execute(sa.text("SELECT GET_LOCK(:n, :t)"), {"n": mname, "t": wait_s})
            ok = got.scalar() == 1
            conn.commit()
            return ok

        wait_blocking(lambda s: _locking(backend, lambda: take_my(s)), timeout_s, what, chunk)
        try:
            yield
        finally:
            _release(backend, sa.text("SELECT RELEASE_LOCK(:n)"), {"n": mname})
    else:
        assert config.database_url is not None
        path = sqlite_file(config.database_url)
        if path is None:
            mem = _memory_locks.setdefault(config.database_url, threading.Lock())
            wait_blocking(lambda s: mem.acquire(timeout=s) if s > 0 else mem.acquire(False),
                          timeout_s, what)
            try:
                yield
            finally:
                mem.release()
        else:
            with file_lock(path.with_name(f"{path.name}.{name}.lock"), timeout_s, what):
                yield


def _release(backend: SqlBackend, stmt: sa.TextClause, params: dict[str, Any]) -> None:
    conn = backend.live_conn
    if conn is None:
        return  # a lost connection: the server releases the lock when it sees it gone
    backend.in_driver(lambda: _release_now(backend, conn, stmt, params))


def _release_now(backend: SqlBackend, conn: Connection, stmt: sa.TextClause,
                 params: dict[str, Any]) -> None:
    try:
        if conn.in_transaction():
            conn.rollback()
        conn.execute(stmt, params)
        conn.commit()
    except sa.exc.DBAPIError:
        log.warning("could not release the lock of %s; closing the connection releases it",
                    backend.config.name)


def _sqlstate(exc: sa.exc.DBAPIError) -> str | None:
    """The SQLSTATE of a PostgreSQL error: psycopg's `sqlstate`, asyncpg's adapted `pgcode`."""
    for attribute in ("sqlstate", "pgcode"):
        code = getattr(exc.orig, attribute, None)
        if isinstance(code, str):
            return code
    return None


def _thread_id(conn: Connection) -> int | None:
    """The MySQL session of `conn` (PyMySQL's and mysqlclient's public `thread_id()`: its
    CONNECTION_ID(), read without a query); None for drivers without it."""
    thread_id = getattr(conn.connection.dbapi_connection, "thread_id", None)
    return int(thread_id()) if callable(thread_id) else None

