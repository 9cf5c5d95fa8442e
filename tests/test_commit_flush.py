"""PostgreSQL: a run's steps commit without waiting for their WAL flush, then one flush.

Each step still commits on its own with its version and ledger rows; before `apply`
returns, a transaction holding a transaction id commits synchronously, which flushes every
earlier commit, so a finished (or failed) run is as durable as before. A step that only
moves the version row writes it and its ledger row in one statement.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from monorepo import Monorepo, version_heads

from ncm_migrate import commands
from ncm_migrate.errors import MigrationFailed

OFF = "SET synchronous_commit TO OFF"
ON = "SET synchronous_commit TO ON"
FLUSH = "SELECT txid_current()"


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


def inserts_ledger_row(statement: str) -> bool:
    """A ledger insert, alone or with the step's version-table update (a CTE)."""
    return "INSERT INTO ncm_migrations" in statement


def flush_wait_per_step(seen: list[str]) -> list[bool]:
    """For each step's ledger insert, in order: whether its commit waits for the flush."""
    waits = True
    out = []
    for statement in seen:
        if statement in (OFF, ON):
            waits = statement == ON
        elif inserts_ledger_row(statement):
            out.append(waits)
    return out


def flushed_at_the_end(seen: list[str]) -> bool:
    """After the last ledger insert: flush waits back on, and a transaction id committed."""
    last = max(i for i, s in enumerate(seen) if inserts_ledger_row(s))
    tail = seen[last:]
    return ON in tail and tail.index(ON) < tail.index(FLUSH) < tail.index("COMMIT", tail.index(FLUSH))


def test_postgres_steps_skip_the_flush_wait_and_the_run_flushes_once(
    repo: Monorepo, pg_url: str
) -> None:
    three_steps(repo, pg_url)
    with statements() as seen:
        result = commands.migrate(root=repo.root)
    assert result.ok, result.report.error
    assert flush_wait_per_step(seen) == [False, False, False]
    assert flushed_at_the_end(seen)
    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT revision, status FROM ncm_migrations ORDER BY id").all()
        head = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    engine.dispose()
    assert rows == [("0001_a", "applied"), ("0002_b", "applied"), ("0003_c", "applied")]
    assert head == "0003_c"


def test_a_failed_run_is_flushed_too(repo: Monorepo, pg_url: str) -> None:
    three_steps(repo, pg_url)
    repo.revision("users", "0004_boom", down="0003_c", upgrade="raise RuntimeError('boom')")
    with statements() as seen, pytest.raises(MigrationFailed, match="boom"):
        commands.migrate(root=repo.root)
    assert flush_wait_per_step(seen) == [False, False, False, False]
    assert flushed_at_the_end(seen)


def test_a_single_step_commits_as_usual(repo: Monorepo, pg_url: str) -> None:
    repo.table("users", "0001_a", "t_a")
    repo.urls({"users": pg_url})
    with statements() as seen:
        assert commands.migrate(root=repo.root).ok
    assert flush_wait_per_step(seen) == [True]
    assert OFF not in seen


def test_sqlite_never_sees_the_postgres_setting(repo: Monorepo, sqlite_url: str) -> None:
    three_steps(repo, sqlite_url)
    with statements() as seen:
        assert commands.migrate(root=repo.root).ok
    assert OFF not in seen and FLUSH not in seen


def test_a_step_that_moves_the_version_row_writes_it_with_its_ledger_row(
    repo: Monorepo, pg_url: str
) -> None:
    """0001 starts the version table (Alembic inserts its row, then the ledger row);
    0002 and 0003 each move it in one statement with their ledger rows, up and down."""
    three_steps(repo, pg_url)
    with statements() as seen:
        assert commands.migrate(root=repo.root).ok
    writes = [s for s in seen if inserts_ledger_row(s)]
    assert ["UPDATE alembic_version" in s for s in writes] == [False, True, True]
    assert not any(s.lstrip().startswith("UPDATE alembic_version") for s in seen)
    assert version_heads(pg_url) == {"0003_c"}
    with statements() as seen:
        assert commands.migrate(["users"], "0001_a", root=repo.root).ok
    assert ["UPDATE alembic_version" in s for s in seen if inserts_ledger_row(s)] == [True, True]
    assert version_heads(pg_url) == {"0001_a"}
    with statements() as seen:
        assert commands.migrate(["users"], "zero", root=repo.root).ok
    assert version_heads(pg_url) == set()  # the last row deleted by Alembic, as it would


def test_sqlite_moves_the_version_row_with_one_statement_compiled_once(
    repo: Monorepo, sqlite_url: str
) -> None:
    """No CTE with an INSERT there: the same parametrized UPDATE for every plain step (not
    one with the ids as literals, compiled per step), then the ledger row."""
    three_steps(repo, sqlite_url)
    with statements() as seen:
        assert commands.migrate(root=repo.root).ok
    moves = [s for s in seen if s.lstrip().startswith("UPDATE alembic_version")]
    assert len(moves) == 2 and len(set(moves)) == 1 and "0002_b" not in moves[0]
    assert version_heads(sqlite_url) == {"0003_c"}
