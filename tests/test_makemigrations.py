"""makemigrations: autogenerate against a scratch database (never the user's), --check,
--dry-run, --empty/--type/-m/--requires, numbering and hash ids, and --merge."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from monorepo import REPO, Monorepo

from ncm_migrate import autogen, metadata
from ncm_migrate.discovery import read_revisions

MODELS_V1 = '''
    import sqlalchemy as sa

    metadata = sa.MetaData(naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    })
    customers = sa.Table(
        "customers",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(50), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=sa.func.now()),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
    )
'''

# v2: a new table, a new nullable column, a new index, and a changed type.
MODELS_V2 = MODELS_V1.replace("sa.String(50)", "sa.String(120)") + '''
    customers.append_column(sa.Column("email", sa.String(255), nullable=True))
    sa.Index("ix_customers_created_at", customers.c.created_at)
    orders = sa.Table(
        "orders",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("customer_id", sa.ForeignKey("customers.id"), nullable=False),
        sa.Column("total", sa.Numeric(10, 2), nullable=False, server_default="0"),
    )
'''


@pytest.fixture(autouse=True)
def _fresh_models() -> Iterator[None]:
    """models.py files change within a test; load them anew each time."""
    metadata._load.cache_clear()
    yield
    metadata._load.cache_clear()


def write_models(repo: Monorepo, service: str, text: str) -> None:
    repo.service(service)
    repo.write(f"services/{service}/models.py", textwrap.dedent(text))
    metadata._load.cache_clear()


def models_of(repo: Monorepo, service: str) -> sa.MetaData:
    namespace: dict[str, object] = {}
    exec((repo.root / "services" / service / "models.py").read_text(), namespace)
    md = namespace["metadata"]
    assert isinstance(md, sa.MetaData)
    return md


def differences(url: str, md: sa.MetaData) -> list[object]:
    """Alembic's own comparison of `md` with the database, ignoring ncm's tables."""
    ours = {"ncm_migrations"}

    def include_name(name: str | None, type_: str, _parents: object) -> bool:
        return not (type_ == "table" and (name in ours or str(name).startswith("alembic_version")))

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={
                "compare_type": True, "compare_server_default": autogen.server_default_differs,
                "include_name": include_name,
            })
            return list(compare_metadata(ctx, md))
    finally:
        engine.dispose()


def snapshot(url: str) -> dict[str, object]:
    """Everything makemigrations must leave alone: tables, columns, indexes, version rows."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            insp = sa.inspect(conn)
            shot: dict[str, object] = {}
            for table in sorted(insp.get_table_names()):
                shot[table] = (
                    [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(table)],
                    sorted(str(i["name"]) for i in insp.get_indexes(table)),
                    conn.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar(),
                )
            if "alembic_version" in shot:
                shot["version"] = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
            return shot
    finally:
        engine.dispose()


def ruff(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--config", str(REPO / "pyproject.toml"),
         *map(str, paths)],
        capture_output=True, text=True,
    )


def scratch_names(url: str) -> set[str]:
    """Scratch databases on the server behind `url`."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                rows = conn.execute(sa.text(
                    "SELECT datname FROM pg_database WHERE datname LIKE 'ncm_scratch_%'"))
            else:
                rows = conn.execute(sa.text("SHOW DATABASES LIKE 'ncm\\_scratch\\_%'"))
            return {r[0] for r in rows}
    finally:
        engine.dispose()


@pytest.fixture
def scratch_token(monkeypatch: pytest.MonkeyPatch) -> str:
    """The random part of this test's scratch database names, known in advance."""
    token = uuid.uuid4().hex[:12]
    monkeypatch.setattr(autogen.secrets, "token_hex", lambda _n: token)
    return token


