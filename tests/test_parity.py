"""Parity with what users of the original system rely on: async driver URLs, all-or-
nothing runs, verify(), and a Python API that matches the CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from monorepo import Monorepo

import ncm_migrate
from ncm_migrate.errors import DirtyService, MigrationFailed, UnknownService

ASYNC_DRIVER = {"postgresql": "postgresql+asyncpg", "mysql": "mysql+aiomysql", "sqlite": "sqlite+aiosqlite"}


def as_async(url: str) -> str:
    parsed = sa.engine.make_url(url)
    return parsed.set(drivername=ASYNC_DRIVER[parsed.get_backend_name()]).render_as_string(
        hide_password=False
    )


def tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def ledger(url: str) -> list[tuple[str, str, str, str]]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT service, revision, direction, status FROM ncm_migrations ORDER BY id"
        )).all()
    engine.dispose()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def test_async_url_migrates_rolls_back_and_fails_like_sync(repo: Monorepo, db_url: str) -> None:
    repo.table("users", "0001_a", "users_a")
    repo.table("users", "0002_b", "users_b", down="0001_a")
    repo.revision("users", "0003_boom", down="0002_b",
                  upgrade="op.create_table('half', sa.Column('id', sa.Integer))\nraise RuntimeError('boom')")
    repo.urls({"users": as_async(db_url)})
    failed = repo.cli("migrate")
    assert failed.code == 1 and "users:0003_boom" in failed.stderr
    assert {"users_a", "users_b"} <= tables(db_url)
    mysql = db_url.startswith("mysql")
    assert ("half" in tables(db_url)) == mysql  # MariaDB cannot roll DDL back
    assert ledger(db_url)[-1][1:] == ("0003_boom", "up", "failed")
    status = json.loads(repo.cli("showmigrations", "--json").stdout)["services"][0]
    assert status["current"] == ["0002_b"]
    assert status["dirty"] == ("0003_boom" if mysql else None)
    (repo.root / "services/users/migrations/0003_boom.py").unlink()
    if mysql:
        refused = repo.cli("migrate")
        assert refused.code == 1 and "dirty" in refused.stderr
        return
    assert repo.cli("rollback", "users").code == 0
    assert "users_b" not in tables(db_url)
    assert repo.cli("migrate").code == 0
    assert "users_b" in tables(db_url)


def test_async_concurrent_runners_apply_each_revision_once(repo: Monorepo, db_url: str) -> None:
    for i in range(1, 4):
        repo.revision("users", f"000{i}_r", down=f"000{i - 1}_r" if i > 1 else None,
                      upgrade=f"import time\ntime.sleep(0.2)\n"
                              f"op.create_table('t{i}', sa.Column('id', sa.Integer))",
                      downgrade=f"op.drop_table('t{i}')")
    repo.urls({"users": as_async(db_url)})
    repo.run("services")  # writes manage.py
    procs = [
        subprocess.Popen([sys.executable, str(repo.root / "manage.py"), "migrate", "-q"],
                         cwd=repo.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(8)
    ]
    codes = [p.wait(timeout=120) for p in procs]
    assert codes == [0] * 8, [p.stderr.read() for p in procs if p.stderr]  # type: ignore[union-attr]
    applied = [r for r in ledger(db_url) if r[3] == "applied"]
    assert sorted(r[1] for r in applied) == ["0001_r", "0002_r", "0003_r"]


def three_services(repo: Monorepo, tmp_path: Path, pg_url: str, third_fails: str = "upgrade") -> None:
    """
        accounts (PostgreSQL): 0001
        billing  (SQLite):     0001 -> 0002      (both applied by this run)
        reports  (PostgreSQL): 0001 (fails)      requires billing:0002
    """
    repo.table("accounts", "0001_a", "accounts_a")
    repo.table("billing", "0001_a", "billing_a")
    repo.table("billing", "0002_b", "billing_b", down="0001_a")
    repo.revision("reports", "0001_boom", requires=["billing:0002", "accounts:0001"],
                  upgrade="op.create_table('reports_a', sa.Column('id', sa.Integer))\n"
                          "raise RuntimeError('boom')")
    repo.settings(f"""
        [development.services.accounts]
        database_url = "{pg_url}"
        [development.services.billing]
        database_url = "sqlite:///{tmp_path / 'billing.db'}"
        [development.services.reports]
        database_url = "{pg_url}"
        version_table = "alembic_version_reports"
    """)


def test_rollback_on_failure_returns_every_service_to_where_it_started(
    repo: Monorepo, tmp_path: Path, pg_url: str
) -> None:
    three_services(repo, tmp_path, pg_url)
    result = repo.cli("migrate", "--rollback-on-failure", "--json")
    assert result.code == 1
    data = json.loads(result.stdout)
    outcomes = [(s["service"], s["revision"], s["direction"], s["outcome"]) for s in data["steps"]]
    assert ("reports", "0001_boom", "up", "failed") in outcomes
    undone = [(s, r) for s, r, d, o in outcomes if d == "down" and o == "reverted"]
    assert undone == [("billing", "0002_b"), ("billing", "0001_a"), ("accounts", "0001_a")]
    assert "Rolled back" in data["error"]
    assert not {"accounts_a", "reports_a"} & tables(pg_url)
    assert not {"billing_a", "billing_b"} & tables(f"sqlite:///{tmp_path / 'billing.db'}")
    status = json.loads(repo.cli("showmigrations", "--json").stdout)["services"]
    assert all(s["current"] == [] for s in status)
    # the ledger shows the rollback steps
    assert ("accounts", "0001_a", "down", "reverted") in ledger(pg_url)


def test_rollback_on_failure_from_the_setting_and_a_missing_downgrade(
    repo: Monorepo, tmp_path: Path, pg_url: str
) -> None:
    three_services(repo, tmp_path, pg_url)
    repo.revision("billing", "0002_b", down="0001_a",
                  upgrade="op.create_table('billing_b', sa.Column('id', sa.Integer))",
                  downgrade="raise RuntimeError('cannot go back')")
    settings = repo.root / "settings/settings.toml"
    settings.write_text("[default]\nrollback_on_failure = true\n" + settings.read_text())
    result = repo.cli("migrate")
    assert result.code == 1
    message = " ".join(result.stderr.split())
    assert "reports:0001_boom" in message
    assert "Could not roll back further" in message and "billing:0002_b" in message
    # it stopped there: billing:0002 is still applied, and so is what it needs
    status = {s["name"]: s for s in json.loads(repo.cli("showmigrations", "--json").stdout)["services"]}
    assert status["billing"]["current"] == ["0002_b"]
    assert status["accounts"]["current"] == ["0001_a"]


@pytest.mark.parametrize(("flags", "rolled_back"), [((), True), (("--no-rollback-on-failure",), False)])
def test_no_rollback_on_failure_overrides_the_setting(
    repo: Monorepo, sqlite_url: str, flags: tuple[str, ...], rolled_back: bool
) -> None:
    repo.table("users", "0001_a", "users_a")
    repo.revision("users", "0002_boom", down="0001_a", upgrade="raise RuntimeError('boom')")
    repo.urls({"users": sqlite_url}, extra="rollback_on_failure = true\n")
    assert repo.cli("migrate", *flags).code == 1
    status = json.loads(repo.cli("showmigrations", "--json").stdout)["services"][0]
    assert status["current"] == ([] if rolled_back else ["0001_a"])


def test_both_rollback_flags_are_refused_before_anything_runs(
    repo: Monorepo, sqlite_url: str
) -> None:
    repo.table("users", "0001_a", "users_a")
    repo.urls({"users": sqlite_url})
    result = repo.cli("migrate", "--rollback-on-failure", "--no-rollback-on-failure")
    assert result.code == 2 and "not both" in result.stderr
    assert json.loads(repo.cli("showmigrations", "--json").stdout)["services"][0]["current"] == []


VERIFY_FAILS = """
def verify() -> None:
    rows = op.get_bind().execute(sa.text('SELECT COUNT(*) FROM checked')).scalar()
    assert rows == 1, f'expected one row, found {rows}'
