"""The command line: every command's --help, and each exit code (0 success, 1 the work
failed, 2 bad input, 3 lock timeout, 4 unreachable database)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
import typer
from filelock import FileLock
from monorepo import Monorepo

from ncm_migrate.cli import app
from ncm_migrate.locking import lock_key, lock_name
from ncm_migrate.urls import sqlite_file

COMMANDS = sorted(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
FAST_RETRIES = {"NCM_CONNECT__RETRIES": "1", "NCM_CONNECT__MAX_WAIT_S": "1"}


def one_service(repo: Monorepo, url: str) -> None:
    repo.table("users", "0001_initial", "users_t")
    repo.table("users", "0002_more", "users_more", down="0001_initial")
    repo.urls({"users": url})


def test_every_command_is_covered() -> None:
    assert {"services", "showmigrations", "status", "migrate", "rollback", "sqlmigrate",
            "history"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_help(repo: Monorepo, command: str) -> None:
    result = repo.cli(command, "--help")
    assert result.code == 0, result.output
    assert "Usage:" in result.stdout and command in result.stdout
    assert "Example:" in result.stdout and "manage.py" in result.stdout
    assert repo.cli(command, "-h").code == 0


def test_top_level_help_lists_every_command(repo: Monorepo) -> None:
    result = repo.cli("--help")
    assert result.code == 0
    for command in COMMANDS:
        assert command in result.stdout
    assert repo.cli().code == 0  # no arguments: the help, as Django's manage.py


def test_help_texts_say_what_to_type(repo: Monorepo) -> None:
    wide = {"COLUMNS": "200"}
    top = repo.cli("--help", env=wide).stdout
    assert "Example: python manage.py" in top and "<svc>:<name>" in top
    rows = {line.split()[1]: line for line in top.splitlines() if line.startswith("│ --")}
    # -v is counted (-v, -vv), not given a number; -q takes no value.
    assert "<int>" not in rows["--verbose"] and "-vv" in rows["--verbose"]
    assert "[default: 0]" not in rows["--verbose"]
    assert "<bool>" not in rows["--quiet"]
    # Rich markup does not eat the pattern of a service name.
    assert "[a-z][a-z0-9_]*" in repo.cli("startservice", "--help", env=wide).stdout
    assert "Alias of showmigrations" in repo.cli("status", "--help", env=wide).stdout


def test_real_manage_py_help(repo: Monorepo) -> None:
    result = repo.run("--help")
    assert result.code == 0 and "migrate" in result.stdout and "Usage: manage.py" in result.stdout


# -- exit codes ------------------------------------------------------------------------


def test_exit_0_success(repo: Monorepo, sqlite_url: str) -> None:
    one_service(repo, sqlite_url)
    assert repo.cli("migrate").code == 0
    assert repo.cli("migrate").code == 0  # nothing to do is success too
    assert repo.cli("showmigrations").code == 0


def test_showmigrations_lists_marks_docs_and_paths_relative_to_the_root(
    repo: Monorepo, sqlite_url: str
) -> None:
    one_service(repo, sqlite_url)
    repo.revision("users", "0003_later", down="0002_more", doc="Later.")
    assert repo.cli("migrate", "users", "0002_more").code == 0
    text = repo.cli("showmigrations").stdout.splitlines()
    assert text == ["users [sql]", " [X] 0001_initial  0001_initial", " [X] 0002_more  0002_more",
                    " [ ] 0003_later  Later.", " 1 pending"]
    found = json.loads(repo.cli("showmigrations", "--json").stdout)["services"][0]
    assert [(r["revision"], r["applied"], r["path"]) for r in found["revisions"]] == [
        (rev, applied, f"services/users/migrations/{rev}.py")
        for rev, applied in (("0001_initial", True), ("0002_more", True), ("0003_later", False))
    ]
    assert (found["heads"], found["current"], found["pending"]) == (["0003_later"], ["0002_more"], 1)


def test_exit_1_failed_migration(repo: Monorepo, sqlite_url: str) -> None:
    one_service(repo, sqlite_url)
    repo.revision("users", "0003_boom", down="0002_more", upgrade="raise RuntimeError('boom')")
    result = repo.cli("migrate")
    assert result.code == 1
    assert "users:0003_boom" in result.stderr and "boom" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("migrate", "nobody"), "Unknown service 'nobody'"),
        (("migrate", "users", "0009"), "has no revision '0009'"),
        (("rollback", "users", "0009"), "has no revision '0009'"),
        (("sqlmigrate", "users", "0009"), "has no revision '0009'"),
        (("--env", "nowhere", "migrate"), "Unknown environment 'nowhere'"),
        (("migrate", "--jobs", "0"), "--jobs"),
        (("history", "--limit", "x"), "--limit"),
        (("no-such-command",), "No such command"),
    ],
)
def test_exit_2_bad_input(repo: Monorepo, sqlite_url: str, args: tuple[str, ...], says: str) -> None:
    one_service(repo, sqlite_url)
    result = repo.cli(*args)
    assert result.code == 2, result.output
    assert says in result.stderr
    assert "Traceback" not in result.output


def test_exit_2_options_may_follow_the_command(repo: Monorepo, sqlite_url: str) -> None:
    one_service(repo, sqlite_url)
    result = repo.cli("migrate", "--env", "nowhere")
    assert result.code == 2 and "Unknown environment 'nowhere'" in result.stderr


@contextmanager
def held_lock(url: str, version_table: str) -> Iterator[None]:
    """Hold the service's migration lock from outside ncm-migrate, as another runner would."""
    if url.startswith("sqlite"):
        path = sqlite_file(url)
        assert path is not None
        with FileLock(str(path.with_name(f"{path.name}.{version_table}.lock"))):
            yield
        return
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        if url.startswith("postgresql"):
            key = lock_key(lock_name("pg", version_table))
            assert conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
        else:
            db = conn.exec_driver_sql("SELECT DATABASE()").scalar()
            name = lock_name(str(db), version_table)
            assert conn.execute(sa.text("SELECT GET_LOCK(:n, 0)"), {"n": name}).scalar() == 1
        conn.commit()
        yield
    engine.dispose()