def test_autogenerate_migrate_and_compare_round_trip(
    repo: Monorepo, db_url: str, scratch_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo.urls({"shop": db_url})
    write_models(repo, "shop", MODELS_V1)

    first = repo.cli("makemigrations")
    assert first.code == 0, first.output
    assert "services/shop/migrations/0001_customers.py" in first.stdout
    assert "create table customers" in first.stdout
    assert repo.cli("migrate").code == 0
    assert differences(db_url, models_of(repo, "shop")) == []

    write_models(repo, "shop", MODELS_V2)
    built_on: list[str] = []
    real_migrate_scratch = autogen.migrate_scratch

    def spy(project: object, config: object, scratch_url: str) -> frozenset[str]:
        built_on.append(scratch_url)
        if not db_url.startswith("sqlite"):
            assert f"ncm_scratch_{scratch_token}" in scratch_names(db_url)
        return real_migrate_scratch(project, config, scratch_url)  # type: ignore[arg-type]

    monkeypatch.setattr(autogen, "migrate_scratch", spy)
    before = snapshot(db_url)
    second = repo.cli("makemigrations")
    assert second.code == 0, second.output
    assert snapshot(db_url) == before, "makemigrations changed the user's database"
    assert len(built_on) == 1 and built_on[0] != db_url
    if not db_url.startswith("sqlite"):
        assert f"ncm_scratch_{scratch_token}" not in scratch_names(db_url), "scratch database left behind"

    files = sorted((repo.root / "services/shop/migrations").glob("*.py"))
    assert [f.name for f in files] == ["0001_customers.py", "0002_orders_and_more.py"]
    for change in ("create table orders", "add column customers.email",
                   "alter column customers.name", "create index ix_customers_created_at"):
        assert change in second.stdout
    assert ruff(*files).returncode == 0, ruff(*files).stdout

    # A valid Alembic history: Alembic's own script directory reads it.
    folder = str(repo.root / "services/shop/migrations")
    script = ScriptDirectory(folder, version_locations=[folder])
    assert script.get_current_head() == "0002_orders_and_more"

    assert repo.cli("migrate").code == 0
    assert differences(db_url, models_of(repo, "shop")) == []
    again = repo.cli("makemigrations")
    assert again.code == 0 and "No changes detected in shop" in again.stdout
    assert len(list((repo.root / "services/shop/migrations").glob("*.py"))) == 2


@pytest.mark.parametrize("server", ["pg_url", "mysql_url"])
def test_scratch_database_dropped_when_migrations_fail(
    repo: Monorepo, server: str, request: pytest.FixtureRequest, scratch_token: str
) -> None:
    url = request.getfixturevalue(server)
    repo.urls({"shop": url})
    repo.revision("shop", "0001_broken", upgrade="raise RuntimeError('boom')")
    write_models(repo, "shop", MODELS_V1)
    result = repo.cli("makemigrations")
    assert result.code == 1
    assert "scratch database" in result.stderr and "0001_broken" in result.stderr
    assert "Traceback" not in result.output
    assert f"ncm_scratch_{scratch_token}" not in scratch_names(url)
    assert snapshot(url) == {}


@pytest.fixture
def pg_user_without_createdb(pg_url: str) -> Iterator[str]:
    """`pg_url` as a role that may use the database but not create databases."""
    role = f"ncm_nocreate_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE ROLE "{role}" LOGIN NOCREATEDB')
        conn.exec_driver_sql(f'GRANT ALL ON SCHEMA public TO "{role}"')
    yield sa.engine.make_url(pg_url).set(username=role).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'REASSIGN OWNED BY "{role}" TO postgres')
        conn.exec_driver_sql(f'DROP OWNED BY "{role}"')
        conn.exec_driver_sql(f'DROP ROLE "{role}"')
    admin.dispose()


def test_falls_back_to_the_live_database_at_head_when_create_database_is_refused(
    repo: Monorepo, pg_user_without_createdb: str
) -> None:
    url = pg_user_without_createdb
    repo.urls({"shop": url})
    write_models(repo, "shop", MODELS_V1)
    assert repo.cli("makemigrations").code == 0  # an empty live database is at head (none)
    write_models(repo, "shop", MODELS_V2)

    behind = repo.cli("makemigrations")
    assert behind.code == 1
    assert "refused to create a scratch database" in behind.stderr
    assert "migrate shop" in behind.stderr

    assert repo.cli("migrate").code == 0
    before = snapshot(url)
    result = repo.cli("makemigrations")
    assert result.code == 0, result.output
    assert "comparing models.py with the live database at head" in result.stderr
    assert "add column customers.email" in result.stdout
    assert snapshot(url) == before
    assert repo.cli("migrate").code == 0
    assert differences(url, models_of(repo, "shop")) == []


