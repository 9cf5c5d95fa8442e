"""Undoing a deploy: `rollback --last-run` and `rollback --run ID` revert exactly what one
run applied, across services and newest first, leaving earlier runs' work in place (the
schemas compared by SQLAlchemy inspection); `history --run`; an unknown run is exit 2. On
SQLite, PostgreSQL and MariaDB, each service in a database of its own, and MongoDB next to
SQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import MYSQL_ADMIN, PG_ADMIN, _fresh_database
from monorepo import Monorepo, ledger, version_heads
from test_graph import graph, keys, rev

from ncm_migrate.graph import plan_downgrade
from ncm_migrate.ledger import applied_by_run, last_run
from ncm_migrate.model import LedgerRow, RevisionKey

SERVICES = ("users", "billing")
Schema = dict[str, object]


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A fresh database for each service, dropped afterwards."""
    if request.param == "sqlite":
        yield {name: f"sqlite:///{tmp_path / f'{name}.sqlite'}" for name in SERVICES}
        return
    server, admin, quote, drop = {
        "postgresql": ("PostgreSQL", PG_ADMIN, '"', " WITH (FORCE)"),
        "mysql": ("MariaDB", MYSQL_ADMIN, "`", ""),
    }[request.param]
    made = [_fresh_database(server, admin, quote, drop) for _ in SERVICES]
    try:
        yield {name: next(db) for name, db in zip(SERVICES, made, strict=True)}
    finally:
        for db in made:
            next(db, None)  # drops it


def schema(url: str) -> Schema:
    """Every table but the ledger and version tables: columns, indexes, foreign keys and
    unique constraints, as SQLAlchemy's inspector reads them."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        insp = sa.inspect(engine)
        out: Schema = {}
        for table in sorted(insp.get_table_names()):
            if table == "ncm_migrations" or table.startswith("alembic_version"):
                continue
            out[table] = (
                [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(table)],
                sorted((i["name"] or "", tuple(i["column_names"])) for i in insp.get_indexes(table)),
                sorted((tuple(f["constrained_columns"]), f["referred_table"])
                       for f in insp.get_foreign_keys(table)),
                sorted(tuple(u["column_names"]) for u in insp.get_unique_constraints(table)),
            )
        return out
    finally:
        engine.dispose()


def schemas(urls: dict[str, str]) -> dict[str, Schema]:
    return {name: schema(url) for name, url in urls.items()}


def first_run(repo: Monorepo, urls: dict[str, str], extra: str = "") -> None:
    """Run A's revisions: one table per service."""
    repo.table("users", "0001_a", "users_a")
    repo.table("billing", "0001_a", "billing_a")
    repo.urls(urls, extra=extra)


def second_run(repo: Monorepo) -> None:
    """Run B's revisions, two per service:

    users:   0001_a -> 0002_b -> 0003_c
                         ^
                         | requires
    billing: 0001_a -> 0002_b -> 0003_c
    """
    repo.revision(
        "users", "0002_b", down="0001_a",
        upgrade="op.add_column('users_a', sa.Column('email', sa.String(50), nullable=True))\n"
                "op.create_index('ix_users_a_email', 'users_a', ['email'])",
        downgrade="op.drop_index('ix_users_a_email', table_name='users_a')\n"
                  "with op.batch_alter_table('users_a') as batch_op:\n"
                  "    batch_op.drop_column('email')",
    )
    repo.revision(
        "users", "0003_c", down="0002_b",
        upgrade="op.create_table('users_c', sa.Column('id', sa.Integer, primary_key=True),\n"
                "                sa.Column('a_id', sa.Integer, sa.ForeignKey('users_a.id')))",
        downgrade="op.drop_table('users_c')",
    )
    repo.revision(
        "billing", "0002_b", down="0001_a", requires=["users:0002_b"],
        upgrade="op.add_column('billing_a', sa.Column('total', sa.Integer, nullable=True))",
        downgrade="with op.batch_alter_table('billing_a') as batch_op:\n"
                  "    batch_op.drop_column('total')",
    )
    repo.table("billing", "0003_c", "billing_c", down="0002_b")


def migrate(repo: Monorepo) -> dict[str, object]:
    result = repo.cli("migrate", "--json")
    assert result.code == 0, result.output
    data: dict[str, object] = json.loads(result.stdout)
    return data


def heads(urls: dict[str, str]) -> dict[str, set[str]]:
    return {name: version_heads(url) for name, url in urls.items()}  # a database each: `alembic_version`


