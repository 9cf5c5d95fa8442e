"""rollback: by steps or to a target, refused while other services still require what it
would remove or depend on its service (exit 1, naming them), and --cascade; refused while
the database has a revision applied that no file holds (exit 2); on SQLite, PostgreSQL and
MariaDB."""

from __future__ import annotations

import json

import pytest
from monorepo import Monorepo, ledger, tables, version_heads

import ncm_migrate
from ncm_migrate.errors import RollbackRefused


def users_and_billing(repo: Monorepo, url: str) -> None:
    """
    users:   0001 -> 0002 -> 0003
                      ^
                      | requires
    billing: 0001 ----+
    """
    repo.table("users", "0001_a", "users_a")
    repo.table("users", "0002_b", "users_b", down="0001_a")
    repo.table("users", "0003_c", "users_c", down="0002_b")
    repo.table("billing", "0001_a", "billing_a", requires=["users:0002"])
    repo.settings(f'[development]\ndatabase_url = "{url}"\n')


def test_rollback_what_nothing_requires(repo: Monorepo, db_url: str) -> None:
    users_and_billing(repo, db_url)
    assert repo.cli("migrate").code == 0
    result = repo.cli("rollback", "users")
    assert result.code == 0, result.output
    assert "users down 0003_c reverted" in " ".join(result.stdout.split())
    assert version_heads(db_url, "alembic_version_users") == {"0002_b"}
    assert "users_c" not in tables(db_url)


def test_rollback_refused_while_another_service_requires_it(repo: Monorepo, db_url: str) -> None:
    users_and_billing(repo, db_url)
    assert repo.cli("migrate").code == 0
    refused = repo.cli("rollback", "users", "0001_a")
    assert refused.code == 1
    assert "billing:0001_a" in refused.stderr and "--cascade" in refused.stderr
    assert version_heads(db_url, "alembic_version_users") == {"0003_c"}
    assert repo.cli("rollback", "users", "--steps", "2").code == 1
    assert repo.cli("migrate", "users", "zero").code == 1

    plan = json.loads(repo.cli("migrate", "users", "0001_a", "--cascade", "--plan", "--json").stdout)
    order = [f"{s['service']}:{s['revision']}" for s in plan["steps"]]
    assert sorted(order) == ["billing:0001_a", "users:0002_b", "users:0003_c"]
    assert order.index("billing:0001_a") < order.index("users:0002_b")
    assert order.index("users:0003_c") < order.index("users:0002_b")
    assert {s["direction"] for s in plan["steps"]} == {"down"}
    cascade = repo.cli("rollback", "users", "0001_a", "--cascade")
    assert cascade.code == 0, cascade.output
    assert version_heads(db_url, "alembic_version_users") == {"0001_a"}
    assert version_heads(db_url, "alembic_version_billing") == set()
    assert not {"billing_a", "users_b", "users_c"} & tables(db_url)
    reverted = [(r["service"], r["revision"]) for r in ledger(db_url) if r["status"] == "reverted"]
    assert reverted.index(("billing", "0001_a")) < reverted.index(("users", "0002_b"))


def test_rollback_to_zero_and_nothing_left(repo: Monorepo, db_url: str) -> None:
    users_and_billing(repo, db_url)
    assert repo.cli("migrate", "users").code == 0
    assert repo.cli("rollback", "users", "zero").code == 0
    assert version_heads(db_url, "alembic_version_users") == set()
    again = repo.cli("rollback", "users")
    assert again.code == 0 and "Nothing to do" in again.stdout
    assert [r["direction"] for r in ledger(db_url, "users")] == ["up"] * 3 + ["down"] * 3


def test_rollback_steps_beyond_what_is_applied(repo: Monorepo, sqlite_url: str) -> None:
    users_and_billing(repo, sqlite_url)
    assert repo.cli("migrate", "users", "0002").code == 0
    result = repo.cli("rollback", "users", "--steps", "5")
    assert result.code == 0, result.output
    assert version_heads(sqlite_url, "alembic_version_users") == set()


def test_rollback_to_a_target_not_yet_applied_is_refused(repo: Monorepo, sqlite_url: str) -> None:
    """As Alembic's `downgrade` refuses a target ahead of the database: rollback only moves
    backwards, and says how to move forwards (it used to answer "Nothing to do", exit 0)."""
    users_and_billing(repo, sqlite_url)
    assert repo.cli("migrate", "users", "0001").code == 0
    result = repo.cli("rollback", "users", "0003_c")
    assert result.code == 2, result.output
    assert "users:0003_c is not applied" in result.stderr and "migrate users 0003_c" in result.stderr
    assert version_heads(sqlite_url, "alembic_version_users") == {"0001_a"}


