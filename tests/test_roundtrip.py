"""check --roundtrip: every revision up, down and up again on a scratch database, a
downgrade that does not restore the schema before it named with the difference, one that
raises named with its error; `makemigrations --check-roundtrip` for the new revisions."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest
from monorepo import Monorepo
from scratch_dbs import assert_dropped, fingerprint, servers

from ncm_migrate.backends.mongo import backend as mongo_backend
from ncm_migrate.backends.sql import metadata

CUSTOMERS = ("op.create_table('customers', sa.Column('id', sa.Integer, primary_key=True), "
             "sa.Column('name', sa.String(50), nullable=False))")
INDEX = "op.create_index('ix_customers_name', 'customers', ['name'])"
NOTES = "op.create_table('notes', sa.Column('id', sa.Integer, primary_key=True))"


def history(repo: Monorepo, url: str, index_down: str = "op.drop_index('ix_customers_name', "
            "table_name='customers')", notes_down: str = "op.drop_table('notes')") -> None:
    """customers (0001), its index (0002), notes (0003), applied (`check` fails on a
    pending revision)."""
    repo.urls({"shop": url})
    repo.revision("shop", "0001_customers", upgrade=CUSTOMERS, downgrade="op.drop_table('customers')")
    repo.revision("shop", "0002_index", down="0001_customers", upgrade=INDEX, downgrade=index_down)
    repo.revision("shop", "0003_notes", down="0002_index", upgrade=NOTES, downgrade=notes_down)
    assert repo.cli("migrate").code == 0


def roundtrip(repo: Monorepo, *args: str) -> tuple[int, list[dict[str, Any]]]:
    result = repo.cli("check", "--roundtrip", "--json", *args)
    assert "Traceback" not in result.output
    return result.code, [f for f in json.loads(result.stdout)["findings"] if f["rule"] == "roundtrip"]


def test_revisions_that_undo_themselves_pass(repo: Monorepo, db_url: str, scratches: list[str]) -> None:
    history(repo, db_url)
    listed = servers(db_url)
    assert roundtrip(repo) == (0, [])
    assert_dropped(scratches, db_url, listed)


def test_a_downgrade_that_forgets_an_index_is_named_with_the_difference(
    repo: Monorepo, db_url: str, scratches: list[str]
) -> None:
    history(repo, db_url, index_down="pass")
    before, listed = fingerprint(db_url), servers(db_url)
    code, findings = roundtrip(repo, "shop")
    assert code == 1
    downgrade = [f for f in findings if "its downgrade" in f["message"]]
    assert [(f["revision"], f["object"], f["actual"]) for f in downgrade] == [
        ("0002_index", "table customers / index ix_customers_name", "(name)")
    ]
    assert downgrade[0]["expected"] is None
    assert findings == downgrade  # 0001's downgrade drops the table, and the index with it
    assert fingerprint(db_url) == before  # the service's own database is never changed
    assert_dropped(scratches, db_url, listed)


def test_a_downgrade_that_raises_is_named_with_its_error(
    repo: Monorepo, db_url: str, scratches: list[str]
) -> None:
    history(repo, db_url, notes_down="raise RuntimeError('cannot undo notes')")
    listed = servers(db_url)
    code, findings = roundtrip(repo)
    assert code == 1
    assert [f["revision"] for f in findings] == ["0003_notes"]
    assert findings[0]["file"].endswith("migrations/0003_notes.py")  # where CI annotates it
    assert "cannot undo notes" in findings[0]["message"]
    assert findings[0]["message"].startswith("its downgrade failed")
    assert_dropped(scratches, db_url, listed)


def test_upgrading_again_over_a_leftover_is_named(repo: Monorepo, db_url: str) -> None:
    """0003's downgrade leaves its table: named, and its upgrade after it fails."""
    history(repo, db_url, notes_down="pass")
    code, findings = roundtrip(repo)
    assert code == 1
    assert {f["revision"] for f in findings} == {"0003_notes"}
    left = [f for f in findings if "its downgrade" in f["message"]]
    assert {f["object"] for f in left} >= {"table notes", "table notes / column id"}
    again = [f for f in findings if f not in left]
    assert len(again) == 1 and "upgrading it again" in again[0]["message"]
    assert "failed" in again[0]["message"] and "notes" in again[0]["message"].lower()


def test_text_output_names_revision_and_difference(repo: Monorepo, sqlite_url: str) -> None:
    history(repo, sqlite_url, index_down="pass")
    result = repo.cli("check", "--roundtrip")
    assert result.code == 1
    assert "shop:0002_index" in result.stdout
    assert ("its downgrade does not restore the schema before its upgrade: table customers / "
            "index ix_customers_name: not expected, found (name)") in " ".join(result.stdout.split())


