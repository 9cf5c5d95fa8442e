"""drift: a live database compared with the schema its applied revisions give, built on a
scratch database (always dropped); hand-made changes found on SQLite, PostgreSQL and
MariaDB, the live database only read, and MongoDB's collections, indexes and validators."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from monorepo import Monorepo
from scratch_dbs import assert_dropped, fingerprint, servers

from ncm_migrate.backends.mongo import backend as mongo_backend
from ncm_migrate.schemas import Difference, Schema, compare_schemas, new_differences

SHOP_UP = """
op.create_table(
    'customers',
    sa.Column('id', sa.Integer, primary_key=True),
    sa.Column('name', sa.String(50), nullable=False),
    sa.Column('email', sa.String(100), nullable=True),
    sa.Column('status', sa.String(10), nullable=False, server_default='new'),
    sa.UniqueConstraint('email', name='uq_customers_email'),
    sa.CheckConstraint("status <> ''", name='ck_customers_status'),
)
op.create_index('ix_customers_name', 'customers', ['name'])
"""
SHOP_DOWN = "op.drop_index('ix_customers_name', table_name='customers')\nop.drop_table('customers')"
ORDERS_UP = """
op.create_table(
    'orders',
    sa.Column('id', sa.Integer, primary_key=True),
    sa.Column('customer_id', sa.Integer, sa.ForeignKey('customers.id', name='fk_orders_customer'),
              nullable=False),
)
"""


def shop(repo: Monorepo, url: str) -> Monorepo:
    repo.urls({"shop": url})
    repo.revision("shop", "0001_customers", upgrade=SHOP_UP, downgrade=SHOP_DOWN)
    repo.revision("shop", "0002_orders", down="0001_customers", upgrade=ORDERS_UP,
                  downgrade="op.drop_table('orders')")
    migrated = repo.cli("migrate")
    assert migrated.code == 0, migrated.output
    return repo


def by_hand(url: str, change: Callable[[Operations], None]) -> None:
    """A change made on the live database outside any revision."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            change(Operations(MigrationContext.configure(conn)))
    finally:
        engine.dispose()


def drift_json(repo: Monorepo, *args: str) -> tuple[int, list[dict[str, Any]]]:
    result = repo.cli("drift", "--json", *args)
    assert "Traceback" not in result.output
    return result.code, json.loads(result.stdout)["findings"]


def add_column(op: Operations) -> None:
    op.add_column("customers", sa.Column("note", sa.String(20), nullable=True))


def drop_index(op: Operations) -> None:
    op.drop_index("ix_customers_name", table_name="customers")


def change_type(op: Operations) -> None:
    with op.batch_alter_table("customers") as batch:
        batch.alter_column("name", type_=sa.String(80), existing_type=sa.String(50),
                           existing_nullable=False)


def test_a_clean_database_has_no_drift(repo: Monorepo, db_url: str, scratches: list[str]) -> None:
    shop(repo, db_url)
    before, listed = fingerprint(db_url), servers(db_url)
    code, findings = drift_json(repo)
    assert (code, findings) == (0, [])
    assert fingerprint(db_url) == before
    assert_dropped(scratches, db_url, listed)
    text = repo.cli("drift", "shop")
    assert text.code == 0 and "OK: 0 errors" in text.stdout


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (add_column, {"object": "table customers / column note", "expected": None}),
        (drop_index, {"object": "table customers / index ix_customers_name", "actual": None}),
    ],
    ids=["column-added", "index-dropped"],
)
def test_a_change_by_hand_is_reported_and_the_live_database_left_alone(
    repo: Monorepo, db_url: str, scratches: list[str],
    change: Callable[[Operations], None], expected: dict[str, Any],
) -> None:
    shop(repo, db_url)
    by_hand(db_url, change)
    before, listed = fingerprint(db_url), servers(db_url)
    code, findings = drift_json(repo, "shop")
    assert code == 1
    assert len(findings) == 1, findings
    found = findings[0]
    assert (found["service"], found["rule"], found["severity"]) == ("shop", "drift", "error")
    assert {k: found[k] for k in expected} == expected
    assert (found["expected"] or found["actual"]) and found["object"] in found["message"]
    assert found["file"] == "services/shop/migrations"
    assert fingerprint(db_url) == before  # read only
    assert_dropped(scratches, db_url, listed)


