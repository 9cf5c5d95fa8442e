"""Discovery: services found on disk (flat and nested layouts), revision headers read
without importing them, and every malformed file as one clear error with exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from monorepo import Monorepo, ledger, revision_file, tables

from ncm_migrate.discovery import find_service_dirs, read_revision

NESTED = Path(__file__).parent / "fixtures" / "monorepos" / "nested"


def bad_input(repo: Monorepo, *args: str) -> str:
    """Run a command that must refuse with exit 2 and one sentence; return the sentence."""
    result = repo.cli(*args)
    assert result.code == 2, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def one_service(repo: Monorepo, sqlite_url: str = "sqlite:///var/db.sqlite") -> None:
    repo.table("users", "0001_initial", "users_t")
    repo.urls({"users": sqlite_url})


# -- layouts -----------------------------------------------------------------------------


def test_nested_layout(repo: Monorepo, db_url: str) -> None:
    shutil.copytree(NESTED, repo.root, dirs_exist_ok=True)
    env = {"NCM_DATABASE_URL": db_url}
    found = json.loads(repo.cli("services", "--json", env=env).stdout)
    assert [(s["name"], s["version_table"]) for s in found] == [
        ("billing", "alembic_version_billing"), ("users", "alembic_version_users"),
    ]
    result = repo.cli("migrate", env=env)
    assert result.code == 0, result.output
    assert {"users", "invoices"} <= tables(db_url)
    assert [(r["service"], r["revision"]) for r in ledger(db_url)] == [
        ("users", "0001_initial"), ("users", "0002_add_email"), ("billing", "0001_invoices"),
    ]


def test_flat_glob_does_not_see_nested_services(repo: Monorepo) -> None:
    shutil.copytree(NESTED, repo.root, dirs_exist_ok=True)
    assert [p.name for p in find_service_dirs(repo.root, "services", "*/*")] == ["billing", "users"]
    assert find_service_dirs(repo.root, "services", "*") == []


def test_services_dir_setting(repo: Monorepo) -> None:
    repo.write("apps/orders/migrations/0001_initial.py", "revision = '0001_initial'\n")
    repo.settings('[default]\nservices_dir = "apps"\n')
    found = json.loads(repo.cli("services", "--json").stdout)
    assert [s["name"] for s in found] == ["orders"]


def test_same_name_twice_in_a_nested_layout(repo: Monorepo) -> None:
    repo.write("services/a/users/migrations/0001.py", "revision = '0001'\n")
    repo.write("services/b/users/migrations/0001.py", "revision = '0001'\n")
    repo.settings('[default]\nservices_glob = "*/*"\n')
    message = bad_input(repo, "services")
    assert "'users'" in message and "services/a/users" in message and "services/b/users" in message


@pytest.mark.parametrize("name", ["Billing", "user-service", "2fa", "_private", "s" * 48])
def test_invalid_service_folder_name(repo: Monorepo, name: str) -> None:
    one_service(repo)
    repo.write(f"services/{name}/migrations/0001.py", "revision = '0001'\n")
    message = bad_input(repo, "services")
    assert f"'{name}'" in message and str(repo.root / "services" / name) in message
    assert "[a-z][a-z0-9_]*" in message


def test_folder_without_migrations_is_not_a_service(repo: Monorepo) -> None:
    one_service(repo)
    repo.write("services/Shared-Lib/helpers.py", "X = 1\n")
    found = json.loads(repo.cli("services", "--json").stdout)
    assert [s["name"] for s in found] == ["users"]


def test_classic_layout_skips_env_py_and_mako(repo: Monorepo) -> None:
    repo.write("services/users/migrations/env.py", "raise RuntimeError('never imported')\n")
    repo.write("services/users/migrations/script.py.mako", "${message}\n")
    repo.write("services/users/migrations/versions/abc123_first.py", "revision = 'abc123'\n")
    repo.write("services/users/migrations/versions/__init__.py", "")
    found = json.loads(repo.cli("services", "--json").stdout)
    assert [s["name"] for s in found] == ["users"]
    rev = read_revision("users", repo.root / "services/users/migrations/versions/abc123_first.py")
    assert rev.revision == "abc123" and rev.down_revisions == ()


# -- malformed revision files ------------------------------------------------------------


def test_syntax_error_names_file_and_line(repo: Monorepo) -> None:
    one_service(repo)
    path = repo.write(
        "services/users/migrations/0002_broken.py",
        'revision = "0002_broken"\ndown_revision = "0001_initial"\n\ndef upgrade(:\n    pass\n',
    )
    message = bad_input(repo, "services")
    assert f"{path}:4:" in message and "syntax error" in message and "'users'" in message


def test_missing_revision(repo: Monorepo) -> None:
    one_service(repo)
    path = repo.write("services/users/migrations/0002_nameless.py", 'down_revision = "0001_initial"\n')
    message = bad_input(repo, "services")
    assert str(path) in message and "revision" in message


def test_a_computed_header_that_cannot_be_imported_names_the_file(repo: Monorepo) -> None:
    one_service(repo)
    path = repo.write(
        "services/users/migrations/0002_computed.py",
        'import os\nrevision = os.environ["REV"]\ndown_revision = "0001_initial"\n',
    )
    message = bad_input(repo, "services")
    assert str(path) in message and "revision is not a literal" in message
    assert "KeyError: 'REV'" in message


def test_duplicate_revision_id(repo: Monorepo) -> None:
    one_service(repo)
    path = repo.revision("users", "0002_copy", down="0001_initial")
    path.write_text(path.read_text().replace("revision = '0002_copy'", "revision = '0001_initial'"))
    message = bad_input(repo, "services")
    assert "Duplicate revision id '0001_initial'" in message
    assert "0001_initial.py" in message and "0002_copy.py" in message


def test_down_revision_pointing_nowhere(repo: Monorepo) -> None:
    one_service(repo)
    repo.table("users", "0002_more", "more", down="0001_inital")
    message = bad_input(repo, "services")
    assert "users:0002_more" in message and "down_revision '0001_inital'" in message
    assert "0002_more.py" in message


def test_depends_on_pointing_nowhere(repo: Monorepo) -> None:
    one_service(repo)
    repo.table("users", "0002_more", "more", down="0001_initial", depends_on=["nothere"])
    message = bad_input(repo, "services")
    assert "users:0002_more" in message and "depends_on 'nothere'" in message


@pytest.mark.parametrize(
    ("requires", "says"),
    [
        ("billing:0009", "which does not exist in service 'billing'"),
        ("payments:0001", "there is no service 'payments'"),
        ("billing", "write it as service:revision"),
    ],
)
def test_requires_pointing_nowhere(repo: Monorepo, requires: str, says: str) -> None:
    one_service(repo)
    repo.table("billing", "0001_initial", "invoices")
    repo.table("users", "0002_more", "more", down="0001_initial", requires=[requires])
    message = bad_input(repo, "services")
    assert "users:0002_more" in message and f"'{requires}'" in message and says in message


def test_requires_cycle(repo: Monorepo) -> None:
    repo.table("users", "0001_initial", "users_t", requires=["billing:0001"])
    repo.table("billing", "0001_initial", "invoices", requires=["users:0001"])
    message = bad_input(repo, "services")
    assert "Cycle" in message and "users:0001_initial" in message and "billing:0001_initial" in message


def test_unknown_migration_type(repo: Monorepo) -> None:
    one_service(repo)
    repo.table("users", "0002_more", "more", down="0001_initial", migration_type="ddl")
    message = bad_input(repo, "services")
    assert "0002_more.py" in message and "migration_type" in message and "'ddl'" in message


# -- headers without importing -----------------------------------------------------------


def test_broken_import_still_lists_and_plans(repo: Monorepo, sqlite_url: str, tmp_path: Path) -> None:
    """Listing and planning never import a revision; only applying it does, and fails."""
    marker = tmp_path / "imported"
    repo.table("users", "0001_initial", "users_t")
    repo.table(
        "users", "0002_broken", "broken", down="0001_initial",
        extra=f"open({str(marker)!r}, 'w').close()\nimport module_that_does_not_exist\n",
    )
    repo.urls({"users": sqlite_url})

    assert repo.cli("services").code == 0
    status = repo.cli("showmigrations", "--json")
    assert status.code == 0, status.output
    revs = json.loads(status.stdout)["services"][0]["revisions"]
    assert [r["revision"] for r in revs] == ["0001_initial", "0002_broken"]
    plan = json.loads(repo.cli("migrate", "--plan", "--json").stdout)["steps"]
    assert [s["revision"] for s in plan] == ["0001_initial", "0002_broken"]
    assert not marker.exists()

    result = repo.cli("migrate")
    assert result.code == 2
    assert "0002_broken.py" in result.stderr and "module_that_does_not_exist" in result.stderr
    assert marker.exists()
    # What came before it was applied and recorded as such; the broken one never started.
    assert "users_t" in tables(sqlite_url)
    assert [(r["revision"], r["status"]) for r in ledger(sqlite_url)] == [("0001_initial", "applied")]
    applied = json.loads(repo.cli("showmigrations", "--json").stdout)["services"][0]["revisions"]
    assert [r["applied"] for r in applied] == [True, False]


# -- revision ids ------------------------------------------------------------------------

# Each case: a header line of 0002_bad.py (whose revision is 0002_bad unless the case gives it).
BAD_NAMES = [
    ("revision = \"0002_it's\"", "revision id"),
    ("revision = \"x'||SLEEP(3)||'\"", "revision id"),
    ("revision = \"x'); DROP TABLE users_t; --\"", "revision id"),
    ('revision = "0002-more"', "revision id"),
    ('revision = "0002@more"', "revision id"),
    ('revision = "0002 more"', "revision id"),
    ('revision = "0002_more\\n"', "revision id"),
    (f'revision = "{"a" * 33}"', "revision id"),
    ('revision = "head"', "reserved word"),
    ('revision = "heads"', "reserved word"),
    ('revision = "base"', "reserved word"),
    ('revision = "current"', "reserved word"),
    ('revision = ""', "no `revision"),
    ("down_revision = \"0001_initial'\"", "down_revision"),
    ('down_revision = ("0001_initial", "x SLEEP(3)")', "down_revision"),
    ("depends_on = \"users:0001' OR '1\"", "depends_on"),
    ("depends_on = \"0001'\"", "depends_on"),
    ("requires = [\"users:0001_initial'\"]", "requires"),
    ('branch_labels = ("head",)', "branch_labels"),
    ('branch_labels = ("my-branch",)', "branch_labels"),
]


@pytest.mark.parametrize(("line", "says"), BAD_NAMES)
def test_a_bad_revision_id_is_refused_before_any_database_is_touched(
    repo: Monorepo, tmp_path: Path, line: str, says: str
) -> None:
    db = tmp_path / "never" / "db.sqlite"
    one_service(repo, f"sqlite:///{db}")
    key = line.split(" = ", 1)[0]
    text = revision_file("0002_bad", down="0001_initial")
    lines = [line if ln.startswith(f"{key} = ") else ln for ln in text.splitlines()]
    path = repo.write("services/users/migrations/0002_bad.py", "\n".join(lines) + "\n")
    for command in (("migrate",), ("showmigrations",), ("migrate", "--sql")):
        message = bad_input(repo, *command)
        assert str(path) in message and says in message, message
    assert not db.exists() and not db.parent.exists()


@pytest.mark.parametrize("url_fixture", ["pg_url", "mysql_url"])
def test_an_id_made_to_inject_sql_touches_no_server_database(
    repo: Monorepo, request: pytest.FixtureRequest, url_fixture: str
) -> None:
    url: str = request.getfixturevalue(url_fixture)
    repo.table("users", "0001_initial", "users_t")
    repo.write("services/users/migrations/0002_bad.py", revision_file(
        "x'||SLEEP(3)||'", down="0001_initial", branch_labels=["x"],
    ))
    repo.urls({"users": url})
    message = bad_input(repo, "migrate")
    assert "0002_bad.py" in message and "SLEEP(3)" in message
    assert tables(url) == set()


# -- headers computed at import ------------------------------------------------------------


def _computed(repo: Monorepo, marker: Path) -> Path:
    """0003_computed, whose down_revision and depends_on are expressions; importing it
    appends a line to `marker`."""
    repo.table("users", "0001_initial", "users_t")
    repo.table("users", "0002_more", "more", down="0001_initial")
    text = revision_file(
        "0003_computed", down="0002_more",
        upgrade="op.create_table('computed', sa.Column('id', sa.Integer, primary_key=True))",
        extra=f"with open({str(marker)!r}, 'a') as fh:\n    fh.write('imported\\n')\n",
    )
    text = text.replace("down_revision = '0002_more'", "down_revision = '0002' + '_more'")
    text = text.replace("depends_on = None", "depends_on = tuple(['0001_' + 'initial'])")
    return repo.write("services/users/migrations/0003_computed.py", text)


def test_a_computed_header_is_read_by_importing_that_file_once(
    repo: Monorepo, sqlite_url: str, tmp_path: Path
) -> None:
    marker = tmp_path / "imports"
    path = _computed(repo, marker)
    repo.urls({"users": sqlite_url})

    first = repo.cli("-v", "showmigrations", "--json")
    assert first.code == 0, first.output
    assert f"reading {path}'s header by importing it: down_revision, depends_on are not a literal" \
        in first.stderr
    revs = json.loads(first.stdout)["services"][0]["revisions"]
    assert [r["revision"] for r in revs] == ["0001_initial", "0002_more", "0003_computed"]
    assert marker.read_text() == "imported\n"
    # Cached by the file's contents: the next command does not import it again.
    again = repo.cli("-v", "showmigrations", "--json")
    assert again.code == 0 and "by importing it" not in again.stderr
    assert marker.read_text() == "imported\n"
    assert repo.cli("migrate").code == 0
    assert "computed" in tables(sqlite_url)
    # An edit is read again.
    path.write_text(path.read_text().replace("'0001_' + 'initial'", "'0001' + '_initial'"))
    assert repo.cli("showmigrations").code == 0
    assert marker.read_text().count("imported") == 3  # header, migrate, header again


def test_a_computed_header_that_exits_is_one_error_naming_the_file(repo: Monorepo) -> None:
    repo.table("users", "0001_initial", "users_t")
    text = revision_file("0002_exits", down="0001_initial", extra="import sys\nsys.exit(0)\n")
    text = text.replace("depends_on = None", "depends_on = ('0001' + '_initial',)")
    path = repo.write("services/users/migrations/0002_exits.py", text)
    repo.urls({"users": "sqlite:///var/db.sqlite"})
    message = bad_input(repo, "showmigrations")
    assert str(path) in message and "SystemExit: 0" in message


def test_an_empty_depends_on_means_none(repo: Monorepo, sqlite_url: str) -> None:
    repo.table("users", "0001_initial", "users_t")
    path = repo.table("users", "0002_more", "more", down="0001_initial")
    path.write_text(path.read_text().replace("depends_on = None", 'depends_on = ""'))
    repo.urls({"users": sqlite_url})
    result = repo.cli("migrate")
    assert result.code == 0, result.output
    assert {"users_t", "more"} <= tables(sqlite_url)


# -- one unreadable service --------------------------------------------------------------


@pytest.mark.parametrize(
    "broken",
    [
        "revision = '0002_broken'\ndown_revision = '0001_initial'\ndef upgrade(:\n",
        "revision = \"0002'; --\"\ndown_revision = '0001_initial'\n",
        "import sys\nrevision = '0002_broken'\ndown_revision = '0001_' + sys.argv[99]\n",
    ],
    ids=["syntax-error", "bad-id", "computed-header-raises"],
)
def test_an_unreadable_revision_stops_only_the_services_that_need_it(
    repo: Monorepo, tmp_path: Path, broken: str
) -> None:
    urls = {name: f"sqlite:///{tmp_path / name}.db" for name in ("users", "billing", "orders")}
    repo.table("users", "0001_initial", "users_t")
    path = repo.write("services/users/migrations/0002_broken.py", broken)
    repo.table("billing", "0001_initial", "invoices")
    repo.table("billing", "0002_more", "more", down="0001_initial")
    repo.table("orders", "0001_initial", "orders_t", requires=["users:0001"])
    repo.urls(urls)

    # Commands about billing, which needs nothing of users, go on.
    status = repo.cli("showmigrations", "billing", "--json")
    assert status.code == 0, status.output
    assert [r["revision"] for r in json.loads(status.stdout)["services"][0]["revisions"]] == [
        "0001_initial", "0002_more",
    ]
    assert repo.cli("migrate", "billing", "--plan").code == 0
    assert repo.cli("sqlmigrate", "billing", "0002").code == 0
    migrated = repo.cli("migrate", "billing")
    assert migrated.code == 0, migrated.output
    assert {"invoices", "more"} <= tables(urls["billing"])
    assert repo.cli("history", "billing").code == 0
    assert repo.cli("migrate", "billing", "0001").code == 2  # moving back: see below

    # Commands about users, or about orders (which requires users), or about every
    # service, exit 2 naming the file; no database of theirs is touched.
    for args in (("showmigrations", "users"), ("migrate", "users"), ("migrate",),
                 ("showmigrations",), ("services",)):
        assert str(path) in bad_input(repo, *args)
    message = bad_input(repo, "migrate", "orders")
    assert "'orders' needs service 'users'" in message and str(path) in message
    # Moving any service back needs every service's requirements: refused, saying why.
    message = bad_input(repo, "rollback", "billing")
    assert "whether it requires what would be removed is unknown" in message
    assert str(path) in message
    assert not (tmp_path / "users.db").exists() and not (tmp_path / "orders.db").exists()
    assert {"invoices", "more"} <= tables(urls["billing"])


def test_the_python_api_reads_other_services_past_an_unreadable_one(repo: Monorepo) -> None:
    from ncm_migrate import commands
    from ncm_migrate.errors import RevisionFileError

    repo.write("services/users/migrations/0001_broken.py", "revision = 'head'\n")
    repo.table("billing", "0001_initial", "invoices")
    repo.urls({"users": "sqlite:///var/users.db", "billing": "sqlite:///var/billing.db"})
    plan = commands.plan(["billing"], root=repo.root)
    assert [s.revision for s in plan.steps] == ["0001_initial"]
    with pytest.raises(RevisionFileError, match="reserved word"):
        commands.plan(["users"], root=repo.root)
