"""The SQL backend's bookkeeping: the ledger table (`ncm_migrations`), created if missing and
brought up to date (columns added by later versions; on MySQL/MariaDB times widened to
microseconds), its rows written and read, and a service's state
read from its Alembic version table and its ledger rows."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles

from ... import ledger as ledger_rules
from ...model import LedgerRow, Outcome, Revision, ServiceState, Step

log = logging.getLogger(__name__)

NamedLock = Callable[[str, float], AbstractContextManager[None]]
"""A lock by name, taken within a timeout in seconds (`locks.named_lock`, bound)."""


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
    # Added by 0.2 (`ledger.LATER_COLUMNS`): a ledger made before gains them, nullable.
    sa.Column("run_id", sa.String(ledger_rules.RUN_ID_LENGTH)),
    sa.Column("attempt", sa.Integer),
    sa.Column("waited_ms", sa.Float),
    sa.Index("ix_ncm_migrations_service", "service", "id"),
)
# Built once: a statement built per step costs SQLAlchemy a cache-key walk each time.
_LEDGER_INSERT = LEDGER.insert()
# The same without fetching the new row's id (no RETURNING): for rows never updated later.
_LEDGER_RECORD = LEDGER.insert().inline()
_LEDGER_FINISH = LEDGER.update().where(LEDGER.c.id == sa.bindparam("row_id"))
# The ledger's columns, with their fractional digits on MySQL/MariaDB (none: no ledger yet).
_LEDGER_COLUMNS = {
    "postgresql": sa.text(
        "SELECT column_name, NULL FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = :table"
    ),
    "mysql": sa.text(
        "SELECT COLUMN_NAME, DATETIME_PRECISION FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :table"
    ),
}
_LEDGER_COLUMNS["mariadb"] = _LEDGER_COLUMNS["mysql"]
# What a service's state is read from: for each revision its latest row that applied,
# reverted or faked it (up or down), and the service's latest row of all (whether it is dirty), oldest
# first; a long ledger stays in the server. The same state as from every row: only those
# rows decide it (`ledger.applied_checksums`, `ledger.dirty_mark`).
_STATE_ROWS = sa.text(
    f"SELECT revision, direction, status, checksum FROM {ledger_rules.TABLE} WHERE id IN ("
    f"SELECT MAX(id) FROM {ledger_rules.TABLE} WHERE service = :service "
    "AND (status = 'faked' OR status = 'applied' AND direction = 'up' "
    "OR status = 'reverted' AND direction = 'down') GROUP BY revision "
    f"UNION SELECT MAX(id) FROM {ledger_rules.TABLE} WHERE service = :service"
    ") ORDER BY id"
)


def ensure_ledger(conn: Connection, dialect: str, named_lock: NamedLock) -> None:
    """The ledger table, created if missing, and brought up to date under a lock of its
    own (every service of the database writes to it): the columns later versions added
    (`ledger.LATER_COLUMNS`), and on MySQL/MariaDB times of whole seconds, as an early
    version made them, widened to microseconds."""
    if not _ledger_changes(conn, dialect):
        conn.commit()
        return
    with named_lock(ledger_rules.TABLE, 60.0):
        changes = _ledger_changes(conn, dialect)  # again, under the lock: another runner
        if changes == ["create"]:                 # may have done it
            _ledger_md.create_all(conn, tables=[LEDGER], checkfirst=True)
        else:
            for change in changes:
                log.info("updating %s: %s", ledger_rules.TABLE, change)
                conn.exec_driver_sql(f"ALTER TABLE {ledger_rules.TABLE} {change}")
        conn.commit()


def _ledger_changes(conn: Connection, dialect: str) -> list[str]:
    """What the ledger lacks: `["create"]` when there is none, else the `ALTER TABLE`
    clauses that bring it up to date (none when it is)."""
    precision = _ledger_columns(conn, dialect)
    if not precision:
        return ["create"]
    changes = []
    for name in ledger_rules.LATER_COLUMNS:
        if name not in precision:
            column_type = LEDGER.c[name].type.compile(dialect=conn.dialect)
            changes.append(f"ADD COLUMN {name} {column_type} NULL")
    if dialect in ("mysql", "mariadb") and int(precision.get("started_at") or 0) < 6:
        changes.append("MODIFY started_at DATETIME(6) NOT NULL, MODIFY finished_at DATETIME(6) NULL")
    return changes


def _ledger_columns(conn: Connection, dialect: str) -> dict[str, int | None]:
    """The ledger's columns (none when there is no ledger), with their fractional digits
    on MySQL/MariaDB: one catalog query."""
    query = _LEDGER_COLUMNS.get(dialect)
    if query is not None:
        return {name.lower(): p for name, p in conn.execute(query, {"table": ledger_rules.TABLE})}
    try:
        return {c["name"].lower(): None for c in sa.inspect(conn).get_columns(ledger_rules.TABLE)}
    except sa.exc.NoSuchTableError:
        return {}


def insert_row(conn: Connection, values: dict[str, Any]) -> Any:
    """A ledger row; its id is fetched only for a `running` row, the one row that is
    updated later (None for any other)."""
    if values["status"] != "running":
        conn.execute(_LEDGER_RECORD, values)
        return None
    return conn.execute(_LEDGER_INSERT, values).inserted_primary_key[0]  # type: ignore[index]


def finish_row(conn: Connection, row_id: Any, values: dict[str, Any]) -> None:
    """The last columns of the `running` row `row_id`."""
    conn.execute(_LEDGER_FINISH, dict(row_id=row_id, **values))


def step_status(step: Step, fake: bool) -> Outcome:
    """The status a step done is recorded with."""
    if fake:
        return "faked"
    return "applied" if step.direction == "up" else "reverted"


def ledger_rows(conn: Connection, service: str | None = None,
                limit: int | None = None) -> list[LedgerRow]:
    """The ledger's rows (of `service`, the last `limit`), oldest first. A ledger made by
    an earlier version, not yet brought up to date, reads with its later columns empty."""
    present = _ledger_columns(conn, conn.dialect.name)
    if not present:
        conn.commit()
        return []
    query = sa.select(*(c for c in LEDGER.c if c.name in present))
    if service is not None:
        query = query.where(LEDGER.c.service == service)
    query = query.order_by(LEDGER.c.id.desc() if limit else LEDGER.c.id)
    if limit:
        query = query.limit(limit)
    rows = [_row(r._mapping) for r in conn.execute(query)]
    conn.commit()
    return list(reversed(rows)) if limit else rows


def table_names(conn: Connection) -> set[str]:
    """The tables of the connection's default schema: one catalog query, where a
    `has_table` for each table would cost one (or two) each."""
    return set(sa.inspect(conn).get_table_names())


def version_heads(conn: Connection, version_table: str, tables: set[str]) -> tuple[str, ...]:
    """The heads in a service's Alembic version table (none if it has none yet)."""
    # What Alembic's MigrationContext.get_current_heads reads, without importing Alembic.
    heads: list[str] = []
    if version_table in tables:
        # Plain text: nothing to compile (each backend's engine has its own cache).
        quoted = conn.dialect.identifier_preparer.quote(version_table)
        heads = [row[0] for row in conn.exec_driver_sql(f"SELECT version_num FROM {quoted}")]
    return tuple(sorted(heads))


