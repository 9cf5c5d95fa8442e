"""Reading services' states: several at once (`read_jobs`), each from a few ledger rows
chosen in the server (each revision's latest row that applied, reverted or faked it, and
the latest row of all), which must give the state every row of the ledger gives."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from monorepo import Monorepo

from ncm_migrate import ledger as ledger_rules
from ncm_migrate import planning
from ncm_migrate.backends.sql.bookkeeping import LEDGER, service_state
from ncm_migrate.errors import DatabaseUnreachable
from ncm_migrate.model import ServiceConfig, ServiceState

REVISIONS = ("0001", "0002", "0003", "0004")
ROWS = [(d, s) for d in ("up", "down") for s in ledger_rules.STATUSES]


def _history(rng: random.Random) -> list[dict[str, object]]:
    rows = []
    for _ in range(rng.randint(1, 25)):
        direction, status = rng.choice(ROWS)
        for service in ("users", "billing"):  # another service's rows must not count
            rows.append(dict(
                service=service, revision=rng.choice(REVISIONS), direction=direction,
                status=status, checksum=f"{rng.randrange(16**8):08x}",
                started_at=datetime.now(UTC), actor="t", host="t", environment="test",
                tool_version="0",
            ))
    return rows


@pytest.mark.parametrize("transactional", [True, False])
def test_state_from_chosen_rows_is_the_state_from_every_row(
        db_url: str, transactional: bool) -> None:
    engine = sa.create_engine(db_url)
    rng = random.Random(20261207)
    try:
        with engine.connect() as conn:
            LEDGER.create(conn)
            conn.commit()
            for _ in range(40):
                conn.execute(LEDGER.delete())
                history = _history(rng)
                conn.execute(LEDGER.insert(), history)
                conn.commit()
                every = [ledger_rules.StateRow(str(r["revision"]), str(r["direction"]),
                                               str(r["status"]), str(r["checksum"]))
                         for r in history if r["service"] == "users"]
                state = service_state(conn, "alembic_version", "users", {}, transactional)
                assert state.dirty == ledger_rules.dirty_mark(every, transactional)
                assert dict(state.checksums) == ledger_rules.applied_checksums(every)
    finally:
        with engine.begin() as conn:
            LEDGER.drop(conn, checkfirst=True)
        engine.dispose()


def _two_services(repo: Monorepo, read_jobs: int) -> None:
    repo.table("users", "0001_initial", "users_t")
    repo.table("billing", "0001_initial", "billing_t")
    repo.settings(f"[development]\nread_jobs = {read_jobs}\n"
                  '[development.services.users]\ndatabase_url = "sqlite:///var/u.db"\n'
                  '[development.services.billing]\ndatabase_url = "sqlite:///var/b.db"\n')


def test_states_are_read_at_once(repo: Monorepo, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each read waits for the other at a barrier: read one after another, the first
    would wait alone and break it."""
    _two_services(repo, read_jobs=8)
    both = threading.Barrier(2, timeout=60)
    real = planning.read_state

    def meeting(*args: Any) -> ServiceState:
        both.wait()
        return real(*args)

    monkeypatch.setattr(planning, "read_state", meeting)
    result = repo.cli("showmigrations", "--json")
    assert result.code == 0, result.output
    assert both.n_waiting == 0 and not both.broken


def test_read_jobs_1_reads_one_after_another(repo: Monorepo, monkeypatch: pytest.MonkeyPatch) -> None:
    _two_services(repo, read_jobs=1)
    threads: set[str] = set()
    real = planning.read_state

    def where(*args: Any) -> ServiceState:
        threads.add(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(planning, "read_state", where)
    assert repo.cli("showmigrations").code == 0
    assert threads == {threading.main_thread().name}


def test_the_first_failing_service_in_order_is_the_error(
        repo: Monorepo, monkeypatch: pytest.MonkeyPatch) -> None:
    _two_services(repo, read_jobs=8)
    real = planning.read_state

    def failing(config: ServiceConfig, *args: Any) -> ServiceState:
        if config.name in ("billing", "users"):
            raise DatabaseUnreachable(f"Service '{config.name}' unreachable (test).")
        return real(config, *args)

    monkeypatch.setattr(planning, "read_state", failing)
    result = repo.cli("showmigrations")
    assert result.code == 4 and "Service 'billing' unreachable" in result.stderr
