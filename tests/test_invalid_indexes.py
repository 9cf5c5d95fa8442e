"""CREATE INDEX CONCURRENTLY recovery on PostgreSQL (issue 15): a concurrent unique index
over duplicate values fails and leaves an INVALID index; migrate says so, `doctor` and
`validate` report it, `repair` drops it (concurrently), and running the revision again
drops and builds it afresh.
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from monorepo import Monorepo

from ncm_migrate.backends.sql.invalid_indexes import named_indexes
from ncm_migrate.discovery import read_revision

CONCURRENT = """
with op.get_context().autocommit_block():
    op.create_index('ix_codes_code', 'codes', ['code'], unique=True,
                    postgresql_concurrently=True)
"""


def _repo(repo: Monorepo, url: str) -> None:
    repo.revision("shop", "0001_codes", upgrade="""
        op.create_table('codes', sa.Column('id', sa.Integer, primary_key=True),
                        sa.Column('code', sa.Text))
        op.execute("INSERT INTO codes (id, code) VALUES (1, 'a'), (2, 'a'), (3, 'b')")
    """)
    repo.revision("shop", "0002_unique", down="0001_codes", upgrade=CONCURRENT,
                  downgrade="op.drop_index('ix_codes_code', 'codes')",
                  extra='statement_timeout = "0"\n')
    repo.urls({"shop": url})


def _index(url: str) -> bool | None:
    """Whether ix_codes_code is valid (None: there is none)."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(
                "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE c.relname = 'ix_codes_code'")).scalar()
    finally:
        engine.dispose()


def _dedupe(url: str) -> None:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM codes WHERE id = 2")
    engine.dispose()


def test_failed_concurrent_index_is_reported_and_repair_drops_it(repo: Monorepo, pg_url: str) -> None:
    _repo(repo, pg_url)
    failed = repo.cli("migrate", "shop")
    assert failed.code == 1
    err = " ".join(failed.stderr.split())
    assert "INVALID index ix_codes_code" in err and "manage.py repair shop" in err, err
    assert _index(pg_url) is False

    doctor = repo.cli("doctor")
    assert "ix_codes_code (shop:0002_unique)" in " ".join(doctor.stderr.split()), doctor.output
    assert json.loads(repo.cli("doctor", "--json").stdout)[0]["invalid_indexes"] == [
        "ix_codes_code (shop:0002_unique)"]
    validate = repo.cli("validate", "--json")
    assert validate.code == 1
    hits = [f for f in json.loads(validate.stdout)["findings"] if f["rule"] == "invalid-index"]
    assert [h["revision"] for h in hits] == ["0002_unique"]

    repaired = repo.cli("repair", "shop")
    assert repaired.code == 0 and "dropped the INVALID index ix_codes_code" in repaired.stdout
    assert _index(pg_url) is None
    assert not [f for f in json.loads(repo.cli("validate", "--json").stdout)["findings"]
                if f["rule"] == "invalid-index"]

    _dedupe(pg_url)
    assert repo.cli("migrate", "shop").code == 0
    assert _index(pg_url) is True


def test_running_the_revision_again_drops_and_rebuilds_the_invalid_index(
    repo: Monorepo, pg_url: str
) -> None:
    _repo(repo, pg_url)
    assert repo.cli("migrate", "shop").code == 1
    assert _index(pg_url) is False
    _dedupe(pg_url)
    # Without repair: "relation ix_codes_code already exists" unless it is dropped first.
    again = repo.cli("migrate", "shop")
    assert again.code == 0, again.output
    assert _index(pg_url) is True


def test_indexes_a_revision_names_are_read_from_its_text(repo: Monorepo) -> None:
    path = repo.revision("shop", "0001_x", upgrade="""
        op.create_index('ix_one', 't', ['a'], postgresql_concurrently=True)
        op.create_index(index_name='ix_two', table_name='t', columns=['b'])
        op.execute('CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS "ix_three" ON t (c)')
        op.execute("create index ix_four on t (d)")
    """)
    assert named_indexes(read_revision("shop", path)) == {"ix_one", "ix_two", "ix_three", "ix_four"}
