"""MongoDB services on pymongo: client, lease lock, ledger, and applying revisions.

Revision files keep the SQL header and define `upgrade(db)`, `downgrade(db)` and, if they
like, `verify(db)`. MongoDB has no version table: what is applied comes from the ledger
(`ncm_migrations`). A marker per applied revision in `ncm_migration_applied`, keyed by
`service:revision`, is claimed before a step runs, so a second application of one revision
fails with a duplicate key even if two runners raced past the lease lock.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Literal
from urllib.parse import unquote

from pymongo import ASCENDING, DESCENDING, MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import (
    ConfigurationError,
    ConnectionFailure,
    DuplicateKeyError,
    InvalidURI,
    OperationFailure,
    PyMongoError,
)

from ... import ledger as ledger_rules
from ...errors import (
    DatabaseUnreachable,
    Interrupted,
    LockLost,
    LockTimeout,
    MigrationFailed,
    NcmError,
    RevisionFileError,
    SettingsError,
    signal_name,
)
from ...locking import wait_for
from ...model import LedgerRow, Revision, RunContext, ServiceConfig, ServiceState, Step, StepResult
from ...pyfiles import (
    exit_call,
    load_revision_module,
    signal_of,
    stopped_error,
)
from ...urls import mask_url, password_of, redact
from .. import ConnectFailed, ServerInfo, StepCallback
from .lease import COLLECTION as LOCK_COLLECTION
from .lease import Lease

log = logging.getLogger(__name__)

Document = dict[str, Any]
ClientFactory = Callable[[str, float], "MongoClient[Document]"]
MARKERS = "ncm_migration_applied"
DEFAULT_LEASE_S = 30.0


def pymongo_client(url: str, timeout_s: float) -> MongoClient[Document]:
    """A client that gives up finding a server after `timeout_s` (`connect.timeout_s`)."""
    ms = max(1, int(timeout_s * 1000))
    return MongoClient(
        url, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms, tz_aware=True, appname="ncm-migrate"
    )


client_factory: ClientFactory = pymongo_client
"""Makes every client ncm-migrate uses; the test suite swaps in mongomock's through this."""


def url_database(url: str) -> str | None:
    """The database in a MongoDB URL's path (`mongodb://host/NAME?...`), if it names one."""
    rest = url.split("://", 1)[-1].split("?", 1)[0].rsplit("@", 1)[-1]
    _, slash, path = rest.partition("/")
    return unquote(path) or None if slash else None


def database_name(config: ServiceConfig) -> str:
    """`services.<svc>.database`, else the database in the URL's path."""
    name = config.database_name or url_database(config.database_url or "")
    if not name:
        raise SettingsError(
            f"Service '{config.name}': its MongoDB URL names no database; put one in the URL's "
            f"path (mongodb://host:27017/{config.name}) or set services.{config.name}.database."
        )
    return name


def connect(config: ServiceConfig, timeout_s: float) -> MongoClient[Document]:
    """A client for `config`'s URL that has answered a ping; `ConnectFailed` if none does.

    A URL pymongo cannot parse is a `SettingsError` (exit 2), never retried.
    """
    url = config.database_url or ""
    try:
        client = client_factory(url, timeout_s)
    except (InvalidURI, ValueError) as exc:  # ValueError: e.g. a port out of range
        raise SettingsError(
            f"Service '{config.name}': database_url is not a valid MongoDB URL: "
            f"{redact(str(exc), [password_of(url)])}."
        ) from None
    except ConfigurationError as exc:  # e.g. a mongodb+srv:// name that does not resolve
        raise ConnectFailed(str(exc)) from None
    try:
        client.admin.command("ping")
    except PyMongoError as exc:
        client.close()
        raise ConnectFailed(_short(exc)) from None
    return client


@contextmanager
def _connection_errors(config: ServiceConfig, doing: str) -> Iterator[None]:
    """A lost or unreachable server outside a step, `doing` something: `DatabaseUnreachable`
    (exit 4) naming the service and the server, never the password."""
    try:
        yield
    except ConnectionFailure as exc:  # AutoReconnect, NetworkTimeout, ServerSelectionTimeoutError
        url = config.database_url or ""
        raise DatabaseUnreachable(
            f"Service '{config.name}': lost the connection to the database at {mask_url(url)} "
            f"while {doing} ({redact(_short(exc), [password_of(url)])}); check the network and "
            "the server, then run the command again."
        ) from None


