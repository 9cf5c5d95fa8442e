"""The audit log: one JSON line per step with who, where, what, how it went and how long;
the repository's commit; and never a password, in the log or in any output."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from monorepo import Monorepo

from ncm_migrate.audit import AuditEntry, read_entries

PASSWORD = "Pw-9f8e7d-sekret"
KEYS = {"time", "command", "run_id", "environment", "service", "revision", "direction", "outcome",
        "duration_ms", "actor", "host", "tool_version", "git_commit", "detail"}


def _entries(repo: Monorepo) -> list[dict[str, object]]:
    lines = (repo.root / "var" / "audit.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_one_line_per_step(repo: Monorepo, db_url: str) -> None:
    repo.table("users", "0001_initial", "users_t")
    repo.table("users", "0002_more", "more_t", down="0001_initial")
    repo.revision("billing", "0001_initial", requires=["users:0002"], upgrade="raise RuntimeError('boom')")
    repo.settings(f'[development]\ndatabase_url = "{db_url}"\n')
    assert repo.cli("migrate", env={"NCM_ACTOR": "deploy-bot"}).code == 1
    assert repo.cli("rollback", "users").code == 0
    entries = _entries(repo)
    assert all(set(e) == KEYS for e in entries)
    assert [(e["command"], e["service"], e["revision"], e["direction"], e["outcome"]) for e in entries] == [
        ("migrate", "users", "0001_initial", "up", "applied"),
        ("migrate", "users", "0002_more", "up", "applied"),
        ("migrate", "billing", "0001_initial", "up", "failed"),
        ("rollback", "users", "0002_more", "down", "reverted"),
    ]
    # One run id per invocation, on its audit lines and its ledger rows alike.
    migrate_run, rollback_run = entries[0]["run_id"], entries[-1]["run_id"]
    assert {e["run_id"] for e in entries[:3]} == {migrate_run} and rollback_run != migrate_run
    with sa.create_engine(db_url).connect() as conn:
        ledger = conn.execute(sa.text(
            "SELECT revision, direction, run_id FROM ncm_migrations ORDER BY id")).all()
    assert [tuple(r) for r in ledger] == [
        ("0001_initial", "up", migrate_run), ("0002_more", "up", migrate_run),
        ("0001_initial", "up", migrate_run), ("0002_more", "down", rollback_run),
    ]
    first = entries[0]
    assert first["environment"] == "development" and first["actor"] == "deploy-bot"
    assert first["host"] and first["tool_version"] and isinstance(first["duration_ms"], float)
    assert entries[-1]["actor"] != "deploy-bot"  # NCM_ACTOR, else the OS user
    assert "boom" in str(entries[2]["detail"])
    assert [e.outcome for e in read_entries(repo.root / "var" / "audit.jsonl")] == [
        "applied", "applied", "failed", "reverted"
    ]
    # Commands that change nothing write nothing.
    for args in (("migrate", "--plan"), ("showmigrations",), ("validate",), ("lint",)):
        repo.cli(*args)
    assert len(_entries(repo)) == 4


def test_audit_path_setting_and_git_commit(repo: Monorepo, sqlite_url: str) -> None:
    repo.table("users", "0001_initial", "users_t")
    repo.settings(f"""
        [development]
        database_url = "{sqlite_url}"
        [development.audit]
        log_path = "logs/ncm-audit.jsonl"
    """)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q"], cwd=repo.root, check=True)
    subprocess.run([*git, "add", "."], cwd=repo.root, check=True)
    subprocess.run([*git, "commit", "-qm", "x"], cwd=repo.root, check=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo.root, capture_output=True, text=True,
                            check=True).stdout.strip()
    assert repo.run("migrate").code == 0
    [entry] = read_entries(repo.root / "logs" / "ncm-audit.jsonl")
    assert isinstance(entry, AuditEntry) and entry.git_commit == commit
    assert not (repo.root / "var" / "audit.jsonl").exists()


@pytest.fixture(params=["postgresql", "mysql"])
def password_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A URL with a password, on PostgreSQL (trust auth takes any) and MariaDB (a user made
    for the test)."""
    if request.param == "postgresql":
        url = sa.engine.make_url(request.getfixturevalue("pg_url"))
        yield url.set(password=PASSWORD).render_as_string(hide_password=False)
        return
    base = sa.engine.make_url(request.getfixturevalue("mysql_url"))
    user = f"ncm_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(base, poolclass=sa.pool.NullPool, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE USER '{user}'@'%%' IDENTIFIED BY '{PASSWORD}'")
        conn.exec_driver_sql(f"GRANT ALL ON `{base.database}`.* TO '{user}'@'%%'")
    yield base.set(username=user, password=PASSWORD).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP USER '{user}'@'%%'")
    admin.dispose()


def test_passwords_never_reach_outputs_or_the_audit_log(repo: Monorepo, password_url: str,
                                                         tmp_path: Path) -> None:
    repo.table("users", "0001_initial", "users_t")
    # A step whose error message carries the URL, password and all.
    repo.revision("users", "0002_leak", down="0001_initial",
                  upgrade="url = op.get_bind().engine.url\n"
                          "raise RuntimeError(url.render_as_string(hide_password=False))")
    repo.settings('[production]\nprotected = true\n')
    repo.write("settings/.secrets.toml", f'[production]\ndatabase_url = "{password_url}"\n')
    folder = tmp_path / "bk"
    runs = [repo.run("migrate", "--env", "production", "-v")]  # a real process, logging and all
    runs += [repo.cli(*args, "--env", "production") for args in (
        ("migrate", "--json"),
        ("showmigrations", "--json"),
        ("history", "--json"),
        ("validate", "--json"),
        ("check",),
        ("backup", "users", "-o", str(folder)),
        ("rollback", "users"),
        ("restore", "users", str(folder), "--yes"),
        ("repair", "users", "--yes"),
    )]
    codes = [r.code for r in runs]
    # validate is 1 on MariaDB only: there the failed step leaves the service dirty.
    assert codes[:4] + codes[5:] == [1, 1, 0, 0, 1, 0, 2, 0, 0], [r.output for r in runs]
    assert all("Traceback" not in r.output for r in runs)
    assert "***" in runs[0].output  # the failure was shown, redacted
    audit = (repo.root / "var" / "audit.jsonl").read_text()
    assert '"outcome": "failed"' in audit and "***" in audit
    texts = [r.output for r in runs] + [audit, (folder / "manifest.json").read_text()]
    for text in texts:
        assert PASSWORD not in text
