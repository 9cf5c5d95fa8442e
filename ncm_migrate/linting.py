"""Dangerous operations in revisions' `upgrade()`, found in the source without running it.

Each rule names one operation that can lose data or lock a busy table; a comment
`# ncm: allow <rule>` on the line (or the line above) silences it. PostgreSQL services may
also run squawk (`squawk.py`) over the SQL a revision renders offline.
"""

from __future__ import annotations

import ast
import io
import logging
import re
import tokenize
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from .config import DdlSettings
from .errors import NcmError
from .findings import Finding, Severity
from .model import Revision, ServiceConfig, Step
from .redis_lint import REDIS_DESTRUCTIVE, REDIS_RULES, redis_calls, uses_redis
from .revision_ast import (
    Table,
    batch_tables,
    calls,
    first_string,
    is_false,
    is_true,
    keyword_string,
    string_arg,
)
from .safe_ddl import RULES as SAFE_DDL_RULES
from .safe_ddl import proven_not_null, unsafe_ddl
from .squawk import find_squawk, run_squawk, without_version_table
from .urls import redact_known, scheme_of

log = logging.getLogger(__name__)

RULES: dict[str, str] = {
    "drop-table": "drops a table and its rows",
    "drop-column": "drops a column and its data",
    "drop-index": "drops an index",
    "drop-collection": "drops a MongoDB collection and its documents",
    "rename-table": "renames a table: code still using the old name breaks",
    "rename-column": "renames a column: code still using the old name breaks",
    "not-null-without-default": "makes a column of an existing table NOT NULL without a server default",
    "type-change": "changes a column's type: may rewrite the table and lose data",
    "non-concurrent-index": "creates an index without CONCURRENTLY: writes to the table block meanwhile",
    "raw-sql-drop": "runs raw SQL that drops or truncates",
    **SAFE_DDL_RULES,  # PostgreSQL only, each with its fix: safe_ddl.py
    **REDIS_RULES,  # Redis revisions: redis_lint.py
    "contract-in-pre": (
        "a contract step in a pre-deploy revision: the code still running during the deploy "
        "uses what it removes or changes; move it to a post-deploy revision (`phase = \"post\"`, "
        "`makemigrations --phase post`), applied after the deploy by `migrate --phase post`"
    ),
}
# Operations that lose data: in a protected environment they need confirmation.
DESTRUCTIVE = frozenset(
    {"drop-table", "drop-column", "drop-index", "drop-collection", "rename-table", "rename-column",
     "type-change", "raw-sql-drop"} | REDIS_DESTRUCTIVE
)
# Rules that only matter for a table that already exists (rows, readers, writers): not
# findings on a table that the same `upgrade()` creates first.
_EXISTING_TABLE_RULES = frozenset(
    {"not-null-without-default", "non-concurrent-index", "type-change", "rename-column",
     "drop-column", "drop-index"}
)
# `op.<name>(...)`: the position of its table argument (also accepted as `table_name=`).
_TABLE_ARG = {"create_table": 0, "add_column": 0, "alter_column": 0, "drop_column": 0,
              "create_index": 1, "drop_index": 1}
_ALLOW = re.compile(r"#\s*ncm:\s*allow\s+([\w:,\- ]+)")
_DESTRUCTIVE_SQL = re.compile(r"\b(DROP|TRUNCATE)\b", re.IGNORECASE)
_SQL_DROPS = {
    "drop_table": "drop-table",
    "drop_column": "drop-column",
    "drop_index": "drop-index",
    "rename_table": "rename-table",
}
_MONGO_DROPS = {
    "drop_collection": "drop-collection",
    "drop": "drop-collection",
    "drop_index": "drop-index",
    "drop_indexes": "drop-index",
    "drop_search_index": "drop-index",
}


@dataclass(frozen=True)
class Hit:
    """One dangerous call: the rule, the line range of the call, and what it does."""

    rule: str
    line: int
    end_line: int
    detail: str


