"""Revision templates: the lookup order (service, project, package), MongoDB's names, and
what each package template writes: valid, lint-clean Alembic revisions that run."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from monorepo import REPO, Monorepo

from ncm_migrate.discovery import read_revisions
from ncm_migrate.errors import BadInput
from ncm_migrate.logs import SQL_LOGGERS
from ncm_migrate.model import ServiceConfig
from ncm_migrate.templates import PACKAGE_TEMPLATES, find_template, template_name

SQL_TYPES = ("schema", "data", "index", "seed")


def newest(repo: Monorepo, service: str) -> Path:
    revs = read_revisions(service, repo.root / "services" / service / "migrations")
    return max(revs, key=lambda r: r.revision).path


def ruff(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--config", str(REPO / "pyproject.toml"),
         *map(str, paths)],
        capture_output=True, text=True,
    )


def replace_function(path: Path, name: str, body: str) -> None:
    """Give `def name()` in a revision file a new body."""
    text = path.read_text()
    pattern = re.compile(rf"(def {name}\(\) -> None:\n)(?:(?:    .*)?\n)+?(?=\n\n)")
    new, count = pattern.subn(lambda m: m.group(1) + textwrap.indent(textwrap.dedent(body).strip(), "    ")
                              + "\n", text, count=1)
    assert count == 1, f"no {name}() in {path}"
    path.write_text(new)


def table_rows(url: str, query: str) -> list[tuple[object, ...]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(query))]
    finally:
        engine.dispose()


def test_template_names() -> None:
    assert template_name("schema", "sql") == "schema.py.j2"
    assert template_name("index", "mongo") == "index.mongo.py.j2"
    with pytest.raises(BadInput, match="cleanup"):
        template_name("cleanup", "sql")
    for kind in (*SQL_TYPES, "merge"):
        assert (PACKAGE_TEMPLATES / f"{kind}.py.j2").is_file()


def test_lookup_order_service_then_project_then_package(tmp_path: Path) -> None:
    settings_dir = tmp_path / "settings"
    sql = ServiceConfig(name="users", root=tmp_path / "services/users")
    mongo = ServiceConfig(name="events", root=tmp_path / "services/events", backend="mongo")
    assert find_template(sql, settings_dir, "schema") == PACKAGE_TEMPLATES / "schema.py.j2"

    project = settings_dir / "templates" / "schema.py.j2"
    project.parent.mkdir(parents=True)
    project.write_text("project")
    assert find_template(sql, settings_dir, "schema") == project

    service = sql.migrations_dir / "templates" / "schema.py.j2"
    service.parent.mkdir(parents=True)
    service.write_text("service")
    assert find_template(sql, settings_dir, "schema") == service
    assert find_template(sql, settings_dir, "data") == PACKAGE_TEMPLATES / "data.py.j2"

    # A MongoDB service looks for <type>.mongo.py.j2 and never takes a SQL template.
    (mongo.migrations_dir / "templates").mkdir(parents=True)
    (mongo.migrations_dir / "templates" / "schema.py.j2").write_text("sql")
    found = find_template(mongo, settings_dir, "schema")
    assert found.name == "schema.mongo.py.j2"
    own = mongo.migrations_dir / "templates" / "schema.mongo.py.j2"
    own.write_text("mongo")
    assert find_template(mongo, settings_dir, "schema") == own


def test_overrides_at_project_and_service_level(repo: Monorepo, sqlite_url: str) -> None:
    repo.service("users")
    repo.service("billing")
    repo.urls({"users": sqlite_url, "billing": sqlite_url.replace("db.sqlite", "b.sqlite")})
    package = (PACKAGE_TEMPLATES / "schema.py.j2").read_text()
    repo.write("settings/templates/schema.py.j2", package + "\n# written from the project's template\n")
    repo.write("services/billing/migrations/templates/schema.py.j2",
               package + "\n# written from billing's own template\n")

    assert repo.cli("makemigrations", "--empty", "-m", "start").code == 0
    users, billing = newest(repo, "users").read_text(), newest(repo, "billing").read_text()
    assert "project's template" in users and "billing's own" not in users
    assert "billing's own template" in billing and "project's template" not in billing
    # The templates folder inside migrations/ is not mistaken for revisions.
    assert repo.cli("migrate").code == 0


@pytest.mark.parametrize("url_kind", ["sqlite", "postgresql"])
def test_every_template_writes_a_lint_clean_revision_that_runs(
    repo: Monorepo, tmp_path: Path, url_kind: str
) -> None:
    """Rendered for a SQLite and a PostgreSQL service; applied on SQLite."""
    url = f"sqlite:///{tmp_path}/db.sqlite" if url_kind == "sqlite" else "postgresql+psycopg://u@h/db"
    repo.service("users")
    repo.urls({"users": url})
    written = []
    for kind in SQL_TYPES:
        result = repo.cli("makemigrations", "users", "--type", kind, "-m", f"{kind} things")
        assert result.code == 0, result.output
        path = newest(repo, "users")
        text = path.read_text()
        assert f'migration_type = "{kind}"' in text
        assert "def verify() -> None:" in text, f"{kind} template shows no verify()"
        written.append(path)
    assert [p.stem for p in written] == ["0001_schema_things", "0002_data_things",
                                         "0003_index_things", "0004_seed_things"]
    lint = ruff(*written)
    assert lint.returncode == 0, lint.stdout
    if url_kind == "sqlite":
        assert repo.cli("migrate").code == 0
        assert repo.cli("rollback", "users", "zero").code == 0


def test_index_template_builds_concurrently_on_postgresql(repo: Monorepo, db_url: str) -> None:
    repo.table("users", "0001_initial", "accounts")
    repo.urls({"users": db_url})
    repo.write("services/users/models.py", textwrap.dedent('''
        import sqlalchemy as sa

        metadata = sa.MetaData()
        accounts = sa.Table("accounts", metadata, sa.Column("id", sa.Integer, primary_key=True))
        accounts.append_column(sa.Column("email", sa.String(200), nullable=True))
        sa.Index("ix_accounts_email", accounts.c.email)
    '''))
    repo.revision("users", "0002_email", down="0001_initial",
                  upgrade="op.add_column('accounts', sa.Column('email', sa.String(200), nullable=True))",
                  downgrade="op.drop_column('accounts', 'email')")
    result = repo.cli("makemigrations", "users", "--type", "index")
    assert result.code == 0, result.output
    path = newest(repo, "users")
    assert path.stem == "0003_ix_accounts_email"
    assert "postgresql_concurrently=True" in path.read_text()
    assert ruff(path).returncode == 0, ruff(path).stdout

    if db_url.startswith("postgresql"):
        sql = repo.cli("sqlmigrate", "users", "0003")
        assert sql.code == 0, sql.output
        assert re.search(r"COMMIT;.*CREATE INDEX CONCURRENTLY ix_accounts_email", sql.stdout, re.S)
    # PostgreSQL refuses CREATE INDEX CONCURRENTLY inside a transaction: this passing there
    # shows the autocommit block; elsewhere the same file builds a plain index.
    migrated = repo.cli("migrate")
    assert migrated.code == 0, migrated.output
    engine = sa.create_engine(db_url)
    try:
        assert "ix_accounts_email" in {i["name"] for i in sa.inspect(engine).get_indexes("accounts")}
    finally:
        engine.dispose()
    assert repo.cli("rollback", "users").code == 0


@pytest.fixture
def restored_loggers() -> Iterator[None]:
    """`-v` in process points SQL loggers at CliRunner's stream; put them back afterwards so
    that later tests do not log into a closed file."""
    names = ("ncm_migrate", *SQL_LOGGERS)
    saved = {n: (logging.getLogger(n).level, list(logging.getLogger(n).handlers),
                 logging.getLogger(n).propagate) for n in names}
    yield
    for name, (level, handlers, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.handlers[:] = handlers
        logger.propagate = propagate


@pytest.mark.usefixtures("restored_loggers")
def test_data_template_backfills_in_batches_and_resumes(repo: Monorepo, db_url: str) -> None:
    repo.revision("users", "0001_initial", upgrade="""
        op.create_table("people", sa.Column("id", sa.Integer, primary_key=True),
                        sa.Column("email", sa.String(100)), sa.Column("email_lower", sa.String(100)))
        people = sa.table("people", sa.column("id"), sa.column("email"), sa.column("email_lower"))
        op.bulk_insert(people, [
            {"id": i, "email": f"User{i}@Example.COM", "email_lower": "done" if i <= 2 else None}
            for i in range(1, 8)
        ])
    """, downgrade='op.drop_table("people")')
    repo.urls({"users": db_url})
    assert repo.cli("makemigrations", "users", "--type", "data", "-m", "lower emails").code == 0
    path = newest(repo, "users")
    replace_function(path, "upgrade", """
        people = sa.table("people", sa.column("id"), sa.column("email"), sa.column("email_lower"))
        backfill(people, people.c.id, people.c.email_lower.is_(None),
                 {"email_lower": sa.func.lower(people.c.email)}, batch_size=2)
    """)
    assert ruff(path).returncode == 0, ruff(path).stdout

    result = repo.cli("-v", "migrate")
    assert result.code == 0, result.output
    # 5 pending rows (2 were already done: a resumed run skips them), in batches of 2.
    for progress in ("2 of 5", "4 of 5", "5 of 5"):
        assert f"people: {progress} rows updated" in result.stderr
    rows = dict(table_rows(db_url, "SELECT id, email_lower FROM people"))
    assert rows[1] == rows[2] == "done"
    assert all(rows[i] == f"user{i}@example.com" for i in range(3, 8))


def test_seed_template_is_idempotent(repo: Monorepo, db_url: str) -> None:
    repo.revision("users", "0001_roles", upgrade="""
        op.create_table("roles", sa.Column("name", sa.String(32)), sa.Column("label", sa.String(64)))
        op.execute("INSERT INTO roles (name, label) VALUES ('admin', 'Admin, already there')")
    """, downgrade='op.drop_table("roles")')
    repo.urls({"users": db_url})
    assert repo.cli("makemigrations", "users", "--type", "seed", "-m", "seed roles").code == 0
    path = newest(repo, "users")
    text = path.read_text().replace('TABLE = "table_to_seed"', 'TABLE = "roles"').replace(
        '    # {"name": "admin", "description": "Full access"},',
        '    {"name": "admin", "label": "Admin"},\n    {"name": "viewer", "label": "Viewer"},',
    )
    path.write_text(text)
    assert ruff(path).returncode == 0, ruff(path).stdout

    assert repo.cli("migrate").code == 0
    rows = sorted(table_rows(db_url, "SELECT name, label FROM roles"))
    assert rows == [("admin", "Admin, already there"), ("viewer", "Viewer")]
    assert repo.cli("rollback", "users").code == 0
    assert table_rows(db_url, "SELECT name FROM roles") == []
    # Applying it again (and with a row already present) still adds each row once.
    assert repo.cli("migrate").code == 0
    assert sorted(table_rows(db_url, "SELECT name FROM roles")) == [("admin",), ("viewer",)]


def test_broken_templates_are_clear_errors(repo: Monorepo, sqlite_url: str) -> None:
    repo.service("users")
    repo.urls({"users": sqlite_url})
    repo.write("settings/templates/schema.py.j2", '"""{{ message }}"""\nrevision = {{ revision | pyrepr\n')
    broken = repo.cli("makemigrations", "users", "--empty")
    assert broken.code == 2
    assert "settings/templates/schema.py.j2" in broken.stderr and "Traceback" not in broken.output

    repo.write("settings/templates/schema.py.j2", '"""{{ message }}"""\nrevision = "fixed"\n')
    wrong = repo.cli("makemigrations", "users", "--empty")
    assert wrong.code == 2 and "revision | pyrepr" in wrong.stderr
    assert list((repo.root / "services/users/migrations").glob("*.py")) == []


@pytest.mark.parametrize(
    ("url", "dialect", "in_templates"),
    [
        ("postgresql+psycopg://app@localhost/shop", "postgresql", "postgresql"),
        ("mariadb+pymysql://root@localhost/shop", "mysql", "mysql"),
        ("sqlite:///var/shop.db", "sqlite", "sqlite"),
        ("mongodb+srv://app@cluster.example.com/shop", "mongodb", "mongo"),
    ],
)
def test_one_dialect_of_a_url_and_the_name_templates_are_given(
    tmp_path: Path, url: str, dialect: str, in_templates: str
) -> None:
    """`urls.dialect_of` is the database a URL speaks (as backup manifests record it);
    templates are told `mongo` for a MongoDB service, as they always were."""
    from ncm_migrate.new_revisions import template_dialect
    from ncm_migrate.urls import backend_of, dialect_of

    config = ServiceConfig(name="shop", root=tmp_path, backend="mongo" if "mongo" in url else "sql",
                           database_url=url)
    assert backend_of(url) == config.backend
    assert (dialect_of(url), template_dialect(config)) == (dialect, in_templates)
