"""Redis services on redis-py: the client, and `RedisBackend`, the backend protocol's methods.

Revision files keep the SQL header and define `upgrade(r)`, `downgrade(r)` and, if they
like, `verify(r)`, each given a `redis.Redis` on the service's database (bytes in and out,
redis-py's default). What is applied is in the ledger and the markers (`ledger.py`); one step
as it runs is `run.py`'s; the lease lock is `lease.py`'s. Every client comes from
`client_factory` here (the test suite swaps in fakeredis through it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ... import ledger as ledger_rules
from ...config import ConnectSettings
from ...errors import DatabaseUnreachable, LockLost, LockTimeout, RevisionFileError, SettingsError
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
from .lease import RedisLease
from .ledger import (
    Fields,
    Keys,
    append_entry,
    entry_fields,
    entry_rows,
    finish_entry,
    ledger_entries,
    reset_markers,
    state_from_entries,
)
from .run import CLAIM, GIVE_BACK, LeaseLost, MarkerTaken, RedisStep, error_line, failed_step_error

log = logging.getLogger(__name__)

ClientFactory = Callable[[str, ConnectSettings], redis.Redis]
DEFAULT_LEASE_S = 30.0


def redis_client(url: str, connect: ConnectSettings) -> redis.Redis:
    """A client whose sockets time out as `connect.*` says (`timeout_s` to connect,
    `read_timeout_s` per reply, 0: none), with redis-py's own retries off: connecting is
    retried by ncm-migrate's one policy (`retry.py`), a command never."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=connect.timeout_s,
        socket_timeout=connect.read_timeout_s or None,
        socket_keepalive=True,
        retry=Retry(NoBackoff(), 0),
        client_name="ncm-migrate",
    )


client_factory: ClientFactory = redis_client
"""Makes every client ncm-migrate uses; the test suite swaps in fakeredis's through this."""


def connect_redis(config: ServiceConfig, settings: ConnectSettings) -> redis.Redis:
    """A client for `config`'s URL that has answered a PING; `ConnectFailed` if none does.

    A URL redis-py cannot parse is a `SettingsError` (exit 2); a server that refuses the
    password or the database number is a permanent failure (not retried).
    """
    url = config.database_url or ""
    secret = [password_of(url)]
    try:
        client = client_factory(url, settings)
    except ValueError as exc:
        raise SettingsError(
            f"Service '{config.name}': database_url is not a valid Redis URL: "
            f"{redact(str(exc), secret)}."
        ) from None
    try:
        client.ping()
    except (redis.AuthenticationError, redis.ResponseError) as exc:
        client.close()
        raise ConnectFailed(redact(error_line(exc), secret), permanent=True) from None
    except redis.RedisError as exc:
        client.close()
        raise ConnectFailed(redact(error_line(exc), secret)) from None
    return client