def service_state(conn: Connection, version_table: str, service: str,
                  revisions: Mapping[str, Revision], transactional: bool) -> ServiceState:
    """A service's state, read in one transaction: the version table and the ledger as of
    the same moment."""
    tables = table_names(conn)
    heads = version_heads(conn, version_table, tables)
    rows: list[ledger_rules.StateRow] = []
    if ledger_rules.TABLE in tables:
        # Only the columns its state is read from, oldest first.
        result = conn.execute(_STATE_ROWS, {"service": service})
        rows = [ledger_rules.StateRow(*row) for row in result]
    conn.commit()
    applied = _applied_from_heads(heads, revisions)
    unknown = tuple(h for h in heads if h not in revisions)
    return ServiceState(
        heads=heads,
        applied=frozenset(applied),
        dirty=ledger_rules.dirty_mark(rows, transactional),
        checksums=tuple(sorted(ledger_rules.applied_checksums(rows).items())),
        unknown=unknown,
    )


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



def _row(m: Any) -> LedgerRow:
    def iso(v: Any) -> str | None:
        return v.isoformat() if isinstance(v, datetime) else (str(v) if v is not None else None)

    return LedgerRow(
        id=m["id"], service=m["service"], revision=m["revision"], direction=m["direction"],
        status=m["status"], checksum=m["checksum"], started_at=iso(m["started_at"]) or "",
        finished_at=iso(m["finished_at"]), duration_ms=m["duration_ms"], actor=m["actor"],
        host=m["host"], environment=m["environment"], tool_version=m["tool_version"],
        run_id=m.get("run_id"), attempt=m.get("attempt"), waited_ms=m.get("waited_ms"),
    )