def lint_revision(
    config: ServiceConfig,
    rev: Revision,
    severity: Severity,
    root: Path,
    include_allowed: bool = False,
    phased: bool = False,
) -> list[Finding]:
    """The findings of one revision's `upgrade()`; silenced ones only with `include_allowed`.
    `phased`: its service deploys in phases (has a post-deploy revision), so a contract step
    in a pre-deploy revision is a finding (`contract-in-pre`)."""
    text = rev.path.read_text(encoding="utf-8")
    try:
        tree = ast.parse(text, filename=str(rev.path))
    except SyntaxError:
        return []  # validate reports the file as malformed
    upgrade = _function(tree, "upgrade")
    if upgrade is None:
        return []
    allowed = allow_comments(text)
    postgres = is_postgres(config)
    hits = _backend_hits(config, upgrade, postgres)
    if postgres:
        proven = proven_not_null(upgrade)
        hits = [h for h in hits if not (h.rule == "not-null-without-default" and h.line in proven)]
        hits += [Hit(u.rule, u.line, u.end_line, u.detail) for u in unsafe_ddl(upgrade)]
    if config.backend == "redis" or uses_redis(tree):
        hits = [*hits, *(_hit(rule, call, detail) for rule, call, detail in redis_calls(tree))]
    if phased and rev.phase == "pre":
        hits += _contract_hits(upgrade, config.backend)
    out = []
    for hit in hits:
        if not include_allowed and _silenced(hit.rule, hit.line, hit.end_line, allowed):
            continue
        out.append(
            Finding(
                service=rev.service,
                revision=rev.revision,
                rule=hit.rule,
                severity=severity,
                message=f"{hit.detail}: {RULES[hit.rule]} (silence with `# ncm: allow {hit.rule}`)",
                file=_relative(rev.path, root),
                line=hit.line,
            )
        )
    return out


def lint_service(
    config: ServiceConfig,
    revisions: Mapping[str, Revision],
    severity: Severity,
    root: Path,
    squawk: bool = False,
    ddl: DdlSettings | None = None,
    pg_version: str | None = None,
) -> list[Finding]:
    """Every revision of a service; with `squawk`, squawk's findings on PostgreSQL too (on
    the SQL each revision runs, its `ddl` timeouts included, for `pg_version`)."""
    findings: list[Finding] = []
    phased = any(rev.phase == "post" for rev in revisions.values())
    for rev in revisions.values():
        findings.extend(lint_revision(config, rev, severity, root, phased=phased))
    if squawk and config.backend == "sql" and is_postgres(config):
        findings.extend(squawk_service(config, revisions, severity, root, ddl, pg_version))
    return findings


def _backend_hits(config: ServiceConfig, upgrade: ast.AST, postgres: bool) -> list[Hit]:
    """The SQL or MongoDB rules' hits (a Redis service's rules are `redis_lint`'s)."""
    if config.backend == "redis":
        return []
    return list(_mongo_hits(upgrade) if config.backend == "mongo" else _sql_hits(upgrade, postgres))


def is_postgres(config: ServiceConfig) -> bool:
    return config.backend == "sql" and scheme_of(config.database_url or "").startswith("postgres")


def allow_comments(text: str) -> dict[int, set[str]]:
    """`# ncm: allow rule-a, rule-b` comments by line number."""
    out: dict[int, set[str]] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT:
                match = _ALLOW.search(tok.string)
                if match:
                    rules = {r for r in re.split(r"[\s,]+", match.group(1)) if r}
                    out.setdefault(tok.start[0], set()).update(rules)
    except (tokenize.TokenError, SyntaxError):
        return out
    return out


def _silenced(rule: str, line: int, end_line: int, allowed: Mapping[int, set[str]]) -> bool:
    for n in range(line - 1, end_line + 1):
        rules = allowed.get(n, set())
        if rule in rules or "all" in rules:
            return True
    return False


def _function(tree: ast.Module, name: str) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
            return node
    return None



def _hit(rule: str, node: ast.Call, detail: str) -> Hit:
    return Hit(rule, node.lineno, node.end_lineno or node.lineno, detail)


