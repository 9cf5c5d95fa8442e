"""SQL services on SQLAlchemy and Alembic: engine, lock, ledger, and applying revisions.

Each service's `migrations/` is a plain Alembic script directory and needs no `env.py`:
the environment is built here. Alembic's own steps run every revision, so its version
table (and `alembic current`) always agrees; `_SqlRun` runs one `apply`, and reaches
Alembic's internals only through `alembic_bridge`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime
from io import StringIO
from types import ModuleType
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.pool import NullPool

from ... import ledger as ledger_rules
from ...config import ConnectSettings
from ...discovery import versions_dir
from ...errors import (
    DatabaseUnreachable,
    DriverMissing,
    Interrupted,
    MigrationFailed,
    NcmError,
    RevisionFileError,
    signal_name,
)
from ...locking import file_lock, lock_key, lock_name, wait_for
from ...model import LedgerRow, Revision, RunContext, ServiceConfig, ServiceState, Step, StepResult
from ...pyfiles import STOPPED, exit_call, load_revision_module, signal_of, stopped_error
from ...urls import is_async, sqlite_file, sync_equivalent
from .. import ConnectFailed, ServerInfo, StepCallback
from . import alembic_bridge
from .metadata import target_metadata
from .sockets import Deadline, keepalive_params, psycopg_connect, pymysql_connect

if TYPE_CHECKING:
    # Imported where they are used: Alembic and SQLAlchemy's asyncio extension (which pulls
    # in the ORM) cost read-only commands (showmigrations, a no-op migrate) ~0.1 s to load.
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger(__name__)


class _LedgerTime(sa.DateTime):
    """The ledger's times: microseconds everywhere, also on MySQL/MariaDB, whose plain
    DATETIME keeps whole seconds (steps of one second would show in any order)."""

    def __init__(self) -> None:
        super().__init__(timezone=True)


@compiles(_LedgerTime, "mysql")
@compiles(_LedgerTime, "mariadb")
def _ledger_time_mysql(_type: _LedgerTime, _compiler: Any, **_kw: Any) -> str:
    return "DATETIME(6)"


_ledger_md = sa.MetaData()
LEDGER = sa.Table(
    ledger_rules.TABLE,
    _ledger_md,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("service", sa.String(64), nullable=False),
    sa.Column("revision", sa.String(128), nullable=False),
    sa.Column("direction", sa.String(4), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("checksum", sa.String(64)),
    sa.Column("started_at", _LedgerTime(), nullable=False),
    sa.Column("finished_at", _LedgerTime()),
    sa.Column("duration_ms", sa.Float),
    sa.Column("actor", sa.String(ledger_rules.ACTOR_LENGTH), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("environment", sa.String(ledger_rules.ENVIRONMENT_LENGTH), nullable=False),
    sa.Column("tool_version", sa.String(32), nullable=False),
    sa.Index("ix_ncm_migrations_service", "service", "id"),
)
# Built once: a statement built per step costs SQLAlchemy a cache-key walk each time.
_LEDGER_INSERT = LEDGER.insert()
# The same without fetching the new row's id (no RETURNING): for rows never updated later.
_LEDGER_RECORD = LEDGER.insert().inline()
_LEDGER_FINISH = LEDGER.update().where(LEDGER.c.id == sa.bindparam("row_id"))
# MySQL/MariaDB: the ledger's time columns' fractional digits (None: no ledger yet).
_MYSQL_TIME_PRECISION = sa.text(
    "SELECT MIN(DATETIME_PRECISION) FROM information_schema.COLUMNS "
    "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :table "
    "AND COLUMN_NAME IN ('started_at', 'finished_at')"
)
_STATE_ROWS = sa.text(
    f"SELECT revision, direction, status, checksum FROM {ledger_rules.TABLE} "
    "WHERE service = :service ORDER BY id"
)
_memory_locks: dict[str, threading.Lock] = {}
P = ParamSpec("P")
T = TypeVar("T")


_DOING = {
    "read_state": "reading its migration state",
    "current_heads": "reading its version table",
    "history": "reading its ledger",
    "server_info": "reading the server's version and privileges",
    "apply": "preparing its ledger",
    "verify": "verifying a revision",
    "record": "recording in its ledger",
}


def _driver_call(
    method: Callable[Concatenate[SqlBackend, P], T],
) -> Callable[Concatenate[SqlBackend, P], T]:
    """Run a public method inside the async driver's context (see `SqlBackend._in_driver`);
    a database error that escapes it becomes one sentence and an exit code."""
    doing = _DOING.get(method.__name__, method.__name__)

    def wrapper(self: SqlBackend, /, *args: P.args, **kwargs: P.kwargs) -> T:
        with self.database_errors(doing):
            return self._in_driver(lambda: method(self, *args, **kwargs))

    functools.update_wrapper(wrapper, method)
    return wrapper


Timeouts = ConnectSettings | float
"""`connect.*` settings, or just a connect timeout (the other settings their defaults)."""


def _settings(timeouts: Timeouts) -> ConnectSettings:
    if isinstance(timeouts, ConnectSettings):
        return timeouts
    return ConnectSettings(timeout_s=timeouts)


def _engine_args(url: str, timeouts: Timeouts) -> tuple[sa.URL, dict[str, Any]]:
    """The URL (bare `mysql://` gets PyMySQL) and driver arguments: a connect timeout, TCP
    keepalives and a read timeout where the driver has them (`connect.*`), for SQLite a
    busy timeout, for psycopg no automatic prepares."""
    net = _settings(timeouts)
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
    _own_sockets(engine, _settings(timeouts))
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


def _noop(**_kw: Any) -> None:
    return None


def _no_steps(_heads: Any, _mctx: Any) -> tuple[()]:
    return ()


class SqlBackend:
    """One SQL service's database."""

    def __init__(self, config: ServiceConfig, timeouts: Timeouts) -> None:
        assert config.database_url is not None
        self.config = config
        self._net = _settings(timeouts)
        self._engine: Engine | None = None
        self._conn: Connection | None = None
        self._async = is_async(config.database_url)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._aengine: AsyncEngine | None = None
        self._aconn: AsyncConnection | None = None
        self._inside_driver = False
        self._translating = False

    # -- connection -------------------------------------------------------------

    @property
    def dialect(self) -> str:
        assert self.config.database_url is not None
        return sa.engine.make_url(self.config.database_url).get_backend_name()

    @property
    def transactional(self) -> bool:
        return self.dialect not in ("mysql", "mariadb")

    def _engine_(self) -> Engine:
        if self._engine is None:
            assert self.config.database_url is not None
            self._engine = create_engine(self.config.database_url, self._net)
        return self._engine

    @property
    def conn(self) -> Connection:
        if self._conn is None:
            raise RuntimeError("SqlBackend.open() was not called")
        return self._conn

    def _in_driver(self, fn: Callable[[], T]) -> T:
        """Run `fn`, which uses `self.conn`; with an async driver, inside
        `AsyncConnection.run_sync` on this backend's own event loop."""
        if not self._async or self._inside_driver:
            return fn()
        assert self._loop is not None and self._aconn is not None

        def inner(_sync_conn: Connection) -> T:
            self._inside_driver = True
            try:
                return fn()
            finally:
                self._inside_driver = False

        return self._loop.run_until_complete(self._aconn.run_sync(inner))

    def open(self, timeout_s: float | None = None) -> None:
        """Connect and run a first query, within `timeout_s` (default `connect.timeout_s`)."""
        if self._conn is not None:
            return
        if timeout_s is not None and timeout_s != self._net.timeout_s:
            self.close()  # the engine holds the connect timeout
            self._net = replace(self._net, timeout_s=timeout_s)
        self._check_sqlite_folder()
        try:
            if self._async:
                self._open_async()
            else:
                self._conn = self._engine_().connect()

            def probe() -> None:
                self.conn.exec_driver_sql("SELECT 1")
                self.conn.commit()

            self._in_driver(probe)
        except (sa.exc.DBAPIError, OSError, TimeoutError) as exc:
            self.close()
            reason = _short(exc)
            if isinstance(exc, TimeoutError) and not str(exc):  # our own deadline (async)
                reason = f"no answer within connect.timeout_s = {self._net.timeout_s:g}s"
            raise ConnectFailed(reason, permanent=_refused(exc)) from None

    def _check_sqlite_folder(self) -> None:
        """A SQLite file's folder is created if missing; one that cannot be, or that is not
        writable for a file not there yet, is no server still starting: not retried."""
        path = sqlite_file(self.config.database_url or "")
        if path is None:
            return
        folder = path.parent
        why = None
        if folder.exists() and not folder.is_dir():
            why = f"{folder} is a file, not a folder"
        else:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                why = f"its folder {folder} cannot be created ({exc.strerror or exc})"
        if why is None and not path.exists() and not os.access(folder, os.W_OK | os.X_OK):
            why = f"its folder {folder} is not writable"
        if why is not None:
            raise ConnectFailed(
                f"its SQLite file {path} cannot be created: {why}; fix the folder or the path "
                f"in the database_url of service {self.config.name!r}", setting=True,
            )

    def _open_async(self) -> None:
        assert self.config.database_url is not None
        self._loop = asyncio.new_event_loop()
        self._aengine = create_async_engine(self.config.database_url, self._net)
        # A deadline for the whole connect: aiomysql and asyncmy, like PyMySQL, read the
        # server's greeting without one.
        self._aconn = self._loop.run_until_complete(
            asyncio.wait_for(self._aengine.connect(), self._net.timeout_s)
        )
        self._conn = self._aconn.sync_connection

    def close(self) -> None:
        if self._async and self._loop is not None:
            loop = self._loop
            with contextlib.suppress(Exception):
                if self._aconn is not None:
                    loop.run_until_complete(self._aconn.close())
                if self._aengine is not None:
                    loop.run_until_complete(self._aengine.dispose())
            loop.close()
            self._loop, self._aconn, self._aengine, self._conn = None, None, None, None
            return
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._engine is not None:
            deadline = _deadlines.pop(self._engine, None)
            if deadline is not None:
                deadline.close()
            self._engine.dispose()
            self._engine = None

    @contextmanager
    def database_errors(self, doing: str) -> Iterator[None]:
        """A database error outside a step, `doing` something: a lost connection is
        `DatabaseUnreachable` (exit 4), any other one sentence with exit 1."""
        if self._translating:
            yield
            return
        self._translating = True
        try:
            yield
        except (sa.exc.DBAPIError, OSError, TimeoutError) as exc:
            lost = self.lost_connection(exc, doing)
            if lost is None and not isinstance(exc, sa.exc.DBAPIError):  # the socket itself
                lost = DatabaseUnreachable(
                    f"Service '{self.config.name}': lost the connection to the database at "
                    f"{self._where()} while {doing} ({exc}); check the network and the server, "
                    "then run the command again."
                )
            if lost is not None:
                raise lost from None
            raise NcmError(
                f"Service '{self.config.name}': the database at {self._where()} failed while "
                f"{doing}: {_short(exc)}"
            ) from None
        finally:
            self._translating = False

    def lost_connection(self, exc: BaseException, doing: str) -> DatabaseUnreachable | None:
        """`exc` as the lost connection it is (exit 4, naming the service and the server,
        never the password), or None when the connection is fine."""
        lost = isinstance(exc, sa.exc.DBAPIError) and (exc.connection_invalidated or _lost_text(exc))
        read_timeout = None
        deadline = _deadlines.get(self._engine) if self._engine is not None else None
        if deadline is not None and deadline.fired:
            read_timeout = deadline.limit_s
        elif lost and self._net.read_timeout_s > 0 and "timed out" in str(exc):  # PyMySQL's own
            read_timeout = self._net.read_timeout_s
        if read_timeout is None and not lost:
            return None
        why = (f"no answer within connect.read_timeout_s = {read_timeout:g}s"
               if read_timeout is not None else _short(exc))
        return DatabaseUnreachable(
            f"Service '{self.config.name}': lost the connection to the database at "
            f"{self._where()} while {doing} ({why}); check the network and the server, then "
            "run the command again."
        )

    def _where(self) -> str:
        """host:port/database of the service's URL (never its password)."""
        assert self.config.database_url is not None
        url = sa.engine.make_url(self.config.database_url)
        if url.get_backend_name() == "sqlite":
            return url.database or ":memory:"
        host = url.host or "localhost"
        return f"{host}:{url.port}/{url.database}" if url.port else f"{host}/{url.database}"

    # -- lock ---------------------------------------------------------------------

    @contextmanager
    def lock(self, timeout_s: float) -> Iterator[None]:
        with self._named_lock(self.config.version_table, timeout_s):
            yield

    def _locking(self, fn: Callable[[], T]) -> T:
        with self.database_errors("taking its migration lock"):
            return self._in_driver(fn)

    @contextmanager
    def _named_lock(self, name: str, timeout_s: float) -> Iterator[None]:
        what = f"service '{self.config.name}'"
        dialect = self.dialect
        conn = self.conn
        if dialect == "postgresql":
            key = lock_key(lock_name("pg", name))

            def try_pg() -> bool:
                got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key})
                ok = bool(got.scalar())
                conn.commit()
                return ok

            wait_for(lambda: self._locking(try_pg), timeout_s, what)
            try:
                yield
            finally:
                self._release(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        elif dialect in ("mysql", "mariadb"):
            db = self._locking(lambda: conn.exec_driver_sql("SELECT DATABASE()").scalar()) or ""
            mname = lock_name(str(db), name)

            def try_my() -> bool:
                got = conn.execute(sa.text("SELECT GET_LOCK(:n, 0)"), {"n": mname}).scalar()
                conn.commit()
                self._session_id = _thread_id(conn)
                return got == 1

            wait_for(lambda: self._locking(try_my), timeout_s, what)
            try:
                yield
            finally:
                self._release(sa.text("SELECT RELEASE_LOCK(:n)"), {"n": mname})
        else:
            assert self.config.database_url is not None
            path = sqlite_file(self.config.database_url)
            if path is None:
                mem = _memory_locks.setdefault(self.config.database_url, threading.Lock())
                wait_for(lambda: mem.acquire(blocking=False), timeout_s, what)
                try:
                    yield
                finally:
                    mem.release()
            else:
                with file_lock(path.with_name(f"{path.name}.{name}.lock"), timeout_s, what):
                    yield

    def _release(self, stmt: sa.TextClause, params: dict[str, Any]) -> None:
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            return  # a lost connection: the server releases the lock when it sees it gone
        self._in_driver(lambda: self._release_now(stmt, params))

    def _release_now(self, stmt: sa.TextClause, params: dict[str, Any]) -> None:
        assert self._conn is not None
        try:
            if self._conn.in_transaction():
                self._conn.rollback()
            self._conn.execute(stmt, params)
            self._conn.commit()
        except sa.exc.DBAPIError:
            log.warning("could not release the lock of %s; closing the connection releases it",
                        self.config.name)

    # -- state --------------------------------------------------------------------

    def _ensure_ledger(self) -> None:
        """The ledger table, created if missing (and on MySQL/MariaDB, one made by a version
        that kept whole seconds widened to microseconds), under a lock of its own: every
        service of the database writes to it."""
        conn = self.conn
        if self.dialect in ("mysql", "mariadb"):
            self._ensure_mysql_ledger()
            return
        if sa.inspect(conn).has_table(ledger_rules.TABLE):
            conn.commit()
            return
        with self._named_lock(ledger_rules.TABLE, 60.0):
            _ledger_md.create_all(conn, tables=[LEDGER], checkfirst=True)
            conn.commit()

    def _ensure_mysql_ledger(self) -> None:
        conn = self.conn

        def precision() -> int | None:
            found = conn.execute(_MYSQL_TIME_PRECISION, {"table": ledger_rules.TABLE}).scalar()
            return None if found is None else int(found)

        if (precision() or 0) >= 6:
            conn.commit()
            return
        with self._named_lock(ledger_rules.TABLE, 60.0):
            found = precision()  # again, under the lock: another runner may have done it
            if found is None:
                _ledger_md.create_all(conn, tables=[LEDGER], checkfirst=True)
            elif found < 6:
                log.info("widening %s's times to microseconds (DATETIME(6))", ledger_rules.TABLE)
                conn.exec_driver_sql(
                    f"ALTER TABLE {ledger_rules.TABLE} MODIFY started_at DATETIME(6) NOT NULL, "
                    "MODIFY finished_at DATETIME(6) NULL"
                )
            conn.commit()

    def _rows(self, service: str | None = None, limit: int | None = None) -> list[LedgerRow]:
        conn = self.conn
        if not sa.inspect(conn).has_table(ledger_rules.TABLE):
            conn.commit()
            return []
        query = sa.select(LEDGER)
        if service is not None:
            query = query.where(LEDGER.c.service == service)
        query = query.order_by(LEDGER.c.id.desc() if limit else LEDGER.c.id)
        if limit:
            query = query.limit(limit)
        rows = [_row(r._mapping) for r in conn.execute(query)]
        conn.commit()
        return list(reversed(rows)) if limit else rows

    @_driver_call
    def current_heads(self) -> tuple[str, ...]:
        heads = self._heads(self._tables())
        self.conn.commit()
        return heads

    def _tables(self) -> set[str]:
        """The tables of the connection's default schema: one catalog query, where a
        `has_table` for each table would cost one (or two) each."""
        return set(sa.inspect(self.conn).get_table_names())

    def _heads(self, tables: set[str]) -> tuple[str, ...]:
        # What Alembic's MigrationContext.get_current_heads reads, without importing Alembic.
        conn = self.conn
        table = self.config.version_table
        heads: list[str] = []
        if table in tables:
            # Plain text: nothing to compile (each backend's engine has its own cache).
            quoted = conn.dialect.identifier_preparer.quote(table)
            heads = [row[0] for row in conn.exec_driver_sql(f"SELECT version_num FROM {quoted}")]
        return tuple(sorted(heads))

    def _state_rows(self, tables: set[str]) -> list[ledger_rules.StateRow]:
        """This service's ledger rows with only the columns its state is read from
        (revision, direction, status, checksum), oldest first."""
        conn = self.conn
        rows: list[ledger_rules.StateRow] = []
        if ledger_rules.TABLE in tables:
            result = conn.execute(_STATE_ROWS, {"service": self.config.name})
            rows = [ledger_rules.StateRow(*row) for row in result]
        return rows

    @_driver_call
    def read_state(self, revisions: Mapping[str, Revision]) -> ServiceState:
        # One transaction: the version table and the ledger read as of the same moment.
        tables = self._tables()
        heads = self._heads(tables)
        rows = self._state_rows(tables)
        self.conn.commit()
        applied = _applied_from_heads(heads, revisions)
        unknown = tuple(h for h in heads if h not in revisions)
        return ServiceState(
            heads=heads,
            applied=frozenset(applied),
            dirty=ledger_rules.dirty_mark(rows, self.transactional),
            checksums=tuple(sorted(ledger_rules.applied_checksums(rows).items())),
            unknown=unknown,
        )

    @_driver_call
    def history(self, limit: int | None = None) -> list[LedgerRow]:
        return self._rows(self.config.name, limit)

    @_driver_call
    def server_info(self) -> ServerInfo:
        start = time.perf_counter()
        self.conn.exec_driver_sql("SELECT 1").scalar()
        latency = (time.perf_counter() - start) * 1000
        dialect = self.conn.dialect
        version = ".".join(str(p) for p in (dialect.server_version_info or ()))
        self.conn.commit()
        can_create, extra = self._privileges()
        return ServerInfo(
            server_version=f"{dialect.name} {version}".strip(),
            latency_ms=latency,
            can_create=can_create,
            extra=extra,
        )

    def _privileges(self) -> tuple[bool, tuple[tuple[str, str], ...]]:
        """Whether this user may create tables (and, on PostgreSQL, indexes concurrently)."""
        conn = self.conn
        dialect = self.dialect
        try:
            if dialect == "postgresql":
                can = bool(conn.exec_driver_sql(
                    "SELECT has_schema_privilege(current_schema(), 'CREATE')"
                ).scalar())
                # CREATE INDEX CONCURRENTLY needs no more than CREATE on the schema and
                # ownership of the table, but it cannot run inside a transaction block.
                extra = (("can_create_index_concurrently", str(can).lower()),)
                conn.commit()
                return can, extra
            if dialect == "sqlite":
                path = sqlite_file(self.config.database_url or "")
                return (path is None or os.access(path.parent, os.W_OK)), ()
            probe = "ncm_doctor_probe"
            conn.exec_driver_sql(f"CREATE TABLE IF NOT EXISTS {probe} (id INTEGER)")
            conn.exec_driver_sql(f"DROP TABLE {probe}")
            conn.commit()
            return True, ()
        except sa.exc.DBAPIError:
            conn.rollback()
            return False, ()

    # MySQL: the session that took this service's lock, to stop should a signal cut it short
    # (SQLAlchemy then drops that connection, and `conn` would be a new one).
    _session_id: int | None = None

    def interrupt(self) -> None:
        """MySQL runs a statement to its end after its client was interrupted (an ALTER
        TABLE would go on changing the table after the run said it stopped, holding the
        lock): the session is killed from another connection; its connection is dropped."""
        session, self._session_id = self._session_id, None
        if self.dialect not in ("mysql", "mariadb"):
            return
        if self._conn is not None and not self._async:
            # Dropped without the rollback that closing sends: on a session the kill did
            # not reach, that would wait for the statement to finish.
            with contextlib.suppress(Exception):
                self._conn.invalidate()
            self._conn = None
        if session is None:
            return
        try:
            with self._engine_().connect() as killer:
                killer.exec_driver_sql(f"KILL {int(session)}")
        except sa.exc.DBAPIError as exc:
            if getattr(exc.orig, "args", (None,))[:1] == (1094,):  # no such session: it ended
                return
            log.warning("service '%s': could not stop the interrupted statement on the server: "
                        "%s", self.config.name, _short(exc))

    # -- applying -----------------------------------------------------------------

    @_driver_call
    def apply(
        self,
        steps: Sequence[Step],
        revisions: Mapping[str, Revision],
        ctx: RunContext,
        fake: bool,
        on_step: StepCallback,
    ) -> list[StepResult]:
        self._ensure_ledger()
        return _SqlRun(self, steps, revisions, ctx, fake, on_step).run()

    def _unknown_outcome(self, step: Step) -> str:
        if self.transactional:
            return (f"Nothing of revision {step.revision} stays: the server rolls its "
                    "transaction back when it sees the connection gone.")
        return (f"The revision {step.revision} may be half applied: the service is marked dirty "
                f"(its ledger row stays 'running'); check the database, then run "
                f"manage.py repair {step.service}.")

    def _flush_commits(self) -> None:
        """Synchronous commits again, and every earlier commit made durable: a transaction
        that holds a transaction id commits with a WAL flush, which covers all before it."""
        conn = self.conn
        try:
            if conn.in_transaction():
                conn.rollback()
            conn.exec_driver_sql("SET synchronous_commit TO ON")
            conn.exec_driver_sql("SELECT txid_current()")
            conn.commit()
        except sa.exc.DBAPIError as exc:
            log.warning("service '%s': could not confirm that this run's commits reached the "
                        "disk: %s", self.config.name, _short(exc))

    def _run_alembic(
        self, steps_fn: Any, run_steps: Callable[[MigrationContext], None] | None = None
    ) -> None:
        """Alembic's environment on our connection, running `steps_fn`'s steps in its own
        loop; or, given `run_steps`, Alembic only starts (its version table is created if
        missing, as for any upgrade) and `run_steps` runs the steps in its context."""
        from alembic.config import Config
        from alembic.runtime.environment import EnvironmentContext
        from alembic.script import ScriptDirectory

        cfg = self.config
        config = Config()
        config.set_main_option("script_location", str(cfg.migrations_dir))
        script = ScriptDirectory(
            str(cfg.migrations_dir), version_locations=[str(versions_dir(cfg.migrations_dir))]
        )
        if cfg.use_env_py:
            self._run_env_py(config, script, steps_fn)
            return
        if self.conn.in_transaction():
            self.conn.commit()
        fn = steps_fn if run_steps is None else _no_steps
        with EnvironmentContext(config, script, fn=fn) as env:
            env.configure(
                connection=self.conn,
                version_table=cfg.version_table,
                # `run_steps` opens one transaction per step with begin_transaction(),
                # which needs transactional DDL declared: ours is, also on SQLite (see
                # `_transactional_sqlite`).
                transaction_per_migration=run_steps is None,
                transactional_ddl=True if run_steps is not None else None,
                target_metadata=target_metadata(cfg),
                render_as_batch=self.dialect == "sqlite",
            )
            env.run_migrations()
            if run_steps is not None:
                mctx = env.get_context()
                with alembic_bridge.operations(mctx):
                    run_steps(mctx)

    def _run_env_py(self, config: Config, script: ScriptDirectory, steps_fn: Any) -> None:
        """The service's own env.py, handed our connection as Alembic's cookbook describes,
        and `sqlalchemy.url` for one that opens its own (as the env.py that `alembic init`
        writes does); what it leaves out of `configure()` (the version table) comes from
        the service's settings."""
        assert self.config.database_url is not None
        if self.conn.in_transaction():
            self.conn.commit()
        config.attributes["connection"] = self.conn
        # The real URL, which env.py needs to connect; Alembic's Config is never logged, and
        # an error that quotes it is redacted before it is shown (`urls.redact_known`).
        config.set_main_option("sqlalchemy.url", self.config.database_url.replace("%", "%%"))
        from alembic.runtime.environment import EnvironmentContext

        # Options given here are the defaults of env.py's `configure()` (Alembic documents
        # them as passed on to it): a stock env.py names no version table, and a service
        # sharing a database keeps its own `alembic_version_<svc>`.
        with EnvironmentContext(config, script, fn=steps_fn, version_table=self.config.version_table):
            script.run_env()

    @_driver_call
    def verify(self, revision: Revision) -> str | None:
        from alembic.config import Config
        from alembic.runtime.environment import EnvironmentContext
        from alembic.script import ScriptDirectory

        module = load_revision_module(revision)
        check = getattr(module, "verify", None)
        if check is None:
            return None
        steps_run: list[str] = []

        def steps_fn(_heads: Any, _mctx: MigrationContext) -> Iterator[alembic_bridge.AlembicStep]:
            steps_run.append(revision.revision)
            return iter(())

        try:
            config = Config()
            script = ScriptDirectory(str(self.config.migrations_dir))
            with EnvironmentContext(config, script, fn=steps_fn) as env:
                env.configure(connection=self.conn, version_table=self.config.version_table,
                              target_metadata=target_metadata(self.config))
                with alembic_bridge.operations(env.get_context()):
                    check()
            return None
        except Interrupted:
            raise
        except Exception as exc:
            return f"{type(exc).__name__}: {_short(exc)}"
        except SystemExit as exc:
            return f"SystemExit: verify() called {exit_call(exc)}"
        except KeyboardInterrupt as exc:
            signum = signal_of(exc)
            raise Interrupted(
                f"Interrupted ({signal_name(signum)}) while verifying revision "
                f"{revision.service}:{revision.revision}; nothing was changed.",
                signum, revision.service, revision.revision,
            ) from None
        finally:
            if self.conn.in_transaction():
                self.conn.rollback()

    @_driver_call
    def record(self, revision: str, direction: str, status: str, checksum: str | None,
               ctx: RunContext) -> None:
        self._ensure_ledger()
        now = ledger_rules.utcnow()
        self.conn.execute(
            LEDGER.insert().values(
                service=self.config.name, revision=revision, direction=direction, status=status,
                checksum=checksum, started_at=now, finished_at=now, duration_ms=0.0,
                actor=ctx.actor, host=ctx.host, environment=ctx.environment,
                tool_version=ctx.tool_version,
            )
        )
        self.conn.commit()

    # -- offline ------------------------------------------------------------------

    def offline_sql(
        self, steps: Sequence[Step], revisions: Mapping[str, Revision], start_heads: Sequence[str]
    ) -> str:
        """The SQL `steps` would run, rendered without a database (Alembic's offline mode)."""
        from alembic.config import Config
        from alembic.runtime.environment import EnvironmentContext
        from alembic.script import ScriptDirectory

        rmap = alembic_bridge.revision_map(revisions)
        buffer = StringIO()

        current: list[str] = []

        def steps_fn(_heads: Any, _mctx: MigrationContext) -> Iterator[alembic_bridge.AlembicStep]:
            for step in steps:
                rev = revisions[step.revision]
                current[:] = [step.revision]
                module = load_revision_module(rev)
                up = step.direction == "up"
                fn = getattr(module, "upgrade" if up else "downgrade")
                yield alembic_bridge.revision_step(rmap, step.revision, up, fn, rev.doc)

        cfg = self.config
        config = Config()
        script = ScriptDirectory(str(cfg.migrations_dir))
        alembic_bridge.use_revision_map(script, rmap)
        env = EnvironmentContext(
            config, script, fn=steps_fn, as_sql=True,
            starting_rev=",".join(start_heads) or None, output_buffer=buffer,
        )
        with env:
            assert cfg.database_url is not None
            env.configure(
                url=cfg.database_url,
                literal_binds=True,
                version_table=cfg.version_table,
                transaction_per_migration=True,
                target_metadata=target_metadata(cfg),
                render_as_batch=cfg.database_url.startswith("sqlite"),
            )
            try:
                env.run_migrations()
            except RevisionFileError:
                raise  # the file cannot be imported: it says so, naming the file
            except (SystemExit, KeyboardInterrupt) as exc:
                if current:
                    stopped = stopped_error(
                        exc, cfg.name, current[0], "while it was rendered as SQL", [],
                        dirty=False, recorded_as_failed=False,
                    )
                    assert stopped is not None
                    raise stopped from None
                raise
            except Exception as exc:
                # The cause's first sentence only: Alembic's explanations run to a paragraph.
                cause = _short(exc).split(". ", 1)[0].rstrip(".")
                raise NcmError(
                    f"Revision {cfg.name}:{current[0] if current else '?'} cannot be rendered as "
                    f"SQL without a database, as it reads data or reflects tables "
                    f"({type(exc).__name__}: {cause}); `migrate -v` shows its SQL as it runs."
                ) from None
        return buffer.getvalue()


def _thread_id(conn: Connection) -> int | None:
    """The MySQL session of `conn` (PyMySQL's and mysqlclient's public `thread_id()`: its
    CONNECTION_ID(), read without a query); None for drivers without it."""
    thread_id = getattr(conn.connection.dbapi_connection, "thread_id", None)
    return int(thread_id()) if callable(thread_id) else None


class _SqlRun:
    """One `apply`: each step imported, reported, run (by Alembic's loop or ours) and
    recorded, one phase per method; a failed step rolled back and recorded `failed`.

    On PostgreSQL and SQLite without the service's env.py, `run_steps` runs the steps in
    Alembic's context, each in its own transaction with its version and ledger rows. On
    MySQL (or with env.py), Alembic's own loop runs them from `steps_fn`, and the ledger row
    follows in `on_version_applied`, in the step's transaction.
    """

    def __init__(self, backend: SqlBackend, steps: Sequence[Step],
                 revisions: Mapping[str, Revision], ctx: RunContext, fake: bool,
                 on_step: StepCallback) -> None:
        self.backend = backend
        self.conn = backend.conn
        # The connection the steps run on, which their ledger rows share: ours, or the one
        # a service's own env.py opened from `sqlalchemy.url` (as Alembic's stock one does).
        self.steps_conn = self.conn
        self.steps = steps
        self.revisions = revisions
        self.fake = fake
        self.on_step = on_step
        self.rmap = alembic_bridge.revision_map(revisions)
        self.transactional = backend.transactional
        self.run_values = dict(actor=ctx.actor, host=ctx.host, environment=ctx.environment,
                               tool_version=ctx.tool_version)
        self.results: list[StepResult] = []
        self.own_loop = self.transactional and not backend.config.use_env_py
        # PostgreSQL: the plain step's ledger row goes in its version UPDATE (one statement).
        self.with_ledger_row = backend.dialect == "postgresql"
        # PostgreSQL: the steps' commits do not wait for their WAL flush (several ms each);
        # `_flush_commits` then makes them all durable at once before apply returns. Each
        # step still commits on its own, atomically; only a server crash during the run
        # could lose its latest steps, whole, as if the run had stopped before them.
        self.relaxed = self.own_loop and backend.dialect == "postgresql" and len(steps) > 1
        # The step under way: None between steps (a failure then is no step's).
        self.step: Step | None = None
        self.module: ModuleType | None = None
        self.phase = ""  # where it is, for a message if user code exits there
        self.started = ledger_rules.utcnow()
        self.t0 = 0.0
        self.row_id: Any = None  # its `running` row, where DDL cannot be rolled back
        self.duration_ms = 0.0
        # What its code raised: the error to report, also when rolling back its
        # transaction raised another on the way out (the server went away, say).
        self.raised: BaseException | None = None

    def run(self) -> list[StepResult]:
        if self.relaxed:
            self.conn.exec_driver_sql("SET synchronous_commit TO OFF")
        try:
            self.backend._run_alembic(self.steps_fn, self.run_steps if self.own_loop else None)
        except RevisionFileError as exc:
            self.steps_conn = self.conn  # env.py's own connection is closed, rolled back
            self.abandon(record=False)
            exc.results = self.results
            raise
        except BaseException as exc:  # user code ran: SystemExit and KeyboardInterrupt too
            self.steps_conn = self.conn
            error = self.failed(exc)
            if error is None:
                raise
            raise error from exc
        finally:
            if self.relaxed and not self.conn.invalidated:
                self.backend._flush_commits()
        return self.results

    # -- the phases of a step ---------------------------------------------------------------

    def start(self, step: Step) -> alembic_bridge.AlembicStep:
        """Import the step's revision and report it started (with its `running` row
        committed first where DDL cannot be rolled back): Alembic's step to run."""
        rev = self.revisions[step.revision]
        up = step.direction == "up"
        # The previous step is committed: from here on a failure is this step's. A file
        # that cannot be imported is not recorded (it never started); one whose top-level
        # code exits or is interrupted is recorded as failed (see `failed`).
        self.step, self.module, self.row_id, self.raised = step, None, None, None
        self.phase = "while it was imported"
        self.started, self.t0 = ledger_rules.utcnow(), time.perf_counter()
        module = None if self.fake else load_revision_module(rev, to_apply=True)
        fn = _noop if module is None else getattr(module, "upgrade" if up else "downgrade", None)
        if fn is None:
            raise RevisionFileError(
                f"{rev.path}: revision {step.service}:{step.revision} defines no "
                f"{'upgrade' if up else 'downgrade'}() function."
            )
        self.module, self.phase = module, f"in {'upgrade' if up else 'downgrade'}()"
        self.on_step(step, "start", None)
        if not self.transactional:
            self.row_id = self.ledger_insert(step, "running", self.started)
            self.steps_conn.commit()
        return alembic_bridge.revision_step(self.rmap, step.revision, up, self.watched(fn),
                                            rev.doc)

    def watched(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn` (the revision's code), noting what it raises in `raised`."""

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except BaseException as exc:
                self.raised = exc
                raise

        return call

    def outcome(self, step: Step) -> dict[str, Any]:
        """After the step's function: its verify(), then the ledger row's last columns."""
        module = self.module
        if step.direction == "up" and module is not None and hasattr(module, "verify"):
            self.phase = "in verify()"
            self.watched(module.verify)()
        self.phase = "while it was recorded"
        self.duration_ms = (time.perf_counter() - self.t0) * 1000
        return dict(status=_outcome(step, self.fake), finished_at=ledger_rules.utcnow(),
                    duration_ms=self.duration_ms)

    def record(self, step: Step, values: dict[str, Any]) -> None:
        if self.row_id is None:
            self.ledger_insert(step, started=self.started, **values)
        else:
            self.steps_conn.execute(_LEDGER_FINISH, dict(row_id=self.row_id, **values))

    def finished(self, step: Step) -> None:
        result = StepResult(step.service, step.revision, step.direction,
                            _outcome(step, self.fake), self.duration_ms)
        self.step = None  # committed: nothing after this (Ctrl-C, say) is this step's
        self.results.append(result)
        self.on_step(step, "done", result)

    # -- the two loops ------------------------------------------------------------------------

    def steps_fn(self, _heads: Any, mctx: MigrationContext) -> Iterator[alembic_bridge.AlembicStep]:
        """The steps for Alembic's own loop, which writes the version table; the ledger
        row follows in `on_version_applied`, in the same transaction."""
        self.steps_conn = mctx.connection if mctx.connection is not None else self.conn
        alembic_bridge.add_version_callback(mctx, self.on_version_applied)
        for step in self.steps:
            yield self.start(step)
            self.finished(step)

    def on_version_applied(self, **_kw: Any) -> None:
        assert self.step is not None
        self.record(self.step, self.outcome(self.step))

    def run_steps(self, mctx: MigrationContext) -> None:
        """The steps in our own loop, each in a transaction of Alembic's context (opened
        as its own loop opens them), so that a plain step's version row is written by a
        statement compiled once and, on PostgreSQL, with the step's ledger row (see
        `alembic_bridge.move_statement`); any other version change (a branch inserted,
        deleted, merged or split) is Alembic's own."""
        ledger = LEDGER if self.with_ledger_row else None
        statement = alembic_bridge.move_statement(self.backend.config.version_table, ledger)
        heads = set(mctx.get_current_heads())
        for step in self.steps:
            alembic_step = self.start(step)
            with mctx.begin_transaction():
                log.info("Running %s", alembic_step)
                alembic_step.migration_fn()
                values = self.outcome(step)
                if alembic_bridge.is_plain_move(alembic_step, heads):
                    heads = self.move_version(statement, alembic_step, heads, step, values)
                else:
                    heads = alembic_bridge.move_heads(mctx, heads, alembic_step)
                    self.record(step, values)
            self.finished(step)

    def move_version(self, statement: sa.Update, alembic_step: alembic_bridge.AlembicStep,
                     heads: set[str], step: Step, values: dict[str, Any]) -> set[str]:
        """A plain step's version row (and ledger row), checked as Alembic checks its own."""
        old, new = alembic_bridge.version_move(alembic_step, heads)
        params: dict[str, Any] = dict(old_version=old, new_version=new)
        if self.with_ledger_row:
            params.update(self.ledger_values(step, started_at=self.started, **values))
        found = self.conn.execute(statement, params).rowcount
        if self.conn.dialect.supports_sane_rowcount and found != 1:
            raise NcmError(
                f"expected one row of {self.backend.config.version_table} at {old} to move "
                f"to {new}, found {found}"
            )
        if not self.with_ledger_row:
            self.record(step, values)
        return (heads - {old}) | {new}

    # -- the ledger ---------------------------------------------------------------------------

    def ledger_values(self, step: Step, **columns: Any) -> dict[str, Any]:
        return dict(self.run_values, service=step.service, revision=step.revision,
                    direction=step.direction, checksum=self.revisions[step.revision].checksum,
                    **columns)

    def ledger_insert(self, step: Step, status: str, started: datetime, **extra: Any) -> Any:
        """The step's ledger row; its id is fetched only for a `running` row, the one row
        that is updated later."""
        values = self.ledger_values(step, status=status, started_at=started, **extra)
        if status != "running":
            self.steps_conn.execute(_LEDGER_RECORD, values)
            return None
        return self.steps_conn.execute(_LEDGER_INSERT, values).inserted_primary_key[0]  # type: ignore[index]

    # -- failure ------------------------------------------------------------------------------

    def failed(self, exc: BaseException) -> NcmError | None:
        """After `exc` stopped the run: the step under way rolled back and recorded
        `failed`, and the error to raise (None: re-raise `exc` as it is). The revision's own
        error is the one reported, also when rolling back its transaction raised another
        (as it does on MySQL when the server went away meanwhile)."""
        step = self.step
        config = self.backend.config
        if step is not None and self.raised is not None and self.raised is not exc:
            log.debug("step %s:%s: rolling back after its error failed too", step.service,
                      step.revision, exc_info=True)
            exc = self.raised
        if step is None:
            self.abandon(record=False)
            if isinstance(exc, SystemExit):  # the service's env.py: no revision was running
                return MigrationFailed(
                    f"Service '{config.name}': its env.py called {exit_call(exc)} while "
                    f"no revision was running, which stops the migration; a migration "
                    f"environment fails by raising an exception, not by exiting.",
                    config.name, "", self.results,
                )
            return None
        lost = (self.backend.lost_connection(exc, f"applying {step.service}:{step.revision}")
                if isinstance(exc, Exception) else None)
        # A lost connection: nothing can be rolled back or recorded from here.
        unrecorded = "" if lost is not None else self.abandon(record=True)
        duration = (time.perf_counter() - self.t0) * 1000
        message = f"{type(exc).__name__}: {_short(exc)}" if str(exc) else type(exc).__name__
        self.results.append(
            StepResult(step.service, step.revision, step.direction, "failed", duration, message)
        )
        self.on_step(step, "done", self.results[-1])
        log.debug("step %s:%s failed", step.service, step.revision, exc_info=True)
        if lost is not None:
            lost.args = (f"{lost.args[0]} {self.backend._unknown_outcome(step)}",)
            lost.results = self.results
            return lost
        if isinstance(exc, STOPPED):
            return stopped_error(exc, step.service, step.revision, self.phase, self.results,
                                 dirty=not self.transactional, unrecorded=unrecorded)
        if not isinstance(exc, Exception):
            return None  # GeneratorExit and the like: not a migration's failure
        return MigrationFailed(
            f"Revision {step.service}:{step.revision} failed "
            f"({'upgrade' if step.direction == 'up' else 'downgrade'}): {message}"
            + (f"; the failure could not be recorded in {ledger_rules.TABLE} ({unrecorded})"
               if unrecorded else ""),
            step.service, step.revision, self.results,
        )

    def abandon(self, record: bool) -> str:
        """Roll back what is left and, with `record`, record the step under way as `failed`.
        Guarded: when that fails too (the connection is gone, say), the step's own error is
        the one to report, so this returns why instead of raising ("" if not)."""
        step = self.step
        conn = self.conn
        try:
            if conn.in_transaction():
                conn.rollback()
            if step is None or not record:
                return ""
            values: dict[str, Any] = dict(
                status="failed", finished_at=ledger_rules.utcnow(),
                duration_ms=(time.perf_counter() - self.t0) * 1000,
            )
            if self.row_id is not None:
                conn.execute(_LEDGER_FINISH, dict(row_id=self.row_id, **values))
            else:
                self.ledger_insert(step, started=self.started, **values)
            conn.commit()
        except Exception as exc:
            log.debug("could not record the failure of %s", step, exc_info=True)
            return f"{type(exc).__name__}: {_short(exc)}"
        return ""


def _applied_from_heads(heads: Sequence[str], revisions: Mapping[str, Revision]) -> set[str]:
    seen: set[str] = set()
    stack = [h for h in heads if h in revisions]
    labels = {lbl: r.revision for r in revisions.values() for lbl in r.branch_labels}
    while stack:
        rev = stack.pop()
        if rev in seen or rev not in revisions:
            continue
        seen.add(rev)
        node = revisions[rev]
        stack.extend(node.down_revisions)
        stack.extend(labels.get(d, d) for d in node.depends_on)
    return seen


def _outcome(step: Step, fake: bool) -> Any:
    if fake:
        return "faked"
    return "applied" if step.direction == "up" else "reverted"


def _row(m: Any) -> LedgerRow:
    def iso(v: Any) -> str | None:
        return v.isoformat() if isinstance(v, datetime) else (str(v) if v is not None else None)

    return LedgerRow(
        id=m["id"], service=m["service"], revision=m["revision"], direction=m["direction"],
        status=m["status"], checksum=m["checksum"], started_at=iso(m["started_at"]) or "",
        finished_at=iso(m["finished_at"]), duration_ms=m["duration_ms"], actor=m["actor"],
        host=m["host"], environment=m["environment"], tool_version=m["tool_version"],
    )


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


def _lost_text(exc: BaseException) -> bool:
    """A driver error that says the connection went away (for drivers whose disconnect
    SQLAlchemy does not flag as `connection_invalidated` in every case)."""
    orig = getattr(exc, "orig", None) or exc
    args: tuple[object, ...] = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in (2006, 2013, 2055):
        return True
    return bool(_LOST_TEXT.search(str(orig)))


def _refused(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", None) or exc
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if state in _REFUSED_SQLSTATES or _REFUSED_PG_TEXT.search(str(orig)):
        return True
    args: tuple[object, ...] = getattr(orig, "args", ())
    return bool(args) and isinstance(args[0], int) and args[0] in _REFUSED_MYSQL_CODES


def _short(exc: BaseException) -> str:
    """The first line of a driver error, without SQLAlchemy's background link."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__

