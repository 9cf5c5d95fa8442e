"""repair: re-records checksums after a deliberate edit and clears dirty marks after a
manual fix, by appending ledger rows, and writes what it did to the audit log."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa
from monorepo import Monorepo, ledger, tables

from ncm_migrate.discovery import checksum_text


def _audit(repo: Monorepo) -> list[dict[str, object]]:
    path = repo.root / "var" / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def _running_row(url: str, revision: str) -> None:
    """What a runner that died mid-step leaves behind."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO ncm_migrations (service, revision, direction, status, started_at, actor, "
            "host, environment, tool_version) VALUES ('users', :r, 'up', 'running', "
            "CURRENT_TIMESTAMP, 'a', 'h', 'development', '0')"
        ), {"r": revision})
    engine.dispose()


def _repo(repo: Monorepo, url: str) -> Path:
    path = repo.table("users", "0001_initial", "users_t")
    repo.settings(f'[development]\ndatabase_url = "{url}"\n')
    return path


def test_repair_after_a_deliberate_edit_lets_migrate_go_on(repo: Monorepo, db_url: str) -> None:
    path = _repo(repo, db_url)
    assert repo.cli("migrate").code == 0
    path.write_text(path.read_text().replace('"""0001_initial"""', '"""Create users_t (documented)."""'))
    repo.table("users", "0002_more", "more_t", down="0001_initial")
    refused = repo.cli("migrate")
    assert refused.code == 1 and "repair users" in refused.stderr
    assert "more_t" not in tables(db_url)

    result = repo.cli("repair", "users")
    assert result.code == 0, result.output
    assert "users:0001_initial: accepted the edit of 0001_initial.py" in result.stdout
    assert "ledger row appended: up faked" in result.stdout and "no table was touched" in result.stdout
    row = ledger(db_url)[-1]
    assert (row["revision"], row["direction"], row["status"]) == ("0001_initial", "up", "faked")
    assert row["checksum"] == checksum_text(path.read_text())

    assert repo.cli("validate").code == 0
    assert repo.cli("migrate").code == 0
    assert "more_t" in tables(db_url)
    entries = [e for e in _audit(repo) if e["command"] == "repair"]
    assert [(e["service"], e["revision"], e["direction"], e["outcome"]) for e in entries] == [
        ("users", "0001_initial", "up", "faked")
    ]
    again = repo.cli("repair", "users")
    assert again.code == 0 and "Nothing to repair" in again.stdout


def test_repair_clears_a_dirty_mark(repo: Monorepo, db_url: str) -> None:
    _repo(repo, db_url)
    repo.table("users", "0002_more", "more_t", down="0001_initial")
    assert repo.cli("migrate", "users", "0001_initial").code == 0
    _running_row(db_url, "0002_more")
    refused = repo.cli("migrate")
    assert refused.code == 1 and "dirty" in refused.stderr and "repair users" in refused.stderr

    result = repo.cli("repair", "users")
    assert result.code == 0, result.output
    assert "users:0002_more: cleared its dirty mark" in result.stdout
    assert "the next migrate runs it again" in result.stdout
    row = ledger(db_url)[-1]
    assert (row["revision"], row["direction"], row["status"]) == ("0002_more", "down", "reverted")
    assert _audit(repo)[-1]["outcome"] == "reverted"
    assert repo.cli("migrate").code == 0
    assert "more_t" in tables(db_url)


def test_dirty_revision_the_version_table_has_is_recorded_as_applied(repo: Monorepo, sqlite_url: str) -> None:
    _repo(repo, sqlite_url)
    assert repo.cli("migrate").code == 0
    _running_row(sqlite_url, "0001_initial")
    assert repo.cli("migrate").code == 1
    repaired = repo.cli("repair", "users")
    assert repaired.code == 0, repaired.output
    assert "has it applied, so it now counts as applied" in repaired.stdout
    row = ledger(sqlite_url)[-1]
    assert (row["revision"], row["direction"], row["status"]) == ("0001_initial", "up", "faked")
    assert repo.cli("check").code == 0


def test_mariadb_failure_then_manual_fix_then_repair(repo: Monorepo, mysql_url: str) -> None:
    _repo(repo, mysql_url)
    broken = repo.revision(
        "users", "0002_half", down="0001_initial",
        upgrade="op.create_table('half_t', sa.Column('id', sa.Integer, primary_key=True))\n"
                "op.execute('SELECT no_such_column FROM half_t')",
    )
    failed = repo.cli("migrate")
    assert failed.code == 1
    assert "half_t" in tables(mysql_url)  # MariaDB committed the DDL before the failure
    assert repo.cli("migrate").code == 1  # dirty: refused until repaired

    engine = sa.create_engine(mysql_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:  # the manual fix
        conn.exec_driver_sql("DROP TABLE half_t")
    engine.dispose()
    assert repo.cli("repair", "users").code == 0
    broken.write_text(broken.read_text().replace("op.execute('SELECT no_such_column FROM half_t')", "pass"))
    assert repo.cli("migrate").code == 0
    assert "half_t" in tables(mysql_url)


def test_repair_help() -> None:
    result = Monorepo(Path.cwd()).cli("repair", "--help")
    assert result.code == 0 and "Example:" in result.stdout


def test_repair_of_a_dirty_revision_whose_file_is_gone(repo: Monorepo, sqlite_url: str) -> None:
    """It used to say the revision "will run again on the next migrate": with no file,
    nothing runs it; repair says so."""
    _repo(repo, sqlite_url)
    gone = repo.table("users", "0002_more", "more_t", down="0001_initial")
    assert repo.cli("migrate", "users", "0001_initial").code == 0
    _running_row(sqlite_url, "0002_more")
    gone.unlink()
    result = repo.cli("repair", "users")
    assert result.code == 0, result.output
    assert "its file is gone, so nothing runs it again" in result.stdout
    assert "runs it again (undo" not in result.stdout
