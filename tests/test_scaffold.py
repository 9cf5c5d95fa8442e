"""init and startservice: scaffolding that works end to end and never overwrites."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from monorepo import CliResult, Monorepo

CONSOLE_SCRIPT = Path(sys.executable).with_name("ncm-migrate")


def run(cwd: Path, *args: str) -> CliResult:
    """A real process with the developer's NCM_* variables removed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("NCM_") or k.startswith("NCM_TEST_")}
    proc = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def test_init_startservice_makemigrations_migrate_end_to_end(tmp_path: Path) -> None:
    """`ncm-migrate init DIR` outside any monorepo, then the new manage.py does the rest."""
    assert CONSOLE_SCRIPT.is_file()
    project = tmp_path / "acme"
    created = run(tmp_path, str(CONSOLE_SCRIPT), "init", "acme")
    assert created.code == 0, created.output
    assert (project / "manage.py").is_file() and os.access(project / "manage.py", os.X_OK)
    assert (project / "settings/settings.toml").is_file() and (project / "services").is_dir()
    ignored = (project / ".gitignore").read_text().splitlines()
    assert {"var/", "settings/.secrets.toml", "settings/settings.local.toml"} <= set(ignored)

    manage = [sys.executable, "manage.py"]
    started = run(project, *manage, "startservice", "shop")
    assert started.code == 0, started.output
    models = project / "services/shop/models.py"
    assert models.is_file() and (project / "services/shop/migrations").is_dir()
    models.write_text(models.read_text() + textwrap.dedent('''
        products = sa.Table(
            "products",
            metadata,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("name", sa.String(100), nullable=False),
        )
    '''))
    made = run(project, *manage, "makemigrations")
    assert made.code == 0, made.output
    assert "services/shop/migrations/0001_products.py" in made.stdout
    migrated = run(project, *manage, "migrate")
    assert migrated.code == 0, migrated.output
    shown = run(project, *manage, "showmigrations")
    assert " [X] 0001_products" in shown.stdout
    assert (project / "var/development/shop.db").is_file()


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "manage.py").write_text("# mine\n")
    result = run(tmp_path, str(CONSOLE_SCRIPT), "init")
    assert result.code == 2
    assert "manage.py" in result.stderr and "Refusing to overwrite" in result.stderr
    assert (tmp_path / "manage.py").read_text() == "# mine\n"
    assert not (tmp_path / "settings").exists()


