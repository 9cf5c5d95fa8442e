"""A ledger made by 0.1 (no `run_id`, `attempt`, `waited_ms`) reads as it is and gains the
columns at the next change; every row a run writes carries its run id."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import sqlalchemy as sa
from monorepo import Monorepo

from ncm_migrate.backends.sql.bookkeeping import LEDGER
from ncm_migrate.ledger import LATER_COLUMNS


def _old_ledger(url: str) -> None:
    """The ledger as 0.1 made it, with rows of its own: users:0001_initial applied, then
    rolled back."""
    md = sa.MetaData()
    old = sa.Table(LEDGER.name, md, *(
        sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
        for c in LEDGER.c if c.name not in LATER_COLUMNS
    ))
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        md.create_all(conn)
        conn.execute(old.insert(), [
            dict(service="users", revision="0001_initial", direction=direction, status=status,
                 checksum="0" * 64, started_at=datetime.now(UTC), actor="old", host="old",
                 environment="development", tool_version="0.1.0")
            for direction, status in (("up", "applied"), ("down", "reverted"))
        ])
    engine.dispose()


def _columns(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return {c["name"] for c in sa.inspect(engine).get_columns(LEDGER.name)}
    finally:
        engine.dispose()


def test_an_old_ledger_is_read_then_brought_up_to_date(repo: Monorepo, db_url: str) -> None:
    _old_ledger(db_url)
    repo.table("users", "0001_initial", "users_t")
    repo.settings(f'[development]\ndatabase_url = "{db_url}"\n')

    before = repo.cli("history", "--json")  # read-only: the old ledger as it is
    assert before.code == 0, before.output
    legacy = json.loads(before.stdout)
    assert [(r["revision"], r["status"], r["run_id"]) for r in legacy] == [
        ("0001_initial", "applied", None), ("0001_initial", "reverted", None),
    ]
    assert not set(LATER_COLUMNS) & _columns(db_url)

    assert repo.cli("migrate", env={"NCM_RUN_ID": "deploy-42"}).code == 0
    assert set(LATER_COLUMNS) <= _columns(db_url)
    rows = json.loads(repo.cli("history", "--json").stdout)
    assert [(r["revision"], r["run_id"], r["attempt"]) for r in rows] == [
        ("0001_initial", None, None), ("0001_initial", None, None),
        ("0001_initial", "deploy-42", 1),
    ]
    # Up to date now: a second runner changes nothing and still records its run.
    repo.table("users", "0002_more", "more_t", down="0001_initial")
    assert repo.cli("migrate").code == 0
    latest = json.loads(repo.cli("history", "--json").stdout)[-1]
    assert latest["revision"] == "0002_more" and latest["run_id"] not in (None, "deploy-42")
