"""migrate, rollback, targets, zero, fake, plan and sql on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import json

import sqlalchemy as sa
from monorepo import Monorepo


def tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def two_services(repo: Monorepo, url: str) -> None:
    """users: 0001 -> 0002; billing: 0001 (requires users:0002)."""
    repo.table("users", "0001_initial", "users_t")
    repo.table("users", "0002_more", "users_more", down="0001_initial")
    repo.table("billing", "0001_initial", "invoices", requires=["users:0002"])
    repo.settings(f'''
        [development]
        database_url = "{url}"
    ''')


def test_migrate_applies_everything_in_order(repo: Monorepo, db_url: str) -> None:
    two_services(repo, db_url)
    result = repo.cli("migrate", "--plan", "--json")
    steps = json.loads(result.stdout)["steps"]
    assert [(s["service"], s["revision"]) for s in steps] == [
        ("users", "0001_initial"),
        ("users", "0002_more"),
        ("billing", "0001_initial"),
    ]
    result = repo.cli("migrate")
    assert result.code == 0, result.output
    assert {"users_t", "users_more", "invoices", "ncm_migrations"} <= tables(db_url)
    status = json.loads(repo.cli("showmigrations", "--json").stdout)
    assert all(r["applied"] for s in status["services"] for r in s["revisions"])
    again = repo.cli("migrate")
    assert again.code == 0 and "Nothing to do" in again.stdout
