"""The SQL backend's locks: one by name per database, held by the backend's connection
(PostgreSQL's advisory locks, MySQL/MariaDB's GET_LOCK, a lock file beside a SQLite file,
an in-process lock for an in-memory database)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ...locking import file_lock, lock_key, lock_name, wait_for
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
    if dialect == "postgresql":
        key = lock_key(lock_name("pg", name))

        def try_pg() -> bool:
            got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key})
            ok = bool(got.scalar())
            conn.commit()
            return ok

        wait_for(lambda: _locking(backend, try_pg), timeout_s, what)
        try:
            yield
        finally:
            _release(backend, sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    elif dialect in ("mysql", "mariadb"):
        db = _locking(backend, lambda: conn.exec_driver_sql("SELECT DATABASE()").scalar()) or ""
        mname = lock_name(str(db), name)

        def try_my() -> bool:
            got = conn.execute(sa.text("SELECT GET_LOCK(:n, 0)"), {"n": mname}).scalar()
            conn.commit()
            backend.lock_session = _thread_id(conn)
            return got == 1

        wait_for(lambda: _locking(backend, try_my), timeout_s, what)
        try:
            yield
        finally:
            _release(backend, sa.text("SELECT RELEASE_LOCK(:n)"), {"n": mname})
    else:
        assert config.database_url is not None
        path = sqlite_file(config.database_url)
        if path is None:
            mem = _memory_locks.setdefault(config.database_url, threading.Lock())
            wait_for(lambda: mem.acquire(blocking=False), timeout_s, what)
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


def _thread_id(conn: Connection) -> int | None:
    """The MySQL session of `conn` (PyMySQL's and mysqlclient's public `thread_id()`: its
    CONNECTION_ID(), read without a query); None for drivers without it."""
    thread_id = getattr(conn.connection.dbapi_connection, "thread_id", None)
    return int(thread_id()) if callable(thread_id) else None