"""


def test_verify_failure_fails_the_revision(repo: Monorepo, db_url: str) -> None:
    repo.table("users", "0001_a", "users_a")
    repo.revision("users", "0002_checked", down="0001_a", extra=VERIFY_FAILS,
                  upgrade="op.create_table('checked', sa.Column('id', sa.Integer))",
                  downgrade="op.drop_table('checked')")
    repo.urls({"users": db_url})
    result = repo.cli("migrate")
    assert result.code == 1
    assert "users:0002_checked" in result.stderr and "expected one row" in result.stderr
    status = json.loads(repo.cli("showmigrations", "--json").stdout)["services"][0]
    assert status["current"] == ["0001_a"]
    if db_url.startswith("mysql"):
        assert status["dirty"] == "0002_checked"
        assert "checked" in tables(db_url)
    else:
        assert status["dirty"] is None
        assert "checked" not in tables(db_url)


def test_verify_only_reruns_verify_without_changing_anything(repo: Monorepo, db_url: str) -> None:
    repo.table("users", "0001_a", "users_a")
    repo.revision("users", "0002_checked", down="0001_a", extra=VERIFY_FAILS,
                  upgrade="op.create_table('checked', sa.Column('id', sa.Integer))\n"
                          "op.execute('INSERT INTO checked (id) VALUES (1)')",
                  downgrade="op.drop_table('checked')")
    repo.urls({"users": db_url})
    assert repo.cli("migrate").code == 0
    ok = repo.cli("migrate", "--verify-only")
    assert ok.code == 0 and "users:0002_checked verify ok" in ok.stdout
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO checked (id) VALUES (2)"))
    engine.dispose()
    before = ledger(db_url)
    bad = repo.cli("migrate", "--verify-only", "--json")
    assert bad.code == 1
    found = json.loads(bad.stdout)
    assert found["ok"] is False and found["verified"][0]["revision"] == "0002_checked"
    assert "expected one row, found 2" in found["verified"][0]["error"]
    assert ledger(db_url) == before


def test_amigrate_from_inside_a_running_event_loop(repo: Monorepo, tmp_path: Path) -> None:
    repo.table("users", "0001_a", "users_a")
    repo.table("users", "0002_b", "users_b", down="0001_a")
    repo.urls({"users": f"sqlite+aiosqlite:///{tmp_path / 'u.db'}"})
    ticks: list[int] = []

    async def app() -> ncm_migrate.MigrateResult:
        async def heartbeat() -> None:
            for i in range(1000):
                ticks.append(i)
                await asyncio.sleep(0.001)

        beat = asyncio.create_task(heartbeat())
        result = await ncm_migrate.amigrate(root=repo.root)
        beat.cancel()
        return result

    result = asyncio.run(app())
    assert [(r.service, r.revision, r.direction, r.outcome) for r in result.results] == [
        ("users", "0001_a", "up", "applied"), ("users", "0002_b", "up", "applied"),
    ]
    assert len(ticks) > 1  # the loop kept running while migrations ran


def test_python_api_results_and_errors_match_the_cli(repo: Monorepo, tmp_path: Path) -> None:
    repo.table("users", "0001_a", "users_a")
    repo.revision("users", "0002_boom", down="0001_a", upgrade="raise ValueError('nope')")
    repo.urls({"users": f"sqlite:///{tmp_path / 'u.db'}"})
    cli = json.loads(repo.run("migrate", "--json").stdout)
    (tmp_path / "u.db").unlink()
    with pytest.raises(MigrationFailed) as caught:
        ncm_migrate.migrate(root=repo.root)
    assert caught.value.exit_code == 1
    api = [{"service": r.service, "revision": r.revision, "direction": r.direction, "outcome": r.outcome}
           for r in caught.value.results]
    assert api == [{k: s[k] for k in ("service", "revision", "direction", "outcome")} for s in cli["steps"]]
    assert str(caught.value) == cli["error"]
    with pytest.raises(UnknownService) as unknown:
        ncm_migrate.migrate(["nope"], root=repo.root)
    assert unknown.value.exit_code == repo.cli("migrate", "nope").code == 2
    assert issubclass(DirtyService, ncm_migrate.NcmError)


MODELS = """
import sqlalchemy as sa

