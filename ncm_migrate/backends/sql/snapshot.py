"""A SQL database's schema as a `schemas.Schema`, read with SQLAlchemy's inspector: tables,
columns (type, nullability, default), primary keys, indexes, and unique, foreign-key and
check constraints. Read only.

Both sides of a comparison are reflected from the same server, so a type or default reads
the same way on both when it is the same; what a server names for itself differs between
databases (SQLite leaves constraints unnamed) and is keyed by what the constraint holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ...schemas import Schema


def read_sql_schema(conn: Connection, ignored: Iterable[str]) -> Schema:
    """The schema of the database behind `conn` (its default schema), without the tables
    in `ignored` (the version tables and the ledger); ends the transaction it reads in."""
    skip = set(ignored)
    try:
        inspector = sa.inspect(conn)
        objects: dict[str, str] = {}
        for table in inspector.get_table_names():
            if table not in skip:
                objects.update(_table(inspector, conn.dialect, table))
        return Schema.of(objects)
    finally:
        if conn.in_transaction():
            conn.rollback()  # MySQL: no metadata lock is kept on what was read


def _table(inspector: sa.Inspector, dialect: sa.Dialect, table: str) -> Iterator[tuple[str, str]]:
    at = f"table {table}"
    yield at, "table"
    for col in inspector.get_columns(table):
        yield f"{at} / column {col['name']}", _column(col, dialect)
    pk = inspector.get_pk_constraint(table)
    if pk.get("constrained_columns"):
        yield f"{at} / primary key", _columns(pk["constrained_columns"])
    for ix in inspector.get_indexes(table):
        cols = [c if c is not None else e for c, e in
                zip(ix["column_names"], ix.get("expressions") or ix["column_names"], strict=False)]
        kind = "UNIQUE " if ix["unique"] else ""
        yield f"{at} / index {ix['name']}", f"{kind}{_columns(cols)}{_options(ix.get('dialect_options'))}"
    for uq in inspector.get_unique_constraints(table):
        key = uq["name"] or _columns(uq["column_names"])
        yield f"{at} / unique {key}", _columns(uq["column_names"])
    for fk in inspector.get_foreign_keys(table):
        target = f"{fk['referred_table']}{_columns(fk['referred_columns'])}"
        key = fk["name"] or f"{_columns(fk['constrained_columns'])} -> {target}"
        rules = "".join(f" {k.upper()} {v}" for k, v in sorted((fk.get("options") or {}).items()))
        yield f"{at} / foreign key {key}", f"{_columns(fk['constrained_columns'])} -> {target}{rules}"
    for ck in _checks(inspector, table):
        text = " ".join(str(ck["sqltext"]).split())
        yield f"{at} / check {ck['name'] or text}", text


def _column(col: Mapping[str, Any], dialect: sa.Dialect) -> str:
    try:
        kind = str(col["type"].compile(dialect=dialect))
    except sa.exc.CompileError:  # a type the dialect cannot spell back (SQLite's NullType)
        kind = repr(col["type"])
    parts = [kind, "NULL" if col["nullable"] else "NOT NULL"]
    if col.get("default") is not None:
        parts.append(f"DEFAULT {col['default']}")
    if col.get("computed"):
        parts.append(f"GENERATED {col['computed'].get('sqltext')}")
    return " ".join(parts)


def _checks(inspector: sa.Inspector, table: str) -> list[Any]:
    """The table's check constraints; none where the dialect cannot reflect them
    (SQLAlchemy's inspector raises NotImplementedError there)."""
    try:
        return list(inspector.get_check_constraints(table))
    except NotImplementedError:
        return []


def _columns(names: Iterable[Any]) -> str:
    return f"({', '.join(str(n) for n in names)})"


def _options(options: Mapping[str, Any] | None) -> str:
    """An index's dialect options that say something (PostgreSQL reports an empty
    `postgresql_include` for every index)."""
    return "".join(f" {k}={v}" for k, v in sorted((options or {}).items()) if v not in (None, [], ()))
