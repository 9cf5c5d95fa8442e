"""PostgreSQL: every step but a run's last commits without waiting for its WAL flush.

The last commit flushes all earlier ones, so a finished run is as durable as before, and
each step still commits on its own with its version and ledger rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from monorepo import Monorepo

from ncm_migrate import commands

SET_LOCAL = "SET LOCAL synchronous_commit TO OFF"


@contextmanager
def statements() -> Iterator[list[str]]:
    """Every statement and commit sent by any engine, in order."""
    seen: list[str] = []

    def on_execute(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    def on_commit(_conn: Any) -> None:
        seen.append("COMMIT")

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", on_execute)
    sa.event.listen(sa.engine.Engine, "commit", on_commit)
    try:
        yield seen
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", on_execute)
        sa.event.remove(sa.engine.Engine, "commit", on_commit)


def three_steps(repo: Monorepo, url: str) -> None:
    repo.table("users", "0001_a", "t_a")
    repo.table("users", "0002_b", "t_b", down="0001_a")
    repo.table("users", "0003_c", "t_c", down="0002_b")
    repo.urls({"users": url})


def relaxed_per_step(seen: list[str]) -> list[bool]:
    """For each step's ledger insert: whether its transaction turned the flush wait off."""
    out = []
    in_tx: list[str] = []
    for statement in seen:
        if statement == "COMMIT":
            in_tx = []
            continue
        in_tx.append(statement)
        if statement.startswith("INSERT INTO ncm_migrations"):
            out.append(SET_LOCAL in in_tx)
    return out


def test_postgres_relaxes_every_commit_but_the_last(repo: Monorepo, pg_url: str) -> None:
    three_steps(repo, pg_url)
    with statements() as seen:
        result = commands.migrate(root=repo.root)
    assert result.ok, result.report.error
    assert relaxed_per_step(seen) == [True, True, False]
    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT revision, status FROM ncm_migrations ORDER BY id").all()
        head = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    engine.dispose()
    assert rows == [("0001_a", "applied"), ("0002_b", "applied"), ("0003_c", "applied")]
    assert head == "0003_c"


def test_a_single_step_commits_as_usual(repo: Monorepo, pg_url: str) -> None:
    repo.table("users", "0001_a", "t_a")
    repo.urls({"users": pg_url})
    with statements() as seen:
        assert commands.migrate(root=repo.root).ok
    assert relaxed_per_step(seen) == [False]


def test_sqlite_never_sees_the_postgres_setting(repo: Monorepo, sqlite_url: str) -> None:
    three_steps(repo, sqlite_url)
    with statements() as seen:
        assert commands.migrate(root=repo.root).ok
    assert relaxed_per_step(seen) == [False, False, False]
