"""Autogenerate: a service's models.py compared with a scratch database built by the
service's own migrations, the difference rendered as code by Alembic's autogenerate.

The user's database is never written to: SQLite services get a temporary file, and
PostgreSQL/MySQL services a throw-away database on their server that is always dropped.
Only when the server refuses to create one is the live database read (at head, read only).
"""

from __future__ import annotations

import ast
import logging
import re
import secrets
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from itertools import groupby
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from alembic.autogenerate import produce_migrations, render_python_code
from alembic.autogenerate.api import AutogenContext
from alembic.operations import ops
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection

from ...errors import MigrationFailed, NcmError
from ...graph import plan_upgrade, upgrade_targets
from ...ledger import TABLE as LEDGER_TABLE
from ...ledger import run_context
from ...model import Plan, ServiceConfig, ServiceState, Step, StepResult
from ...project import Project
from ...urls import is_async, sync_equivalent
from ..retry import open_with_retries
from .backend import SqlBackend, create_engine
from .metadata import load_models_metadata

log = logging.getLogger(__name__)
# Rendered code is wrapped to this width, leaving templates room to nest it (the index
# template puts it one level deeper) within a line length of 110.
LINE_LENGTH = 100
_INTERNAL_TABLES = frozenset({LEDGER_TABLE, "ncm_migration_lock"})
_SAME_DEFAULTS: dict[str, str | Decimal] = {
    "now()": "current_timestamp",
    "current_timestamp()": "current_timestamp",
    "current_timestamp": "current_timestamp",
    "true": Decimal(1),
    "false": Decimal(0),
}


@dataclass(frozen=True)
class Changes:
    """What a service's models.py has that its migrations do not, as code."""

    service: str
    upgrades: str
    downgrades: str
    imports: tuple[str, ...]
    descriptions: tuple[str, ...]
    fragments: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.descriptions)


def detect_changes(project: Project, service: str, index_concurrently: bool = False) -> Changes | None:
    """The difference between `service`'s models.py and its migrations' head, or None when
    the service has no models.py, or one that declares no tables. `index_concurrently`
    marks index operations to be built CONCURRENTLY on PostgreSQL.

    Raises `DatabaseUnreachable` when the service's server does not answer, and
    `MigrationFailed` when its migrations fail on the scratch database.
    """
    config = project.service(service)
    metadata = load_models_metadata(config)
    if metadata is None:
        return None
    if not metadata.tables:
        # A models.py that declares no tables (as `startservice` writes it) does not model
        # the service yet: comparing it would call for dropping every hand-written table.
        log.info("service '%s': its models.py declares no tables, so it is not compared", service)
        return None
    if config.database_url and is_async(config.database_url):
        # Comparing is synchronous Alembic work on a scratch database: use the driver's
        # sync sibling (installed with ncm-migrate[async]); the schema is the same.
        config = replace(config, database_url=sync_equivalent(config.database_url))
    with reference_database(project, config) as (conn, owned):
        return compare(conn, config, metadata, owned, _shares_database(project, config),
                       _version_tables(project), index_concurrently)


