"""rollback: by steps or to a target, refused while other services still require what it
would remove (exit 1, naming them), and --cascade, on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import json
from pathlib import Path

from monorepo import Monorepo, ledger, tables, version_heads


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


def test_rollback_to_a_target_not_yet_applied_does_nothing(repo: Monorepo, sqlite_url: str) -> None:
    users_and_billing(repo, sqlite_url)
    assert repo.cli("migrate", "users", "0001").code == 0
    result = repo.cli("rollback", "users", "0003_c")
    assert result.code == 0 and "Nothing to do" in result.stdout
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


def test_service_level_depends_on_orders_first_runs_but_does_not_block_rollback(
    repo: Monorepo, tmp_path: Path
) -> None:
    """
        users:   0001 -> 0002            billing depends_on users (service level)
        billing: 0001 (requires users:0001)

    users:0002 came after billing was applied; nothing requires it, so it rolls back alone.
    """
    repo.table("users", "0001_a", "u1")
    repo.table("billing", "0001_a", "b1", requires=["users:0001"])
    repo.settings(f"""
        [default.services.billing]
        depends_on = ["users"]
        [development.services.users]
        database_url = "sqlite:///{tmp_path / 'u.db'}"
        [development.services.billing]
        database_url = "sqlite:///{tmp_path / 'b.db'}"
    """)
    assert repo.cli("migrate").code == 0
    repo.table("users", "0002_b", "u2", down="0001_a")
    assert repo.cli("migrate").code == 0
    result = repo.cli("rollback", "users")
    assert result.code == 0, result.output
    assert "users down 0002_b reverted" in " ".join(result.stdout.split())
    refused = repo.cli("rollback", "users")
    assert refused.code == 1 and "billing:0001_a" in refused.stderr
