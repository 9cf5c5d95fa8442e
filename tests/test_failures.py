"""A revision that fails halfway: nothing of it remains where DDL is transactional
(PostgreSQL, SQLite); on MariaDB the service is dirty and `migrate` refuses it."""

from __future__ import annotations

import json

import sqlalchemy as sa
from monorepo import Monorepo, ledger, tables, version_heads

HALFWAY = """
op.create_table("half", sa.Column("id", sa.Integer, primary_key=True))
op.execute("INSERT INTO half (id) VALUES (1)")
op.execute("UPDATE no_such_table SET x = 1")
"""


def failing_history(repo: Monorepo, url: str) -> None:
    """users: 0001 (t1) -> 0002_half (creates `half`, then fails) -> 0003 (t3)."""
    repo.table("users", "0001_initial", "t1")
    repo.revision("users", "0002_half", down="0001_initial", upgrade=HALFWAY,
                  downgrade='op.drop_table("half")')
    repo.table("users", "0003_after", "t3", down="0002_half")
    repo.urls({"users": url})


def transactional(url: str) -> bool:
    return not url.startswith("mysql")


def statuses(url: str) -> list[tuple[str, str, str]]:
    return [(str(r["revision"]), str(r["direction"]), str(r["status"])) for r in ledger(url, "users")]


def test_failure_halfway(repo: Monorepo, db_url: str) -> None:
    failing_history(repo, db_url)
    result = repo.cli("migrate", "--json")
    assert result.code == 1, result.output
    assert "Revision users:0002_half failed (upgrade)" in result.stderr
    assert "no_such_table" in result.stderr
    outcomes = {s["revision"]: s["outcome"] for s in json.loads(result.stdout)["steps"]}
    assert outcomes == {"0001_initial": "applied", "0002_half": "failed", "0003_after": "not-run"}
    assert version_heads(db_url) == {"0001_initial"}
    assert "t3" not in tables(db_url)
    assert statuses(db_url) == [("0001_initial", "up", "applied"), ("0002_half", "up", "failed")]

    if transactional(db_url):
        # Nothing of the failed revision remains, and the service is not dirty: the next
        # run simply tries it again (and fails again, the same way).
        assert "half" not in tables(db_url)
        status = json.loads(repo.cli("showmigrations", "--json").stdout)["services"][0]
        assert status["dirty"] is None and status["pending"] == 2
        again = repo.cli("migrate")
        assert again.code == 1 and "Revision users:0002_half failed" in again.stderr
        assert "half" not in tables(db_url)
    else:
        # MariaDB commits DDL on its own: the table stayed, so the service is dirty and
        # migrate refuses it, naming the revision, until someone repairs it.
        assert "half" in tables(db_url)
        status = json.loads(repo.cli("showmigrations", "--json").stdout)["services"][0]
        assert status["dirty"] == "0002_half"
        assert "DIRTY at 0002_half" in repo.cli("showmigrations").stdout
        refused = repo.cli("migrate")
        assert refused.code == 1
        assert "Service 'users' is dirty: revision 0002_half failed" in refused.stderr
        assert "repair users" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
        assert statuses(db_url)[-1] == ("0002_half", "up", "failed")  # nothing more was tried


def test_failed_downgrade_leaves_the_revision_applied(repo: Monorepo, db_url: str) -> None:
    repo.table("users", "0001_initial", "t1")
    repo.revision(
        "users", "0002_bad_down", down="0001_initial",
        upgrade='op.create_table("t2", sa.Column("id", sa.Integer, primary_key=True))',
        downgrade='op.drop_table("t1")\nop.execute("UPDATE no_such_table SET x = 1")',
    )
    repo.urls({"users": db_url})
    assert repo.cli("migrate").code == 0
    result = repo.cli("rollback", "users")
    assert result.code == 1
    assert "Revision users:0002_bad_down failed (downgrade)" in result.stderr
    assert version_heads(db_url) == {"0002_bad_down"}
    assert statuses(db_url)[-1] == ("0002_bad_down", "down", "failed")
    if transactional(db_url):
        assert {"t1", "t2"} <= tables(db_url)


def test_verify_failure_fails_the_revision(repo: Monorepo, db_url: str) -> None:
    repo.table("users", "0001_initial", "t1")
    repo.revision(
        "users", "0002_seed", down="0001_initial",
        upgrade='op.execute("INSERT INTO t1 (id) VALUES (1)")',
        downgrade='op.execute("DELETE FROM t1")',
        extra=(
            "def verify() -> None:\n"
            "    count = op.get_bind().execute(sa.text('SELECT COUNT(*) FROM t1')).scalar()\n"
            "    if count != 2:\n"
            "        raise AssertionError(f'expected 2 rows in t1, found {count}')\n"
        ),
    )
    repo.urls({"users": db_url})
    result = repo.cli("migrate")
    assert result.code == 1
    assert "users:0002_seed" in result.stderr and "expected 2 rows in t1, found 1" in result.stderr
    assert version_heads(db_url) == {"0001_initial"}
    assert statuses(db_url)[-1] == ("0002_seed", "up", "failed")
    if transactional(db_url):
        status = json.loads(repo.cli("showmigrations", "--json").stdout)["services"][0]
        assert status["dirty"] is None
        engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT COUNT(*) FROM t1")).scalar() == 0
        engine.dispose()


def test_a_failure_stops_the_run(repo: Monorepo, sqlite_url: str) -> None:
    """A failure in one service stops the run: later services are not started."""
    repo.revision("billing", "0001_broken", upgrade='op.execute("UPDATE no_such_table SET x = 1")')
    repo.table("users", "0001_initial", "t1", requires=["billing:0001"])
    repo.settings(f'[development]\ndatabase_url = "{sqlite_url}"\n')
    result = repo.cli("migrate", "--json")
    assert result.code == 1
    outcomes = {(s["service"], s["revision"]): s["outcome"] for s in json.loads(result.stdout)["steps"]}
    assert outcomes == {("billing", "0001_broken"): "failed", ("users", "0001_initial"): "not-run"}
    assert "t1" not in tables(sqlite_url)