class MongoBackend:
    """One MongoDB service's database."""

    def __init__(
        self,
        config: ServiceConfig,
        connect_timeout_s: float,
        lease_s: float = DEFAULT_LEASE_S,
    ) -> None:
        assert config.database_url is not None
        self.config = config
        self.database = database_name(config)
        self.lease_s = lease_s
        self._timeout = connect_timeout_s
        self._client: MongoClient[Document] | None = None
        self._lease: Lease | None = None
        self._hello: Document | None = None

    # -- connection -------------------------------------------------------------

    @property
    def transactional(self) -> bool:
        """False: only revisions that opt in (`transactional = True`) run in a transaction,
        and only on a replica set; any other failure leaves the service dirty."""
        return False

    @property
    def client(self) -> MongoClient[Document]:
        if self._client is None:
            raise RuntimeError("MongoBackend.open() was not called")
        return self._client

    @property
    def db(self) -> Database[Document]:
        return self.client[self.database]

    def open(self, timeout_s: float | None = None) -> None:
        if self._client is None:
            self._client = connect(self.config, self._timeout if timeout_s is None else timeout_s)

    def interrupt(self) -> None:
        """Nothing to stop: an operation ends with its client (closed by `close`)."""

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
            self._hello = None

    def hello(self) -> Document:
        """The server's `hello` answer (`isMaster` on servers older than 4.4)."""
        if self._hello is None:
            try:
                self._hello = dict(self.client.admin.command("hello"))
            except OperationFailure:
                self._hello = dict(self.client.admin.command("isMaster"))
        return self._hello

    def supports_transactions(self) -> bool:
        """True on a replica set (MongoDB 4.0+) or a sharded cluster (4.2+)."""
        hello = self.hello()
        wire = int(hello.get("maxWireVersion", 0))
        if hello.get("setName"):
            return wire >= 7
        return hello.get("msg") == "isdbgrid" and wire >= 8

    # -- lock ---------------------------------------------------------------------

    @contextmanager
    def lock(self, timeout_s: float) -> Iterator[None]:
        lease = Lease(self.db[LOCK_COLLECTION], self.config.name, self.lease_s)
        try:
            with _connection_errors(self.config, "taking its migration lock"):
                wait_for(lease.try_acquire, timeout_s, f"service '{self.config.name}'")
        except LockTimeout as exc:
            holder = lease.holder()
            raise LockTimeout(f"{exc} It is held by a {holder}." if holder else str(exc)) from None
        lease.keep_alive()
        self._lease = lease
        try:
            yield
        finally:
            self._lease = None
            lease.release()

    def _confirm_lease(self, step: Step, results: list[StepResult]) -> None:
        """Before each step: the lease is still ours (renewing it), else `LockLost`."""
        if self._lease is None or self._lease.renew():
            return
        raise LockLost(
            f"Service '{self.config.name}': another runner took the migration lease (it lapsed "
            f"after lock.lease_s = {self.lease_s:g}s without renewal) before "
            f"{step.service}:{step.revision} could run; nothing more was run. Run migrate again.",
            step.service, step.revision, list(results),
        )

    # -- ledger -------------------------------------------------------------------

    @property
    def ledger(self) -> Collection[Document]:
        return self.db[ledger_rules.TABLE]

    @property
    def markers(self) -> Collection[Document]:
        return self.db[MARKERS]

    def _ensure_collections(self) -> None:
        self.ledger.create_index(
            [("service", ASCENDING), ("seq", ASCENDING)], unique=True, name="ncm_service_seq"
        )

    def _docs(self, limit: int | None = None) -> list[Document]:
        query = self.ledger.find({"service": self.config.name})
        if limit:
            return list(reversed(list(query.sort("seq", DESCENDING).limit(limit))))
        return list(query.sort("seq", ASCENDING))

    def read_state(self, revisions: Mapping[str, Revision]) -> ServiceState:
        with _connection_errors(self.config, "reading its migration state"):
            docs = self._docs()
        rows = [_row(d) for d in docs]
        sums = ledger_rules.applied_checksums(rows)
        known = {r for r in sums if r in revisions}
        unknown = tuple(sorted(r for r in sums if r not in revisions))
        downs = {d for r in known for d in revisions[r].down_revisions}
        heads = tuple(sorted({r for r in known if r not in downs} | set(unknown)))
        last_transactional = bool(docs[-1].get("transactional")) if docs else False
        return ServiceState(
            heads=heads,
            applied=frozenset(known),
            dirty=ledger_rules.dirty_mark(rows, last_transactional),
            checksums=tuple(sorted(sums.items())),
            unknown=unknown,
        )

    def history(self, limit: int | None = None) -> list[LedgerRow]:
        with _connection_errors(self.config, "reading its ledger"):
            return [_row(d) for d in self._docs(limit)]

    def _insert_row(self, fields: Document) -> int:
        """Append one ledger document with the service's next `seq`; returns the seq."""
        service = self.config.name
        for _ in range(100):
            last = self.ledger.find_one({"service": service}, sort=[("seq", DESCENDING)])
            seq = int(last["seq"]) + 1 if last else 1
            try:
                self.ledger.insert_one({"seq": seq, "service": service, **fields})
                return seq
            except DuplicateKeyError:
                continue  # another writer took this seq: read the new last one
        raise MigrationFailed(f"Service '{service}': could not append to {ledger_rules.TABLE}.")

    def _finish_row(self, seq: int, status: str, t0: float) -> float:
        """Move a `running` row to its outcome (the only update the ledger ever sees)."""
        duration = (time.perf_counter() - t0) * 1000
        self.ledger.update_one(
            {"service": self.config.name, "seq": seq, "status": "running"},
            {"$set": {"status": status, "finished_at": ledger_rules.utcnow(), "duration_ms": duration}},
        )
        return duration

    def record(self, revision: str, direction: str, status: str, checksum: str | None,
               ctx: RunContext) -> None:
        with _connection_errors(self.config, "recording in its ledger"):
            self._ensure_collections()
            now = ledger_rules.utcnow()
            self._insert_row(_fields(revision, direction, status, checksum, ctx, now,
                                     finished=now, duration_ms=0.0))
            self._reconcile_markers()

    def _reconcile_markers(self) -> None:
        """Make the markers say what the ledger says is applied (after `repair`)."""
        service = self.config.name
        applied = ledger_rules.applied_from_ledger(_row(d) for d in self._docs())
        for marker in self.markers.find({"service": service}):
            if marker["revision"] not in applied:
                self.markers.delete_one({"_id": marker["_id"]})
            elif marker.get("state") != "applied":
                self.markers.update_one({"_id": marker["_id"]}, {"$set": {"state": "applied"}})
        for revision in applied:
            self.markers.update_one(
                {"_id": _marker_id(service, revision)},
                {"$setOnInsert": {"service": service, "revision": revision, "state": "applied",
                                  "at": ledger_rules.utcnow()}},
                upsert=True,
            )

    # -- applying -----------------------------------------------------------------

    def apply(
        self,
        steps: Sequence[Step],
        revisions: Mapping[str, Revision],
        ctx: RunContext,
        fake: bool,
        on_step: StepCallback,
    ) -> list[StepResult]:
        with _connection_errors(self.config, "preparing its ledger"):
            self._ensure_collections()
        results: list[StepResult] = []
        for step in steps:
            rev = revisions[step.revision]
            up = step.direction == "up"
            run = _StepRun(self, step, rev, ctx, _outcome(step, fake))
            try:
                module = None if fake else load_revision_module(rev, to_apply=True)
            except (SystemExit, KeyboardInterrupt) as exc:
                # Its top-level code exited: no function of it had the database, so the
                # failed step left nothing behind (recorded as such: not dirty).
                run.record_failure(transactional=True)
                raise self._failed(run, exc, results, on_step) from exc
            fn = None if module is None else getattr(module, "upgrade" if up else "downgrade", None)
            if module is not None and not callable(fn):
                raise RevisionFileError(
                    f"{rev.path}: revision {step.service}:{step.revision} defines no "
                    f"{'upgrade' if up else 'downgrade'}(db) function."
                )
            check = getattr(module, "verify", None) if up and module is not None else None
            in_txn = module is not None and bool(getattr(module, "transactional", False))
            if in_txn and not self.supports_transactions():
                log.warning("%s:%s asks for a transaction, but the server is not a replica set: "
                            "running it without one", step.service, step.revision)
                in_txn = False
            self._confirm_lease(step, results)
            on_step(step, "start", None)
            run.in_txn = in_txn
            try:
                run.execute(fn, check)
            except _Claimed as claimed:
                raise LockLost(
                    f"Revision {step.service}:{step.revision} was {claimed.what} by another runner "
                    f"({MARKERS} holds '{claimed.marker}'); nothing was run. If no other runner is "
                    f"active, run `manage.py repair {step.service}`.",
                    step.service, step.revision, list(results),
                ) from None
            except (Exception, SystemExit, KeyboardInterrupt) as exc:  # user code ran
                raise self._failed(run, exc, results, on_step) from exc
            results.append(StepResult(step.service, step.revision, step.direction, run.outcome,
                                      run.duration_ms))
            on_step(step, "done", results[-1])
        return results

    def _failed(self, run: _StepRun, exc: BaseException, results: list[StepResult],
                on_step: StepCallback) -> NcmError:
        """The error a failed step (already recorded, if it could be) stops the run with."""
        step = run.step
        message = f"{type(exc).__name__}: {_short(exc)}" if str(exc) else type(exc).__name__
        results.append(StepResult(step.service, step.revision, step.direction, "failed",
                                  run.elapsed_ms(), message))
        on_step(step, "done", results[-1])
        log.debug("step %s:%s failed", step.service, step.revision, exc_info=True)
        stopped = stopped_error(exc, step.service, step.revision, run.phase, results,
                                dirty=run.dirty, unrecorded=run.unrecorded)
        if stopped is not None:
            return stopped
        if isinstance(exc, ConnectionFailure):  # the server went away during the step
            return self._lost_in_step(run, exc, results)
        unrecorded = (f"; the failure could not be recorded in {ledger_rules.TABLE} "
                      f"({run.unrecorded})" if run.unrecorded else "")
        return MigrationFailed(
            f"Revision {step.service}:{step.revision} failed "
            f"({'upgrade' if step.direction == 'up' else 'downgrade'}): {message}{unrecorded}",
            step.service, step.revision, results,
        )

    def _lost_in_step(self, run: _StepRun, exc: ConnectionFailure,
                      results: list[StepResult]) -> DatabaseUnreachable:
        """A connection lost while a step ran: exit 4 naming the service and the server, and
        what the step may have left (as the SQL backend says it)."""
        step = run.step
        url = self.config.database_url or ""
        if run.in_txn:
            left = (f"Nothing of revision {step.revision} stays: the server aborts its "
                    "transaction when the session is gone.")
        else:
            left = (f"The revision {step.revision} may be half applied: check the database "
                    f"once the server is back, then run manage.py repair {step.service}.")
        lost = DatabaseUnreachable(
            f"Service '{step.service}': lost the connection to the database at "
            f"{mask_url(url)} while applying {step.service}:{step.revision} "
            f"({redact(_short(exc), [password_of(url)])}). {left}"
        )
        lost.results = results
        return lost

    def verify(self, revision: Revision) -> str | None:
        check = getattr(load_revision_module(revision), "verify", None)
        if check is None:
            return None
        try:
            check(self.db)
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

    # -- server -------------------------------------------------------------------

    def server_info(self) -> ServerInfo:
        with _connection_errors(self.config, "reading the server's version and privileges"):
            return self._server_info()

    def _server_info(self) -> ServerInfo:
        start = time.perf_counter()
        self.db.command("ping")
        latency = (time.perf_counter() - start) * 1000
        version = str(self.client.server_info().get("version", "?"))
        hello = self.hello()
        set_name = str(hello.get("setName") or "")
        sharded = hello.get("msg") == "isdbgrid"
        topology = "replica set" if set_name else ("sharded" if sharded else "standalone")
        return ServerInfo(
            server_version=f"mongodb {version}",
            latency_ms=latency,
            can_create=self._can_create(),
            extra=(
                ("topology", topology),
                ("replica_set", set_name),
                ("transactions", "yes" if self.supports_transactions() else "no"),
                ("database", self.database),
            ),
        )

    def _can_create(self) -> bool | None:
        """Whether this user may create collections here; None when the server will not say."""
        try:
            status = self.db.command("connectionStatus", showPrivileges=True)
        except PyMongoError:
            return None
        auth = status.get("authInfo") or {}
        if not auth.get("authenticatedUsers"):
            try:  # nobody logged in: this works only where access control is off
                self.db.list_collection_names()
                return True
            except OperationFailure:
                return False
        for privilege in auth.get("authenticatedUserPrivileges") or []:
            resource = privilege.get("resource") or {}
            if "createCollection" not in (privilege.get("actions") or []):
                continue
            if resource.get("anyResource") or (
                resource.get("db") in ("", self.database) and resource.get("collection", "") == ""
            ):
                return True
        return False


