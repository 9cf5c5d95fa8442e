"""A runner waiting for the migration lock waits in the server (a blocking advisory lock,
GET_LOCK with a timeout), so it goes on the moment the holder lets go; it still gives up
after `lock.timeout_s`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from ncm_migrate.backends import make_backend
from ncm_migrate.config import ConnectSettings
from ncm_migrate.errors import LockTimeout
from ncm_migrate.model import ServiceConfig

SAFETY_S = 120.0  # the waiter's lock timeout: only a bound on a broken test, never a measure


def _waiting_in_server(url: str) -> Callable[[], bool]:
    """Whether a session of `url`'s database waits in the server for a lock ours takes."""
    engine = sa.create_engine(url)
    if engine.dialect.name == "postgresql":
        query = ("SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                 "WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = current_database()")
    else:
        query = ("SELECT count(*) FROM information_schema.PROCESSLIST "
                 "WHERE STATE = 'User lock' AND INFO LIKE 'SELECT GET_LOCK(%%'")

    def check() -> bool:
        with engine.connect() as conn:
            return bool(conn.exec_driver_sql(query).scalar())

    return check


def _until_waiting(condition: Callable[[], bool], waiter: threading.Thread) -> None:
    """Until `condition` holds; a waiter that gives up first (its own `lock.timeout_s`,
    polling where it should wait in the server) fails the test, with no clock of ours."""
    while not condition():
        assert waiter.is_alive(), "the waiter gave up without ever waiting in the server"
        time.sleep(0.02)


DRIVERS = {  # the async drivers' errors and timeouts differ from the sync ones'
    "postgresql": ("pg_url", None), "postgresql+asyncpg": ("pg_url", "postgresql+asyncpg"),
    "mysql": ("mysql_url", None), "mysql+aiomysql": ("mysql_url", "mysql+aiomysql"),
}


def _url(request: pytest.FixtureRequest, server: str) -> tuple[str, str]:
    """The sync URL (for looking on) and the one the backends use."""
    fixture, driver = DRIVERS[server]
    url = str(request.getfixturevalue(fixture))
    return url, url if driver is None else driver + url[url.index("://"):]


@pytest.mark.parametrize("server", list(DRIVERS))
def test_a_waiter_waits_in_the_server_and_goes_on_at_release(
        request: pytest.FixtureRequest, server: str, tmp_path: Path) -> None:
    url, backend_url = _url(request, server)
    config = ServiceConfig(name="users", root=tmp_path, database_url=backend_url)
    holder = make_backend(config, ConnectSettings())
    waiter = make_backend(config, ConnectSettings())
    holder.open()
    waiter.open()
    got = threading.Event()
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            with waiter.lock(SAFETY_S):
                got.set()
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    try:
        with holder.lock(5.0):
            thread = threading.Thread(target=wait)
            thread.start()
            _until_waiting(_waiting_in_server(url), thread)  # polling never shows as waiting
            assert not got.is_set()
        thread.join(SAFETY_S)
        assert not errors and got.is_set()
    finally:
        waiter.close()
        holder.close()


@pytest.mark.parametrize("server", list(DRIVERS))
def test_a_waiter_still_gives_up_after_the_lock_timeout(
        request: pytest.FixtureRequest, server: str, tmp_path: Path) -> None:
    _, backend_url = _url(request, server)
    config = ServiceConfig(name="users", root=tmp_path, database_url=backend_url)
    holder = make_backend(config, ConnectSettings())
    waiter = make_backend(config, ConnectSettings())
    holder.open()
    waiter.open()
    try:
        with (holder.lock(5.0), pytest.raises(LockTimeout, match=r"lock\.timeout_s"),
              waiter.lock(0.3)):
            pass
        with waiter.lock(5.0):  # the waiter's connection is usable after giving up
            pass
    finally:
        waiter.close()
        holder.close()
