"""check: validate plus pending revisions, dirty marks and models.py changes, for CI."""

from __future__ import annotations

import json
import textwrap
from typing import Any

import sqlalchemy as sa
from monorepo import Monorepo


def _check(repo: Monorepo, *args: str) -> tuple[int, set[tuple[str, str]], dict[str, Any]]:
    result = repo.cli("check", "--json", *args)
    assert "Traceback" not in result.output
    data = json.loads(result.stdout)
    assert data["ok"] is (result.code == 0)
    return result.code, {(f["service"], f["rule"]) for f in data["findings"]}, data


def _repo(repo: Monorepo, url: str) -> None:
    repo.table("users", "0001_initial", "users_t")
    repo.table("billing", "0001_initial", "invoices", requires=["users:0001"])
    repo.settings(f'[development]\ndatabase_url = "{url}"\n')


def test_check_exit_codes(repo: Monorepo, db_url: str) -> None:
    _repo(repo, db_url)
    # Nothing applied yet: pending is an error in CI.
    code, rules, _ = _check(repo)
    assert code == 1 and rules == {("users", "pending"), ("billing", "pending")}
    assert repo.cli("migrate").code == 0
    assert _check(repo)[:2] == (0, set())
    text = repo.cli("check")
    assert text.code == 0 and "OK: 0 errors, 0 warnings" in text.stdout

    # A warning alone passes, unless --strict.
    repo.revision("users", "0002_drop", down="0001_initial", upgrade="op.drop_table('users_t')")
    assert repo.cli("migrate", "users").code == 0
    code, rules, data = _check(repo)
    assert code == 0 and rules == {("users", "drop-table")}
    assert data["findings"][0]["severity"] == "warning"
    assert _check(repo, "--strict")[0] == 1

    # An edited applied revision fails the check.
    path = repo.root / "services/billing/migrations/0001_initial.py"
    path.write_text(path.read_text().replace("'invoices'", "'invoices2'"))
    code, rules, _ = _check(repo)
    assert code == 1 and ("billing", "checksum-drift") in rules


def test_dirty_service_fails_check(repo: Monorepo, sqlite_url: str) -> None:
    _repo(repo, sqlite_url)
    assert repo.cli("migrate").code == 0
    engine = sa.create_engine(sqlite_url)
    with engine.begin() as conn:  # a runner that died mid-step leaves a `running` row
        conn.execute(sa.text(
            "INSERT INTO ncm_migrations (service, revision, direction, status, started_at, actor, "
            "host, environment, tool_version) VALUES ('users', '0002_x', 'up', 'running', "
            "CURRENT_TIMESTAMP, 'a', 'h', 'development', '0')"
        ))
    engine.dispose()
    code, rules, data = _check(repo)
    assert code == 1 and rules == {("users", "dirty")}
    assert "repair users" in data["findings"][0]["message"]


def test_cycle_is_bad_input(repo: Monorepo, sqlite_url: str) -> None:
    repo.table("users", "0001_initial", "users_t", requires=["billing:0001"])
    repo.table("billing", "0001_initial", "invoices", requires=["users:0001"])
    repo.settings(f'[development]\ndatabase_url = "{sqlite_url}"\n')
    code, rules, _ = _check(repo)
    assert code == 2 and ("billing", "cycle") in rules


def test_models_changes_fail_check(repo: Monorepo, sqlite_url: str) -> None:
    _repo(repo, sqlite_url)
    assert repo.cli("migrate").code == 0
    repo.write("services/users/models.py", textwrap.dedent("""
        import sqlalchemy as sa

        metadata = sa.MetaData()
        users_t = sa.Table("users_t", metadata, sa.Column("id", sa.Integer, primary_key=True))
        extra = sa.Table("extra", metadata, sa.Column("id", sa.Integer, primary_key=True))
    """))
    code, rules, data = _check(repo)
    assert code == 1 and rules == {("users", "models-changed")}, data
    finding = data["findings"][0]
    assert finding["file"] == "services/users/models.py" and "makemigrations users" in finding["message"]


def test_a_service_left_out_is_named_once(repo: Monorepo, sqlite_url: str) -> None:
    repo.table("users", "0001_initial", "users_t")
    repo.table("mail", "0001_initial", "outbox")
    repo.urls({"users": sqlite_url})
    assert repo.cli("migrate").code == 0
    result = repo.cli("check")
    assert result.code == 0, result.output
    assert result.stderr.count("skipping service 'mail'") == 1


def test_many_pending_revisions_are_counted_in_run_order(repo: Monorepo, sqlite_url: str) -> None:
    """A count and the first five in the order they run, whatever their ids sort as (hash
    ids here, in reverse order of the chain): one line however many there are."""
    ids = [f"{n:x}" * 12 for n in range(15, 3, -1)]  # fffff..., eeeee..., ..., 44444...
    for i, rev in enumerate(ids):
        repo.revision("users", rev[:12], down=ids[i - 1][:12] if i else None)
    repo.settings(f'[development]\ndatabase_url = "{sqlite_url}"\n')
    code, rules, data = _check(repo)
    assert code == 1 and rules == {("users", "pending")}
    message = data["findings"][0]["message"]
    first = ", ".join(r[:12] for r in ids[:5])
    assert message == f"12 revisions not applied yet: {first} and 7 more; run `manage.py migrate`"
    assert data["findings"][0]["revision"] == ids[0][:12]