def test_check_exits_1_naming_the_services_whose_models_differ(repo: Monorepo, tmp_path: Path) -> None:
    repo.urls({"shop": f"sqlite:///{tmp_path}/shop.db", "crm": f"sqlite:///{tmp_path}/crm.db"})
    write_models(repo, "shop", MODELS_V1)
    write_models(repo, "crm", MODELS_V1)
    assert repo.cli("makemigrations").code == 0

    clean = repo.cli("makemigrations", "--check")
    assert clean.code == 0, clean.output

    write_models(repo, "crm", MODELS_V2)
    dirty = repo.cli("makemigrations", "--check")
    assert dirty.code == 1
    assert "crm" in dirty.stderr and "shop" not in dirty.stderr
    assert "add column customers.email" in dirty.stderr
    assert len(list((repo.root / "services/crm/migrations").glob("*.py"))) == 1, "--check wrote a file"


def test_dry_run_prints_the_file_and_writes_nothing(repo: Monorepo, sqlite_url: str) -> None:
    repo.urls({"shop": sqlite_url})
    write_models(repo, "shop", MODELS_V1)
    result = repo.cli("makemigrations", "--dry-run")
    assert result.code == 0, result.output
    assert "dry run" in result.stdout
    assert 'revision = "0001_customers"' in result.stdout
    assert "op.create_table(" in result.stdout
    assert list((repo.root / "services/shop/migrations").glob("*.py")) == []


def test_quiet_prints_only_errors(repo: Monorepo, sqlite_url: str) -> None:
    repo.urls({"shop": sqlite_url, "users": sqlite_url.replace("db.sqlite", "u.sqlite")})
    repo.table("users", "0001_initial", "users_t")  # no models.py: skipped
    repo.service("mail")  # no database_url: left out
    write_models(repo, "shop", MODELS_V1)
    for args in (("-q", "makemigrations"), ("makemigrations", "-q"), ("-q", "makemigrations", "--check")):
        result = repo.cli(*args)
        assert (result.code, result.stdout, result.stderr) == (0, "", ""), (args, result.stderr)
    assert len(list((repo.root / "services/shop/migrations").glob("*.py"))) == 1
    # With --dry-run, the file it would write is the output it was asked for; nothing else.
    write_models(repo, "shop", MODELS_V2)
    dry = repo.cli("-q", "makemigrations", "shop", "--dry-run")
    assert dry.code == 0 and dry.stderr == ""
    assert dry.stdout.lstrip().startswith('"""') and "dry run" not in dry.stdout
    # Errors still show.
    bad = repo.cli("-q", "makemigrations", "nobody")
    assert bad.code == 2 and "nobody" in bad.stderr


def test_empty_types_message_and_requires_write_the_header(repo: Monorepo, sqlite_url: str) -> None:
    repo.table("users", "0001_initial", "users_t")
    repo.table("users", "0002_more", "users_more", down="0001_initial")
    repo.service("billing")
    repo.urls({"users": sqlite_url, "billing": sqlite_url.replace("db.sqlite", "b.sqlite")})

    result = repo.cli("makemigrations", "billing", "--empty", "-m", "Create invoices",
                      "--requires", "users:0002")
    assert result.code == 0, result.output
    data = repo.cli("makemigrations", "billing", "--type", "data", "-m", "Backfill totals")
    assert data.code == 0, data.output
    long = repo.cli("makemigrations", "users", "--type", "seed", "-m",
                    "Seed the default roles and permissions every installation needs")
    assert long.code == 0, long.output

    billing = {r.revision: r for r in read_revisions("billing", repo.root / "services/billing/migrations")}
    assert set(billing) == {"0001_create_invoices", "0002_backfill_totals"}
    first = billing["0001_create_invoices"]
    assert first.requires == ("users:0002_more",)
    assert first.down_revisions == () and first.migration_type == "schema"
    assert first.doc == "Create invoices"
    assert billing["0002_backfill_totals"].down_revisions == ("0001_create_invoices",)
    assert billing["0002_backfill_totals"].migration_type == "data"
    users = read_revisions("users", repo.root / "services/users/migrations")
    seed = users[-1]
    assert seed.migration_type == "seed" and seed.down_revisions == ("0002_more",)
    assert len(seed.revision) <= 32 and seed.revision.startswith("0003_seed_the_default_roles")
    assert seed.path.stem == seed.revision

    assert repo.cli("migrate").code == 0
    plan = json.loads(repo.cli("migrate", "--plan", "--json").stdout)
    assert plan["steps"] == []