@contextmanager
def connection_errors(config: ServiceConfig, doing: str) -> Iterator[None]:
    """A lost or unreachable server outside a step, `doing` something: `DatabaseUnreachable`
    (exit 4) naming the service and the server, never the password."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        url = config.database_url or ""
        raise DatabaseUnreachable(
            f"Service '{config.name}': lost the connection to the database at {mask_url(url)} "
            f"while {doing} ({redact(error_line(exc), [password_of(url)])}); check the network "
            "and the server, then run the command again."
        ) from None


class RedisBackend:
    """One Redis service's database."""

    def __init__(self, config: ServiceConfig, connect: ConnectSettings,
                 lease_s: float = DEFAULT_LEASE_S) -> None:
        assert config.database_url is not None
        self.config = config
        self.keys = Keys.of(config)
        self.lease_s = lease_s
        self._connect = connect
        self._client: redis.Redis | None = None
        self._lease: RedisLease | None = None

    # -- connection -------------------------------------------------------------

    @property
    def transactional(self) -> bool:
        """False: a revision's commands are not rolled back; a failure leaves it dirty."""
        return False

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            raise RuntimeError("RedisBackend.open() was not called")
        return self._client

    def open(self, timeout_s: float | None = None) -> None:
        if self._client is None:
            settings = self._connect
            if timeout_s is not None:
                settings = ConnectSettings(settings.retries, settings.max_wait_s, timeout_s,
                                           settings.read_timeout_s, settings.keepalive_s)
            self._client = connect_redis(self.config, settings)
            self.claim_script = self._client.register_script(CLAIM)
            self.give_back_script = self._client.register_script(GIVE_BACK)

    def interrupt(self) -> None:
        """Nothing to stop: the server finishes each command on its own, promptly."""

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- lock ---------------------------------------------------------------------

    @property
    def lease_value(self) -> str | None:
        return self._lease.value if self._lease is not None else None

    @contextmanager
    def lock(self, timeout_s: float) -> Iterator[None]:
        lease = RedisLease(self.client, self.keys.lock, self.lease_s)
        try:
            with connection_errors(self.config, "taking its migration lock"):
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

    def _lease_lost(self, step: Step, results: list[StepResult]) -> LockLost:
        return LockLost(
            f"Service '{self.config.name}': another runner took the migration lease (it lapsed "
            f"after lock.lease_s = {self.lease_s:g}s without renewal) before "
            f"{step.service}:{step.revision} could run; nothing more was run. Run migrate again.",
            step.service, step.revision, list(results),
        )

    # -- ledger -------------------------------------------------------------------

    def read_state(self, revisions: Mapping[str, Revision]) -> ServiceState:
        with connection_errors(self.config, "reading its migration state"):
            entries = ledger_entries(self.client, self.keys)
        return state_from_entries(entries, self.config.name, revisions)

    def read_schema(self, ignored: Iterable[str]) -> Schema:
        """Redis keeps no schema: nothing for `drift` or a round trip to compare."""
        del ignored
        return Schema()

    def history(self, limit: int | None = None) -> list[LedgerRow]:
        with connection_errors(self.config, "reading its ledger"):
            return entry_rows(ledger_entries(self.client, self.keys), self.config.name, limit)

    def append(self, fields: Fields) -> str:
        """Append one ledger entry; its id."""
        return append_entry(self.client, self.keys, fields)

    def finish(self, entry: str, status: str, t0: float) -> float:
        """Record the outcome of the `running` entry `entry`; the step's duration in ms."""
        return finish_entry(self.client, self.keys, entry, status, t0)

    def record(self, revision: str, direction: str, status: str, checksum: str | None,
               ctx: RunContext) -> None:
        with connection_errors(self.config, "recording in its ledger"):
            now = ledger_rules.utcnow()
            self.append(entry_fields(revision, direction, status, checksum, ctx, now,
                                      finished=now, duration_ms=0.0))
            rows = entry_rows(ledger_entries(self.client, self.keys), self.config.name)
            reset_markers(self.client, self.keys, rows)

    # -- applying -----------------------------------------------------------------

    def apply(
        self,
        steps: Sequence[Step],
        revisions: Mapping[str, Revision],
        ctx: RunContext,
        fake: bool,
        on_step: StepCallback,
    ) -> list[StepResult]:
        results: list[StepResult] = []
        for step in steps:
            rev = revisions[step.revision]
            up = step.direction == "up"
            run = RedisStep(self, step, rev, ctx, step_outcome(step, fake))
            try:
                module = None if fake else load_revision_module(rev, to_apply=True)
            except (SystemExit, KeyboardInterrupt) as exc:
                # Its top-level code exited: no function of it had the client.
                run.record_failure(left_nothing=True)
                raise failed_step_error(run, exc, results, on_step) from exc
            fn = None if module is None else getattr(module, "upgrade" if up else "downgrade", None)
            if module is not None and not callable(fn):
                raise RevisionFileError(
                    f"{rev.path}: revision {step.service}:{step.revision} defines no "
                    f"{'upgrade' if up else 'downgrade'}(r) function."
                )
            check = getattr(module, "verify", None) if up and module is not None else None
            with connection_errors(self.config, f"claiming {step.service}:{step.revision}"):
                if self._lease is not None and not self._lease.renew():
                    raise self._lease_lost(step, results)
            on_step(step, "start", None)
            try:
                run.execute(fn, check)
            except LeaseLost:
                raise self._lease_lost(step, results) from None
            except MarkerTaken as claimed:
                raise LockLost(
                    f"Revision {step.service}:{step.revision} was {claimed.what} by another runner "
                    f"(the marker {claimed.marker}); nothing was run. If no other runner is "
                    f"active, run `manage.py repair {step.service}`.",
                    step.service, step.revision, list(results),
                ) from None
            except (Exception, SystemExit, KeyboardInterrupt) as exc:  # user code ran
                raise failed_step_error(run, exc, results, on_step) from exc
            results.append(StepResult(step.service, step.revision, step.direction, run.outcome,
                                      run.duration_ms))
            on_step(step, "done", results[-1])
        return results

    def verify(self, revision: Revision) -> str | None:
        check = getattr(load_revision_module(revision), "verify", None)
        if check is None:
            return None
        return verify_failure(lambda: check(self.client), revision, error_line)

    # -- server -------------------------------------------------------------------

    def _info(self, section: str) -> dict[str, object]:
        """One section of INFO; empty where the server refuses it (renamed or disabled,
        as hardened servers do)."""
        try:
            return dict(self.client.info(section))
        except redis.ResponseError:
            return {}

    def invalid_indexes(self, revisions: Mapping[str, Revision]) -> list[InvalidIndex]:
        return []  # no index is built part way

    def drop_indexes(self, indexes: Sequence[InvalidIndex]) -> list[InvalidIndex]:
        return []

    def server_info(self) -> ServerInfo:
        with connection_errors(self.config, "reading the server's version"):
            start = time.perf_counter()
            self.client.ping()
            latency = (time.perf_counter() - start) * 1000
            info, replication = self._info("server"), self._info("replication")
        db = self.client.connection_pool.connection_kwargs.get("db", 0)
        return ServerInfo(
            server_version=f"redis {info.get('redis_version', '?')}",
            latency_ms=latency,
            can_create=None,
            extra=(
                ("mode", str(info.get("redis_mode", "standalone"))),
                ("role", str(replication.get("role", "?"))),
                ("database", str(db)),
                ("key_prefix", self.config.key_prefix),
            ),
        )