def test_a_type_changed_by_hand_is_reported(repo: Monorepo, db_url: str, scratches: list[str]) -> None:
    shop(repo, db_url)
    by_hand(db_url, change_type)
    before = fingerprint(db_url)
    code, findings = drift_json(repo)
    assert code == 1
    name = [f for f in findings if f["object"] == "table customers / column name"]
    assert len(name) == 1, findings
    assert "50" in name[0]["expected"] and "NOT NULL" in name[0]["expected"]
    assert "80" in name[0]["actual"]
    assert fingerprint(db_url) == before


def test_only_applied_revisions_are_expected(repo: Monorepo, sqlite_url: str, scratches: list[str]) -> None:
    """A revision on disk but not applied is not drift: the scratch database stops where
    the live one stands."""
    shop(repo, sqlite_url)
    repo.revision("shop", "0003_notes", down="0002_orders",
                  upgrade="op.create_table('notes', sa.Column('id', sa.Integer, primary_key=True))",
                  downgrade="op.drop_table('notes')")
    assert drift_json(repo) == (0, [])
    by_hand(sqlite_url, lambda op: op.drop_table("orders"))
    code, findings = drift_json(repo)
    assert code == 1
    assert {f["object"] for f in findings} >= {"table orders", "table orders / column id"}
    assert all(f["actual"] is None for f in findings)


def test_check_drift_adds_the_findings_to_check(
    repo: Monorepo, sqlite_url: str, scratches: list[str]
) -> None:
    shop(repo, sqlite_url)
    assert repo.cli("check", "--drift").code == 0
    by_hand(sqlite_url, drop_index)
    result = repo.cli("check", "--drift", "--json")
    assert result.code == 1
    assert [f["rule"] for f in json.loads(result.stdout)["findings"]] == ["drift"]
    assert repo.cli("check").code == 0  # without --drift the live schema is not compared


def test_drift_findings_in_the_ci_formats(repo: Monorepo, sqlite_url: str) -> None:
    """The same finding as SARIF (rule with help text) and as a GitHub workflow command."""
    shop(repo, sqlite_url)
    by_hand(sqlite_url, drop_index)
    sarif = repo.cli("drift", "--format", "sarif")
    assert sarif.code == 1
    run = json.loads(sarif.stdout)["runs"][0]
    assert [r["id"] for r in run["tool"]["driver"]["rules"]] == ["drift"]
    assert "applied revisions" in run["tool"]["driver"]["rules"][0]["help"]["text"]
    assert [r["ruleId"] for r in run["results"]] == ["drift"]
    assert "index ix_customers_name" in run["results"][0]["message"]["text"]
    github = repo.cli("drift", "--format", "github")
    assert github.code == 1 and github.stdout.startswith("::error ")
    assert "index ix_customers_name" in github.stdout


def test_scratch_database_dropped_when_the_revisions_fail_on_it(
    repo: Monorepo, db_url: str, scratches: list[str]
) -> None:
    """A revision that fails only on the scratch database: an error naming it, no traceback,
    and the scratch database dropped all the same."""
    shop(repo, db_url)
    repo.revision(
        "shop", "0003_fragile", down="0002_orders",
        upgrade="if 'ncm_scratch_' in str(op.get_bind().engine.url):\n    raise RuntimeError('boom')",
    )
    assert repo.cli("migrate").code == 0
    listed = servers(db_url)
    result = repo.cli("drift")
    assert result.code == 1, result.output
    assert "0003_fragile" in result.stderr and "boom" in result.stderr
    assert "scratch database" in result.stderr
    assert "Traceback" not in result.output
    assert_dropped(scratches, db_url, listed)


