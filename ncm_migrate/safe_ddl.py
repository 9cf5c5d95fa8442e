"""PostgreSQL's safe-DDL rules: schema changes that hold a lock blocking writes (or reads)
for as long as they scan or rewrite an existing table, found in `upgrade()`'s source.

Pure (the `ast` module only); `linting` runs these rules on PostgreSQL services and turns
each `Unsafe` into a finding, silenced by `# ncm: allow <rule>` like any other rule.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from .revision_ast import Table as NamedTable
from .revision_ast import (
    batch_tables,
    calls,
    first_string,
    is_false,
    is_true,
    keyword_string,
    string_arg,
)

# Each rule's reason and its fix: the finding's message says what to write instead.
RULES: dict[str, str] = {
    "constraint-not-valid": (
        "adds a foreign key or CHECK to an existing table, which scans it while writes wait; "
        "add it with postgresql_not_valid=True (`NOT VALID`), then `ALTER TABLE ... VALIDATE "
        "CONSTRAINT ...` in a later revision"
    ),
    "set-not-null-without-check": (
        "sets NOT NULL on an existing table's column, which scans it while reads and writes wait; "
        "first add `CHECK (col IS NOT NULL) NOT VALID` and `VALIDATE CONSTRAINT` it (PostgreSQL "
        "12+ then skips the scan), in this revision before the SET NOT NULL or in an earlier one"
    ),
    "volatile-default": (
        "adds a column with a volatile server default to an existing table, which rewrites "
        "the table while reads and writes wait; add the column without a default (or a constant "
        "one), set the default with alter_column, and backfill the rows in batches"
    ),
    "unique-without-index": (
        "adds a unique constraint to an existing table, which builds its index while writes "
        "wait; create a unique index with postgresql_concurrently=True in an autocommit "
        "block, then `ALTER TABLE ... ADD CONSTRAINT ... UNIQUE USING INDEX ...`"
    ),
    "ddl-with-backfill": (
        "backfills data in the same revision (and transaction) as schema changes to an existing "
        "table, so their "
        "locks are held for as long as the backfill runs; move the backfill to a revision of its "
        "own (`makemigrations --type data`), in batches"
    ),
}

Table = str  # a table's name, unquoted and without its schema
# Functions whose value changes per row (PostgreSQL `VOLATILE`). `now()`, `CURRENT_TIMESTAMP`
# and the like are `STABLE`: since PostgreSQL 11 such a default is stored once, no rewrite.
_VOLATILE = re.compile(
    r"\b(random|gen_random_uuid|uuid_generate_v[14]|clock_timestamp|timeofday|nextval|"
    r"txid_current|uuidv[47])\s*\(",
    re.IGNORECASE,
)
_NAME = r'(?:"?\w+"?\.)?"?(\w+)"?'
_ALTER = re.compile(rf"\bALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?{_NAME}", re.IGNORECASE)
_CREATE = re.compile(rf"\bCREATE\s+(?:UNLOGGED\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?{_NAME}", re.IGNORECASE)
_ADD_CONSTRAINT = re.compile(
    r"\bADD\s+(?:CONSTRAINT\s+\S+\s+)?(FOREIGN\s+KEY|CHECK|UNIQUE)\b", re.IGNORECASE
)
_NOT_VALID = re.compile(r"\bNOT\s+VALID\b", re.IGNORECASE)
_USING_INDEX = re.compile(r"\bUSING\s+INDEX\b", re.IGNORECASE)
_SET_NOT_NULL = re.compile(r"\bALTER\s+(?:COLUMN\s+)?\"?(\w+)\"?\s+SET\s+NOT\s+NULL\b", re.IGNORECASE)
_VALIDATE = re.compile(r"\bVALIDATE\s+CONSTRAINT\b", re.IGNORECASE)
_IS_NOT_NULL = re.compile(r"\"?(\w+)\"?\s+IS\s+NOT\s+NULL\b", re.IGNORECASE)
_BACKFILL = re.compile(r"^\s*(?:WITH\b.*\b)?(UPDATE\b|INSERT\b.*\bSELECT\b)", re.IGNORECASE | re.DOTALL)
_DDL_SQL = re.compile(r"^\s*(ALTER|CREATE|DROP)\s+(TABLE|INDEX|TYPE)\b", re.IGNORECASE)
_INDEX_ON = re.compile(rf"\bON\s+(?:ONLY\s+)?{_NAME}", re.IGNORECASE)
_DDL_OPS = frozenset({
    "create_table", "drop_table", "rename_table", "add_column", "drop_column", "alter_column",
    "create_index", "drop_index", "create_foreign_key", "create_check_constraint",
    "create_unique_constraint", "create_primary_key", "drop_constraint",
})
# `op.<name>(...)`: the position of its table argument (also accepted as `table_name=`,
# `source_table=`); inside `batch_alter_table` the batch's table instead.
_TABLE_ARG = {"create_table": 0, "drop_table": 0, "rename_table": 0, "add_column": 0, "drop_column": 0,
              "alter_column": 0, "create_index": 1, "create_foreign_key": 1,
              "create_check_constraint": 1, "create_unique_constraint": 1, "create_primary_key": 1,
              "drop_constraint": 1}
_EXECUTE = ("execute", "exec_driver_sql")


@dataclass(frozen=True)
class Unsafe:
    """One unsafe operation: the rule, the call's lines, and the call as written."""

    rule: str
    line: int
    end_line: int
    detail: str