def test_exit_3_lock_timeout(repo: Monorepo, db_url: str) -> None:
    one_service(repo, db_url)
    env = {"NCM_LOCK__TIMEOUT_S": "1"}
    assert repo.cli("showmigrations", env=env).code == 0  # creates nothing, takes no lock
    with held_lock(db_url, "alembic_version"):
        result = repo.cli("migrate", env=env)
    assert result.code == 3, result.output
    assert "service 'users'" in result.stderr and "lock.timeout_s" in result.stderr
    after = repo.cli("migrate", env=env)
    assert after.code == 0, after.output


@pytest.mark.parametrize("args", [("migrate",), ("showmigrations",), ("history",), ("rollback", "users")])
def test_exit_4_unreachable(repo: Monorepo, args: tuple[str, ...]) -> None:
    one_service(repo, "postgresql+psycopg://ncm@127.0.0.1:1/users")
    result = repo.cli(*args, env=FAST_RETRIES)
    assert result.code == 4, result.output
    assert "Service 'users'" in result.stderr and "unreachable" in result.stderr
    assert "127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.output


def test_exit_codes_in_a_real_process(repo: Monorepo, sqlite_url: str) -> None:
    one_service(repo, sqlite_url)
    assert repo.run("migrate").code == 0
    assert repo.run("migrate", "nobody").code == 2
    repo.revision("users", "0003_boom", down="0002_more", upgrade="raise RuntimeError('boom')")
    failed = repo.run("migrate")
    assert failed.code == 1 and "Traceback" not in failed.stderr


def test_a_missing_driver_is_one_sentence_naming_the_extra(repo: Monorepo) -> None:
    repo.table("users", "0001_a", "t")
    repo.urls({"users": "mysql+mysqldb://root@127.0.0.1:3306/x"})
    result = repo.cli("migrate")
    assert result.code == 2
    assert "mysqldb" in result.stderr and "ncm-migrate[mysql]" in result.stderr
    assert "Traceback" not in result.output


def test_nothing_to_work_on_is_bad_input_not_success(repo: Monorepo, tmp_path: Path) -> None:
    no_services = repo.cli("migrate")
    assert no_services.code == 2 and "No services found" in no_services.stderr
    repo.table("users", "0001_a", "t")
    repo.settings("[development]\njobs = 1\n")
    unconfigured = repo.cli("migrate")
    assert unconfigured.code == 2 and "No service can be used" in unconfigured.stderr
    missing = repo.cli("--settings", str(tmp_path / "nowhere"), "migrate")
    assert missing.code == 2 and "does not exist" in missing.stderr


def test_version_help_command_and_bare_manage_py(repo: Monorepo) -> None:
    from ncm_migrate.ledger import tool_version

    version = repo.cli("--version")
    assert version.code == 0 and version.stdout.strip() == f"ncm-migrate {tool_version()}"
    bare = repo.cli()
    assert bare.code == 0 and "Usage:" in bare.stdout and "migrate" in bare.stdout
    listed = repo.cli("help")
    assert listed.code == 0 and "makemigrations" in listed.stdout and "Usage:" in listed.stdout
    one = repo.cli("help", "migrate")
    assert one.code == 0, one.output
    assert "Usage:" in one.stdout and "migrate [OPTIONS]" in one.stdout and "--plan" in one.stdout
    unknown = repo.cli("help", "migrat")
    assert unknown.code == 2 and "Unknown command 'migrat'" in unknown.stderr
    assert "Traceback" not in unknown.output


def test_real_manage_py_bare_and_version(repo: Monorepo) -> None:
    bare = repo.run()
    assert bare.code == 0 and "Usage: manage.py" in bare.stdout, bare.output
    assert repo.run("--version").stdout.startswith("ncm-migrate ")


def test_help_of_a_service_command(repo: Monorepo, sqlite_url: str) -> None:
    one_service(repo, sqlite_url)
    repo.write("services/users/commands/seed.py", (
        '"""Seed the users table."""\nimport typer\napp = typer.Typer()\n\n\n'
        "@app.command()\ndef main(count: int = 3) -> None:\n"
        '    """Seed COUNT users."""\n    print(count)\n'
    ))
    listed = repo.run("help")
    assert listed.code == 0 and "users:seed" in listed.stdout, listed.output
    one = repo.run("help", "users:seed")
    assert one.code == 0 and "Seed COUNT users." in one.stdout and "--count" in one.stdout, one.output