def test_bad_requests_are_exit_2(repo: Monorepo, sqlite_url: str) -> None:
    repo.table("users", "0001_initial", "users_t")
    repo.urls({"users": sqlite_url})
    for args, words in [
        (("users", "--empty", "--requires", "users:0001"), "own"),
        (("users", "--empty", "--requires", "nobody:0001"), "nobody"),
        (("users", "--empty", "--requires", "users"), "SERVICE:REVISION"),
        (("users", "--type", "cleanup"), "cleanup"),
        (("ghost", "--empty"), "ghost"),
    ]:
        result = repo.cli("makemigrations", *args)
        assert result.code == 2, (args, result.output)
        assert words in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.output


def test_numbering_follows_the_highest_number(repo: Monorepo, sqlite_url: str) -> None:
    repo.table("users", "0001_initial", "users_t")
    repo.table("users", "0007_jump", "users_more", down="0001_initial")
    repo.urls({"users": sqlite_url})
    assert repo.cli("makemigrations", "users", "--empty").code == 0
    newest = read_revisions("users", repo.root / "services/users/migrations")[-1]
    assert newest.revision.startswith("0008_auto_")
    assert newest.down_revisions == ("0007_jump",)


def test_hash_ids_from_the_setting_or_an_alembic_history(repo: Monorepo, sqlite_url: str) -> None:
    repo.table("legacy", "ae1027a6acf", "legacy_t")
    repo.service("fresh")
    repo.settings(f'''
        [development.services.legacy]
        database_url = "{sqlite_url}"
        [development.services.fresh]
        database_url = "{sqlite_url.replace('db.sqlite', 'fresh.sqlite')}"
        revision_ids = "hash"
    ''')
    assert repo.cli("makemigrations", "--empty", "-m", "add things").code == 0
    for service, down in (("legacy", ("ae1027a6acf",)), ("fresh", ())):
        revs = [r for r in read_revisions(service, repo.root / f"services/{service}/migrations")
                if r.revision != "ae1027a6acf"]
        assert len(revs) == 1
        rev = revs[0]
        assert len(rev.revision) == 12 and int(rev.revision, 16) >= 0
        assert rev.path.name == f"{rev.revision}_add_things.py"
        assert rev.down_revisions == down
    assert repo.cli("migrate").code == 0


def forked(repo: Monorepo, url: str) -> None:
    """users: 0001 -> 0002_phone and 0001 -> 0002_email (parallel work, no merge)."""
    repo.table("users", "0001_initial", "users_t")
    repo.table("users", "0002_phone", "phones", down="0001_initial")
    repo.table("users", "0002_email", "emails", down="0001_initial")
    repo.urls({"users": url})


def test_merge_joins_a_forked_history(repo: Monorepo, sqlite_url: str) -> None:
    forked(repo, sqlite_url)
    refused = repo.cli("migrate")
    assert refused.code == 1 and "--merge" in refused.stderr
    not_merged = repo.cli("makemigrations", "users", "--empty")
    assert not_merged.code == 1 and "makemigrations users --merge" in not_merged.stderr

    result = repo.cli("makemigrations", "users", "--merge")
    assert result.code == 0, result.output
    merge = read_revisions("users", repo.root / "services/users/migrations")[-1]
    assert merge.revision == "0003_merge"
    assert merge.down_revisions == ("0002_email", "0002_phone")
    assert merge.migration_type == "merge"
    assert ruff(merge.path).returncode == 0, ruff(merge.path).stdout

    assert repo.cli("migrate").code == 0
    shown = repo.cli("showmigrations", "users")
    assert "several heads" not in shown.stdout and "[ ]" not in shown.stdout
    again = repo.cli("makemigrations", "users", "--merge")
    assert again.code == 0 and "No conflicts detected to merge in users" in again.stdout


def test_merge_needs_one_service(repo: Monorepo, sqlite_url: str) -> None:
    forked(repo, sqlite_url)
    result = repo.cli("makemigrations", "--merge")
    assert result.code == 2 and "exactly one service" in result.stderr


