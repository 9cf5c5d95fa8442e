"""Frozen value objects shared by every layer: revisions, services, steps and plans.

Nothing here does I/O or imports a database library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

Direction = Literal["up", "down"]
Outcome = Literal["applied", "reverted", "faked", "failed", "skipped", "not-run"]
BackendName = Literal["sql", "mongo", "redis"]
MIGRATION_TYPES = ("schema", "data", "index", "seed", "merge")
# Expand/contract deploys: `pre` revisions run before the new code is deployed (the
# default), `post` revisions after it (`migrate --phase post`).
Phase = Literal["pre", "post"]
PHASES: tuple[Phase, ...] = ("pre", "post")


class RevisionKey(NamedTuple):
    """A node of the cross-service graph: `(service, revision)`. A named tuple, not a
    dataclass: graphs hash and compare these hundreds of thousands of times."""

    service: str
    revision: str

    def __str__(self) -> str:
        return f"{self.service}:{self.revision}"


def split_reference(text: str, service: str = "") -> tuple[str, str]:
    """A revision named in `depends_on`, `requires` or `--requires`, as (service, revision):
    `svc:rev` is ("svc", "rev"), split at the first colon; a bare `rev` is (`service`, "rev"),
    `service` being the naming revision's own (or "" where a service must be named). The one
    reading of these references: the graph, discovery and the commands all use it."""
    named, colon, ident = text.partition(":")
    return (named, ident) if colon else (service, text)


@dataclass(frozen=True)
class Revision:
    """A revision file's header, read without importing the module."""

    service: str
    revision: str
    down_revisions: tuple[str, ...]
    path: Path
    checksum: str
    branch_labels: tuple[str, ...] = ()
    depends_on: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    migration_type: str = "schema"
    # The header's `lock_timeout` / `statement_timeout` as written ("2s", "0"), else None:
    # the settings' `ddl.*` apply.
    lock_timeout: str | None = None
    statement_timeout: str | None = None
    doc: str = ""
    defines: frozenset[str] = frozenset()
    line_of: tuple[tuple[str, int], ...] = ()
    phase: Phase = "pre"
    # `window = true`: runs only inside a maintenance window; False: never waits for one;
    # None (no header): waits when lint finds it destructive
    window: bool | None = None

    @property
    def key(self) -> RevisionKey:
        return RevisionKey(self.service, self.revision)

    @property
    def is_merge(self) -> bool:
        return len(self.down_revisions) > 1


@dataclass(frozen=True)
class ServiceConfig:
    """One service's effective settings in the chosen environment."""

    name: str
    root: Path
    backend: BackendName = "sql"
    database_url: str | None = None
    version_table: str = "alembic_version"
    depends_on: tuple[str, ...] = ()
    enabled: bool = True
    naming_convention: tuple[tuple[str, str], ...] = ()
    models: str | None = None
    revision_ids: Literal["numbered", "hash"] = "numbered"
    use_env_py: bool = False
    database_name: str | None = None
    skip_reason: str | None = None
    # Redis: the prefix of ncm-migrate's own keys (ledger, markers, lease), and the prefixes
    # of the service's keys that backups hold (empty: every key but ncm-migrate's).
    key_prefix: str = "ncm:"
    key_prefixes: tuple[str, ...] = ()

    @property
    def migrations_dir(self) -> Path:
        return self.root / "migrations"

    @property
    def active(self) -> bool:
        return self.skip_reason is None


@dataclass(frozen=True)
class Step:
    """One revision to run in one direction; steps of one `level` may run side by side."""

    service: str
    revision: str
    direction: Direction
    level: int = 0

    @property
    def key(self) -> RevisionKey:
        return RevisionKey(self.service, self.revision)


@dataclass(frozen=True)
class DeferredStep:
    """A step held back until a maintenance window opens, and why."""

    service: str
    revision: str
    reason: str

    @property
    def key(self) -> RevisionKey:
        return RevisionKey(self.service, self.revision)


@dataclass(frozen=True)
class Plan:
    """Steps in the exact order a serial run executes them; `deferred`: those held back
    for a maintenance window (not run)."""

    steps: tuple[Step, ...]
    deferred: tuple[DeferredStep, ...] = ()

    def services(self) -> list[str]:
        seen: dict[str, None] = {}
        for step in self.steps:
            seen.setdefault(step.service)
        return list(seen)

    def __bool__(self) -> bool:
        return bool(self.steps)


@dataclass(frozen=True)
class StepResult:
    """What happened to one step."""

    service: str
    revision: str
    direction: Direction
    outcome: Outcome
    duration_ms: float = 0.0
    error: str | None = None
    # A failed step on a database that cannot roll DDL back: part of it may have run, and
    # its service is dirty until `repair`.
    dirty: bool = False


@dataclass(frozen=True)
class ServiceState:
    """What a database says about one service: its heads, applied set and dirty mark."""

    heads: tuple[str, ...] = ()
    applied: frozenset[str] = frozenset()
    dirty: str | None = None
    checksums: tuple[tuple[str, str], ...] = ()
    unknown: tuple[str, ...] = ()


@dataclass(frozen=True)
class LedgerRow:
    """One row of the append-only `ncm_migrations` ledger."""

    id: int | str
    service: str
    revision: str
    direction: Direction
    status: str
    checksum: str | None
    started_at: str
    finished_at: str | None
    duration_ms: float | None
    actor: str
    host: str
    environment: str
    tool_version: str
    run_id: str | None = None
    attempt: int | None = None
    waited_ms: float | None = None


@dataclass(frozen=True)
class InvalidIndex:
    """An index a revision names that a failed `CREATE INDEX CONCURRENTLY` left INVALID."""

    service: str
    revision: str
    name: str
    table: str


@dataclass(frozen=True)
class RunContext:
    """Who runs a step and where: written to the ledger and the audit log."""

    environment: str
    actor: str
    host: str
    tool_version: str
    extra: dict[str, str] = field(default_factory=dict)
    run_id: str = ""
    """One id per invocation, on every ledger row and audit line it writes: what
    `rollback --run` and `history --run` select by (empty only where nothing is recorded)."""
