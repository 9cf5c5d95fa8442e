"""MongoDB services on pymongo: the client, and `MongoBackend`, the backend protocol's methods.

Revision files keep the SQL header and define `upgrade(db)`, `downgrade(db)` and, if they
like, `verify(db)`. What is applied is in the ledger and the markers (`ledger.py`); one step
as it runs, and the error a failed one stops the run with, is `run.py`'s; the lease lock is
`lease.py`'s. Every client comes from `client_factory` here (the test suite swaps it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from urllib.parse import unquote

from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import (
    ConfigurationError,
    ConnectionFailure,
    InvalidURI,
    OperationFailure,
    PyMongoError,
)

from ... import ledger as ledger_rules
from ...errors import (
    DatabaseUnreachable,
    LockLost,
    LockTimeout,
    RevisionFileError,
    SettingsError,
)
from ...locking import wait_for
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
from ...pyfiles import load_revision_module, verify_failure
from ...schemas import Schema
from ...urls import mask_url, password_of, redact
from .. import ConnectFailed, ServerInfo, StepCallback, step_outcome
from .lease import COLLECTION as LOCK_COLLECTION
from .lease import Lease
from .ledger import (
    MARKERS,
    Document,
    append_ledger_doc,
    ensure_ledger_index,
    finish_ledger_doc,
    ledger_docs,
    ledger_fields,
    ledger_row,
    reconcile_markers,
    state_from_docs,
)
from .run import MarkerClaimed, StepRun, short_error, step_failed
from .snapshot import read_mongo_schema

log = logging.getLogger(__name__)

ClientFactory = Callable[[str, float], "MongoClient[Document]"]
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
        raise ConnectFailed(short_error(exc)) from None
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
            f"while {doing} ({redact(short_error(exc), [password_of(url)])}); check the network and "
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
        ensure_ledger_index(self.ledger)

    def read_state(self, revisions: Mapping[str, Revision]) -> ServiceState:
        with _connection_errors(self.config, "reading its migration state"):
            docs = ledger_docs(self.ledger, self.config.name)
        return state_from_docs(docs, revisions)

    def read_schema(self, ignored: Iterable[str]) -> Schema:
        with _connection_errors(self.config, "reading its schema"):
            return read_mongo_schema(self.db, {*ignored, ledger_rules.TABLE, MARKERS, LOCK_COLLECTION})

    def history(self, limit: int | None = None) -> list[LedgerRow]:
        with _connection_errors(self.config, "reading its ledger"):
            return [ledger_row(d) for d in ledger_docs(self.ledger, self.config.name, limit)]

    def _insert_row(self, fields: Document) -> int:
        """Append one ledger document with the service's next `seq`; returns the seq."""
        return append_ledger_doc(self.ledger, self.config.name, fields)

    def _finish_row(self, seq: int, status: str, t0: float) -> float:
        """Move a `running` row to its outcome (the only update the ledger ever sees)."""
        return finish_ledger_doc(self.ledger, self.config.name, seq, status, t0)

    def record(self, revision: str, direction: str, status: str, checksum: str | None,
               ctx: RunContext) -> None:
        with _connection_errors(self.config, "recording in its ledger"):
            self._ensure_collections()
            now = ledger_rules.utcnow()
            self._insert_row(ledger_fields(revision, direction, status, checksum, ctx, now,
                                           finished=now, duration_ms=0.0))
            reconcile_markers(self.markers, self.config.name,
                              ledger_docs(self.ledger, self.config.name))

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
            run = StepRun(self, step, rev, ctx, step_outcome(step, fake))
            try:
                module = None if fake else load_revision_module(rev, to_apply=True)
            except (SystemExit, KeyboardInterrupt) as exc:
                # Its top-level code exited: no function of it had the database, so the
                # failed step left nothing behind (recorded as such: not dirty).
                run.record_failure(transactional=True)
                raise step_failed(run, exc, results, on_step) from exc
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
            except MarkerClaimed as claimed:
                raise LockLost(
                    f"Revision {step.service}:{step.revision} was {claimed.what} by another runner "
                    f"({MARKERS} holds '{claimed.marker}'); nothing was run. If no other runner is "
                    f"active, run `manage.py repair {step.service}`.",
                    step.service, step.revision, list(results),
                ) from None
            except (Exception, SystemExit, KeyboardInterrupt) as exc:  # user code ran
                raise step_failed(run, exc, results, on_step) from exc
            results.append(StepResult(step.service, step.revision, step.direction, run.outcome,
                                      run.duration_ms))
            on_step(step, "done", results[-1])
        return results

    def verify(self, revision: Revision) -> str | None:
        check = getattr(load_revision_module(revision), "verify", None)
        if check is None:
            return None
        return verify_failure(lambda: check(self.db), revision, short_error)

    # -- server -------------------------------------------------------------------

    def invalid_indexes(self, revisions: Mapping[str, Revision]) -> list[InvalidIndex]:
        return []  # MongoDB builds an index or fails it whole

    def drop_indexes(self, indexes: Sequence[InvalidIndex]) -> list[InvalidIndex]:
        return []

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
