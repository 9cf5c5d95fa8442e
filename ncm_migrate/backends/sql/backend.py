"""SQL services on SQLAlchemy and Alembic: `SqlBackend`, the `Backend` of one SQL service's
database (connect, lock, state, apply, close), and what its database errors mean.

Each service's `migrations/` is a plain Alembic script directory and needs no `env.py`:
the environment is built in `run.py`, which applies revisions with Alembic's own steps, so
its version table (and `alembic current`) always agrees. Beside this module: `engine.py`
(URL to engine), `locks.py`, `bookkeeping.py` (the ledger, the state), `run.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from ... import ledger as ledger_rules
from ...config import DdlSettings
from ...errors import DatabaseUnreachable, NcmError
from ...model import (
    InvalidIndex,
    LedgerRow,
    Revision,
    RunContext,
    ServiceConfig,
    ServiceState,
    Step,
    StepResult,
)
from ...schemas import Schema
from ...urls import is_async, sqlite_file
from .. import ConnectFailed, ServerInfo, StepCallback
from . import bookkeeping, invalid_indexes, offline, run
from .engine import (
    Timeouts,
    connect_settings,
    create_async_engine,
    create_engine,
    dispose_engine,
    is_refusal,
    read_deadline,
    says_lost,
    short_reason,
)
from .locks import named_lock
from .snapshot import read_sql_schema

if TYPE_CHECKING:
    # Imported where it is used: SQLAlchemy's asyncio extension pulls in the ORM.
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = ["SqlBackend", "Timeouts", "create_async_engine", "create_engine"]

log = logging.getLogger(__name__)
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
    "invalid_indexes": "looking for INVALID indexes",
    "drop_indexes": "dropping INVALID indexes",
}


def _driver_call(
    method: Callable[Concatenate[SqlBackend, P], T],
) -> Callable[Concatenate[SqlBackend, P], T]:
    """Run a public method inside the async driver's context (see `SqlBackend.in_driver`);
    a database error that escapes it becomes one sentence and an exit code."""
    doing = _DOING.get(method.__name__, method.__name__)

    def wrapper(self: SqlBackend, /, *args: P.args, **kwargs: P.kwargs) -> T:
        with self.database_errors(doing):
            return self.in_driver(lambda: method(self, *args, **kwargs))

    functools.update_wrapper(wrapper, method)
    return wrapper


class SqlBackend:
    """One SQL service's database."""

    def __init__(self, config: ServiceConfig, timeouts: Timeouts,
                 ddl: DdlSettings | None = None) -> None:
        assert config.database_url is not None
        self.config = config
        self._net = connect_settings(timeouts)
        # How a step's statements wait on locks, and retry (`ddl.*`).
        self.ddl = ddl or DdlSettings()
        self._engine: Engine | None = None
        self._conn: Connection | None = None
        self._async = is_async(config.database_url)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._aengine: AsyncEngine | None = None
        self._aconn: AsyncConnection | None = None
        self._inside_driver = False
        self._translating = False
        # MySQL: the session that took this service's lock, to stop should a signal cut it
        # short (SQLAlchemy then drops that connection, and `conn` would be a new one).
        self.lock_session: int | None = None

    @property
    def read_timeout_s(self) -> float:
        """`connect.read_timeout_s`: how long one statement may wait for its answer (0: no
        bound); a lock is waited for in shorter statements than that."""
        return self._net.read_timeout_s

    # -- connection -------------------------------------------------------------

    @property
    def dialect(self) -> str:
        assert self.config.database_url is not None
        return sa.engine.make_url(self.config.database_url).get_backend_name()

    @property
    def transactional(self) -> bool:
        return self.dialect not in ("mysql", "mariadb")

    def side_engine(self) -> Engine:
        """A new engine on this service's database, for a connection beside the backend's
        own (`blockers.BlockerWatch`); its caller disposes of it."""
        assert self.config.database_url is not None
        return create_engine(self.config.database_url, self._net)

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

    @property
    def live_conn(self) -> Connection | None:
        """The connection, if open and not lost (None otherwise)."""
        conn = self._conn
        return None if conn is None or conn.closed or conn.invalidated else conn

    def in_driver(self, fn: Callable[[], T]) -> T:
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

            self.in_driver(probe)
        except (sa.exc.DBAPIError, OSError, TimeoutError) as exc:
            self.close()
            reason = short_reason(exc)
            if isinstance(exc, TimeoutError) and not str(exc):  # our own deadline (async)
                reason = f"no answer within connect.timeout_s = {self._net.timeout_s:g}s"
            raise ConnectFailed(reason, permanent=is_refusal(exc)) from None

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
            dispose_engine(self._engine)
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
                f"{doing}: {short_reason(exc)}"
            ) from None
        finally:
            self._translating = False

    def lost_connection(self, exc: BaseException, doing: str) -> DatabaseUnreachable | None:
        """`exc` as the lost connection it is (exit 4, naming the service and the server,
        never the password), or None when the connection is fine."""
        lost = isinstance(exc, sa.exc.DBAPIError) and (exc.connection_invalidated or says_lost(exc))
        read_timeout = None
        deadline = read_deadline(self._engine) if self._engine is not None else None
        if deadline is not None and deadline.fired:
            read_timeout = deadline.limit_s
        elif lost and self._net.read_timeout_s > 0 and "timed out" in str(exc):  # PyMySQL's own
            read_timeout = self._net.read_timeout_s
        if read_timeout is None and not lost:
            return None
        why = (f"no answer within connect.read_timeout_s = {read_timeout:g}s"
               if read_timeout is not None else short_reason(exc))
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
        with named_lock(self, self.config.version_table, timeout_s):
            yield

    # -- state --------------------------------------------------------------------

    def _ensure_ledger(self) -> None:
        bookkeeping.ensure_ledger(
            self.conn, self.dialect, lambda name, timeout_s: named_lock(self, name, timeout_s)
        )

    @_driver_call
    def current_heads(self) -> tuple[str, ...]:
        heads = bookkeeping.version_heads(
            self.conn, self.config.version_table, bookkeeping.table_names(self.conn)
        )
        self.conn.commit()
        return heads

    @_driver_call
    def read_state(self, revisions: Mapping[str, Revision]) -> ServiceState:
        return bookkeeping.service_state(self.conn, self.config.version_table, self.config.name,
                                         revisions, self.transactional)
    @_driver_call
    def history(self, limit: int | None = None) -> list[LedgerRow]:
        return bookkeeping.ledger_rows(self.conn, self.config.name, limit)

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

    def interrupt(self) -> None:
        """MySQL runs a statement to its end after its client was interrupted (an ALTER
        TABLE would go on changing the table after the run said it stopped, holding the
        lock): the session is killed from another connection; its connection is dropped."""
        session, self.lock_session = self.lock_session, None
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
                        "%s", self.config.name, short_reason(exc))

    @_driver_call
    def read_schema(self, ignored: Iterable[str]) -> Schema:
        return read_sql_schema(self.conn, {*ignored, ledger_rules.TABLE})

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
        return run.apply_steps(self, steps, revisions, ctx, fake, on_step)

    def unknown_outcome(self, step: Step) -> str:
        """What is left of `step` after its connection was lost under it."""
        if self.transactional:
            return (f"Nothing of revision {step.revision} stays: the server rolls its "
                    "transaction back when it sees the connection gone.")
        return (f"The revision {step.revision} may be half applied: the service is marked dirty "
                f"(its ledger row stays 'running'); check the database, then run "
                f"manage.py repair {step.service}.")

    def flush_commits(self) -> None:
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
                        "disk: %s", self.config.name, short_reason(exc))

    @_driver_call
    def invalid_indexes(self, revisions: Mapping[str, Revision]) -> list[InvalidIndex]:
        if self.dialect != "postgresql":
            return []
        return invalid_indexes.find_invalid(self.conn, revisions.values())

    @_driver_call
    def drop_indexes(self, indexes: Sequence[InvalidIndex]) -> list[InvalidIndex]:
        if self.dialect != "postgresql":
            return []
        return invalid_indexes.drop_concurrently(self.conn, indexes)

    @_driver_call
    def verify(self, revision: Revision) -> str | None:
        return run.verify_revision(self, revision)

    @_driver_call
    def record(self, revision: str, direction: str, status: str, checksum: str | None,
               ctx: RunContext) -> None:
        self._ensure_ledger()
        now = ledger_rules.utcnow()
        self.conn.execute(
            bookkeeping.LEDGER.insert().values(
                service=self.config.name, revision=revision, direction=direction, status=status,
                checksum=checksum, started_at=now, finished_at=now, duration_ms=0.0,
                actor=ctx.actor, host=ctx.host, environment=ctx.environment,
                tool_version=ctx.tool_version, run_id=ctx.run_id or None,
            )
        )
        self.conn.commit()

    # -- offline ------------------------------------------------------------------

    def offline_sql(
        self, steps: Sequence[Step], revisions: Mapping[str, Revision], start_heads: Sequence[str]
    ) -> str:
        """The SQL `steps` would run, rendered without a database (Alembic's offline mode)."""
        return offline.render_offline_sql(self, steps, revisions, start_heads, self.ddl)
