"""Maintenance windows: parsing, a fixed clock (never the real time, never sleeping),
destructive revisions deferred outside a window and applied inside, and the exit codes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime

import pytest
from monorepo import Monorepo, tables

import ncm_migrate
from ncm_migrate import windows
from ncm_migrate.errors import ConfirmationRefused, RevisionsDeferred
from ncm_migrate.windows import is_open, next_opening, parse_window

# Saturday 2026-12-12 03:00 UTC is inside "Sat 02:00-04:00 UTC"; Monday noon is not.
INSIDE = datetime(2026, 12, 12, 3, 0, tzinfo=UTC)
OUTSIDE = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def at(moment: datetime) -> windows.Clock:
    return lambda: moment


@pytest.mark.parametrize(("text", "moment", "inside"), [
    ("Sat 02:00-04:00 UTC", datetime(2026, 12, 12, 2, 0, tzinfo=UTC), True),
    ("Sat 02:00-04:00 UTC", datetime(2026, 12, 12, 4, 0, tzinfo=UTC), False),  # end excluded
    ("Sat 02:00-04:00 UTC", datetime(2026, 12, 13, 3, 0, tzinfo=UTC), False),  # Sunday
    ("Sat 23:00-01:00 UTC", datetime(2026, 12, 13, 0, 30, tzinfo=UTC), True),  # crosses midnight
    ("Sat 23:00-01:00 UTC", datetime(2026, 12, 12, 0, 30, tzinfo=UTC), False),  # Friday's night
    ("Mon-Fri 22:00-23:00 UTC", datetime(2026, 12, 9, 22, 30, tzinfo=UTC), True),
    ("Fri-Mon 22:00-23:00 UTC", datetime(2026, 12, 13, 22, 30, tzinfo=UTC), True),  # wraps the week
    ("Sat,Sun 10:00-11:00 UTC", datetime(2026, 12, 13, 10, 0, tzinfo=UTC), True),
    ("daily 02:00-03:00 UTC", datetime(2026, 12, 9, 2, 59, tzinfo=UTC), True),
    # 02:00 in Paris is 01:00 UTC in December (CET) and 00:00 UTC in July (CEST)
    ("Sat 02:00-03:00 Europe/Paris", datetime(2026, 12, 12, 1, 30, tzinfo=UTC), True),
    ("Sat 02:00-03:00 Europe/Paris", datetime(2026, 7, 4, 0, 30, tzinfo=UTC), True),
    ("Sat 02:00-03:00 Europe/Paris", datetime(2026, 12, 12, 2, 30, tzinfo=UTC), False),
])
def test_a_window_contains_what_it_says(text: str, moment: datetime, inside: bool) -> None:
    assert parse_window(text).contains(moment) is inside


@pytest.mark.parametrize(("text", "says"), [
    ("Saturday night", "is not a window"),
    ("Sat 2-4 UTC", "is not a window"),
    ("Sat 02:00-04:00", "is not a window"),
    ("Xyz 02:00-04:00 UTC", "has the days 'Xyz'"),
    ("Sat 24:00-04:00 UTC", "not a 24-hour HH:MM time"),
    ("Sat 02:60-04:00 UTC", "not a 24-hour HH:MM time"),
    ("Sat 02:00-02:00 UTC", "starts and ends at the same time"),
    ("Sat 02:00-04:00 Mars/Olympus", "not an IANA time zone"),
    ("Sat 02:00-04:00 ../../etc/passwd", "not an IANA time zone"),
])
def test_a_bad_window_says_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_window(text)


def test_next_opening() -> None:
    found = [parse_window("Sat 02:00-04:00 UTC"), parse_window("Wed 23:00-01:00 UTC")]
    assert next_opening(found, OUTSIDE) == datetime(2026, 12, 9, 23, 0, tzinfo=UTC)
    assert not is_open(found, OUTSIDE) and is_open(found, INSIDE)
    assert not is_open([], INSIDE)
    assert is_open(found, INSIDE.replace(tzinfo=None))  # a naive time is UTC
    assert next_opening(found, OUTSIDE.replace(tzinfo=None)) == next_opening(found, OUTSIDE)


def _monorepo(repo: Monorepo, url: str, extra: str = "", env: str = "development") -> None:
    """
        users:   0001 create users, legacy -> 0002 drop legacy (destructive) -> 0003 add column
        billing: 0001 create invoices (independent)
                 0002 create payments (requires users:0003)
    """
    repo.settings(f'[{env}]\ndatabase_url = "{url}"\nwindows = ["Sat 02:00-04:00 UTC"]\n{extra}')
    repo.revision("users", "0001", upgrade="""
        op.create_table('users', sa.Column('id', sa.Integer, primary_key=True))
        op.create_table('legacy', sa.Column('id', sa.Integer, primary_key=True))""",
                  downgrade="op.drop_table('legacy')\nop.drop_table('users')")
    repo.revision("users", "0002", down="0001", upgrade="op.drop_table('legacy')",
                  downgrade="op.create_table('legacy', sa.Column('id', sa.Integer, primary_key=True))")
    repo.table("users", "0003", "profiles", down="0002")
    repo.table("billing", "0001", "invoices")
    repo.table("billing", "0002", "payments", down="0001", requires=["users:0003"])


def test_destructive_revisions_wait_outside_a_window(repo: Monorepo, sqlite_url: str) -> None:
    _monorepo(repo, sqlite_url)
    with pytest.raises(RevisionsDeferred) as raised:
        ncm_migrate.migrate(root=repo.root, clock=at(OUTSIDE))
    assert raised.value.exit_code == 1
    deferred = {(d.service, d.revision): d.reason for d in raised.value.deferred}
    assert deferred == {
        ("users", "0002"): "destructive: drop-table",
        ("users", "0003"): "needs users:0002, deferred",
        ("billing", "0002"): "needs users:0003, deferred",
    }
    assert "the next opens Sat 2026-12-12 02:00 UTC" in str(raised.value)
    assert {(r.service, r.revision, r.outcome) for r in raised.value.results} == {
        ("users", "0001", "applied"), ("billing", "0001", "applied"),
    }
    assert tables(sqlite_url) >= {"users", "legacy", "invoices"}
    assert not tables(sqlite_url) & {"profiles", "payments"}

    planned = ncm_migrate.plan(root=repo.root, clock=at(OUTSIDE))
    assert not planned.steps and len(planned.deferred) == 3

    done = ncm_migrate.migrate(root=repo.root, clock=at(INSIDE))
    assert [str(s.key) for s in done.plan.steps] == ["users:0002", "users:0003", "billing:0002"]
    assert done.plan.deferred == ()
    assert "legacy" not in tables(sqlite_url) and {"profiles", "payments"} <= tables(sqlite_url)


def test_allow_deferred_and_now(repo: Monorepo, sqlite_url: str) -> None:
    _monorepo(repo, sqlite_url)
    result = ncm_migrate.migrate(root=repo.root, clock=at(OUTSIDE), allow_deferred=True)
    assert result.ok and len(result.plan.deferred) == 3
    result = ncm_migrate.migrate(root=repo.root, clock=at(OUTSIDE), now=True)
    assert [str(s.key) for s in result.plan.steps] == ["users:0002", "users:0003", "billing:0002"]
    assert "legacy" not in tables(sqlite_url)


def test_window_header_overrides_lint(repo: Monorepo, sqlite_url: str) -> None:
    repo.settings(f'[development]\ndatabase_url = "{sqlite_url}"\nwindows = ["Sat 02:00-04:00 UTC"]\n')
    repo.table("users", "0001", "users", extra="window = True")  # harmless, but asks for one
    repo.revision("users", "0002", down="0001", upgrade="op.drop_table('users')", extra="window = False")
    planned = ncm_migrate.plan(root=repo.root, clock=at(OUTSIDE))
    assert [(d.revision, d.reason) for d in planned.deferred] == [
        ("0001", "declares window = True"), ("0002", "needs users:0001, deferred"),
    ]
    repo.table("users", "0001", "users")
    planned = ncm_migrate.plan(root=repo.root, clock=at(OUTSIDE))
    assert planned.deferred == () and len(planned.steps) == 2


def test_no_windows_means_any_time(repo: Monorepo, sqlite_url: str) -> None:
    repo.settings(f'[development]\ndatabase_url = "{sqlite_url}"\n')
    repo.revision("users", "0001", upgrade="op.drop_table('x')  # ncm: allow drop-table")
    assert ncm_migrate.plan(root=repo.root, clock=at(OUTSIDE)).deferred == ()


def test_cli_exit_codes_plan_and_json(
    repo: Monorepo, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _monorepo(repo, sqlite_url)
    monkeypatch.setattr(windows, "system_clock", at(OUTSIDE))  # the CLI's default clock

    plan = repo.cli("migrate", "--plan")
    assert plan.code == 0
    assert "up   users:0001" in plan.stdout
    assert "Deferred to a maintenance window:" in plan.stdout
    assert "users:0002  (destructive: drop-table)" in plan.stdout
    shown = json.loads(repo.cli("migrate", "--plan", "--json").stdout)
    assert [(d["service"], d["revision"]) for d in shown["deferred"]] == [
        ("users", "0002"), ("users", "0003"), ("billing", "0002")]

    first = repo.cli("migrate")
    assert first.code == 1
    assert "Deferred to a maintenance window (the next opens Sat 2026-12-12 02:00 UTC)" in first.stderr
    assert "Traceback" not in first.output
    second = repo.cli("migrate", "--allow-deferred", "--json")
    assert second.code == 0
    body = json.loads(second.stdout)
    assert body["ok"] is True and len(body["deferred"]) == 3 and body["steps"] == []

    monkeypatch.setattr(windows, "system_clock", at(INSIDE))
    assert repo.cli("migrate").code == 0
    assert "legacy" not in tables(sqlite_url)


def test_now_where_protected_needs_confirmation(repo: Monorepo, sqlite_url: str) -> None:
    _monorepo(repo, sqlite_url, extra="protected = true\n", env="production")
    with pytest.raises(ConfirmationRefused, match="outside a maintenance window"):
        ncm_migrate.migrate(root=repo.root, env="production", clock=at(OUTSIDE), now=True)
    assert "users" not in tables(sqlite_url)
    asked: list[tuple[str, list[str]]] = []

    class Recording:
        def confirm(self, environment: str, service: str, reasons: Sequence[str]) -> None:
            asked.append((service, list(reasons)))

    done = ncm_migrate.migrate(root=repo.root, env="production", clock=at(OUTSIDE), now=True,
                               questioner=Recording())
    assert len(done.plan.steps) == 5 and done.plan.deferred == ()
    # once per service, the window's reasons with the destructive ones
    assert asked == [("users", [
        "applies 0002 (drop-table)",
        "applies 0002 outside a maintenance window (--now; destructive: drop-table)",
    ])]


@pytest.mark.parametrize(("value", "says"), [
    ('["Sat 2-4 UTC"]', "'Sat 2-4 UTC' is not a window"),
    ('"Sat 02:00-04:00 UTC"', "must be a list of windows"),
    ('["Sat 02:00-04:00 Nowhere/Land"]', "not an IANA time zone"),
])
def test_bad_windows_setting_is_exit_2_naming_the_file(
    repo: Monorepo, sqlite_url: str, value: str, says: str
) -> None:
    repo.settings(f'[development]\ndatabase_url = "{sqlite_url}"\nwindows = {value}\n')
    repo.table("users", "0001", "users")
    result = repo.cli("migrate")
    assert result.code == 2
    assert "Setting 'windows'" in result.stderr and "settings.toml" in result.stderr
    assert says in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("value", ["'yes'", "1", "None"])
def test_a_bad_window_header_is_exit_2(repo: Monorepo, sqlite_url: str, value: str) -> None:
    repo.settings(f'[development]\ndatabase_url = "{sqlite_url}"\n')
    repo.table("users", "0001", "users", extra=f"window = {value}")
    result = repo.cli("migrate", "--plan")
    if value == "None":  # the same as no header
        assert result.code == 0, result.output
        return
    assert result.code == 2
    assert "0001.py:" in result.stderr and "window must be True" in result.stderr