def test_rollback_json(repo: Monorepo, sqlite_url: str) -> None:
    users_and_billing(repo, sqlite_url)
    assert repo.cli("migrate").code == 0
    result = repo.cli("rollback", "billing", "--json")
    assert result.code == 0, result.output
    body = json.loads(result.stdout)
    assert body["ok"] is True and body["error"] is None
    assert [(s["revision"], s["direction"], s["outcome"]) for s in body["steps"]] == [
        ("0001_a", "down", "reverted"),
    ]


def billing_depends_on_users(repo: Monorepo, url: str) -> None:
    """
    users:   0001 -> 0002
                       ^  (service level: billing depends_on users, no requires)
    billing: 0001 -----+
    """
    repo.table("users", "0001_a", "u1")
    repo.table("users", "0002_b", "u2", down="0001_a")
    repo.table("billing", "0001_a", "b1")
    repo.settings(f"""
        [default.services.billing]
        depends_on = ["users"]
        [development]
        database_url = "{url}"
    """)


def test_rollback_refused_while_a_service_that_depends_on_it_is_applied(
    repo: Monorepo, db_url: str
) -> None:
    billing_depends_on_users(repo, db_url)
    assert repo.cli("migrate").code == 0
    for args in (("rollback", "users"), ("rollback", "users", "0001_a"), ("migrate", "users", "zero"),
                 ("rollback", "users", "--steps", "2")):
        refused = repo.cli(*args)
        assert refused.code == 1, (args, refused.output)
        assert "billing:0001_a" in refused.stderr and "billing depends_on users" in refused.stderr
        assert "--cascade" in refused.stderr and "Traceback" not in refused.output
    with pytest.raises(RollbackRefused, match="billing depends_on users"):
        ncm_migrate.rollback("users", "zero", root=repo.root)
    assert version_heads(db_url, "alembic_version_users") == {"0002_b"}
    assert {"u1", "u2", "b1"} <= tables(db_url)

    cascade = repo.cli("migrate", "users", "zero", "--cascade")
    assert cascade.code == 0, cascade.output
    assert version_heads(db_url, "alembic_version_users") == set()
    assert version_heads(db_url, "alembic_version_billing") == set()
    assert not {"u1", "u2", "b1"} & tables(db_url)
    reverted = [(r["service"], r["revision"]) for r in ledger(db_url) if r["status"] == "reverted"]
    assert reverted == [("billing", "0001_a"), ("users", "0002_b"), ("users", "0001_a")]


def test_rollback_of_a_service_whose_dependent_is_not_applied(repo: Monorepo, sqlite_url: str) -> None:
    billing_depends_on_users(repo, sqlite_url)
    assert repo.cli("migrate", "users").code == 0
    result = repo.cli("rollback", "users", "--cascade")
    assert result.code == 0, result.output
    assert "billing" not in result.stdout
    assert repo.cli("rollback", "users").code == 0
    assert version_heads(sqlite_url, "alembic_version_users") == set()


def test_applied_revision_whose_file_is_gone(repo: Monorepo, db_url: str) -> None:
    """A branch switch: the database is at users:0003_c, which no file on disk holds."""
    users_and_billing(repo, db_url)
    assert repo.cli("migrate", "users").code == 0
    (repo.root / "services" / "users" / "migrations" / "0003_c.py").unlink()

    shown = repo.cli("showmigrations", "users")
    assert shown.code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert " [X] 0001_a  0001_a" in lines and " [X] 0002_b  0002_b" in lines
    assert " [?] 0003_c  (applied, no file)" in lines
    assert "pending" not in shown.stdout
    body = json.loads(repo.cli("showmigrations", "users", "--json").stdout)["services"][0]
    assert body["unknown"] == ["0003_c"] and body["current"] == ["0003_c"]
    assert body["revisions"][-1] == {"revision": "0003_c", "applied": True, "path": "",
                                     "doc": "", "missing": True, "phase": "pre"}
    assert body["pending"] == 0

    for args in (("rollback", "users"), ("rollback", "users", "0001_a"), ("migrate", "users", "0001_a"),
                 ("migrate", "users", "zero"), ("migrate", "users"), ("migrate", "--plan", "users"),
                 ("rollback", "users", "--steps", "2", "--cascade")):
        refused = repo.cli(*args)
        assert refused.code == 2, (args, refused.output)
        assert "0003_c" in refused.stderr and "check out the branch that has them" in refused.stderr
        assert "Nothing to do" not in refused.stdout and "Traceback" not in refused.output
    assert version_heads(db_url, "alembic_version_users") == {"0003_c"}
    assert {"users_a", "users_b", "users_c"} <= tables(db_url)