def compare(
    conn: Connection,
    config: ServiceConfig,
    metadata: sa.MetaData,
    owned: frozenset[str] | None,
    shared: bool,
    version_tables: frozenset[str],
    index_concurrently: bool = False,
) -> Changes:
    """Alembic's comparison of `metadata` with the database behind `conn`, rendered.

    Tables in the database but not in `metadata` count (as drops) when `owned` names them,
    or, with `owned` unknown, when no other service shares the database.
    """
    ignored = _INTERNAL_TABLES | version_tables
    modelled = {t.name for t in metadata.tables.values()}

    def include_name(name: str | None, type_: str, _parents: Any) -> bool:
        if type_ != "table" or name is None:
            return True
        if name in ignored:
            return False
        if name in modelled:
            return True
        return name in owned if owned is not None else not shared

    mctx = MigrationContext.configure(
        connection=conn,
        opts={
            "compare_type": True,
            "compare_server_default": server_default_differs,
            "include_name": include_name,
            "target_metadata": metadata,
        },
    )
    try:
        script = produce_migrations(mctx, metadata)
    finally:
        if conn.in_transaction():
            conn.rollback()
    up, down = script.upgrade_ops, script.downgrade_ops
    assert up is not None and down is not None
    if up.is_empty():
        return Changes(config.name, "", "", (), (), ())
    if index_concurrently:
        for container in (up, down):
            for op in _walk(container.ops):
                if isinstance(op, ops.CreateIndexOp | ops.DropIndexOp):
                    op.kw["postgresql_concurrently"] = True
    described = [describe(op) for op in _walk(up.ops)]
    # PostgreSQL: an index on a table that exists already is built CONCURRENTLY (writes go
    # on meanwhile), which cannot run in a transaction: such indexes come last, in an
    # autocommit block, so that the revision passes `lint` as written.
    late = [] if index_concurrently or conn.dialect.name != "postgresql" else _pull_late_indexes(up)
    contexts: list[AutogenContext] = []

    def render_item(_type: str, _obj: Any, autogen_context: AutogenContext) -> Literal[False]:
        contexts.append(autogen_context)
        return False

    # SQLite alters tables in batch mode; indexes it builds directly, and an index
    # revision's operations sit inside a `with` block of their own.
    batch = conn.dialect.name == "sqlite" and not index_concurrently

    def rendered(container: ops.UpgradeOps | ops.DowngradeOps) -> str:
        # Alembic's templates indent the first line themselves.
        return "    " + render_python_code(
            container, render_as_batch=batch, render_item=render_item, migration_context=mctx
        )

    upgrades = rendered(up) if up.ops else ""
    if late:
        block = [line for line in rendered(ops.UpgradeOps(ops=list(late))).splitlines()
                 if not line.strip().startswith("# ###")]
        upgrades = "\n".join([
            *([upgrades] if upgrades else []),
            "    # CREATE INDEX CONCURRENTLY does not block writes to an existing table, and runs",
            "    # outside a transaction: what comes before is committed first (a failed build",
            "    # leaves an INVALID index to drop before migrating again).",
            "    with op.get_context().autocommit_block():",
            *("    " + line for line in block),
        ])
    upgrades, downgrades = (wrap_long_lines(text, LINE_LENGTH) for text in (upgrades, rendered(down)))
    imports = {line for ctx in contexts for line in ctx.imports}
    return Changes(
        service=config.name,
        upgrades=upgrades,
        downgrades=downgrades,
        imports=tuple(sorted(imports)),
        descriptions=tuple(d for d, _ in described),
        fragments=tuple(f for _, f in described),
    )


@contextmanager
def reference_database(
    project: Project, config: ServiceConfig
) -> Iterator[tuple[Connection, frozenset[str] | None]]:
    """A connection to a database at the service's head, and the tables the service owns
    there (None when unknown): a scratch database when the server allows one, else the
    live database, read only and only when it is at head."""
    connect = project.settings.connect
    with scratch_database(config, project) as scratch_url:
        if scratch_url is not None:
            owned = migrate_scratch(project, config, scratch_url)
            engine = create_engine(scratch_url, connect)
            try:
                with engine.connect() as conn:
                    yield conn, owned
            finally:
                engine.dispose()
            return
        live = SqlBackend(config, connect)
        open_with_retries(live, connect)
        try:
            state: ServiceState = live.read_state(project.revisions[config.name])
            heads = project.graph.heads(config.name)
            if set(state.heads) != set(heads):
                raise NcmError(
                    f"Cannot autogenerate for service '{config.name}': its server refused to "
                    f"create a scratch database, and its live database is not at head "
                    f"({', '.join(state.heads) or 'empty'}; head is {', '.join(heads) or 'none'}). "
                    f"Run `manage.py migrate {config.name}` first, or allow the user CREATE DATABASE."
                )
            log.warning(
                "%s: the server refused to create a scratch database; comparing models.py "
                "with the live database at head instead (read only)", config.name,
            )
            yield live.conn, None
        finally:
            live.close()


@contextmanager
def scratch_database(config: ServiceConfig, project: Project) -> Iterator[str | None]:
    """The URL of a new, empty database like the service's, removed afterwards (even when
    the work fails); None when the server refuses to create one."""
    assert config.database_url is not None
    url = sa.engine.make_url(config.database_url)
    if url.get_backend_name() == "sqlite":
        with tempfile.TemporaryDirectory(prefix="ncm_scratch_") as folder:
            path = Path(folder) / "scratch.db"
            yield url.set(database=str(path), query={}).render_as_string(hide_password=False)
        return
    connect = project.settings.connect
    probe = SqlBackend(config, connect)
    open_with_retries(probe, connect)
    options = _create_options(probe.conn)
    probe.close()
    name = f"ncm_scratch_{secrets.token_hex(6)}"
    admin = create_engine(config.database_url, connect).execution_options(
        isolation_level="AUTOCOMMIT"
    )
    quoted = admin.dialect.identifier_preparer.quote(name)
    try:
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(f"CREATE DATABASE {quoted}{options}")
        except sa.exc.DBAPIError as exc:
            log.debug("CREATE DATABASE refused: %s", exc)
            yield None
            return
        log.info("%s: building scratch database %s", config.name, name)
        try:
            yield url.set(database=name).render_as_string(hide_password=False)
        finally:
            _drop_database(admin, quoted)
    finally:
        admin.dispose()