def test_a_later_downgrade_is_not_blamed_for_an_earlier_ones_leftover(
    repo: Monorepo, sqlite_url: str
) -> None:
    """0003 leaves a column behind on a table that 0001 drops: only 0003 is named."""
    repo.urls({"shop": sqlite_url})
    repo.revision("shop", "0001_customers", upgrade=CUSTOMERS, downgrade="op.drop_table('customers')")
    repo.revision("shop", "0002_notes", down="0001_customers", upgrade=NOTES,
                  downgrade="op.drop_table('notes')")
    repo.revision("shop", "0003_email", down="0002_notes",
                  upgrade="op.add_column('customers', sa.Column('email', sa.String(20)))",
                  downgrade="pass")
    assert repo.cli("migrate").code == 0
    code, findings = roundtrip(repo)
    assert code == 1
    assert {f["revision"] for f in findings} == {"0003_email"}


# -- makemigrations --check-roundtrip --------------------------------------------------

MODELS = '''
import sqlalchemy as sa

metadata = sa.MetaData()
customers = sa.Table(
    "customers", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(50), nullable=False),
    sa.Index("ix_customers_name", "name"),
)
'''


@pytest.fixture(autouse=True)
def _fresh_models() -> Iterator[None]:
    metadata._load.cache_clear()
    yield
    metadata._load.cache_clear()


def test_makemigrations_checks_the_new_revisions_only(repo: Monorepo, db_url: str) -> None:
    """An old revision with a faulty downgrade is not the new revision's business."""
    repo.urls({"shop": db_url})
    repo.revision("shop", "0001_notes", upgrade=NOTES, downgrade="pass")
    assert repo.cli("migrate").code == 0
    repo.write("services/shop/models.py", textwrap.dedent(MODELS) + "\n" + textwrap.dedent('''
        notes = sa.Table("notes", metadata, sa.Column("id", sa.Integer, primary_key=True))
    '''))
    result = repo.cli("makemigrations", "-m", "customers", "--check-roundtrip")
    assert result.code == 0, result.output
    assert "0002_customers" in result.stdout and "OK: 0 errors" in result.stdout
    assert repo.cli("migrate").code == 0
    code, findings = roundtrip(repo)  # the whole history does have a faulty downgrade
    assert code == 1 and {f["revision"] for f in findings} == {"0001_notes"}


def test_makemigrations_names_a_new_revision_whose_downgrade_fails(
    repo: Monorepo, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ncm_migrate.backends.sql import autogen

    real = autogen.compare

    def forgetful(*args: Any, **kwargs: Any) -> autogen.Changes:
        changes = real(*args, **kwargs)
        lines = [line.split("batch_op.")[0].split("op.")[0] + "pass" if "drop_index" in line else line
                 for line in changes.downgrades.splitlines()]
        return autogen.Changes(changes.service, changes.upgrades, "\n".join(lines), changes.imports,
                               changes.descriptions, changes.fragments)

    monkeypatch.setattr(autogen, "compare", forgetful)
    repo.urls({"shop": sqlite_url})
    repo.revision("shop", "0001_customers", upgrade=CUSTOMERS, downgrade="op.drop_table('customers')")
    repo.write("services/shop/models.py", textwrap.dedent(MODELS))
    result = repo.cli("makemigrations", "-m", "index", "--check-roundtrip")
    assert result.code == 1, result.output
    assert "shop:0002_index" in result.stdout
    assert "index ix_customers_name" in result.stdout


def test_check_roundtrip_with_dry_run_is_bad_input(repo: Monorepo, sqlite_url: str) -> None:
    repo.urls({"shop": sqlite_url})
    repo.write("services/shop/models.py", textwrap.dedent(MODELS))
    repo.service("shop")
    result = repo.cli("makemigrations", "--check-roundtrip", "--dry-run")
    assert result.code == 2 and "--dry-run" in result.stderr


# -- MongoDB ---------------------------------------------------------------------------


def test_mongo_downgrade_that_forgets_an_index(repo: Monorepo, mongo_url: str) -> None:
    repo.urls({"feed": mongo_url})
    repo.mongo_revision("feed", "0001_events", upgrade="db.create_collection('events')",
                        downgrade="db.drop_collection('events')")
    repo.mongo_revision("feed", "0002_kind", down="0001_events",
                        upgrade="db.events.create_index('kind', name='ix_kind')", downgrade="pass")
    assert repo.cli("migrate").code == 0
    client = mongo_backend.client_factory(mongo_url, 5.0)
    databases = set(client.list_database_names())
    code, findings = roundtrip(repo)
    assert code == 1
    assert [(f["revision"], f["object"]) for f in findings][:1] == [
        ("0002_kind", "collection events / index ix_kind")]
    assert set(client.list_database_names()) == databases