class _Claimed(Exception):
    """Another runner holds the step's marker: it applied (or reverted) the revision first."""

    def __init__(self, marker: str, what: str) -> None:
        self.marker = marker
        self.what = what
        super().__init__(marker)


class _StepRun:
    """One step: claim its marker, record it, run it, record the outcome."""

    def __init__(self, backend: MongoBackend, step: Step, rev: Revision, ctx: RunContext,
                 outcome: Literal["applied", "reverted", "faked"], in_txn: bool = False) -> None:
        self.backend = backend
        self.step = step
        self.rev = rev
        self.ctx = ctx
        self.outcome = outcome
        self.in_txn = in_txn
        # Where the step is, for a message if user code exits there.
        self.phase = "while it was imported"
        # After a failure: whether it may have left part of the step behind, and why it
        # could not be recorded (if it could not).
        self.dirty = False
        self.unrecorded = ""
        self.marker = _marker_id(step.service, step.revision)
        now = ledger_rules.utcnow()
        self.started = now.replace(microsecond=now.microsecond // 1000 * 1000)  # BSON keeps ms
        self.t0 = time.perf_counter()
        self.duration_ms = 0.0
        self.seq: int | None = None

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.t0) * 1000

    def execute(self, fn: Callable[..., Any] | None, check: Callable[..., Any] | None) -> None:
        if self.in_txn:
            self._in_transaction(fn, check)
            return
        try:
            self._claim()
            if fn is not None:
                self.seq = self.backend._insert_row(self._fields("running"))
                self._call(fn, check)
            self._settle()
            if self.seq is None:
                self.duration_ms = self.elapsed_ms()
                self.backend._insert_row(self._fields(self.outcome, finished=True))
            else:
                self.duration_ms = self.backend._finish_row(self.seq, self.outcome, self.t0)
        except _Claimed:
            raise
        except BaseException:  # user code ran: SystemExit and KeyboardInterrupt too
            self.record_failure(transactional=False)
            raise

    def _call(self, fn: Callable[..., Any] | None, check: Callable[..., Any] | None) -> None:
        """The revision's function, then its verify(), each with the database."""
        db = self.backend.db
        if fn is not None:
            self.phase = f"in {'upgrade' if self.step.direction == 'up' else 'downgrade'}()"
            fn(db)
        if check is not None:
            self.phase = "in verify()"
            check(db)
        self.phase = "while it was recorded"

    def _in_transaction(self, fn: Callable[..., Any] | None, check: Callable[..., Any] | None) -> None:
        """Claim, run, verify and record in one transaction: a failure leaves nothing behind."""
        client = self.backend.client
        try:
            with (
                client.start_session() as session,
                session.bind(end_session=False),
                session.start_transaction(),
            ):
                self._claim()
                self._call(fn, check)
                self._settle()
                self.duration_ms = self.elapsed_ms()
                self.backend._insert_row(self._fields(self.outcome, finished=True))
        except _Claimed:
            raise
        except BaseException:  # user code ran: SystemExit and KeyboardInterrupt too
            self.record_failure(transactional=True)
            raise

    def _claim(self) -> None:
        markers = self.backend.markers
        if self.step.direction == "up":
            try:
                markers.insert_one({"_id": self.marker, "service": self.step.service,
                                    "revision": self.step.revision, "state": "applying",
                                    "at": self.started})
            except DuplicateKeyError:
                raise _Claimed(self.marker, "applied") from None
        else:
            taken = markers.find_one_and_update(
                {"_id": self.marker, "state": "applied"},
                {"$set": {"state": "reverting", "at": self.started}},
            )
            if taken is None:
                raise _Claimed(self.marker, "reverted (or never applied)")

    def _settle(self) -> None:
        """The marker after success: `applied` after an upgrade, gone after a downgrade."""
        if self.step.direction == "up":
            self.backend.markers.update_one({"_id": self.marker}, {"$set": {"state": "applied"}})
        else:
            self.backend.markers.delete_one({"_id": self.marker})

    def record_failure(self, transactional: bool) -> None:
        """After a failed step: give this step's claim back (if an aborted transaction has not
        already) and append (or finish) a `failed` row; `transactional`: the failure left
        nothing behind. Guarded: when this fails too (the server is gone, say), the step's own
        error is the one to report, with `unrecorded` saying why this failed."""
        self.dirty = not transactional
        mine = {"_id": self.marker, "at": self.started}
        try:  # a transaction, if any, has ended: these writes stand on their own
            if self.step.direction == "up":
                self.backend.markers.delete_one({**mine, "state": "applying"})
            else:
                self.backend.markers.update_one({**mine, "state": "reverting"},
                                                {"$set": {"state": "applied"}})
            if self.seq is not None:
                self.backend._finish_row(self.seq, "failed", self.t0)
            else:
                self.backend._insert_row(
                    self._fields("failed", finished=True, transactional=transactional)
                )
        except Exception as exc:
            log.debug("could not record the failure of %s:%s in %s", self.step.service,
                      self.step.revision, ledger_rules.TABLE, exc_info=True)
            self.unrecorded = f"{type(exc).__name__}: {_short(exc)}"

    def _fields(self, status: str, finished: bool = False, transactional: bool | None = None) -> Document:
        now = ledger_rules.utcnow() if finished else None
        return _fields(
            self.step.revision, self.step.direction, status, self.rev.checksum, self.ctx,
            self.started, finished=now,
            duration_ms=(time.perf_counter() - self.t0) * 1000 if finished else None,
            transactional=self.in_txn if transactional is None else transactional,
        )