def migrate_scratch(project: Project, config: ServiceConfig, scratch_url: str) -> frozenset[str]:
    """Run the service's migrations (and those of services sharing its database, in plan
    order) on the scratch database; the tables the service's own migrations created."""
    sharing = [
        s.name for s in project.settings.services
        if s.active and s.backend == "sql" and s.database_url == config.database_url
    ]
    if config.name not in sharing:
        sharing.append(config.name)
    full = plan_upgrade(project.graph, {}, upgrade_targets(project.graph, sharing))
    steps = Plan(tuple(s for s in full.steps if s.service in sharing))
    ctx = run_context(project.settings.env)
    owned: set[str] = set()
    before: set[str] = set()
    # The plan's runs of consecutive steps of one service, as the executor cuts it
    # (`executor.segments`): grouped here so the backend does not import the engine above it.
    for name, seg in groupby(steps.steps, key=lambda step: step.service):
        scratch = replace(project.service(name), database_url=scratch_url)
        backend = SqlBackend(scratch, project.settings.connect)
        backend.open()
        try:
            backend.apply(list(seg), project.revisions[name], ctx, False, _ignore_step)
            tables = set(sa.inspect(backend.conn).get_table_names())
            backend.conn.commit()
        except MigrationFailed as exc:
            raise MigrationFailed(
                f"Cannot autogenerate for service '{config.name}': its migrations failed on a "
                f"scratch database: {exc}", exc.service, exc.revision,
            ) from None
        finally:
            backend.close()
        if name == config.name:
            owned |= tables - before
        before = tables
    return frozenset(owned)


def server_default_differs(
    _context: MigrationContext,
    _inspected_column: Any,
    _metadata_column: Any,
    inspected_default: str | None,
    _metadata_default: Any,
    rendered_metadata_default: str | None,
) -> bool | None:
    """False for defaults that a database reports in another spelling (MariaDB reflects
    `now()` as `current_timestamp()`, `true` as `1` and `'0'` on a DECIMAL as `0.00`);
    None leaves it to Alembic."""
    if inspected_default is None or rendered_metadata_default is None:
        return None
    seen, wanted = _spelling(inspected_default), _spelling(rendered_metadata_default)
    if seen is not None and seen == wanted:
        return False
    return None


def _spelling(default: str) -> str | Decimal | None:
    """A canonical form of a default known to have several spellings, else None."""
    text = default.strip().lower()
    while text.startswith("(") and text.endswith(")"):
        text = text[1:-1].strip()
    if text in _SAME_DEFAULTS:
        return _SAME_DEFAULTS[text]
    number = text[1:-1] if len(text) > 1 and text[0] == text[-1] == "'" else text
    try:
        return Decimal(number)
    except InvalidOperation:
        return None


def describe(op: ops.MigrateOperation) -> tuple[str, str]:
    """A short description of one operation, and a fragment for a revision's name
    (`add column users.email`, `users_email`), as Django names its migrations."""
    table = str(getattr(op, "table_name", "") or "")
    if isinstance(op, ops.CreateTableOp):
        return f"create table {table}", table
    if isinstance(op, ops.DropTableOp):
        return f"drop table {table}", f"delete_{table}"
    if isinstance(op, ops.AddColumnOp):
        return f"add column {table}.{op.column.name}", f"{table}_{op.column.name}"
    if isinstance(op, ops.DropColumnOp):
        return f"drop column {table}.{op.column_name}", f"remove_{table}_{op.column_name}"
    if isinstance(op, ops.AlterColumnOp):
        return f"alter column {table}.{op.column_name}", f"alter_{table}_{op.column_name}"
    if isinstance(op, ops.CreateIndexOp):
        return f"create index {op.index_name} on {table}", str(op.index_name or f"{table}_index")
    if isinstance(op, ops.DropIndexOp):
        return f"drop index {op.index_name} on {table}", f"remove_{op.index_name}"
    words = re.sub(r"(?<!^)(?=[A-Z])", " ", type(op).__name__.removesuffix("Op")).lower()
    name = str(getattr(op, "constraint_name", "") or "")
    what = " ".join(p for p in (words, name, f"on {table}" if table else "") if p)
    return what, "_".join(p for p in (words.replace(" ", "_"), table) if p)