def test_services_sharing_a_database_each_answer_for_their_own_tables(
    repo: Monorepo, sqlite_url: str
) -> None:
    """shop and audit share one database: a change to audit's table is audit's drift, and
    a table nobody's revisions made is the drift of the first service selected."""
    repo.settings(f"""
        [development.services.shop]
        database_url = "{sqlite_url}"
        [development.services.audit]
        database_url = "{sqlite_url}"
        version_table = "alembic_version_audit"
    """)
    repo.revision("shop", "0001_customers", upgrade=SHOP_UP, downgrade=SHOP_DOWN)
    repo.revision("audit", "0001_events", upgrade=(
        "op.create_table('events', sa.Column('id', sa.Integer, primary_key=True), "
        "sa.Column('kind', sa.String(20)))\nop.create_index('ix_events_kind', 'events', ['kind'])"),
        downgrade="op.drop_table('events')")
    assert repo.cli("migrate").code == 0
    assert drift_json(repo) == (0, [])  # each other's tables and version tables are expected
    by_hand(sqlite_url, lambda op: op.drop_index("ix_events_kind", table_name="events"))
    by_hand(sqlite_url, lambda op: op.create_table("stray", sa.Column("id", sa.Integer)))
    _, findings = drift_json(repo)
    assert {(f["service"], f["object"]) for f in findings} == {
        ("audit", "table events / index ix_events_kind"),
        ("audit", "table stray"), ("audit", "table stray / column id"),
    }
    _, shop_only = drift_json(repo, "shop")
    assert {(f["service"], f["object"]) for f in shop_only} == {
        ("shop", "table stray"), ("shop", "table stray / column id"),
    }


def test_a_redis_service_has_no_schema_to_compare(repo: Monorepo, sqlite_url: str) -> None:
    shop(repo, sqlite_url)
    repo.urls({"shop": sqlite_url, "cache": "redis://127.0.0.1:6379/0"})
    repo.service("cache")
    named = repo.cli("drift", "cache")
    assert named.code == 2 and "redis service" in named.stderr and "Traceback" not in named.output
    assert drift_json(repo) == (0, [])  # every service: the SQL one compared, Redis left out


def test_unknown_service_is_bad_input(repo: Monorepo, sqlite_url: str) -> None:
    shop(repo, sqlite_url)
    result = repo.cli("drift", "nosuch")
    assert result.code == 2 and "nosuch" in result.stderr and "Traceback" not in result.output


# -- MongoDB ---------------------------------------------------------------------------

MONGO_UP = """
db.create_collection('events', validator={'$jsonSchema': {'required': ['kind']}})
db.events.create_index('kind', name='ix_kind')
"""


def test_mongo_collections_indexes_and_validators(repo: Monorepo, mongo_url: str) -> None:
    repo.urls({"feed": mongo_url})
    repo.mongo_revision("feed", "0001_events", upgrade=MONGO_UP, downgrade="db.drop_collection('events')")
    assert repo.cli("migrate").code == 0
    assert drift_json(repo) == (0, [])

    client = mongo_backend.client_factory(mongo_url, 5.0)
    db = client[mongo_url.rsplit("/", 1)[1]]
    db.events.drop_index("ix_kind")
    db.events.create_index("at", name="ix_at")
    db.command({"collMod": "events", "validator": {"$jsonSchema": {"required": ["at"]}}})
    db.create_collection("stray")
    names_before = set(client.list_database_names())
    code, findings = drift_json(repo)
    assert code == 1
    objects = {f["object"]: (f["expected"], f["actual"]) for f in findings}
    assert objects["collection events / index ix_kind"][1] is None
    assert objects["collection events / index ix_at"][0] is None
    assert objects["collection stray"] == (None, "collection")
    expected, actual = objects["collection events / validator"]
    assert expected is not None and "kind" in expected and actual is not None and "at" in actual
    assert set(client.list_database_names()) == names_before  # the scratch database is gone
    assert "ix_kind" not in db.events.index_information()  # nothing put back: read only


# -- the comparison, in memory ---------------------------------------------------------


def test_compare_schemas_names_missing_unexpected_and_changed_objects() -> None:
    want = Schema.of({"table t": "table", "table t / column a": "INTEGER NOT NULL",
                      "table t / index ix": "(a)"})
    have = Schema.of({"table t": "table", "table t / column a": "BIGINT NOT NULL",
                      "table t / column b": "TEXT NULL"})
    assert compare_schemas(want, have) == [
        Difference("table t / column a", "INTEGER NOT NULL", "BIGINT NOT NULL"),
        Difference("table t / column b", None, "TEXT NULL"),
        Difference("table t / index ix", "(a)", None),
    ]
    assert compare_schemas(want, want) == []
    left = [Difference("table t / index ix", "(a)", None)]
    assert new_differences(left, compare_schemas(want, have)) == [
        Difference("table t / column a", "INTEGER NOT NULL", "BIGINT NOT NULL"),
        Difference("table t / column b", None, "TEXT NULL"),
    ]