def _fields(
    revision: str, direction: str, status: str, checksum: str | None, ctx: RunContext,
    started: datetime, finished: datetime | None = None, duration_ms: float | None = None,
    transactional: bool = False,
) -> Document:
    return {
        "revision": revision, "direction": direction, "status": status, "checksum": checksum,
        "started_at": started, "finished_at": finished, "duration_ms": duration_ms,
        "actor": ctx.actor, "host": ctx.host, "environment": ctx.environment,
        "tool_version": ctx.tool_version, "transactional": transactional,
    }


def _marker_id(service: str, revision: str) -> str:
    return f"{service}:{revision}"


def _outcome(step: Step, fake: bool) -> Literal["applied", "reverted", "faked"]:
    if fake:
        return "faked"
    return "applied" if step.direction == "up" else "reverted"


def _row(doc: Mapping[str, Any]) -> LedgerRow:
    def iso(v: Any) -> str | None:
        return v.isoformat() if isinstance(v, datetime) else (str(v) if v is not None else None)

    return LedgerRow(
        id=int(doc["seq"]), service=doc["service"], revision=doc["revision"],
        direction=doc["direction"], status=doc["status"], checksum=doc.get("checksum"),
        started_at=iso(doc.get("started_at")) or "", finished_at=iso(doc.get("finished_at")),
        duration_ms=doc.get("duration_ms"), actor=doc.get("actor", ""), host=doc.get("host", ""),
        environment=doc.get("environment", ""), tool_version=doc.get("tool_version", ""),
    )


def _short(exc: BaseException) -> str:
    """The first line of an error, without the full server reply or the topology
    description and timeouts that pymongo appends."""
    text = str(exc).split(", full error:", 1)[0].split(", Topology Description:", 1)[0]
    text = re.sub(r" \(configured timeouts: [^)]*\)", "", text).strip()
    return text.splitlines()[0] if text else type(exc).__name__
