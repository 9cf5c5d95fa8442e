"""SQL engines: a service's URL made into an SQLAlchemy engine that does what migrations need
on every database (driver arguments, connect and read deadlines and TCP keepalives with
`sockets.py`, transactional DDL on SQLite), and what the drivers' errors mean."""

from __future__ import annotations

import contextlib
import math
import re
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

from ...config import ConnectSettings
from ...errors import DriverMissing
from ...urls import sync_equivalent
from .sockets import Deadline, keepalive_params, psycopg_connect, pymysql_connect

if TYPE_CHECKING:
    # Imported where it is used: SQLAlchemy's asyncio extension pulls in the ORM.
    from sqlalchemy.ext.asyncio import AsyncEngine


Timeouts = ConnectSettings | float
"""`connect.*` settings, or just a connect timeout (the other settings their defaults)."""


def connect_settings(timeouts: Timeouts) -> ConnectSettings:
    """`timeouts` as `connect.*` settings."""
    if isinstance(timeouts, ConnectSettings):
        return timeouts
    return ConnectSettings(timeout_s=timeouts)


def _engine_args(url: str, timeouts: Timeouts) -> tuple[sa.URL, dict[str, Any]]:
    """The URL (bare `mysql://` gets PyMySQL) and driver arguments: a connect timeout, TCP
    keepalives and a read timeout where the driver has them (`connect.*`), for SQLite a
    busy timeout, for psycopg no automatic prepares."""
    net = connect_settings(timeouts)
    parsed = sa.engine.make_url(url)
    backend = parsed.get_backend_name()
    if backend in ("mysql", "mariadb") and parsed.drivername in ("mysql", "mariadb"):
        parsed = parsed.set(drivername=f"{backend}+pymysql")
    args: dict[str, Any] = {}
    driver = parsed.get_driver_name()
    if driver in ("psycopg", "psycopg2", "pymysql", "psycopg_async", "aiomysql", "asyncmy"):
        args["connect_timeout"] = max(1, math.ceil(net.timeout_s))
    elif driver == "asyncpg":
        args["timeout"] = max(1.0, net.timeout_s)
        if net.read_timeout_s > 0:
            args["command_timeout"] = net.read_timeout_s
    elif backend == "sqlite":
        args["timeout"] = 30
    if driver in ("psycopg", "psycopg2", "psycopg_async"):
        args.update(keepalive_params(net.keepalive_s))
    if driver == "pymysql" and net.read_timeout_s > 0:
        args["read_timeout"] = args["write_timeout"] = net.read_timeout_s
    if driver in ("psycopg", "psycopg_async"):
        # No automatic server-side prepares: a migration runs most statements once, and
        # psycopg drops every prepared statement after each ALTER or DROP (one more round
        # trip, DEALLOCATE ALL), so the ledger insert was prepared again and again.
        args["prepare_threshold"] = None
    return parsed, args


