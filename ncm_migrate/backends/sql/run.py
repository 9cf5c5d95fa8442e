"""Applying SQL revisions through Alembic: Alembic's environment on the backend's connection
(or the service's own env.py), one `apply` run step by step (`_SqlRun`), each step's
attempts (`step_attempts.py`: timeouts, a retry after a lock wait ran out), and a
revision's verify().

With `offline.py`, the one module that uses `alembic_bridge` (Alembic's internals); Alembic
itself is imported where it is used, not at start-up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from types import ModuleType
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ... import ledger as ledger_rules
from ...discovery import versions_dir
from ...errors import MigrationFailed, NcmError, RevisionFileError
from ...model import Revision, RunContext, Step, StepResult
from ...pyfiles import STOPPED, exit_call, load_revision_module, stopped_error, verify_failure
from .. import StepCallback
from . import alembic_bridge
from .bookkeeping import LEDGER, finish_row, insert_row, step_status
from .engine import short_reason
from .metadata import target_metadata
from .step_attempts import StepAttempts

if TYPE_CHECKING:
    # Imported where they are used: Alembic costs read-only commands (showmigrations, a
    # no-op migrate) ~0.1 s to load.
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from .backend import SqlBackend

log = logging.getLogger(__name__)


def apply_steps(backend: SqlBackend, steps: Sequence[Step], revisions: Mapping[str, Revision],
                ctx: RunContext, fake: bool, on_step: StepCallback) -> list[StepResult]:
    """`steps` applied on `backend`'s connection, each recorded in the ledger."""
    return _SqlRun(backend, steps, revisions, ctx, fake, on_step).run()


def _noop(**_kw: Any) -> None:
    return None


def _no_steps(_heads: Any, _mctx: Any) -> tuple[()]:
    return ()


def _run_alembic(
    backend: SqlBackend, steps_fn: Any, run_steps: Callable[[MigrationContext], None] | None = None
) -> None:
    """Alembic's environment on our connection, running `steps_fn`'s steps in its own
    loop; or, given `run_steps`, Alembic only starts (its version table is created if
    missing, as for any upgrade) and `run_steps` runs the steps in its context."""
    from alembic.config import Config
    from alembic.runtime.environment import EnvironmentContext
    from alembic.script import ScriptDirectory

    cfg = backend.config
    config = Config()
    config.set_main_option("script_location", str(cfg.migrations_dir))
    script = ScriptDirectory(
        str(cfg.migrations_dir), version_locations=[str(versions_dir(cfg.migrations_dir))]
    )
    if cfg.use_env_py:
        _run_env_py(backend, config, script, steps_fn)
        return
    if backend.conn.in_transaction():
        backend.conn.commit()
    fn = steps_fn if run_steps is None else _no_steps
    with EnvironmentContext(config, script, fn=fn) as env:
        env.configure(
            connection=backend.conn,
            version_table=cfg.version_table,
            # `run_steps` opens one transaction per step with begin_transaction(),
            # which needs transactional DDL declared: ours is, also on SQLite (see
            # `engine._transactional_sqlite`).
            transaction_per_migration=run_steps is None,
            transactional_ddl=True if run_steps is not None else None,
            target_metadata=target_metadata(cfg),
            render_as_batch=backend.dialect == "sqlite",
        )
        env.run_migrations()
        if run_steps is not None:
            mctx = env.get_context()
            with alembic_bridge.operations(mctx):
                run_steps(mctx)


def _run_env_py(backend: SqlBackend, config: Config, script: ScriptDirectory, steps_fn: Any) -> None:
    """The service's own env.py, handed our connection as Alembic's cookbook describes,
    and `sqlalchemy.url` for one that opens its own (as the env.py that `alembic init`
    writes does); what it leaves out of `configure()` (the version table) comes from
    the service's settings."""
    assert backend.config.database_url is not None
    if backend.conn.in_transaction():
        backend.conn.commit()
    config.attributes["connection"] = backend.conn
    # The real URL, which env.py needs to connect; Alembic's Config is never logged, and
    # an error that quotes it is redacted before it is shown (`urls.redact_known`).
    config.set_main_option("sqlalchemy.url", backend.config.database_url.replace("%", "%%"))
    from alembic.runtime.environment import EnvironmentContext

    # Options given here are the defaults of env.py's `configure()` (Alembic documents
    # them as passed on to it): a stock env.py names no version table, and a service
    # sharing a database keeps its own `alembic_version_<svc>`.
    with EnvironmentContext(config, script, fn=steps_fn, version_table=backend.config.version_table):
        script.run_env()