def wrap_long_lines(code: str, width: int) -> str:
    """`code` with each call longer than `width` split one argument per line."""
    out: list[str] = []
    for line in code.splitlines():
        out.extend(_wrap_line(line, width) if len(line) > width else [line])
    return "\n".join(out)


def _wrap_line(line: str, width: int) -> list[str]:
    indent = line[: len(line) - len(line.lstrip())]
    body = line.strip()
    trailing = ""
    if body.endswith(","):
        body, trailing = body[:-1], ","
    try:
        node = ast.parse(body, mode="eval").body
    except SyntaxError:
        return [line]
    if not isinstance(node, ast.Call) or not (node.args or node.keywords):
        return [line]
    args: list[ast.AST] = [*node.args, *node.keywords]
    args.sort(key=lambda a: (getattr(a, "lineno", 0), getattr(a, "col_offset", 0)))
    parts = [ast.get_source_segment(body, a) for a in args]
    func = ast.get_source_segment(body, node.func)
    if func is None or any(p is None for p in parts):
        return [line]
    lines = [f"{indent}{func}("]
    for part in parts:
        inner = f"{indent}    {part},"
        lines.extend(_wrap_line(inner, width) if len(inner) > width else [inner])
    lines.append(f"{indent}){trailing}")
    return lines


def _pull_late_indexes(up: ops.UpgradeOps) -> list[ops.CreateIndexOp]:
    """Take out of `up` the indexes on tables that it does not create, marked to be built
    CONCURRENTLY; the containers they leave empty go too."""
    created = {op.table_name for op in _walk(up.ops) if isinstance(op, ops.CreateTableOp)}
    late: list[ops.CreateIndexOp] = []

    def pull(container: ops.OpContainer) -> None:
        kept: list[ops.MigrateOperation] = []
        for op in container.ops:
            if isinstance(op, ops.CreateIndexOp) and op.table_name not in created:
                op.kw["postgresql_concurrently"] = True
                late.append(op)
                continue
            if isinstance(op, ops.OpContainer):
                pull(op)
                if not op.ops:
                    continue
            kept.append(op)
        container.ops = kept

    pull(up)
    return late


def _walk(items: Iterable[ops.MigrateOperation]) -> Iterator[ops.MigrateOperation]:
    for op in items:
        if isinstance(op, ops.OpContainer):
            yield from _walk(op.ops)
        else:
            yield op


def _shares_database(project: Project, config: ServiceConfig) -> bool:
    return any(
        s.name != config.name and s.active and s.database_url == config.database_url
        for s in project.settings.services
    )


def _version_tables(project: Project) -> frozenset[str]:
    return frozenset(s.version_table for s in project.settings.services)


def _create_options(conn: Connection) -> str:
    """MySQL: the live database's character set and collation, so that the scratch
    database reflects column types the same way."""
    if conn.dialect.name not in ("mysql", "mariadb"):
        return ""
    row = conn.exec_driver_sql(
        "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME "
        "FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = DATABASE()"
    ).first()
    conn.commit()
    if row is None or not all(re.fullmatch(r"\w+", str(v)) for v in row):
        return ""
    return f" CHARACTER SET {row[0]} COLLATE {row[1]}"


def _drop_database(admin: sa.Engine, quoted: str) -> None:
    statements = [f"DROP DATABASE IF EXISTS {quoted}"]
    if admin.dialect.name == "postgresql":
        statements.insert(0, f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
    problem = ""
    for statement in statements:
        try:
            with admin.connect() as conn:
                conn.exec_driver_sql(statement)
            return
        except sa.exc.DBAPIError as exc:
            problem = str(exc.orig or exc).splitlines()[0]
    log.warning("could not drop the scratch database %s (%s); drop it by hand", quoted, problem)


def _ignore_step(_step: Step, _phase: str, _result: StepResult | None) -> None:
    return None
