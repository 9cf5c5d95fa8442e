"""One plan across four services on SQLite, PostgreSQL and MariaDB.

    billing (MariaDB)   0001 -> 0002 -> 0003
                                ^
                                | requires
    users (PostgreSQL)  0001 -> 0002 -> 0003

    catalog (SQLite)    0001 -> 0002
                         ^
                         | requires
    orders (SQLite)     0001 -> 0002
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from monorepo import Monorepo

EXPECTED = [
    "billing:0001_a", "users:0001_a", "users:0002_b", "billing:0002_b", "billing:0003_c",
    "catalog:0001_a", "catalog:0002_b", "orders:0001_a", "orders:0002_b", "users:0003_c",
]


def four_services(repo: Monorepo, pg_url: str, mysql_url: str, tmp: Path) -> None:
    for svc in ("billing", "users", "catalog", "orders"):
        repo.table(svc, "0001_a", f"{svc}_a", requires=["catalog:0001"] if svc == "orders" else [])
        repo.table(svc, "0002_b", f"{svc}_b", down="0001_a",
                   requires=["users:0002"] if svc == "billing" else [])
    for svc in ("billing", "users"):
        repo.table(svc, "0003_c", f"{svc}_c", down="0002_b")
    repo.urls({
        "billing": mysql_url,
        "users": pg_url,
        "catalog": f"sqlite:///{tmp / 'catalog.db'}",
        "orders": f"sqlite:///{tmp / 'orders.db'}",
    })


def plan_of(repo: Monorepo, *args: str) -> list[str]:
    result = repo.cli("migrate", "--plan", "--json", *args)
    assert result.code == 0, result.output
    return [f"{s['service']}:{s['revision']}" for s in json.loads(result.stdout)["steps"]]


@pytest.fixture
def four(repo: Monorepo, pg_url: str, mysql_url: str, tmp_path: Path) -> Monorepo:
    four_services(repo, pg_url, mysql_url, tmp_path)
    return repo


def test_plan_interleaves_no_further_than_needed(four: Monorepo) -> None:
    # billing:0002 needs users:0002, so users goes that far first, and its 0003 comes last.
    assert plan_of(four) == EXPECTED


def test_plan_is_deterministic_and_levels_allow_parallel_steps(four: Monorepo) -> None:
    first = four.cli("migrate", "--plan", "--json").stdout
    assert all(four.cli("migrate", "--plan", "--json").stdout == first for _ in range(3))
    steps = json.loads(first)["steps"]
    level = {f"{s['service']}:{s['revision']}": s["level"] for s in steps}
    assert level["billing:0002_b"] > level["users:0002_b"]
    assert level["orders:0001_a"] > level["catalog:0001_a"]
    # independent services start side by side
    assert level["billing:0001_a"] == level["users:0001_a"] == level["catalog:0001_a"] == 0


def test_plan_after_partial_state_starts_where_the_databases_are(four: Monorepo) -> None:
    assert four.cli("migrate", "users", "0001").code == 0
    assert plan_of(four)[:3] == ["billing:0001_a", "users:0002_b", "billing:0002_b"]


def end_state(repo: Monorepo, urls: dict[str, str]) -> dict[str, object]:
    status = json.loads(repo.cli("showmigrations", "--json").stdout)
    state: dict[str, object] = {
        s["name"]: (s["current"], s["pending"]) for s in status["services"]
    }
    for name, url in urls.items():
        engine = sa.create_engine(url)
        with engine.connect() as conn:
            state[f"{name}:tables"] = sorted(sa.inspect(conn).get_table_names())
            rows = conn.execute(sa.text(
                "SELECT service, revision, status FROM ncm_migrations ORDER BY service, revision"
            )).all()
            state[f"{name}:ledger"] = sorted(tuple(r) for r in rows)
        engine.dispose()
    return state


def test_jobs_4_gives_the_same_end_state_as_jobs_1(
    repo: Monorepo, pg_url: str, mysql_url: str, tmp_path: Path
) -> None:
    four_services(repo, pg_url, mysql_url, tmp_path)
    urls = {"pg": pg_url, "my": mysql_url, "catalog": f"sqlite:///{tmp_path / 'catalog.db'}",
            "orders": f"sqlite:///{tmp_path / 'orders.db'}"}
    serial = repo.cli("migrate", "--jobs", "1")
    assert serial.code == 0, serial.output
    state_serial = end_state(repo, urls)
    assert repo.cli("migrate", "users", "zero", "--cascade").code == 0
    for svc in ("orders", "catalog", "billing"):
        assert repo.cli("migrate", svc, "zero").code == 0
    parallel = repo.cli("migrate", "--jobs", "4")
    assert parallel.code == 0, parallel.output
    state_parallel = end_state(repo, urls)
    # the ledgers grew by the round trip, so compare what is applied and the tables
    for key in state_serial:
        if not key.endswith(":ledger"):
            assert state_parallel[key] == state_serial[key], key


def test_cross_service_cycle_is_printed_as_a_path(repo: Monorepo, tmp_path: Path) -> None:
    repo.table("billing", "0001_a", "b1")
    repo.table("billing", "0002_b", "b2", down="0001_a", requires=["users:0002"])
    repo.table("users", "0001_a", "u1", requires=["billing:0002"])
    repo.table("users", "0002_b", "u2", down="0001_a")
    repo.urls({"billing": f"sqlite:///{tmp_path}/b.db", "users": f"sqlite:///{tmp_path}/u.db"})
    result = repo.cli("migrate", "--plan")
    assert result.code == 2
    message = " ".join(result.stderr.split())
    assert "Cycle" in message and " -> " in message
    for node in ("billing:0002_b", "users:0002_b", "users:0001_a"):
        assert node in message


def test_missing_cross_service_requirement(repo: Monorepo, tmp_path: Path) -> None:
    repo.table("billing", "0001_a", "b1", requires=["users:0042"])
    repo.table("users", "0001_a", "u1")
    repo.urls({"billing": f"sqlite:///{tmp_path}/b.db", "users": f"sqlite:///{tmp_path}/u.db"})
    result = repo.cli("migrate")
    assert result.code == 2
    assert "users:0042" in result.stderr and "billing:0001_a" in result.stderr


def test_rollback_is_refused_while_required_then_cascades(four: Monorepo) -> None:
    assert four.cli("migrate").code == 0
    refused = four.cli("rollback", "users", "0001")
    assert refused.code == 1
    assert "billing:0002_b" in refused.stderr and "billing:0003_c" in refused.stderr
    backwards = four.cli("migrate", "users", "0001")
    assert backwards.code == 1 and "billing:0002_b" in backwards.stderr
    cascade = four.cli("rollback", "users", "0001", "--cascade")
    assert cascade.code == 0, cascade.output
    assert "Rolling back" in cascade.stdout
    order = [line.split()[-1] for line in cascade.stdout.splitlines() if "] down" in line]
    assert order == ["billing:0003_c", "billing:0002_b", "users:0003_c", "users:0002_b"]
    status = {s["name"]: s for s in json.loads(four.cli("showmigrations", "--json").stdout)["services"]}
    assert status["users"]["current"] == ["0001_a"]
    assert status["billing"]["current"] == ["0001_a"]