def _own_sockets(engine: Engine, net: ConnectSettings) -> None:
    """Connections made here where the driver cannot bound a wait by itself: PyMySQL's
    handshake (with keepalives on its socket), psycopg's reads (`connect.read_timeout_s`);
    and PostgreSQL's own keepalives on the server's side of the connection."""
    driver = engine.dialect.driver
    server = keepalive_params(net.keepalive_s)
    if engine.dialect.name == "postgresql" and server:
        # The server notices a runner that is gone (a network partition, a VM that froze)
        # and ends its session, which lets its advisory lock go for the next runner, in
        # about twice connect.keepalive_s instead of the system's two hours. Set after
        # connecting, not in the startup packet: PgBouncer refuses `options` there.
        settings = ", ".join(
            f"set_config('{name}', '{server[param]}', false)"
            for name, param in (("tcp_keepalives_idle", "keepalives_idle"),
                                ("tcp_keepalives_interval", "keepalives_interval"),
                                ("tcp_keepalives_count", "keepalives_count"))
        )

        @sa.event.listens_for(engine, "connect")
        def _server_keepalives(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute(f"SELECT {settings}")
            cursor.close()
            dbapi_conn.commit()

    if driver == "pymysql":
        @sa.event.listens_for(engine, "do_connect")
        def _pymysql(_dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
            return pymysql_connect(cparams, net.timeout_s, net.keepalive_s)

    elif driver == "psycopg" and net.read_timeout_s > 0:
        deadline = _deadlines[engine] = Deadline(net.read_timeout_s)

        @sa.event.listens_for(engine, "do_connect")
        def _psycopg(_dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]) -> Any:
            return psycopg_connect(cargs, cparams, deadline)


_deadlines: weakref.WeakKeyDictionary[Engine, Deadline] = weakref.WeakKeyDictionary()
"""The read deadline of each engine that has one (see `_own_sockets`)."""


def read_deadline(engine: Engine) -> Deadline | None:
    """The read deadline `engine`'s connections run under (`connect.read_timeout_s`), if any."""
    return _deadlines.get(engine)


def dispose_engine(engine: Engine) -> None:
    """Close `engine`'s connections, and its read deadline's timer with them."""
    deadline = _deadlines.pop(engine, None)
    if deadline is not None:
        deadline.close()
    engine.dispose()


def _transactional_sqlite(engine: Engine) -> None:
    """Real transactional DDL on SQLite: the driver must not commit before DDL (SQLAlchemy's
    documented recipe, for pysqlite and aiosqlite alike)."""

    @sa.event.listens_for(engine, "connect")
    def _no_driver_autocommit(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN")


_EXTRA_OF_DRIVER = {
    "psycopg": "postgres", "psycopg2": "postgres", "pymysql": "mysql", "mysqldb": "mysql",
    "asyncpg": "async", "psycopg_async": "async", "aiomysql": "async", "asyncmy": "async",
    "aiosqlite": "async",
}


@contextlib.contextmanager
def _driver_installed(url: sa.URL) -> Iterator[None]:
    """A missing driver is one sentence naming the extra that installs it, not a traceback."""
    try:
        yield
    except (ModuleNotFoundError, sa.exc.NoSuchModuleError) as exc:
        driver = url.get_driver_name()
        extra = _EXTRA_OF_DRIVER.get(driver)
        hint = f"pip install 'ncm-migrate[{extra}]'" if extra else f"install the {driver} package"
        raise DriverMissing(
            f"The database driver '{driver}' for {url.drivername}:// URLs is not installed "
            f"({exc}); {hint}."
        ) from None


def create_engine(url: str, timeouts: Timeouts) -> Engine:
    """A sync engine that does what migrations need on every database (for an async URL,
    through its driver's sync sibling: the same database)."""
    parsed, args = _engine_args(sync_equivalent(url), timeouts)
    with _driver_installed(parsed):
        engine = sa.create_engine(parsed, poolclass=NullPool, connect_args=args)
    if parsed.get_backend_name() == "sqlite":
        _transactional_sqlite(engine)
    _own_sockets(engine, connect_settings(timeouts))
    return engine


def create_async_engine(url: str, timeouts: Timeouts) -> AsyncEngine:
    """The same for an async driver URL (asyncpg, psycopg_async, aiomysql, asyncmy,
    aiosqlite): migrations then run through `AsyncConnection.run_sync`, as in Alembic's
    asyncio recipe."""
    from sqlalchemy.ext.asyncio import create_async_engine as make

    parsed, args = _engine_args(url, timeouts)
    with _driver_installed(parsed):
        engine = make(parsed, poolclass=NullPool, connect_args=args)
    if parsed.get_backend_name() == "sqlite":
        _transactional_sqlite(engine.sync_engine)
    return engine


# The server answered and said no: a bad password or user, or no such database.
_REFUSED_SQLSTATES = {"28P01", "28000", "3D000"}
_REFUSED_MYSQL_CODES = {1044, 1045, 1049, 1698}


_REFUSED_PG_TEXT = re.compile(
    r"password authentication failed|database \".*\" does not exist|role \".*\" does not exist"
)


_LOST_TEXT = re.compile(
    r"server closed the connection|consuming input failed|connection is (lost|closed)|"
    r"Lost connection to (MySQL|MariaDB) server|MySQL server has gone away|"
    r"terminating connection|connection (was )?reset|broken pipe",
    re.IGNORECASE,
)


def says_lost(exc: BaseException) -> bool:
    """A driver error that says the connection went away (for drivers whose disconnect
    SQLAlchemy does not flag as `connection_invalidated` in every case)."""
    orig = getattr(exc, "orig", None) or exc
    args: tuple[object, ...] = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in (2006, 2013, 2055):
        return True
    return bool(_LOST_TEXT.search(str(orig)))


def is_refusal(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", None) or exc
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if state in _REFUSED_SQLSTATES or _REFUSED_PG_TEXT.search(str(orig)):
        return True
    args: tuple[object, ...] = getattr(orig, "args", ())
    return bool(args) and isinstance(args[0], int) and args[0] in _REFUSED_MYSQL_CODES


def short_reason(exc: BaseException) -> str:
    """The first line of a driver error, without SQLAlchemy's background link; MySQL's
    drivers' `(code, 'message')` read as `message (MySQL error code)`."""
    orig = getattr(exc, "orig", None)
    error = orig if orig is not None else exc
    args: tuple[object, ...] = getattr(error, "args", ())
    if len(args) == 2 and isinstance(args[0], int) and isinstance(args[1], str) and args[1]:
        return f"{args[1].strip().splitlines()[0]} (MySQL error {args[0]})"
    text = str(error).strip()
    return text.splitlines()[0] if text else type(exc).__name__

