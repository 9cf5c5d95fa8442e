"""validate: checksum drift, vanished files, graph problems, missing functions and
version-table clashes, each named with service, revision and file; and its exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from monorepo import Monorepo

from ncm_migrate.findings import Finding, Report


def _validate(repo: Monorepo, *args: str) -> tuple[int, list[dict[str, Any]]]:
    result = repo.cli("validate", "--json", *args)
    assert "Traceback" not in result.output
    data = json.loads(result.stdout)
    assert data["ok"] is (result.code == 0)
    return result.code, data["findings"]


def _rules(findings: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(f["service"], f["revision"], f["rule"]) for f in findings}


def _two_revisions(repo: Monorepo, url: str) -> Path:
    repo.table("users", "0001_initial", "users_t")
    path = repo.table("users", "0002_more", "users_more", down="0001_initial")
    repo.settings(f'[development]\ndatabase_url = "{url}"\n')
    return path


def test_edited_applied_revision_is_reported_and_stops_migrate(repo: Monorepo, db_url: str) -> None:
    path = _two_revisions(repo, db_url)
    assert repo.cli("migrate").code == 0
    assert _validate(repo) == (0, [])

    # Whitespace at line ends and line endings do not count as an edit...
    path.write_text(path.read_text().replace("\n", "  \r\n"))
    assert _validate(repo) == (0, [])
    # ...a change of code does.
    path.write_text(path.read_text().replace("'users_more'", "'users_more2'"))
    code, findings = _validate(repo)
    assert code == 1
    assert _rules(findings) == {("users", "0002_more", "checksum-drift")}
    f = findings[0]
    assert f["severity"] == "error" and f["file"] == "services/users/migrations/0002_more.py"
    assert "applied on 20" in f["message"] and "repair users" in f["message"]

    repo.table("users", "0003_next", "users_next", down="0002_more")
    refused = repo.cli("migrate")
    assert refused.code == 1
    assert "users:0002_more" in refused.stderr and "edited after it was applied" in refused.stderr
    status = json.loads(repo.cli("showmigrations", "--json").stdout)
    assert [r["applied"] for r in status["services"][0]["revisions"]] == [True, True, False]


def test_an_applied_requirement_missing_from_its_database_is_an_error(
    repo: Monorepo, db_url: str, tmp_path: Path
) -> None:
    repo.table("users", "0001_initial", "users_t")
    repo.table("billing", "0001_invoices", "billing_t", requires=("users:0001_initial",))

    def users_at(url: str) -> None:
        repo.settings(
            f'[development.services.users]\ndatabase_url = "{url}"\n'
            f'[development.services.billing]\ndatabase_url = "{db_url}"\n'
            'version_table = "alembic_version_billing"\n'
        )

    users_at(db_url)
    assert repo.cli("migrate").code == 0
    assert _validate(repo) == (0, [])
    users_at(f"sqlite:///{tmp_path / 'empty.db'}")  # users now points at an empty database
    for args in ((), ("billing",)):  # validating billing alone reads users' state too
        code, findings = _validate(repo, *args)
        assert code == 1
        assert _rules(findings) == {("billing", "0001_invoices", "requirement-missing")}
        message = findings[0]["message"]
        assert "billing:0001_invoices is applied but users:0001_initial" in message
        assert "migrate users" in message and "services.users.database_url" in message
        assert findings[0]["file"] == "services/billing/migrations/0001_invoices.py"
    assert repo.cli("migrate", "users").code == 0
    assert _validate(repo) == (0, [])


def test_vanished_applied_file_is_reported(repo: Monorepo, sqlite_url: str) -> None:
    path = _two_revisions(repo, sqlite_url)
    assert repo.cli("migrate").code == 0
    path.unlink()
    code, findings = _validate(repo)
    assert code == 1
    assert _rules(findings) == {("users", "0002_more", "missing-file")}
    assert "file is gone" in findings[0]["message"]


def test_named_service_limits_the_report(repo: Monorepo, sqlite_url: str) -> None:
    _two_revisions(repo, sqlite_url)
    repo.revision("billing", "0001_initial", upgrade="pass")  # no downgrade problem here
    path = repo.root / "services/billing/migrations/0001_initial.py"
    path.write_text(path.read_text().replace("def downgrade() -> None:\n    pass\n", ""))
    code, findings = _validate(repo)
    assert code == 1 and _rules(findings) == {("billing", "0001_initial", "missing-function")}
    assert "downgrade()" in findings[0]["message"]
    assert _validate(repo, "users") == (0, [])
    unknown = repo.cli("validate", "nobody")
    assert unknown.code == 2 and "Unknown service 'nobody'" in unknown.stderr


def test_cycle_and_missing_revision_are_findings_and_exit_2(repo: Monorepo, sqlite_url: str) -> None:
    repo.table("users", "0001_initial", "users_t", requires=["billing:0001"])
    repo.table("billing", "0001_initial", "invoices", requires=["users:0001"])
    repo.table("billing", "0002_more", "more", down="0001_nothere")
    repo.settings(f'[development]\ndatabase_url = "{sqlite_url}"\n')
    code, findings = _validate(repo)
    assert code == 2
    rules = {f["rule"] for f in findings}
    assert rules == {"cycle", "missing-revision"}
    cycle = next(f for f in findings if f["rule"] == "cycle")
    assert "billing:0001_initial" in cycle["message"] and "users:0001_initial" in cycle["message"]
    missing = next(f for f in findings if f["rule"] == "missing-revision")
    assert (missing["service"], missing["revision"]) == ("billing", "0002_more")
    assert "0001_nothere" in missing["message"] and missing["line"] == 4
    # Text output names them too, and migrate agrees that this is bad input.
    text = repo.cli("validate")
    assert text.code == 2 and "cycle" in text.stdout and "0001_nothere" in text.stdout
    assert repo.cli("migrate").code == 2


def test_migrate_and_validate_read_a_reference_alike(repo: Monorepo, sqlite_url: str) -> None:
    """`depends_on = ":0001_initial"` names no service: validate once read it (`rpartition`)
    as the revision's own service and found nothing wrong, while migrate (`split`) refused
    it. One builder and one reader of references: both refuse it, in the same words."""
    repo.table("users", "0001_initial", "users_t")
    repo.table("users", "0002_more", "more", down="0001_initial", depends_on=[":0001_initial"])
    repo.settings(f'[development]\ndatabase_url = "{sqlite_url}"\n')
    code, findings = _validate(repo)
    assert code == 2
    assert _rules(findings) == {("users", "0002_more", "missing-revision")}
    message = findings[0]["message"]
    assert "depends_on ':0001_initial'" in message
    refused = repo.cli("migrate")
    assert refused.code == 2 and message in refused.stderr


def test_validate_lists_every_graph_problem_and_migrate_stops_at_the_first(
    repo: Monorepo, sqlite_url: str
) -> None:
    repo.table("users", "0001_initial", "users_t")
    repo.table("users", "0002_more", "more", down="0001_nothere")
    repo.table("users", "0003_next", "next", down="0002_more", requires=["billing:0009"])
    repo.table("billing", "0001_initial", "invoices", depends_on=["0000_gone"])
    repo.settings(f'[development]\ndatabase_url = "{sqlite_url}"\n')
    code, findings = _validate(repo)
    assert code == 2
    missing = sorted((f["service"], f["revision"]) for f in findings if f["rule"] == "missing-revision")
    assert missing == [("billing", "0001_initial"), ("users", "0002_more"), ("users", "0003_next")]
    refused = repo.cli("migrate")
    assert refused.code == 2
    said = [f["message"] for f in findings if f["message"] in refused.stderr]
    assert len(said) == 1, refused.stderr


def test_duplicate_ids_and_malformed_files_exit_2(repo: Monorepo, sqlite_url: str) -> None:
    repo.table("users", "0001_initial", "users_t")
    repo.write("services/users/migrations/0001_copy.py",
               (repo.root / "services/users/migrations/0001_initial.py").read_text())
    repo.write("services/users/migrations/0002_broken.py", "revision = '0002'\ndef upgrade(:\n")
    repo.settings(f'[development]\ndatabase_url = "{sqlite_url}"\n')
    code, findings = _validate(repo)
    assert code == 2
    assert {(f["rule"], f["file"]) for f in findings} == {
        ("duplicate-revision", "services/users/migrations/0001_initial.py"),
        ("malformed-revision", "services/users/migrations/0002_broken.py"),
    }


def test_an_applied_file_with_a_syntax_error_is_one_finding_and_read_only_commands_go_on(
    repo: Monorepo, sqlite_url: str
) -> None:
    path = _two_revisions(repo, sqlite_url)
    repo.table("billing", "0001_initial", "invoices", requires=["users:0002"])
    assert repo.cli("migrate").code == 0
    path.write_text(path.read_text().replace("def upgrade() -> None:", "def upgrade( -> None:"))

    # validate: the syntax error, not also "its file is gone" for the same revision.
    code, findings = _validate(repo)
    assert code == 2
    assert _rules(findings) == {("users", "0002_more", "malformed-revision")}
    assert "syntax error" in findings[0]["message"]
    # lint: the unreadable file is a finding, not "OK: 0 errors".
    linted = repo.cli("lint", "--json")
    assert linted.code == 2
    assert [(f["rule"], f["file"]) for f in json.loads(linted.stdout)["findings"]] == [
        ("malformed-revision", "services/users/migrations/0002_more.py")
    ]
    assert "OK" not in repo.cli("lint").stdout
    # doctor: every service, the broken one with its error; history: the ledger rows.
    doctor = repo.cli("doctor", "--json")
    assert doctor.code == 1, doctor.output
    found = {d["service"]: d for d in json.loads(doctor.stdout)}
    assert found["billing"]["reachable"] and found["billing"]["error"] is None
    assert found["billing"]["pending"] == 0 and found["billing"]["heads"] == ["0001_initial"]
    assert found["users"]["reachable"] and "0002_more.py" in found["users"]["error"]
    history = repo.cli("history", "users", "--json")
    assert history.code == 0, history.output
    assert [r["revision"] for r in json.loads(history.stdout)] == ["0001_initial", "0002_more"]
    assert "cannot be read" in history.stderr
    # Commands that change a database still refuse the project.
    assert repo.cli("migrate").code == 2

    # A file that no longer says which revision it holds: still only its own finding.
    path.write_text("this is not Python\n")
    code, findings = _validate(repo)
    assert code == 2 and _rules(findings) == {("users", "", "malformed-revision")}


def test_forked_heads_are_an_error(repo: Monorepo, sqlite_url: str) -> None:
    repo.table("users", "0001_initial", "users_t")
    repo.table("users", "0002_a", "a", down="0001_initial")
    repo.table("users", "0002_b", "b", down="0001_initial")
    repo.settings(f'[development]\ndatabase_url = "{sqlite_url}"\n')
    code, findings = _validate(repo)
    assert code == 1
    assert [f["rule"] for f in findings] == ["multiple-heads"]
    assert "0002_a, 0002_b" in findings[0]["message"] and "--merge" in findings[0]["message"]
    # one rule: migrate and makemigrations refuse in the words validate reports
    for args in (("migrate",), ("makemigrations", "users", "--empty", "-m", "more")):
        refused = repo.cli(*args)
        assert refused.code == 1 and findings[0]["message"] in refused.stderr, refused.stderr


@pytest.mark.parametrize(
    ("users_url", "billing_url"),
    [
        ("sqlite:///{db}", "sqlite+pysqlite:///{db}"),
        ("postgresql+psycopg://app@localhost/shop", "postgresql://app@127.0.0.1:5432/shop"),
        ("mysql+pymysql://root@localhost/shop", "mariadb+pymysql://root@[::1]:3306/shop"),
    ],
)
def test_version_table_clash_of_differently_spelled_urls(
    repo: Monorepo, tmp_path: Path, users_url: str, billing_url: str
) -> None:
    """One rule, in settings: validate and migrate both refuse (exit 2), before any
    database is touched, two spellings of one database that share a version table."""
    db = tmp_path / "shared.sqlite"
    repo.table("users", "0001_initial", "users_t")
    repo.table("billing", "0001_initial", "invoices")
    repo.settings(f"""
        [development.services.users]
        database_url = "{users_url.format(db=db)}"
        [development.services.billing]
        database_url = "{billing_url.format(db=db)}"
    """)
    for command in ("validate", "migrate"):
        result = repo.cli(command)
        assert result.code == 2, result.output
        assert "services 'billing' and 'users' share one database" in result.stderr.lower()
        assert "alembic_version_users" in result.stderr
    assert not db.exists()


def test_warnings_pass_unless_strict(repo: Monorepo, sqlite_url: str) -> None:
    repo.table("users", "0001_initial", "users_t")
    repo.revision("users", "0002_drop", down="0001_initial", upgrade="op.drop_table('users_t')")
    repo.settings(f'[development]\ndatabase_url = "{sqlite_url}"\n')
    code, findings = _validate(repo)
    assert code == 0 and [f["rule"] for f in findings] == ["drop-table"]
    assert _validate(repo, "--strict")[0] == 1


def test_report_exit_codes() -> None:
    def finding(rule: str, severity: str = "error") -> Finding:
        return Finding("s", "r", rule, severity, "m", "f")  # type: ignore[arg-type]

    assert Report.of([]).exit_code == 0
    assert Report.of([finding("drop-table", "warning")]).exit_code == 0
    assert Report.of([finding("drop-table", "warning")], strict=True).exit_code == 1
    assert Report.of([finding("checksum-drift")]).exit_code == 1
    assert Report.of([finding("checksum-drift"), finding("cycle")]).exit_code == 2


@pytest.mark.parametrize("command", ["validate", "check"])
def test_help(command: str) -> None:
    result = Monorepo(Path.cwd()).cli(command, "--help")
    assert result.code == 0 and "Example:" in result.stdout and "--json" in result.stdout


# -- revisions that cannot be imported ----------------------------------------------------


@pytest.mark.parametrize(
    ("code", "says"),
    [
        ("import module_that_does_not_exist", "ModuleNotFoundError: No module named"),
        ("raise SystemExit(0)", "SystemExit: 0"),
        ("raise KeyboardInterrupt", "KeyboardInterrupt"),
        ("1 / 0", "ZeroDivisionError: division by zero"),
    ],
)
def test_a_revision_that_cannot_be_imported_is_a_finding(
    repo: Monorepo, sqlite_url: str, code: str, says: str
) -> None:
    _two_revisions(repo, sqlite_url)
    path = repo.table("users", "0003_broken", "broken", down="0002_more", extra=code)
    line = path.read_text().splitlines().index(code) + 1
    status, findings = _validate(repo)
    assert status == 1
    assert _rules(findings) == {("users", "0003_broken", "import-error")}
    f = findings[0]
    assert f["severity"] == "error" and says in f["message"], f
    assert (f["file"], f["line"]) == ("services/users/migrations/0003_broken.py", line)
    text = repo.cli("validate")
    assert text.code == 1 and f"0003_broken.py:{line}" in text.stdout
    # migrate --sql and sqlmigrate name the import error, not "reads data".
    for command in (("migrate", "--sql"), ("sqlmigrate", "users", "0003")):
        result = repo.cli(*command)
        assert result.code == 2, result.output
        assert "Traceback" not in result.output and "reads data" not in result.output
        assert "0003_broken.py" in result.stderr and "cannot be imported" in result.stderr
        assert says in result.stderr
