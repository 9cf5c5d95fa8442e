"""One protocol that every database backend implements, the factory that picks one, and
opening one with the connect retry policy (`retry.py`) and closing it again (`opened_backend`).

The protocol speaks only in ncm-migrate's own value objects, so SQL, MongoDB and Redis services
go through the same executor.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal, Protocol

from ..config import ConnectSettings, DdlSettings
from ..model import (
    InvalidIndex,
    LedgerRow,
    Revision,
    RunContext,
    ServiceConfig,
    ServiceState,
    Step,
    StepResult,
)
from ..schemas import Schema

if TYPE_CHECKING:
    from ..project import Project

log = logging.getLogger(__name__)

Phase = Literal["start", "done"]
StepCallback = Callable[[Step, Phase, StepResult | None], None]


class ConnectFailed(Exception):
    """One connection attempt failed; the retry policy decides whether to try again.

    `permanent` when the server answered and refused (wrong password, no such database):
    waiting will not help, so it is not retried. `setting` when the URL itself cannot work
    (a SQLite file whose folder cannot be written): not retried either, and bad input.
    """

    def __init__(self, reason: str, permanent: bool = False, setting: bool = False) -> None:
        super().__init__(reason)
        self.permanent = permanent or setting
        self.setting = setting


@dataclass(frozen=True)
class ServerInfo:
    server_version: str
    latency_ms: float
    can_create: bool | None = None
    extra: tuple[tuple[str, str], ...] = ()


class Backend(Protocol):
    """What the executor needs from one service's database."""

    config: ServiceConfig

    @property
    def transactional(self) -> bool:
        """True when a failed step leaves nothing behind (so a failure is not dirty)."""

    def open(self, timeout_s: float | None = None) -> None:
        """Connect once; raise `ConnectFailed` if the database does not answer a query
        within `timeout_s` (default: the backend's `connect.timeout_s`)."""

    def close(self) -> None: ...

    def lock(self, timeout_s: float) -> AbstractContextManager[None]:
        """Hold the service's migration lock; raise `LockTimeout` after `timeout_s`."""

    def read_state(self, revisions: Mapping[str, Revision]) -> ServiceState: ...

    def apply(
        self,
        steps: Sequence[Step],
        revisions: Mapping[str, Revision],
        ctx: RunContext,
        fake: bool,
        on_step: StepCallback,
    ) -> list[StepResult]:
        """Run `steps` in order, each with its ledger row; stop at the first failure."""

    def verify(self, revision: Revision) -> str | None:
        """Run an applied revision's `verify`; the error text, or None when it passes."""

    def history(self, limit: int | None = None) -> list[LedgerRow]: ...

    def server_info(self) -> ServerInfo: ...

    def record(self, revision: str, direction: str, status: str, checksum: str | None,
               ctx: RunContext) -> None:
        """Append one finished ledger row (used by `repair`)."""

    def invalid_indexes(self, revisions: Mapping[str, Revision]) -> list[InvalidIndex]:
        """Indexes that `revisions` name and that a failed concurrent build left INVALID
        (PostgreSQL; none elsewhere)."""

    def drop_indexes(self, indexes: Sequence[InvalidIndex]) -> list[InvalidIndex]:
        """Drop INVALID `indexes` (concurrently, on PostgreSQL): those dropped."""

    def read_schema(self, ignored: Iterable[str]) -> Schema:
        """The database's schema (tables or collections, and what they hold), without the
        objects named in `ignored`; reads only."""

    def interrupt(self) -> None:
        """After a signal cut a step short on this side: stop what the server still runs
        for this backend's connection (MySQL goes on with a statement whose client left,
        DDL included); the connection is not used again. A no-op where nothing runs on."""


def step_outcome(step: Step, fake: bool) -> Literal["applied", "reverted", "faked"]:
    """What a step that succeeds is recorded as: `faked` with --fake, else by its direction."""
    if fake:
        return "faked"
    return "applied" if step.direction == "up" else "reverted"


def make_backend(config: ServiceConfig, connect: ConnectSettings | float, lease_s: float = 30.0,
                 ddl: DdlSettings | None = None) -> Backend:
    """The backend for a service's URL scheme; `connect` the `connect.*` settings (or only
    a connect timeout); `lease_s` is MongoDB's and Redis's lock lease (`lock.lease_s`);
    `ddl` how SQL steps wait on locks (`ddl.*`)."""
    if config.backend == "redis":
        from .redis.backend import RedisBackend

        settings = connect if isinstance(connect, ConnectSettings) else ConnectSettings(timeout_s=connect)
        return RedisBackend(config, settings, lease_s)
    if config.backend == "mongo":
        from .mongo.backend import MongoBackend

        timeout = connect.timeout_s if isinstance(connect, ConnectSettings) else connect
        return MongoBackend(config, timeout, lease_s)
    from .sql.backend import SqlBackend

    return SqlBackend(config, connect, ddl)


@contextmanager
def scratch_copy(config: ServiceConfig, project: Project) -> Iterator[ServiceConfig | None]:
    """`config` pointed at a new, empty database on the service's server, dropped on the way
    out (even when the work in it fails); None when the server refuses to create one."""
    if config.backend == "mongo":
        from .mongo.scratch import scratch_mongo_database

        with scratch_mongo_database(config, project.settings.connect.timeout_s) as scratch:
            yield scratch
        return
    from .sql.autogen import scratch_database

    with scratch_database(config, project) as url:
        yield None if url is None else replace(config, database_url=url)


def open_backend(config: ServiceConfig, connect: ConnectSettings) -> Backend:
    """`make_backend`, opened: connecting retried by the one policy
    (`retry.open_with_retries`: `DatabaseUnreachable`, exit 4, when it never answers)."""
    from .retry import open_with_retries

    backend = make_backend(config, connect)
    open_with_retries(backend, connect)
    return backend


@contextmanager
def opened_backend(config: ServiceConfig, connect: ConnectSettings) -> Iterator[Backend]:
    """`open_backend`, closed on the way out as `closing_backend` closes it."""
    with closing_backend(open_backend(config, connect)) as backend:
        yield backend


@contextmanager
def closing_backend(backend: Backend) -> Iterator[Backend]:
    """`backend` (opened or not), closed on the way out. When an error is already on its
    way out, a close that fails too is logged, and the first error goes on."""
    try:
        yield backend
    except BaseException:
        try:
            backend.close()
        except Exception as exc:
            log.warning("closing a connection failed after an earlier error: %s", exc)
        raise
    backend.close()
