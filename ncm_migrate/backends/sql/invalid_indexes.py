"""Indexes a failed `CREATE INDEX CONCURRENTLY` left INVALID on PostgreSQL
(`pg_index.indisvalid = false`: unused by queries, yet kept up to date on every write), found
among the indexes a revision names, and dropped again with `DROP INDEX CONCURRENTLY`, which
cannot run inside a transaction.
"""

from __future__ import annotations

import ast
import functools
import logging
import re
from collections.abc import Iterable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ...model import InvalidIndex, Revision

log = logging.getLogger(__name__)

# An index a revision's SQL text creates: CREATE [UNIQUE] INDEX [CONCURRENTLY] [IF NOT EXISTS] name
_CREATE_INDEX = re.compile(
    r"\bCREATE\s+(?:UNIQUE\s+)?INDEX\s+(?:CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?"
    r"(?:\"?\w+\"?\.)?\"?(\w+)\"?",
    re.IGNORECASE,
)
_INVALID = sa.text(
    "SELECT c.relname, t.relname FROM pg_index i "
    "JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_class t ON t.oid = i.indrelid "
    "JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE NOT i.indisvalid AND n.nspname = current_schema() AND c.relname = ANY(:names) "
    "ORDER BY c.relname"
)


def named_indexes(revision: Revision) -> frozenset[str]:
    """The indexes `revision`'s file creates by name: `op.create_index("name", ...)` and
    `CREATE INDEX ... name` in its SQL strings (read, not imported)."""
    return _named_in(revision.path, revision.checksum)


@functools.lru_cache(maxsize=4096)
def _named_in(path: Path, _checksum: str) -> frozenset[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return frozenset()
    if "index" not in text.lower():
        return frozenset()
    try:
        tree = ast.parse(text)
    except SyntaxError:
        return frozenset()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _called(node) == "create_index":
            first = node.args[0] if node.args else next(
                (k.value for k in node.keywords if k.arg == "index_name"), None)
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                names.add(first.value)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            names.update(m.group(1) for m in _CREATE_INDEX.finditer(node.value))
    return frozenset(names)


def _called(node: ast.Call) -> str | None:
    func = node.func
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else None


def find_invalid(conn: Connection, revisions: Iterable[Revision]) -> list[InvalidIndex]:
    """The INVALID indexes of the connection's schema that one of `revisions` names."""
    owner: dict[str, Revision] = {}
    for rev in revisions:
        for name in named_indexes(rev):
            owner.setdefault(name, rev)
    if not owner:
        return []
    rows = conn.execute(_INVALID, {"names": sorted(owner)}).all()
    conn.commit()
    return [InvalidIndex(owner[index].service, owner[index].revision, index, table)
            for index, table in rows]


def drop_concurrently(conn: Connection, indexes: Iterable[InvalidIndex]) -> list[InvalidIndex]:
    """Drop `indexes` with DROP INDEX CONCURRENTLY, outside any transaction (the
    connection's own transaction is committed first, and its isolation level restored)."""
    dropped = []
    if conn.in_transaction():
        conn.commit()
    level = conn.default_isolation_level  # known since connecting: no query
    conn.execution_options(isolation_level="AUTOCOMMIT")
    try:
        quote = conn.dialect.identifier_preparer.quote
        for index in indexes:
            log.warning("dropping the INVALID index %s of revision %s:%s (a CREATE INDEX "
                        "CONCURRENTLY that failed)", index.name, index.service, index.revision)
            conn.exec_driver_sql(f"DROP INDEX CONCURRENTLY IF EXISTS {quote(index.name)}")
            dropped.append(index)
    finally:
        if conn.in_transaction():  # SQLAlchemy's own, begun even in autocommit
            conn.commit()
        if level is not None:
            conn.execution_options(isolation_level=level)
    return dropped