def test_init_appends_only_missing_gitignore_entries(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("node_modules/\nvar/")
    result = run(tmp_path, str(CONSOLE_SCRIPT), "init", str(tmp_path))
    assert result.code == 0, result.output
    lines = (tmp_path / ".gitignore").read_text().splitlines()
    assert lines[:2] == ["node_modules/", "var/"]
    assert lines.count("var/") == 1 and "settings/.secrets.toml" in lines


def test_startservice_options_and_refusals(repo: Monorepo) -> None:
    repo.settings("""
        [default]
        services_dir = "services"
        [staging]
        jobs = 2
    """)
    mongo = repo.cli("startservice", "events", "--backend", "mongo")
    assert mongo.code == 0, mongo.output
    events = repo.root / "services/events"
    assert not (events / "models.py").exists()
    # No server to assume: no URL written, and the output says where one goes.
    assert "database_url =" not in (events / "settings.toml").read_text()
    assert "mongodb://" not in mongo.output
    assert "No database URL written" in mongo.stdout and "[development]" in mongo.stdout
    assert "services/events/settings.toml" in mongo.stdout

    sql = repo.cli("startservice", "orders")
    assert sql.code == 0, sql.output
    assert "Database in 'development': sqlite:///var/development/orders.db (written to " in sql.stdout
    assert "services/orders/settings.toml)" in sql.stdout

    url = "postgresql+psycopg://app@db.internal:5432/billing"
    made = repo.cli("startservice", "billing", "--env", "staging", "--database-url", url)
    assert made.code == 0, made.output
    text = (repo.root / "services/billing/settings.toml").read_text()
    assert f'[staging]\ndatabase_url = "{url}"' in text

    services = {s["name"]: s for s in __import__("json").loads(
        repo.cli("services", "--env", "staging", "--json").stdout)}
    assert services["billing"]["url"] == url and services["billing"]["backend"] == "sql"
    assert services["events"]["backend"] == "mongo"

    for args, words in [
        (("billing",), "already exists"),
        (("Billing",), "invalid"),
        (("audit", "--backend", "oracle"), "oracle"),
        (("audit", "--backend", "mongo", "--database-url", url), "does not match"),
        (("audit", "--database-url", "nonsense"), "not a valid database URL"),
    ]:
        result = repo.cli("startservice", *args)
        assert result.code == 2, (args, result.output)
        assert words in result.stderr, (args, result.stderr)
    assert not (repo.root / "services/audit").exists()


def test_startservice_keeps_passwords_out_of_files(repo: Monorepo) -> None:
    repo.settings("[default]\n")
    result = repo.cli("startservice", "billing", "--database-url",
                      "postgresql+psycopg://app:s3cr3tpass@db/billing")
    assert result.code == 2
    assert "NCM_SERVICES__BILLING__DATABASE_URL" in result.stderr
    assert "s3cr3tpass" not in result.output
    assert not (repo.root / "services/billing").exists()


def test_startservice_in_a_one_database_project_writes_no_url(repo: Monorepo, tmp_path: Path) -> None:
    repo.settings(f'''
        [development]
        database_url = "sqlite:///{tmp_path}/one.db"
    ''')
    started = repo.cli("startservice", "shop")
    assert started.code == 0, started.output
    assert f"Database in 'development': sqlite:///{tmp_path}/one.db (from the settings)" in started.stdout
    text = (repo.root / "services/shop/settings.toml").read_text()
    assert "\ndatabase_url" not in text
    assert repo.cli("migrate").code == 0


@pytest.mark.parametrize("command", ["startservice", "init"])
def test_help(repo: Monorepo, command: str) -> None:
    result = repo.cli(command, "--help")
    assert result.code == 0 and "Example:" in result.stdout


def test_unwritable_folders_are_one_sentence(repo: Monorepo, tmp_path: Path) -> None:
    """startservice and init into a folder that cannot be written: exit 2, one sentence,
    nothing left behind."""
    from monorepo import read_only

    repo.settings("[development]\n")
    (repo.root / "services").mkdir()
    with read_only(repo.root / "services"):
        result = repo.cli("startservice", "orders")
    assert result.code == 2, result.output
    assert "Cannot create service 'orders'" in result.stderr and "writable" in result.stderr
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1
    assert not (repo.root / "services/orders").exists()

    locked = tmp_path / "locked"
    locked.mkdir()
    with read_only(locked):
        made = repo.cli("init", str(locked / "repo"))
    assert made.code == 2, made.output
    assert "Cannot write into" in made.stderr and "Traceback" not in made.output
    assert not (locked / "repo").exists()


def test_scaffolded_models_py_leaves_hand_written_tables_alone(repo: Monorepo) -> None:
    """startservice's models.py declares no tables: a service whose revisions are written by
    hand passes `check`, and makemigrations does not write a revision dropping its tables
    (it used to demand `drop table` for every one)."""
    repo.settings("[development]\n")
    started = repo.cli("startservice", "shop")
    assert started.code == 0, started.output
    assert "Next: declare its tables in " in started.stdout and "services/shop/models.py" in started.stdout
    assert "makemigrations shop --empty" in started.stdout
    written = repo.cli("makemigrations", "shop", "--empty", "-m", "products")
    assert written.code == 0, written.output
    path = repo.root / "services/shop/migrations/0001_products.py"
    text = path.read_text()
    path.write_text(text.replace(
        "def upgrade() -> None:\n",
        "def upgrade() -> None:\n"
        "    op.create_table('products', sa.Column('id', sa.Integer, primary_key=True))\n",
        1,
    ))
    assert "op.create_table('products'" in path.read_text()
    assert repo.cli("migrate").code == 0
    check = repo.cli("check")
    assert check.code == 0, check.output
    assert "models-changed" not in check.stdout
    again = repo.cli("makemigrations", "shop")
    assert again.code == 0, again.output
    assert "Skipped shop: its models.py declares no tables" in again.stdout
    assert sorted(p.name for p in path.parent.glob("*.py")) == ["0001_products.py"]