def _sql_hits(fn: ast.AST, postgres: bool) -> Iterator[Hit]:
    """The hits of `fn`, less those on a table it creates itself before the call: nobody
    reads, writes or waits for that table yet (squawk leaves such tables alone too)."""
    batches = batch_tables(fn)
    created: dict[Table, int] = {}
    for call, name in calls(fn):
        table = _table_of(call, name, batches)
        if name == "create_table" and table is not None:
            created[table] = min(call.lineno, created.get(table, call.lineno))
    for call, name in calls(fn):
        table = _table_of(call, name, batches)
        since = created.get(table) if table is not None else None
        new = since is not None and since <= call.lineno
        for hit in _sql_call_hits(call, name, postgres):
            if not (new and hit.rule in _EXISTING_TABLE_RULES):
                yield hit



def _table_of(call: ast.Call, name: str, batches: Mapping[str, Table]) -> Table | None:
    """The table an `op.*` (or batch) operation works on, when the source names it."""
    func = call.func
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in batches:
        return batches[func.value.id]
    if name not in _TABLE_ARG:
        return None
    table = string_arg(call, _TABLE_ARG[name]) or keyword_string(call, "table_name")
    return (keyword_string(call, "schema"), table) if table else None


def _sql_call_hits(call: ast.Call, name: str, postgres: bool) -> Iterator[Hit]:
    what = first_string(call)
    if name in _SQL_DROPS:
        yield _hit(_SQL_DROPS[name], call, f"{name}({what!r})" if what else f"{name}()")
    elif name == "alter_column":
        column = string_arg(call, 1) or keyword_string(call, "column_name") or "?"
        kws = {k.arg: k.value for k in call.keywords if k.arg}
        if "new_column_name" in kws:
            yield _hit("rename-column", call, f"alter_column({column!r}, new_column_name=...)")
        if "type_" in kws:
            yield _hit("type-change", call, f"alter_column({column!r}, type_=...)")
        if is_false(kws.get("nullable")):
            yield _hit("not-null-without-default", call, f"alter_column({column!r}, nullable=False)")
    elif name == "add_column":
        new = _column_call(call)
        if new is not None and _required_without_default(new):
            label = first_string(new) or "?"
            yield _hit("not-null-without-default", call,
                       f"add_column({label!r}, nullable=False) with no server_default")
    elif name == "create_index" and postgres:
        kws = {k.arg: k.value for k in call.keywords if k.arg}
        if not is_true(kws.get("postgresql_concurrently")):
            yield _hit("non-concurrent-index", call, f"create_index({what!r})")
    elif name in ("execute", "exec_driver_sql"):
        sql = _sql_text(call)
        match = _DESTRUCTIVE_SQL.search(sql or "")
        if match:
            yield _hit("raw-sql-drop", call, f"{name}() with {match.group(1).upper()}")


def _mongo_hits(fn: ast.AST) -> Iterator[Hit]:
    for call, name in calls(fn):
        if name == "drop" and (call.args or not isinstance(call.func, ast.Attribute)):
            continue  # `coll.drop()` takes no arguments; anything else is not a collection
        if name in _MONGO_DROPS:
            yield _hit(_MONGO_DROPS[name], call, f"{name}({first_string(call) or ''!s})")
        elif name == "command":
            verb = string_arg(call, 0) or ""
            if verb in ("drop", "dropDatabase"):
                yield _hit("drop-collection", call, f"command({verb!r})")
            elif verb in ("dropIndexes", "deleteIndexes"):
                yield _hit("drop-index", call, f"command({verb!r})")


# -- contract-in-pre: expand/contract deploys ------------------------------------------
# Contract steps (drop, rename, SET NOT NULL, type change) belong after the deploy.
_CONTRACT_CALLS = frozenset(
    {"drop_table", "drop_column", "drop_index", "drop_constraint", "rename_table"}
)
_CONTRACT_ALTERS = {"new_column_name": "rename", "type_": "type change"}
_CONTRACT_SQL = re.compile(
    r"\b(DROP|RENAME|SET\s+NOT\s+NULL|ALTER\s+COLUMN\s+\S+\s+(?:SET\s+DATA\s+)?TYPE)\b",
    re.IGNORECASE,
)
_MONGO_CONTRACT = frozenset({*_MONGO_DROPS, "rename"})