def test_rollback_last_run_returns_every_database_to_before_that_run(
    repo: Monorepo, urls: dict[str, str]
) -> None:
    before_a = schemas(urls)
    first_run(repo, urls)
    run_a = migrate(repo)["run_id"]
    after_a = schemas(urls)
    second_run(repo)
    data = migrate(repo)
    run_b = data["run_id"]
    assert isinstance(run_b, str) and run_b != run_a
    applied = [f"{s['service']}:{s['revision']}" for s in data["steps"]]  # type: ignore[attr-defined]
    assert sorted(applied) == ["billing:0002_b", "billing:0003_c", "users:0002_b", "users:0003_c"]
    assert schemas(urls) != after_a

    shown = repo.cli("history", "--run", str(run_b), "--json")
    assert shown.code == 0, shown.output
    rows = json.loads(shown.stdout)
    assert sorted(f"{r['service']}:{r['revision']}" for r in rows) == sorted(applied)
    assert {(r["run_id"], r["direction"], r["status"]) for r in rows} == {(run_b, "up", "applied")}

    undo = repo.cli("rollback", "--last-run", "--json")
    assert undo.code == 0, undo.output
    undone = json.loads(undo.stdout)
    assert undone["reverted_run"] == run_b and undone["ok"] is True
    reverted = [f"{s['service']}:{s['revision']}" for s in undone["steps"]]
    assert reverted == applied[::-1]  # newest first: the reverse of the order run B applied
    assert {s["outcome"] for s in undone["steps"]} == {"reverted"}
    assert schemas(urls) == after_a  # run A's work stays
    assert heads(urls) == {"users": {"0001_a"}, "billing": {"0001_a"}}
    downs = [(r["revision"], r["run_id"]) for name, url in urls.items() for r in ledger(url, name)
             if r["direction"] == "down"]
    assert sorted(downs) == sorted((a.split(":")[1], undone["run_id"]) for a in applied)

    # The newest run that applied something is still B, and nothing of it is left to revert.
    again = repo.cli("rollback", "--last-run")
    assert again.code == 0, again.output
    assert f"Nothing to do: run {run_b} left nothing applied to revert." in again.stdout

    older = repo.cli("rollback", "--run", str(run_a))
    assert older.code == 0, older.output
    assert f"Reverted what run {run_a} applied." in older.stdout  # the text says which run
    assert schemas(urls) == before_a
    assert heads(urls) == {"users": set(), "billing": set()}


def test_rollback_run_for_an_older_run_needs_the_later_run_gone_or_cascade(
    repo: Monorepo, tmp_path: Path
) -> None:
    urls = {name: f"sqlite:///{tmp_path / f'{name}.sqlite'}" for name in SERVICES}
    first_run(repo, urls)
    run_a = str(migrate(repo)["run_id"])
    second_run(repo)
    text = repo.cli("migrate")
    assert text.code == 0, text.output
    run_b = next(line.split()[1] for line in text.stdout.splitlines() if line.startswith("Run "))
    assert f"`manage.py rollback --run {run_b}`" in " ".join(text.stdout.split())
    before = schemas(urls)

    # Run A's revisions are under run B's: refused (exit 1), naming what needs them.
    refused = repo.cli("rollback", "--run", run_a)
    assert refused.code == 1, refused.output
    assert "users:0002_b" in refused.stderr and "--cascade" in refused.stderr
    assert "applied revisions it leaves still need it" in refused.stderr
    # Only one service of run B: billing still requires users:0002_b.
    part = repo.cli("rollback", "users", "--run", run_b)
    assert part.code == 1 and "billing:0002_b" in part.stderr
    assert schemas(urls) == before

    cascade = repo.cli("rollback", "--run", run_a, "--cascade", "--json")
    assert cascade.code == 0, cascade.output
    assert heads(urls) == {"users": set(), "billing": set()}
    assert schemas(urls) == {"users": {}, "billing": {}}


def test_unknown_run_is_exit_2_in_one_sentence(repo: Monorepo, tmp_path: Path) -> None:
    urls = {name: f"sqlite:///{tmp_path / f'{name}.sqlite'}" for name in SERVICES}
    first_run(repo, urls)
    nothing = repo.cli("rollback", "--last-run")
    assert nothing.code == 2, nothing.output
    assert "No run has applied a revision in environment 'development'" in nothing.stderr
    migrate(repo)
    for args in (("rollback", "--run", "20990101T000000Z-abcdef"),
                 ("history", "--run", "20990101T000000Z-abcdef")):
        result = repo.cli(*args)
        assert result.code == 2, result.output
        assert "No run '20990101T000000Z-abcdef' is in the ledgers of" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    for args in (("rollback",), ("rollback", "--run", "x", "--last-run"),
                 ("rollback", "users", "0001_a", "--last-run"), ("rollback", "--last-run", "--steps", "1")):
        assert repo.cli(*args).code == 2
    assert heads(urls) == {"users": {"0001_a"}, "billing": {"0001_a"}}