def unsafe_ddl(upgrade: ast.AST) -> Iterator[Unsafe]:
    """The safe-DDL rules' hits in one `upgrade()` (of a PostgreSQL service), in call order.

    Operations on a table that the same `upgrade()` creates first are safe: nobody reads or
    writes it yet."""
    ordered = sorted(calls(upgrade), key=lambda c: (c[0].lineno, c[0].col_offset))
    batches = batch_tables(upgrade)
    created: dict[Table, int] = {}
    for call, name in ordered:
        table = _table_of(call, name, batches)
        if name == "create_table" and table:
            created.setdefault(table, call.lineno)
        for text in _statements(call, name):
            match = _CREATE.search(text)
            if match:
                created.setdefault(match.group(1), call.lineno)

    def existing(table: Table | None, line: int) -> bool:
        return table is not None and not (table in created and created[table] <= line)

    checked: dict[Table, int] = {}  # validated NOT NULL checks: table -> first line
    if any(_locks_existing(call, name, batches, existing) for call, name in ordered):
        yield from _backfills(upgrade, ordered)
    for call, name in ordered:
        table = _table_of(call, name, batches)
        kws = {k.arg: k.value for k in call.keywords if k.arg}
        what = f"{name}({first_string(call)!r})" if first_string(call) else f"{name}()"
        not_valid = is_true(kws.get("postgresql_not_valid"))
        adds_constraint = name in ("create_foreign_key", "create_check_constraint")
        if adds_constraint and existing(table, call.lineno) and not not_valid:
            yield _unsafe("constraint-not-valid", call, what)
        if name == "create_check_constraint" and table and not not_valid:
            condition = (string_arg(call, 1 if _in_batch(call, batches) else 2)
                         or keyword_string(call, "condition"))
            if condition and _IS_NOT_NULL.search(condition):
                checked.setdefault(table, call.lineno)  # validated as it is added
        elif name == "create_unique_constraint" and existing(table, call.lineno):
            yield _unsafe("unique-without-index", call, what)
        elif name == "add_column" and existing(table, call.lineno):
            default = _server_default(call)
            if default is not None and _VOLATILE.search(default):
                yield _unsafe("volatile-default", call, f"{what} with server_default {default}")
        elif name == "alter_column" and existing(table, call.lineno) and is_false(kws.get("nullable")):
            column = string_arg(call, 0 if _in_batch(call, batches) else 1) or "?"
            if table not in checked:
                yield _unsafe("set-not-null-without-check", call, f"alter_column({column!r}, nullable=False)")
        for text in _statements(call, name):
            yield from _raw_sql(call, name, text, existing, checked)


def proven_not_null(upgrade: ast.AST) -> set[int]:
    """The lines of `alter_column(..., nullable=False)` calls that a validated CHECK before
    them (on their table: `VALIDATE CONSTRAINT` names no column) makes safe; no row can be
    NULL there, so `not-null-without-default` does not apply to them either."""
    unsafe = {u.line for u in unsafe_ddl(upgrade) if u.rule == "set-not-null-without-check"}
    return {call.lineno for call, name in calls(upgrade) if name == "alter_column"
            and any(k.arg == "nullable" and is_false(k.value) for k in call.keywords)} - unsafe