def _contract_hits(fn: ast.AST, backend: str) -> Iterator[Hit]:
    """`contract-in-pre`: the contract steps of `fn`, less those on a table it creates
    itself first (nothing deployed uses that table yet)."""
    if backend == "mongo":
        for call, name in calls(fn):
            if name in _MONGO_CONTRACT and isinstance(call.func, ast.Attribute):
                yield _hit("contract-in-pre", call, f"{name}({first_string(call) or ''!s})")
        return
    batches = batch_tables(fn)
    created = {t for call, name in calls(fn) if name == "create_table"
               for t in [_table_of(call, name, batches)] if t is not None}
    for call, name in calls(fn):
        if _table_of(call, name, batches) in created:
            continue
        what = first_string(call)
        kws = {k.arg: k.value for k in call.keywords if k.arg}
        if name in _CONTRACT_CALLS:
            yield _hit("contract-in-pre", call, f"{name}({what!r})" if what else f"{name}()")
        elif name == "alter_column":
            column = string_arg(call, 1) or keyword_string(call, "column_name") or "?"
            changes = [v for k, v in _CONTRACT_ALTERS.items() if k in kws]
            changes += ["SET NOT NULL"] if is_false(kws.get("nullable")) else []
            if changes:
                yield _hit("contract-in-pre", call, f"alter_column({column!r}) ({', '.join(changes)})")
        elif name in ("execute", "exec_driver_sql"):
            match = _CONTRACT_SQL.search(_sql_text(call) or "")
            if match:
                verb = " ".join(match.group(1).upper().split()[:3])
                yield _hit("contract-in-pre", call, f"{name}() with {verb}")







def _column_call(call: ast.Call) -> ast.Call | None:
    for arg in [*call.args, *(k.value for k in call.keywords)]:
        if isinstance(arg, ast.Call):
            func = arg.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name == "Column":
                return arg
    return None


def _required_without_default(column: ast.Call) -> bool:
    kws = {k.arg: k.value for k in column.keywords if k.arg}
    if is_true(kws.get("primary_key")):
        return False
    default = kws.get("server_default")
    has_default = default is not None and not (isinstance(default, ast.Constant) and default.value is None)
    return is_false(kws.get("nullable")) and not has_default


def _sql_text(call: ast.Call) -> str | None:
    """The SQL text of `execute("...")`, `execute(f"...")` or `execute(sa.text("..."))`."""
    if not call.args:
        return None
    arg = call.args[0]
    if isinstance(arg, ast.Call) and arg.args:
        func = arg.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name == "text":
            arg = arg.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr):
        return "".join(
            v.value for v in arg.values if isinstance(v, ast.Constant) and isinstance(v.value, str)
        )
    return None


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


# -- squawk --------------------------------------------------------------------------


def squawk_service(
    config: ServiceConfig, revisions: Mapping[str, Revision], severity: Severity, root: Path,
    ddl: DdlSettings | None = None, pg_version: str | None = None,
) -> list[Finding]:
    """squawk's findings on each revision's upgrade SQL, rendered offline as `migrate --sql`
    shows it (its timeouts' `SET` lines first), as `squawk:<rule>`."""
    from .backends.sql.backend import SqlBackend

    program = find_squawk()
    backend = SqlBackend(config, 1.0, ddl)
    findings: list[Finding] = []
    for rev in revisions.values():
        file = _relative(rev.path, root)
        line = dict(rev.line_of).get("upgrade")
        step = Step(rev.service, rev.revision, "up")
        try:
            sql = backend.offline_sql([step], revisions, rev.down_revisions)
        except NcmError as exc:
            findings.append(Finding(rev.service, rev.revision, "squawk:not-rendered", "warning",
                                    redact_known(str(exc)), file, line))
            continue
        sql = without_version_table(sql, config.version_table)
        allowed = allow_comments(rev.path.read_text(encoding="utf-8"))
        for rule, message in run_squawk(program, sql, file, root, pg_version):
            name = f"squawk:{rule}"
            if line is not None and _silenced(name, line, line, allowed):
                continue
            findings.append(Finding(rev.service, rev.revision, name, severity, message, file, line))
    return findings