def test_shared_database_compares_only_the_services_own_tables(repo: Monorepo, sqlite_url: str) -> None:
    """One database for every service: other services' tables are not proposed as drops."""
    repo.table("users", "0001_initial", "users_t")
    repo.settings(f'''
        [development]
        database_url = "{sqlite_url}"
    ''')
    write_models(repo, "shop", MODELS_V1)
    result = repo.cli("makemigrations")
    assert result.code == 0, result.output
    assert "drop table" not in result.stdout and "users_t" not in result.stdout
    assert repo.cli("migrate").code == 0
    assert repo.cli("makemigrations", "shop").stdout.strip() == "No changes detected in shop"


@pytest.mark.parametrize("command", ["makemigrations"])
def test_help(repo: Monorepo, command: str) -> None:
    result = repo.cli(command, "--help")
    assert result.code == 0
    for word in ("Example:", "--check", "--dry-run", "--merge", "--empty", "--type", "--requires"):
        assert word in result.stdout


def test_unwritable_migrations_folder_is_one_sentence(repo: Monorepo, sqlite_url: str) -> None:
    """makemigrations into a folder that cannot be written: exit 2, one sentence, no file."""
    from monorepo import read_only

    repo.service("users")
    repo.urls({"users": sqlite_url})
    folder = repo.root / "services/users/migrations"
    with read_only(folder):
        result = repo.cli("makemigrations", "users", "--empty", "-m", "first")
    assert result.code == 2, result.output
    assert "Cannot write" in result.stderr and "0001_first.py" in result.stderr
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1
    assert list(folder.glob("*.py")) == []


def test_type_without_empty_says_what_it_wrote(repo: Monorepo, sqlite_url: str) -> None:
    """--type alone: the output says whether the file was autogenerated or is a template to
    fill in, and why models.py's changes are not in a data revision."""
    write_models(repo, "users", """
        import sqlalchemy as sa
        metadata = sa.MetaData()
        people = sa.Table("people", metadata, sa.Column("id", sa.Integer, primary_key=True))
    """)
    repo.urls({"users": sqlite_url})
    data = repo.cli("makemigrations", "users", "--type", "data", "-m", "backfill")
    assert data.code == 0, data.output
    assert "From the 'data' template, to fill in by hand" in data.stdout
    assert "never autogenerated" in data.stdout and "without --type" in data.stdout
    assert "create_table" not in (repo.root / "services/users/migrations/0001_backfill.py").read_text()
    schema = repo.cli("makemigrations", "users", "--type", "schema", "-m", "people")
    assert schema.code == 0, schema.output
    assert "Autogenerated from models.py." in schema.stdout and "create table people" in schema.stdout
    empty = repo.cli("makemigrations", "users", "--type", "seed", "--empty", "-m", "load")
    assert "From the 'seed' template, to fill in by hand (--empty)." in empty.stdout


def test_autogenerated_index_on_an_existing_table_passes_lint_on_postgresql(
    repo: Monorepo, pg_url: str
) -> None:
    """An index on a table that exists already is written CONCURRENTLY, in an autocommit
    block, so the tool's own output passes its `non-concurrent-index` lint; indexes of a
    table the same revision creates stay in its transaction."""
    repo.urls({"shop": pg_url})
    write_models(repo, "shop", MODELS_V1)
    assert repo.cli("makemigrations").code == 0
    assert repo.cli("migrate").code == 0
    write_models(repo, "shop", MODELS_V2)
    made = repo.cli("makemigrations")
    assert made.code == 0, made.output
    text = (repo.root / "services/shop/migrations/0002_orders_and_more.py").read_text()
    upgrade = text.split("def upgrade()", 1)[1].split("def downgrade()", 1)[0]
    block = upgrade.split("with op.get_context().autocommit_block():", 1)[1]
    assert "ix_customers_created_at" in block and "postgresql_concurrently=True" in block
    assert "'orders'" not in block  # the new table's own indexes are not moved
    lint = json.loads(repo.cli("lint", "--json").stdout)
    assert [f["rule"] for f in lint["findings"]
            if f["rule"] == "non-concurrent-index"] == [], lint
    assert repo.cli("migrate").code == 0, repo.cli("migrate").output
    assert differences(pg_url, models_of(repo, "shop")) == []
    assert "No changes detected in shop" in repo.cli("makemigrations").stdout
