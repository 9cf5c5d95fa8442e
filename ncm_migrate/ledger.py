"""The ledger's contract: the columns every backend writes, and what its rows mean.

Append-only: one row per step run, never updated except from `running` to its outcome.
Backends store the rows; this module reads meaning out of them.
"""

from __future__ import annotations

import getpass
import os
import re
import secrets
import socket
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import NamedTuple

from .model import LedgerRow, RunContext

TABLE = "ncm_migrations"
COLUMNS = (
    "id", "service", "revision", "direction", "status", "checksum", "started_at",
    "finished_at", "duration_ms", "actor", "host", "environment", "tool_version",
    "run_id", "attempt", "waited_ms",
)
# Columns a ledger made by an earlier version lacks: added (nullable) when found missing.
LATER_COLUMNS = ("run_id", "attempt", "waited_ms")
# `blocked`: an attempt that waited past its lock timeout (or a deadlock picked it) and left
# nothing behind; retried within `ddl.retries`, else the run stopped there.
STATUSES = ("running", "applied", "reverted", "faked", "failed", "blocked")
# The longest `actor` and `environment` a row holds (the SQL columns' sizes): the settings
# refuse longer ones before any database is touched.
ACTOR_LENGTH = 128
ENVIRONMENT_LENGTH = 64
RUN_ID_LENGTH = 36
RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")


class StateRow(NamedTuple):
    """The columns of a ledger row that a service's state is read from: reading a state
    builds one per row of the service's history, so only these, as a plain tuple."""

    revision: str
    direction: str
    status: str
    checksum: str | None


def tool_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ncm-migrate")
    except PackageNotFoundError:
        return "0+unknown"


def actor() -> str:
    """`NCM_ACTOR` (its length checked with the settings), else the operating-system user,
    cut to the column (it comes from `LOGNAME` or `USER`, which nobody checks)."""
    explicit = os.environ.get("NCM_ACTOR")
    if explicit:
        return explicit
    try:
        return getpass.getuser()[:ACTOR_LENGTH]
    except (KeyError, OSError):
        return "unknown"


def new_run_id() -> str:
    """`NCM_RUN_ID` (a deploy pipeline's own id; checked with the settings), else a new id
    that sorts by time: `20261207T132501Z-3f9a1c`."""
    explicit = os.environ.get("NCM_RUN_ID")
    if explicit:
        return explicit
    return f"{utcnow():%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def run_id_problem(run_id: str) -> str | None:
    """Why `run_id` cannot be a run id, or None when it can."""
    if len(run_id) > RUN_ID_LENGTH:
        return f"is {len(run_id)} characters long; the ledger records at most {RUN_ID_LENGTH}"
    if not RUN_ID_PATTERN.fullmatch(run_id):
        return "may hold only letters, digits and . _ : - (starting with a letter or digit)"
    return None


def run_context(environment: str) -> RunContext:
    """Who runs this invocation, with its new run id."""
    return RunContext(
        environment=environment,
        actor=actor(),
        host=socket.gethostname(),
        tool_version=tool_version(),
        run_id=new_run_id(),
    )


def utcnow() -> datetime:
    return datetime.now(UTC)


def dirty_mark(rows: Iterable[LedgerRow | StateRow], transactional: bool) -> str | None:
    """The revision a service is dirty at, or None.

    A service is dirty when its latest row is `running` or `failed` on a database that
    cannot roll DDL back: part of that revision may have run. On transactional databases a
    `failed` row only records an attempt that left nothing behind, but a `running` row that
    was committed means a runner died mid-step, so it is dirty there too.
    """
    last = None
    for row in rows:
        last = row
    if last is None:
        return None
    if last.status == "running" or (last.status == "failed" and not transactional):
        return last.revision
    return None


def applied_checksums(rows: Iterable[LedgerRow | StateRow]) -> dict[str, str]:
    """For each revision the ledger says is applied now, the checksum it was applied with."""
    sums: dict[str, str] = {}
    for row in rows:
        if row.status in ("applied", "faked") and row.direction == "up":
            sums[row.revision] = row.checksum or ""
        elif row.status in ("reverted", "faked") and row.direction == "down":
            sums.pop(row.revision, None)
    return sums


def applied_from_ledger(rows: Iterable[LedgerRow | StateRow]) -> set[str]:
    """The revisions applied now by the ledger alone (MongoDB keeps no version table)."""
    return set(applied_checksums(rows))


def last_run(rows: Iterable[LedgerRow], environment: str) -> str | None:
    """The id of the newest run that applied a revision in `environment`, or None."""
    newest = max(
        (r for r in rows if r.run_id and r.environment == environment
         and r.direction == "up" and r.status == "applied"),
        key=lambda r: (r.started_at, str(r.id)),
        default=None,
    )
    return newest.run_id if newest is not None else None


def applied_by_run(rows: Iterable[LedgerRow], run_id: str) -> list[str]:
    """The revisions of one service's ledger (`rows` oldest first) that run `run_id` applied
    and that no later row reverted, in the order that run applied them."""
    applied: dict[str, None] = {}
    for row in rows:
        if row.direction == "up" and row.status == "applied" and row.run_id == run_id:
            applied[row.revision] = None
        elif row.direction == "down" and row.status in ("reverted", "faked"):
            applied.pop(row.revision, None)
    return list(applied)
