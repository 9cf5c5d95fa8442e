"""migrate, rollback, targets, zero, fake, plan and sql on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import json

from monorepo import Monorepo, ledger, tables, version_heads


def two_services(repo: Monorepo, url: str) -> None:
    """users: 0001 -> 0002; billing: 0001 (requires users:0002)."""
    repo.table("users", "0001_initial", "users_t")
    repo.table("users", "0002_more", "users_more", down="0001_initial")
    repo.table("billing", "0001_initial", "invoices", requires=["users:0002"])
    repo.settings(f'''
        [development]
        database_url = "{url}"
    ''')


def three_revisions(repo: Monorepo, url: str) -> None:
    """users: 0001 (t1) -> 0002 (t2) -> 0003 (t3), alone on its database."""
    repo.table("users", "0001_one", "t1")
    repo.table("users", "0002_two", "t2", down="0001_one")
    repo.table("users", "0003_three", "t3", down="0002_two")
    repo.urls({"users": url})


def applied(repo: Monorepo, service: str = "users") -> list[str]:
    status = json.loads(repo.cli("showmigrations", service, "--json").stdout)
    return [r["revision"] for r in status["services"][0]["revisions"] if r["applied"]]


def test_migrate_applies_everything_in_order(repo: Monorepo, db_url: str) -> None:
    two_services(repo, db_url)
    result = repo.cli("migrate", "--plan", "--json")
    steps = json.loads(result.stdout)["steps"]
    assert [(s["service"], s["revision"]) for s in steps] == [
        ("users", "0001_initial"),
        ("users", "0002_more"),
        ("billing", "0001_initial"),
    ]
    result = repo.cli("migrate")
    assert result.code == 0, result.output
    assert {"users_t", "users_more", "invoices", "ncm_migrations"} <= tables(db_url)
    status = json.loads(repo.cli("showmigrations", "--json").stdout)
    assert all(r["applied"] for s in status["services"] for r in s["revisions"])
    again = repo.cli("migrate")
    assert again.code == 0 and "Nothing to do" in again.stdout


def test_shared_database_keeps_one_version_table_per_service(repo: Monorepo, db_url: str) -> None:
    two_services(repo, db_url)
    assert repo.cli("migrate").code == 0
    # The single `database_url` shortcut: each service gets alembic_version_<svc>, which
    # plain Alembic reads as that service's current revision.
    assert version_heads(db_url, "alembic_version_users") == {"0002_more"}
    assert version_heads(db_url, "alembic_version_billing") == {"0001_initial"}
    assert "alembic_version" not in tables(db_url)


def test_plan_changes_nothing(repo: Monorepo, db_url: str) -> None:
    three_revisions(repo, db_url)
    result = repo.cli("migrate", "--plan")
    assert result.code == 0, result.output
    assert "up   users:0001_one" in result.stdout and "users:0003_three" in result.stdout
    assert not {"t1", "t2", "t3"} & tables(db_url)
    assert version_heads(db_url) == set()


def test_target_forwards_then_backwards_then_zero(repo: Monorepo, db_url: str) -> None:
    three_revisions(repo, db_url)
    assert repo.cli("migrate", "users", "0002").code == 0
    assert {"t1", "t2"} <= tables(db_url) and "t3" not in tables(db_url)
    assert version_heads(db_url) == {"0002_two"}
    assert applied(repo) == ["0001_one", "0002_two"]

    assert repo.cli("migrate", "users", "head").code == 0
    assert "t3" in tables(db_url)

    plan = json.loads(repo.cli("migrate", "users", "0001_one", "--plan", "--json").stdout)
    assert [(s["revision"], s["direction"]) for s in plan["steps"]] == [
        ("0003_three", "down"), ("0002_two", "down"),
    ]
    back = repo.cli("migrate", "users", "0001_one")
    assert back.code == 0, back.output
    assert "t1" in tables(db_url) and not {"t2", "t3"} & tables(db_url)
    assert version_heads(db_url) == {"0001_one"}

    assert repo.cli("migrate", "users", "zero").code == 0
    assert not {"t1", "t2", "t3"} & tables(db_url)
    assert version_heads(db_url) == set()
    statuses = [(r["revision"], r["direction"], r["status"]) for r in ledger(db_url, "users")]
    assert statuses == [
        ("0001_one", "up", "applied"), ("0002_two", "up", "applied"),
        ("0003_three", "up", "applied"),
        ("0003_three", "down", "reverted"), ("0002_two", "down", "reverted"),
        ("0001_one", "down", "reverted"),
    ]


def test_rollback_steps_and_target(repo: Monorepo, db_url: str) -> None:
    three_revisions(repo, db_url)
    assert repo.cli("migrate").code == 0
    one = repo.cli("rollback", "users")
    assert one.code == 0, one.output
    assert version_heads(db_url) == {"0002_two"} and "t3" not in tables(db_url)
    two = repo.cli("rollback", "users", "--steps", "2")
    assert two.code == 0, two.output
    assert version_heads(db_url) == set() and not {"t1", "t2"} & tables(db_url)
    assert repo.cli("migrate").code == 0
    to = repo.cli("rollback", "users", "0001")
    assert to.code == 0, to.output
    assert version_heads(db_url) == {"0001_one"}
    both = repo.cli("rollback", "users", "0001", "--steps", "1")
    assert both.code == 2 and "either" in both.stderr


def test_fake_records_without_running(repo: Monorepo, db_url: str) -> None:
    three_revisions(repo, db_url)
    result = repo.cli("migrate", "users", "0002", "--fake")
    assert result.code == 0, result.output
    assert not {"t1", "t2"} & tables(db_url)
    assert version_heads(db_url) == {"0002_two"}
    assert [r["status"] for r in ledger(db_url, "users")] == ["faked", "faked"]
    # The rest applies for real on top of the faked state.
    assert repo.cli("migrate").code == 0
    assert "t3" in tables(db_url) and "t1" not in tables(db_url)
    # Faking backwards removes the version without running downgrade().
    assert repo.cli("migrate", "users", "0002", "--fake").code == 0
    assert "t3" in tables(db_url) and version_heads(db_url) == {"0002_two"}


def test_sql_prints_without_running(repo: Monorepo, db_url: str) -> None:
    three_revisions(repo, db_url)
    assert repo.cli("migrate", "users", "0001").code == 0
    result = repo.cli("migrate", "--sql")
    assert result.code == 0, result.output
    text = result.stdout.upper()
    assert "CREATE TABLE T2" in text and "CREATE TABLE T3" in text
    assert "CREATE TABLE T1" not in text  # already applied
    assert "UPDATE ALEMBIC_VERSION" in text
    assert not {"t2", "t3"} & tables(db_url)
    assert version_heads(db_url) == {"0001_one"}

    back = repo.cli("migrate", "users", "zero", "--sql")
    assert back.code == 0, back.output
    assert "DROP TABLE T1" in back.stdout.upper() and "t1" in tables(db_url)


def test_sqlmigrate_renders_one_revision(repo: Monorepo, db_url: str) -> None:
    three_revisions(repo, db_url)
    up = repo.cli("sqlmigrate", "users", "0002")
    assert up.code == 0, up.output
    assert "CREATE TABLE t2" in up.stdout and "t1" not in up.stdout
    down = repo.cli("sqlmigrate", "users", "0002_two", "--backwards")
    assert down.code == 0, down.output
    assert "DROP TABLE t2" in down.stdout
    assert "ncm_migrations" not in tables(db_url)  # no database was touched
    assert repo.cli("sqlmigrate", "users", "0009").code == 2


def test_sqlmigrate_of_a_revision_that_reads_data_is_one_sentence(
    repo: Monorepo, sqlite_url: str
) -> None:
    repo.table("users", "0001_one", "t1")
    repo.revision("users", "0002_reads", down="0001_one",
                  upgrade="op.get_bind().execute(sa.text('SELECT 1')).scalar().bit_length()")
    repo.urls({"users": sqlite_url})
    result = repo.cli("sqlmigrate", "users", "0002")
    assert result.code == 1 and "Traceback" not in result.output
    message = " ".join(result.stderr.split())
    assert message.startswith("Error: Revision users:0002_reads cannot be rendered as SQL")
    assert message.count(". ") == 0 and "`migrate -v` shows its SQL" in message


def test_history_rows(repo: Monorepo, db_url: str) -> None:
    three_revisions(repo, db_url)
    assert repo.cli("migrate").code == 0
    assert repo.cli("rollback", "users").code == 0
    rows = json.loads(repo.cli("history", "--json").stdout)
    assert [(r["revision"], r["direction"], r["status"]) for r in rows] == [
        ("0001_one", "up", "applied"), ("0002_two", "up", "applied"),
        ("0003_three", "up", "applied"), ("0003_three", "down", "reverted"),
    ]
    first = rows[0]
    assert set(first) >= {
        "id", "service", "revision", "direction", "status", "checksum", "started_at",
        "finished_at", "duration_ms", "actor", "host", "environment", "tool_version",
    }
    assert first["service"] == "users" and first["environment"] == "development"
    assert len(first["checksum"]) == 64 and first["finished_at"] and first["duration_ms"] >= 0
    latest = json.loads(repo.cli("history", "users", "--json", "--limit", "2").stdout)
    assert [(r["revision"], r["direction"]) for r in latest] == [
        ("0003_three", "up"), ("0003_three", "down"),
    ]
    table = repo.cli("history", "users")
    assert table.code == 0 and "0003_three" in table.stdout and "reverted" in table.stdout


def test_showmigrations_text(repo: Monorepo, db_url: str) -> None:
    three_revisions(repo, db_url)
    assert repo.cli("migrate", "users", "0001").code == 0
    text = repo.cli("showmigrations").stdout
    assert " [X] 0001_one" in text and " [ ] 0002_two" in text and "2 pending" in text
    assert repo.cli("status").stdout == text


def test_migrate_sql_renders_what_it_can_and_names_what_needs_a_database(
    repo: Monorepo, sqlite_url: str
) -> None:
    repo.table("users", "0001_a", "users_a")
    repo.revision("users", "0002_data", down="0001_a", migration_type="data",
                  upgrade="op.get_bind().execute(sa.text('SELECT 1')).all()")
    repo.table("users", "0003_c", "users_c", down="0002_data")
    repo.urls({"users": sqlite_url})
    result = repo.cli("migrate", "--sql")
    assert result.code == 1
    assert "CREATE TABLE users_a" in result.stdout and "CREATE TABLE users_c" in result.stdout
    assert "users:0002_data is not rendered" in result.stdout
    assert "users:0002_data" in result.stderr