def _raw_sql(call: ast.Call, name: str, text: str, existing: Callable[[Table | None, int], bool],
             checked: dict[Table, int]) -> Iterator[Unsafe]:
    """The hits of one raw SQL statement; a `VALIDATE CONSTRAINT` marks its table checked."""
    alter = _ALTER.search(text)
    if alter is None:
        return
    table = alter.group(1)
    if _VALIDATE.search(text):
        checked.setdefault(table, call.lineno)
    if not existing(table, call.lineno):
        return
    for match in _ADD_CONSTRAINT.finditer(text):
        kind = match.group(1).split()[0].upper()
        if kind == "UNIQUE" and not _USING_INDEX.search(text, match.end()):
            yield _unsafe("unique-without-index", call, f"{name}() with ADD ... UNIQUE")
        elif kind in ("FOREIGN", "CHECK") and not _NOT_VALID.search(text, match.end()):
            yield _unsafe("constraint-not-valid", call, f"{name}() with ADD ... {match.group(1).upper()}")
    if _SET_NOT_NULL.search(text) and table not in checked:
        yield _unsafe("set-not-null-without-check", call, f"{name}() with SET NOT NULL")


def _locks_existing(call: ast.Call, name: str, batches: Mapping[str, NamedTable],
                    existing: Callable[[Table | None, int], bool]) -> bool:
    """Whether a call changes the schema of a table that exists already (or one it does not
    name): a lock others wait for, held until the revision's transaction ends. A table the
    revision creates, and what it does to that table, keeps nobody waiting."""
    if name in _DDL_OPS:
        table = _table_of(call, name, batches)
        return name != "create_table" and (table is None or existing(table, call.lineno))
    for text in _statements(call, name):
        ddl = _DDL_SQL.search(text)
        if ddl is None:
            continue
        verb, what = ddl.group(1).upper(), ddl.group(2).upper()
        if verb == "CREATE" and what == "TABLE":
            continue
        target = _ALTER.search(text) if what == "TABLE" else _INDEX_ON.search(text)
        if verb == "DROP" or target is None or existing(target.group(1), call.lineno):
            return True
    return False


def _backfills(upgrade: ast.AST, calls: list[tuple[ast.Call, str]]) -> Iterator[Unsafe]:
    """Backfills (`UPDATE`, `INSERT ... SELECT`, or statements run in a loop) in an
    `upgrade()` that also changes an existing table's schema: one hit per backfill."""
    in_loop: set[int] = set()
    for node in ast.walk(upgrade):
        if isinstance(node, ast.For | ast.AsyncFor | ast.While):
            in_loop.update(id(c) for c in ast.walk(node) if isinstance(c, ast.Call))
    for call, name in calls:
        if name not in _EXECUTE:
            continue
        if id(call) in in_loop:
            yield _unsafe("ddl-with-backfill", call, f"{name}() in a loop")
        else:
            backfill = next((m for t in _statements(call, name) if (m := _BACKFILL.search(t))), None)
            if backfill is not None:
                verb = backfill.group(1).split()[0].upper()
                yield _unsafe("ddl-with-backfill", call, f"{name}() with {verb}")


def _unsafe(rule: str, node: ast.Call, detail: str) -> Unsafe:
    return Unsafe(rule, node.lineno, node.end_lineno or node.lineno, detail)




def _in_batch(call: ast.Call, batches: Mapping[str, NamedTable]) -> bool:
    func = call.func
    return isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in batches


def _table_of(call: ast.Call, name: str, batches: Mapping[str, NamedTable]) -> Table | None:
    if _in_batch(call, batches):
        assert isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name)
        return batches[call.func.value.id][1]
    if name not in _TABLE_ARG:
        return None
    return (string_arg(call, _TABLE_ARG[name]) or keyword_string(call, "table_name")
            or keyword_string(call, "source_table"))


def _statements(call: ast.Call, name: str) -> list[str]:
    """The SQL text of `execute("...")`, `execute(f"...")` or `execute(sa.text("..."))`,
    split into statements; [] for any other call."""
    if name not in _EXECUTE or not call.args:
        return []
    arg = call.args[0]
    if isinstance(arg, ast.Call) and arg.args:
        func = arg.func
        if (func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")) == "text":
            arg = arg.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        text = arg.value
    elif isinstance(arg, ast.JoinedStr):
        text = "".join(v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) else "x"
                       for v in arg.values)
    else:
        return []
    return [s for s in (part.strip() for part in text.split(";")) if s]


def _server_default(call: ast.Call) -> str | None:
    """The source of `add_column(..., sa.Column(..., server_default=...))`'s default."""
    for arg in [*call.args, *(k.value for k in call.keywords)]:
        if isinstance(arg, ast.Call):
            for kw in arg.keywords:
                if kw.arg == "server_default" and not (
                    isinstance(kw.value, ast.Constant) and kw.value.value is None
                ):
                    return ast.unparse(kw.value)
    return None