def verify_revision(backend: SqlBackend, revision: Revision) -> str | None:
    """The revision's verify() run in Alembic's context on our connection, rolled back:
    why it failed, or None."""
    from alembic.config import Config
    from alembic.runtime.environment import EnvironmentContext
    from alembic.script import ScriptDirectory

    module = load_revision_module(revision)
    check = getattr(module, "verify", None)
    if check is None:
        return None

    def steps_fn(_heads: Any, _mctx: MigrationContext) -> Iterator[alembic_bridge.AlembicStep]:
        return iter(())  # no step: verify() runs in the context alone

    def in_context() -> None:
        config = Config()
        script = ScriptDirectory(str(backend.config.migrations_dir))
        with EnvironmentContext(config, script, fn=steps_fn) as env:
            env.configure(connection=backend.conn, version_table=backend.config.version_table,
                          target_metadata=target_metadata(backend.config))
            with alembic_bridge.operations(env.get_context()):
                check()

    try:
        return verify_failure(in_context, revision, short_reason)
    finally:
        if backend.conn.in_transaction():
            backend.conn.rollback()


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
                               tool_version=ctx.tool_version, run_id=ctx.run_id or None,
                               attempt=1, waited_ms=0.0)
        self.results: list[StepResult] = []
        self.own_loop = self.transactional and not backend.config.use_env_py
        # PostgreSQL: the plain step's ledger row goes in its version UPDATE (one statement).
        self.with_ledger_row = backend.dialect == "postgresql"
        # PostgreSQL: the steps' commits do not wait for their WAL flush (several ms each);
        # `SqlBackend.flush_commits` then makes them all durable at once before apply returns. Each
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
        # Its attempts: timeouts, who blocks it, retries after a lock wait ran out.
        self.tries = StepAttempts(backend, retry=self.own_loop or not self.transactional)

    def run(self) -> list[StepResult]:
        if self.relaxed:
            self.conn.exec_driver_sql("SET synchronous_commit TO OFF")
        try:
            _run_alembic(self.backend, self.steps_fn, self.run_steps if self.own_loop else None)
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
            self.tries.close()
            if self.relaxed and not self.conn.invalidated:
                self.backend.flush_commits()
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
        self.tries.begin(rev)
        if self.own_loop and not self.fake:
            self.tries.clear_invalid(self.conn, rev)  # what a failed run of it left
        self.on_step(step, "start", None)
        if not self.transactional:
            self.row_id = self.ledger_insert(step, "running", self.started, **self.attempt())
            self.steps_conn.commit()
        run = fn if self.own_loop else self.in_attempts(fn)
        return alembic_bridge.revision_step(self.rmap, step.revision, up, self.watched(run),
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
        return dict(status=step_status(step, self.fake), finished_at=ledger_rules.utcnow(),
                    duration_ms=self.duration_ms, **self.attempt())

    def record(self, step: Step, values: dict[str, Any]) -> None:
        if self.row_id is None:
            self.ledger_insert(step, started=self.started, **values)
        else:
            finish_row(self.steps_conn, self.row_id, values)

    def finished(self, step: Step) -> None:
        result = StepResult(step.service, step.revision, step.direction,
                            step_status(step, self.fake), self.duration_ms)
        self.step = None  # committed: nothing after this (Ctrl-C, say) is this step's
        self.results.append(result)
        self.on_step(step, "done", result)

    # -- the two loops ------------------------------------------------------------------------

    def steps_fn(self, _heads: Any, mctx: MigrationContext) -> Iterator[alembic_bridge.AlembicStep]:
        """The steps for Alembic's own loop, which writes the version table; the ledger
        row follows in `on_version_applied`, in the same transaction."""
        self.steps_conn = mctx.connection if mctx.connection is not None else self.conn
        if not self.transactional:
            self.tries.count_statements(self.steps_conn)
        alembic_bridge.add_version_callback(mctx, self.on_version_applied)
        for step in self.steps:
            yield self.start(step)
            self.finished(step)

    def on_version_applied(self, **_kw: Any) -> None:
        assert self.step is not None
        self.record(self.step, self.outcome(self.step))
        if self.tries.attempts.number > 1:
            # A retried step: its first attempt's transaction, which Alembic's loop commits,
            # ended when that attempt was recorded; this one is committed here.
            self.steps_conn.commit()

    def run_steps(self, mctx: MigrationContext) -> None:
        """The steps in our own loop, each in a transaction of Alembic's context (opened
        as its own loop opens them), so that a plain step's version row is written by a
        statement compiled once and, on PostgreSQL, with the step's ledger row (see
        `alembic_bridge.move_statement`); any other version change (a branch inserted,
        deleted, merged or split) is Alembic's own."""
        ledger = LEDGER if self.with_ledger_row else None
        statement = alembic_bridge.move_statement(self.backend.config.version_table, ledger)
        heads = set(mctx.get_current_heads())
        self.tries.watch_blockers(self.conn)
        self.tries.count_statements(self.conn)
        for step in self.steps:
            alembic_step = self.start(step)
            retrying = self.tries.attempts.retrying(self.tries.retryable_in_transaction,
                                                    self.rolled_back_attempt)
            for attempt in retrying:
                with attempt, self.tries.waiting(), mctx.begin_transaction():
                    self.raised = None
                    self.tries.prepare(self.conn)
                    log.info("Running %s", alembic_step)
                    alembic_step.migration_fn()
                    values = self.outcome(step)
                    if alembic_bridge.is_plain_move(alembic_step, heads):
                        moved = self.move_version(statement, alembic_step, heads, step, values)
                    else:
                        moved = alembic_bridge.move_heads(mctx, heads, alembic_step)
                        self.record(step, values)
            heads = moved
            self.finished(step)

    def in_attempts(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """`fn` (a step's code) for Alembic's own loop: its timeouts first; on MySQL/MariaDB
        run again when its first statement waited too long for a lock (nothing of it ran)."""

        def call(*args: Any, **kwargs: Any) -> Any:
            tries = self.tries
            for attempt in tries.attempts.retrying(tries.retryable_first_statement,
                                                   self.rolled_back_attempt):
                with attempt:
                    if tries.attempts.number > 1:  # a retry: its own `running` row first
                        assert self.step is not None
                        self.row_id = self.ledger_insert(self.step, "running", self.started,
                                                         **self.attempt())
                        self.steps_conn.commit()
                    tries.prepare(self.steps_conn)
                    return fn(*args, **kwargs)
            raise AssertionError("tenacity ends with a result or an error")

        return call

    def rolled_back_attempt(self, _exc: BaseException) -> None:
        """An attempt to retry, rolled back (nothing of it ran on MySQL/MariaDB): its
        ledger row, `blocked`, committed."""
        self.abandon(record=True, status="blocked")

    def attempt(self, ended: bool = False) -> dict[str, Any]:
        """The ledger columns of the attempt under way: its number, and how long the step
        has waited, before it began (or, `ended` waiting on a lock, until now)."""
        if self.tries.current is None:
            return {}
        tries = self.tries.attempts
        waited = tries.elapsed_ms() if ended else tries.waited_ms
        return dict(attempt=tries.number, waited_ms=round(waited, 3))

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
        """The step's ledger row (its id, for a `running` row)."""
        values = self.ledger_values(step, status=status, started_at=started, **extra)
        return insert_row(self.steps_conn, values)

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
        # Waited too long for a lock and left nothing behind: `blocked`, not dirty.
        blocked = self.tries.current is not None and self.tries.left_nothing(exc, self.transactional)
        # A lost connection: nothing can be rolled back or recorded from here.
        unrecorded = "" if lost is not None else self.abandon(
            record=True, status="blocked" if blocked else "failed")
        duration = (time.perf_counter() - self.t0) * 1000
        message = f"{type(exc).__name__}: {short_reason(exc)}" if str(exc) else type(exc).__name__
        message = self.tries.explained(message, step, exc, blocked,
                                       None if lost else self.conn, self.revisions[step.revision])
        self.results.append(
            StepResult(step.service, step.revision, step.direction, "failed", duration, message)
        )
        self.on_step(step, "done", self.results[-1])
        log.debug("step %s:%s failed", step.service, step.revision, exc_info=True)
        if lost is not None:
            lost.args = (f"{lost.args[0]} {self.backend.unknown_outcome(step)}",)
            lost.results = self.results
            return lost
        if isinstance(exc, STOPPED):
            return stopped_error(exc, step.service, step.revision, self.phase, self.results,
                                 dirty=not self.transactional, unrecorded=unrecorded)
        if not isinstance(exc, Exception):
            return None  # GeneratorExit and the like: not a migration's failure
        if blocked:
            return MigrationFailed(message + (f" (not recorded in {ledger_rules.TABLE}: "
                                              f"{unrecorded})" if unrecorded else ""),
                                   step.service, step.revision, self.results)
        return MigrationFailed(
            f"Revision {step.service}:{step.revision} failed "
            f"({'upgrade' if step.direction == 'up' else 'downgrade'}): {message}"
            + (f"; the failure could not be recorded in {ledger_rules.TABLE} ({unrecorded})"
               if unrecorded else ""),
            step.service, step.revision, self.results,
        )

    def abandon(self, record: bool, status: str = "failed") -> str:
        """Roll back what is left and, with `record`, record the step under way as `status`.
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
                status=status, finished_at=ledger_rules.utcnow(),
                duration_ms=(time.perf_counter() - self.t0) * 1000,
                **self.attempt(ended=status == "blocked"),
            )
            if self.row_id is not None:
                finish_row(conn, self.row_id, values)
            else:
                self.ledger_insert(step, started=self.started, **values)
            conn.commit()
        except Exception as exc:
            log.debug("could not record the failure of %s", step, exc_info=True)
            return f"{type(exc).__name__}: {short_reason(exc)}"
        return ""