metadata = sa.MetaData()
accounts = sa.Table(
    "accounts", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("email", sa.String(255), nullable=False),
)
"""


def test_makemigrations_and_sqlmigrate_with_an_async_url(repo: Monorepo, db_url: str) -> None:
    repo.service("users")
    repo.write("services/users/models.py", MODELS)
    repo.urls({"users": as_async(db_url)})
    made = repo.cli("makemigrations", "users", "-m", "accounts")
    assert made.code == 0, made.output
    assert repo.cli("migrate").code == 0
    assert "accounts" in tables(db_url)
    again = repo.cli("makemigrations", "--check")
    assert again.code == 0, again.output
    sql = repo.cli("sqlmigrate", "users", "0001")
    assert sql.code == 0 and "CREATE TABLE accounts" in sql.stdout


def test_backup_and_restore_with_an_async_url(repo: Monorepo, db_url: str, tmp_path: Path) -> None:
    repo.table("users", "0001_a", "users_a")
    repo.urls({"users": as_async(db_url)})
    assert repo.cli("migrate").code == 0
    folder = tmp_path / "backup"
    made = repo.cli("backup", "users", "-o", str(folder))
    assert made.code == 0, made.output
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE users_a"))
    engine.dispose()
    assert "users_a" not in tables(db_url)
    restored = repo.cli("restore", "users", str(folder), "--yes")
    assert restored.code == 0, restored.output
    assert "users_a" in tables(db_url)
