"""The rules that `migrate` enforces and `validate` reports, each written once.

A rule returns findings; `validate` lists them all and `migrate` raises the first error
(`raise_first`), so the two can never disagree. Pure: no I/O beyond resolving host names.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from .errors import ChecksumMismatch, DirtyService, GraphError, MultipleHeads, NcmError, SettingsError
from .findings import Finding, relative_file
from .graph import Graph
from .model import InvalidIndex, LedgerRow, Revision, RevisionKey, ServiceConfig, ServiceState
from .urls import DatabaseIdentity, database_identity

LEDGER_TABLE = "ncm_migrations"

# The error each rule raises where a command refuses to go on; rules not named here raise
# the root error (exit 1).
_ERRORS: Mapping[str, type[NcmError]] = {
    "dirty": DirtyService,
    "missing-file": GraphError,
    "checksum-drift": ChecksumMismatch,
    "version-table-clash": SettingsError,
    "missing-revision": GraphError,
    "cycle": GraphError,
    "duplicate-label": GraphError,
    "multiple-heads": MultipleHeads,
    "phase-order": GraphError,
}


def raise_first(findings: Iterable[Finding]) -> None:
    """Raise the first error-level finding as its rule's error, its message one sentence
    (each rule's messages start as a sentence does)."""
    for finding in findings:
        if finding.severity == "error":
            raise _ERRORS.get(finding.rule, NcmError)(finding.message.rstrip(".") + ".")


def invalid_index_findings(
    config: ServiceConfig, indexes: Sequence[InvalidIndex], revisions: Mapping[str, Revision],
    root: Path | None = None,
) -> list[Finding]:
    """Indexes a failed `CREATE INDEX CONCURRENTLY` left INVALID: unused by queries, yet
    kept up to date on every write, and in the way of building them again."""
    findings = []
    for index in indexes:
        rev = revisions.get(index.revision)
        findings.append(Finding(
            config.name, index.revision, "invalid-index", "error",
            f"Index {index.name} on {index.table}, created by revision {config.name}:"
            f"{index.revision}, is INVALID: a CREATE INDEX CONCURRENTLY failed part way; run "
            f"`manage.py repair {config.name}` to drop it (concurrently), then migrate builds "
            "it again",
            relative_file(rev.path if rev else config.migrations_dir, root),
        ))
    return findings


def state_findings(
    config: ServiceConfig,
    state: ServiceState,
    revisions: Mapping[str, Revision],
    root: Path | None = None,
    *,
    rows: Sequence[LedgerRow] = (),
    allow_drift: bool = False,
) -> list[Finding]:
    """What a database's state says is wrong with a service, most urgent first: a dirty
    mark, applied revisions whose file is gone, and (unless `allow_drift`) applied revisions
    whose file changed. `rows` (the ledger) only adds when each was applied; `root` makes
    paths relative to the project."""
    name = config.name
    migrations = relative_file(config.migrations_dir, root)
    when = _applied_when(rows)
    findings: list[Finding] = []
    if state.dirty:
        findings.append(Finding(
            name, state.dirty, "dirty", "error",
            f"Service '{name}' is dirty: revision {state.dirty} failed part way on a database "
            f"that cannot roll DDL back; fix the database by hand, then run "
            f"`manage.py repair {name}`",
            migrations,
        ))
    recorded = dict(state.checksums)
    for rev_id in sorted(set(recorded) | set(state.unknown)):
        if rev_id not in revisions:
            findings.append(Finding(
                name, rev_id, "missing-file", "error",
                f"Revision {name}:{rev_id} was applied{when.get(rev_id, '')} but its file is gone "
                f"from {migrations}; check out the branch that has them (or restore the file)",
                migrations,
            ))
    if not allow_drift:
        for rev_id, checksum in state.checksums:
            rev = revisions.get(rev_id)
            if rev is not None and checksum and checksum != rev.checksum:
                findings.append(Finding(
                    name, rev_id, "checksum-drift", "error",
                    f"Revision {name}:{rev_id} ({relative_file(rev.path, root)}) was edited after it was "
                    f"applied{when.get(rev_id, '')}; revert the edit, or run `manage.py repair "
                    f"{name}` if it was deliberate (`manage.py validate {name}` shows it)",
                    relative_file(rev.path, root),
                ))
    return findings


def check_state(
    config: ServiceConfig,
    state: ServiceState,
    revisions: Mapping[str, Revision],
    allow_drift: bool,
    root: Path | None = None,
) -> None:
    """Refuse a service whose state breaks a rule (`state_findings`), with the first error."""
    raise_first(state_findings(config, state, revisions, root, allow_drift=allow_drift))


def check_known(config: ServiceConfig, state: ServiceState, revisions: Mapping[str, Revision],
                root: Path | None = None) -> None:
    """Refuse a service whose database has revisions applied that no file on disk holds
    (a branch switch): nothing can be planned from a state that is not known."""
    raise_first(f for f in state_findings(config, state, revisions, root, allow_drift=True)
                if f.rule == "missing-file")


def heads_findings(graph: Graph, services: Iterable[str], root: Path | None = None) -> list[Finding]:
    """Services whose heads fork from a common revision without a merge (or a branch label
    of their own): nothing can say which head comes first."""
    findings: list[Finding] = []
    for name in services:
        heads = graph.conflicting_heads(name)
        if heads:
            rev = graph.nodes[RevisionKey(name, heads[-1])]
            findings.append(Finding(
                name, heads[-1], "multiple-heads", "error",
                f"Service '{name}' has several heads that fork without a merge: "
                f"{', '.join(heads)}; run `manage.py makemigrations {name} --merge`",
                relative_file(rev.path, root),
            ))
    return findings


def version_table_findings(services: Sequence[ServiceConfig], root: Path) -> list[Finding]:
    """SQL services that reach one database (however their URLs are spelled: driver,
    `localhost` or `127.0.0.1`, default port) and share a version table, and version tables
    named like the ledger."""
    findings: list[Finding] = []
    seen: dict[tuple[DatabaseIdentity, str], str] = {}
    for svc in services:
        if svc.backend != "sql" or svc.database_url is None or not svc.active:
            continue
        where = relative_file(svc.root, root)
        if svc.version_table == LEDGER_TABLE:
            findings.append(Finding(
                svc.name, "", "version-table-clash", "error",
                f"Setting services.{svc.name}.version_table is '{LEDGER_TABLE}', the ledger's "
                "table; choose another",
                where,
            ))
        identity = database_identity(svc.database_url)
        other = next((o for o in seen if _same_database(o[0], identity) and o[1] == svc.version_table), None)
        if other is not None:
            findings.append(Finding(
                svc.name, "", "version-table-clash", "error",
                f"Services '{seen[other]}' and '{svc.name}' share one database and the version "
                f"table '{svc.version_table}'; give one of them its own: "
                f"services.{svc.name}.version_table = \"alembic_version_{svc.name}\"",
                where,
            ))
        else:
            seen[(identity, svc.version_table)] = svc.name
    return findings


def _same_database(a: DatabaseIdentity, b: DatabaseIdentity) -> bool:
    """One database: the same dialect, port and database, on one host (names resolved only
    when everything else already matches, so settings load does no DNS look-up otherwise)."""
    if (a.dialect, a.port, a.database) != (b.dialect, b.port, b.database):
        return False
    return a.host == b.host or _resolve_host(a.host) == _resolve_host(b.host)


@functools.cache
def _resolve_host(host: str) -> str:
    """The first address a host name resolves to (the name itself when it does not)."""
    try:
        return str(socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0])
    except (OSError, UnicodeError):
        return host


def _applied_when(rows: Iterable[LedgerRow]) -> dict[str, str]:
    when: dict[str, str] = {}
    for row in rows:
        if row.direction == "up" and row.status in ("applied", "faked"):
            when[row.revision] = f" on {(row.finished_at or row.started_at)[:19]} by {row.actor}"
    return when