def test_rollback_of_a_run_is_confirmed_where_protected_and_audited(repo: Monorepo, tmp_path: Path) -> None:
    urls = {name: f"sqlite:///{tmp_path / f'{name}.sqlite'}" for name in SERVICES}
    first_run(repo, urls, extra="protected = true\n")
    run_a = str(migrate(repo)["run_id"])
    refused = repo.cli("rollback", "--last-run")
    assert refused.code == 2, refused.output
    assert heads(urls) == {"users": {"0001_a"}, "billing": {"0001_a"}}
    done = repo.cli("rollback", "--last-run", "--yes", "--json")
    assert done.code == 0, done.output
    undo_id = json.loads(done.stdout)["run_id"]
    assert heads(urls) == {"users": set(), "billing": set()}
    lines = [json.loads(line) for line in (repo.root / "var/audit.jsonl").read_text().splitlines()]
    assert {(e["service"], e["direction"]) for e in lines if e["run_id"] == run_a} == {
        ("users", "up"), ("billing", "up")}
    assert {(e["service"], e["direction"]) for e in lines if e["run_id"] == undo_id} == {
        ("users", "down"), ("billing", "down")}


# -- pure parts: which revisions a run leaves applied, and the order they go back -----


def row(n: int, revision: str, direction: str, status: str, run: str, env: str = "dev") -> LedgerRow:
    return LedgerRow(n, "users", revision, direction, status, None, f"2026-12-07T10:00:0{n}", None,  # type: ignore[arg-type]
                     None, "me", "host", env, "1.0", run_id=run)


def test_applied_by_run_leaves_out_what_a_later_row_reverted() -> None:
    rows = [
        row(1, "0001", "up", "applied", "A"),
        row(2, "0002", "up", "applied", "B"),
        row(3, "0003", "up", "applied", "B"),
        row(4, "0003", "down", "reverted", "C"),  # `rollback users` since
        row(5, "0003", "up", "applied", "D"),  # and applied again by another run
        row(6, "0004", "up", "failed", "B"),
        row(7, "0002", "up", "faked", "E"),  # `repair` re-recording a checksum
    ]
    assert applied_by_run(rows, "B") == ["0002"]
    assert applied_by_run(rows, "D") == ["0003"]
    assert applied_by_run(rows, "C") == []
    assert last_run(rows, "dev") == "D"
    assert last_run(rows, "prod") is None
    assert last_run([row(1, "0001", "up", "applied", "A"), row(2, "0001", "down", "reverted", "Z")],
                    "dev") == "A"


def test_a_run_goes_back_newest_first_where_the_graph_allows() -> None:
    """
    users:   0001 -> 0002
                      ^ requires
    billing: 0001 ----+          shop: 0001

    One run applied users:0001, users:0002, billing:0001, then shop:0001.
    """
    g = graph(rev("users:0001"), rev("users:0002", "0001"), rev("billing:0001", requires=["users:0002"]),
              rev("shop:0001"))
    remove = keys("users:0001", "users:0002", "billing:0001", "shop:0001")
    applied_order = keys_list("users:0001", "users:0002", "billing:0001", "shop:0001")
    steps = plan_downgrade(g, remove, newest_first=applied_order[::-1]).steps
    assert [str(s.key) for s in steps] == ["shop:0001", "billing:0001", "users:0002", "users:0001"]
    # An order the graph does not allow is corrected: children still go before parents.
    steps = plan_downgrade(g, remove, newest_first=applied_order).steps
    assert [str(s.key) for s in steps] == ["billing:0001", "users:0002", "users:0001", "shop:0001"]


def keys_list(*names: str) -> list[RevisionKey]:
    return [RevisionKey(*n.split(":")) for n in names]


def test_rollback_last_run_with_a_mongodb_service_next_to_sql(
    repo: Monorepo, mongo_url: str, tmp_path: Path
) -> None:
    from test_mongo import database

    sql = f"sqlite:///{tmp_path / 'users.sqlite'}"
    repo.table("users", "0001_a", "users_a")
    repo.mongo_revision("events", "0001", upgrade="db.create_collection('e1')",
                        downgrade="db.drop_collection('e1')")
    repo.urls({"users": sql, "events": mongo_url})
    run_a = migrate(repo)["run_id"]
    repo.table("users", "0002_b", "users_b", down="0001_a")
    repo.mongo_revision("events", "0002", down="0001", requires=["users:0002_b"],
                        upgrade="db.create_collection('e2')", downgrade="db.drop_collection('e2')")
    run_b = migrate(repo)["run_id"]
    undo = repo.cli("rollback", "--last-run", "--json")
    assert undo.code == 0, undo.output
    data = json.loads(undo.stdout)
    assert data["reverted_run"] == run_b != run_a
    assert [f"{s['service']}:{s['revision']}" for s in data["steps"]] == ["events:0002", "users:0002_b"]
    assert set(database(mongo_url).list_collection_names()) >= {"e1"}
    assert "e2" not in database(mongo_url).list_collection_names()
    assert set(schema(sql)) == {"users_a"}
    history = json.loads(repo.cli("history", "events", "--run", str(run_b), "--json").stdout)
    assert [(r["revision"], r["direction"]) for r in history] == [("0002", "up")]
