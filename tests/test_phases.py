"""Expand/contract deploys: `phase = "post"` revisions, `migrate --phase pre|post`, the
`contract-in-pre` lint rule, and pending post-deploy revisions shown apart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from monorepo import Monorepo

from ncm_migrate.discovery import read_revision
from ncm_migrate.graph import build_graph, plan_upgrade, upgrade_targets
from ncm_migrate.model import Revision, RevisionKey
from ncm_migrate.phases import phase_findings, select_phase

POST = 'phase = "post"'


def _expand_contract(repo: Monorepo, url: str) -> None:
    """Two services sharing one database, an expand/contract change in each:

        users:   0001 (pre) -> 0002 add full_name (pre) -> 0003 drop name (post)
                                  ^                             ^
        billing: 0001 invoices (pre, requires users:0002) -> 0002 drop note (post,
                                                               requires users:0003)
    """
    repo.settings(f'[development]\ndatabase_url = "{url}"\n')
    repo.revision("users", "0001", upgrade="""
        op.create_table('users', sa.Column('id', sa.Integer, primary_key=True),
                        sa.Column('name', sa.String(50)))""", downgrade="op.drop_table('users')")
    repo.revision("users", "0002", down="0001",
                  upgrade="op.add_column('users', sa.Column('full_name', sa.String(100)))",
                  downgrade="""
        with op.batch_alter_table('users') as batch:
            batch.drop_column('full_name')""")
    repo.revision("users", "0003", down="0002", extra=POST, upgrade="""
        with op.batch_alter_table('users') as batch:
            batch.drop_column('name')""",
                  downgrade="op.add_column('users', sa.Column('name', sa.String(50)))")
    repo.revision("billing", "0001", requires=["users:0002"], upgrade="""
        op.create_table('invoices', sa.Column('id', sa.Integer, primary_key=True),
                        sa.Column('note', sa.String(50)))""", downgrade="op.drop_table('invoices')")
    repo.revision("billing", "0002", down="0001", requires=["users:0003"], extra=POST, upgrade="""
        with op.batch_alter_table('invoices') as batch:
            batch.drop_column('note')""",
                  downgrade="op.add_column('invoices', sa.Column('note', sa.String(50)))")


def _schema(url: str) -> dict[str, list[tuple[str, str, bool]]]:
    """Every table but the bookkeeping ones, with its columns (name, type, nullable)."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        inspector = sa.inspect(engine)
        return {
            table: sorted((c["name"], str(c["type"]), bool(c["nullable"]))
                          for c in inspector.get_columns(table))
            for table in inspector.get_table_names()
            if table != "ncm_migrations" and not table.startswith("alembic_version")
        }
    finally:
        engine.dispose()


def _columns(url: str, table: str) -> set[str]:
    return {name for name, _, _ in _schema(url)[table]}


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def url(request: pytest.FixtureRequest) -> str:
    """The same test on SQLite, PostgreSQL and MariaDB."""
    fixture = {"sqlite": "sqlite_url", "postgresql": "pg_url", "mysql": "mysql_url"}[request.param]
    found: str = request.getfixturevalue(fixture)
    return found


def test_pre_then_post_ends_where_plain_migrate_ends(repo: Monorepo, url: str) -> None:
    _expand_contract(repo, url)

    pre = repo.cli("migrate", "--phase", "pre")
    assert pre.code == 0, pre.output
    # expanded: both old and new columns, nothing contracted yet, in either service
    assert _columns(url, "users") == {"id", "name", "full_name"}
    assert _columns(url, "invoices") == {"id", "note"}
    again = repo.cli("migrate", "--phase", "pre", "--plan")
    assert "Nothing to do" in again.stdout

    post = repo.cli("migrate", "--phase", "post")
    assert post.code == 0, post.output
    phased = _schema(url)
    assert _columns(url, "users") == {"id", "full_name"}

    for service in ("billing", "users"):
        back = repo.cli("migrate", service, "zero")
        assert back.code == 0, back.output
    assert _schema(url) == {}
    plain = repo.cli("migrate")
    assert plain.code == 0, plain.output
    assert _schema(url) == phased


def test_phase_pre_takes_what_pre_revisions_need_from_other_services(repo: Monorepo, sqlite_url: str) -> None:
    _expand_contract(repo, sqlite_url)
    shown = repo.cli("migrate", "billing", "--phase", "pre", "--plan", "--json")
    steps = [f"{s['service']}:{s['revision']}" for s in json.loads(shown.stdout)["steps"]]
    assert steps == ["users:0001", "users:0002", "billing:0001"]
    everything = repo.cli("migrate", "--plan", "--json")
    assert len(json.loads(everything.stdout)["steps"]) == 5


def test_migrate_sql_takes_a_phase(repo: Monorepo, sqlite_url: str) -> None:
    _expand_contract(repo, sqlite_url)
    pre = repo.cli("migrate", "--sql", "--phase", "pre")
    assert pre.code == 0, pre.output
    assert "ADD COLUMN full_name" in pre.stdout
    assert "users:0003" not in pre.output and "billing:0002" not in pre.output
    full = repo.cli("migrate", "--sql")  # SQLite's batch drop needs a live database
    assert "users:0003" in full.output and "billing:0002" in full.output


def test_contract_steps_in_a_mongo_pre_revision(repo: Monorepo, mongo_url: str) -> None:
    repo.settings(f'[development.services.events]\ndatabase_url = "{mongo_url}"\n')
    repo.mongo_revision("events", "0001", upgrade="db.sessions.drop()\ndb.users.rename('people')")
    repo.mongo_revision("events", "0002", down="0001", extra=POST)
    found = json.loads(repo.cli("lint", "--json").stdout)["findings"]
    assert [(f["rule"], f["line"]) for f in found if f["rule"] == "contract-in-pre"] == [
        ("contract-in-pre", _line_of(repo, "0001", "db.sessions.drop()", "events")),
        ("contract-in-pre", _line_of(repo, "0001", "db.users.rename", "events")),
    ]


def test_a_pre_revision_that_needs_a_post_one_is_refused(repo: Monorepo, sqlite_url: str) -> None:
    _expand_contract(repo, sqlite_url)
    repo.revision("billing", "0003", down="0002", upgrade="pass")  # pre, after a post one

    found = repo.cli("validate", "--json")
    rules = {(f["rule"], f["service"], f["revision"]) for f in json.loads(found.stdout)["findings"]}
    assert ("phase-order", "billing", "0003") in rules
    assert found.code == 1

    refused = repo.cli("migrate", "--phase", "pre")
    assert refused.code == 2
    assert "billing:0003 is a pre-deploy revision but needs billing:0002" in refused.stderr
    assert "Traceback" not in refused.output
    assert _schema(sqlite_url) == {}
    assert repo.cli("migrate").code == 0  # in graph order it still runs


def test_the_next_expand_step_builds_on_the_last_contract_step(repo: Monorepo, sqlite_url: str) -> None:
    """The lifecycle: once a deploy's post-deploy revision is applied, the next pre-deploy
    revision after it is no phase-order problem (only a pending post-deploy one is)."""
    _expand_contract(repo, sqlite_url)
    assert repo.cli("migrate").code == 0  # the first deploy, contract step included
    repo.revision("billing", "0003", down="0002",
                  upgrade="op.add_column('invoices', sa.Column('total', sa.Integer))",
                  downgrade="""
        with op.batch_alter_table('invoices') as batch:
            batch.drop_column('total')""")
    found = repo.cli("validate", "--json")
    assert "phase-order" not in {f["rule"] for f in json.loads(found.stdout)["findings"]}
    expand = repo.cli("migrate", "--phase", "pre")
    assert expand.code == 0, expand.output
    assert "total" in [name for name, _type, _null in _schema(sqlite_url)["invoices"]]


@pytest.mark.parametrize("value", ["'during'", "True", "['post']"])
def test_a_bad_phase_is_exit_2_naming_the_file(repo: Monorepo, sqlite_url: str, value: str) -> None:
    repo.settings(f'[development]\ndatabase_url = "{sqlite_url}"\n')
    repo.revision("users", "0001", extra=f"phase = {value}")
    result = repo.cli("showmigrations")
    assert result.code == 2
    assert "0001.py:" in result.stderr and "phase must be \"pre\"" in result.stderr
    assert "Traceback" not in result.output


def test_showmigrations_and_check_show_pending_post_revisions_apart(repo: Monorepo, sqlite_url: str) -> None:
    _expand_contract(repo, sqlite_url)
    assert repo.cli("migrate", "--phase", "pre").code == 0

    text = repo.cli("showmigrations", "users").stdout
    assert " [ ] 0003  0003  (post-deploy)" in text
    assert " 1 pending post-deploy (after the deploy: migrate --phase post): 0003" in text
    assert " 1 pending\n" not in text
    listed = json.loads(repo.cli("showmigrations", "--json").stdout)["services"]
    by_name = {s["name"]: s for s in listed}
    assert by_name["users"]["pending"] == 1 and by_name["users"]["pending_post"] == 1
    assert [r["phase"] for r in by_name["users"]["revisions"]] == ["pre", "pre", "post"]

    checked = repo.cli("check", "--json")
    findings = json.loads(checked.stdout)["findings"]
    assert {(f["rule"], f["severity"], f["service"]) for f in findings if "pending" in f["rule"]} == {
        ("pending-post", "warning", "users"), ("pending-post", "warning", "billing"),
    }
    assert checked.code == 0
    assert repo.cli("check", "--strict").code == 1
    assert "after the deploy, run `manage.py migrate --phase post`" in repo.cli("check").stdout

    repo.revision("users", "0004", down="0003", upgrade="pass")  # a pre one pending too
    findings = json.loads(repo.cli("check", "--json").stdout)["findings"]
    assert {(f["rule"], f["revision"]) for f in findings
            if f["service"] == "users" and "pending" in f["rule"]} == {
        ("pending", "0004"), ("pending-post", "0003"),
    }


CONTRACT_STEPS = [
    "op.drop_table('legacy')",
    "op.drop_column('users', 'name')",
    "op.drop_index('ix_users_name', table_name='users')",
    "op.drop_constraint('uq_users_name', 'users')",
    "op.rename_table('users', 'people')",
    "op.alter_column('users', 'name', new_column_name='full_name')",
    "op.alter_column('users', 'name', nullable=False)",
    "op.alter_column('users', 'age', type_=sa.BigInteger())",
    "op.execute('ALTER TABLE users ALTER COLUMN name SET NOT NULL')",
]


@pytest.mark.parametrize("step", CONTRACT_STEPS)
def test_contract_steps_in_a_pre_revision_are_flagged_and_allow_silences_them(
    repo: Monorepo, sqlite_url: str, step: str
) -> None:
    repo.settings(f'[development]\ndatabase_url = "{sqlite_url}"\n')
    repo.revision("users", "0001", upgrade=step)
    repo.revision("users", "0002", down="0001", extra=POST, upgrade=step)  # post: fine

    found = json.loads(repo.cli("lint", "--json").stdout)["findings"]
    flagged = [f for f in found if f["rule"] == "contract-in-pre"]
    assert [(f["revision"], f["line"]) for f in flagged] == [("0001", _line_of(repo, "0001", step))]
    assert "move it to a post-deploy revision" in flagged[0]["message"]
    assert "makemigrations --phase post" in flagged[0]["message"]

    repo.revision("users", "0001", upgrade=f"{step}  # ncm: allow contract-in-pre")
    found = json.loads(repo.cli("lint", "--json").stdout)["findings"]
    assert not [f for f in found if f["rule"] == "contract-in-pre"]


def _line_of(repo: Monorepo, revision: str, text: str, service: str = "users") -> int:
    lines = (repo.root / f"services/{service}/migrations" / f"{revision}.py").read_text().splitlines()
    return next(n for n, line in enumerate(lines, 1) if text in line)


def test_contract_in_pre_is_off_where_a_service_has_no_post_revision(repo: Monorepo, sqlite_url: str) -> None:
    """A service that does not deploy in phases keeps its findings as they were."""
    repo.settings(f'[development]\ndatabase_url = "{sqlite_url}"\n')
    repo.revision("users", "0001", upgrade="op.drop_table('legacy')")
    found = json.loads(repo.cli("lint", "--json").stdout)["findings"]
    assert [f["rule"] for f in found] == ["drop-table"]


def test_contract_in_pre_ignores_a_table_the_revision_creates(repo: Monorepo, sqlite_url: str) -> None:
    repo.settings(f'[development]\ndatabase_url = "{sqlite_url}"\n')
    repo.revision("users", "0001", upgrade="""
        op.create_table('t', sa.Column('id', sa.Integer, primary_key=True), sa.Column('a', sa.Integer))
        op.alter_column('t', 'a', nullable=False)""")
    repo.revision("users", "0002", down="0001", extra=POST)
    found = json.loads(repo.cli("lint", "--json").stdout)["findings"]
    assert not [f for f in found if f["rule"] == "contract-in-pre"]


def test_makemigrations_phase_post_writes_the_header(repo: Monorepo, sqlite_url: str) -> None:
    repo.settings(f'[development]\ndatabase_url = "{sqlite_url}"\n')
    repo.service("users")
    made = repo.cli("makemigrations", "users", "--empty", "-m", "drop name", "--phase", "post")
    assert made.code == 0, made.output
    path = next((repo.root / "services/users/migrations").glob("0001_*.py"))
    assert read_revision("users", path).phase == "post"
    assert 'phase = "post"' in path.read_text()

    made = repo.cli("makemigrations", "users", "--empty", "-m", "add full name")
    new = next((repo.root / "services/users/migrations").glob("0002_*.py"))
    assert made.code == 0 and read_revision("users", new).phase == "pre"
    assert "phase =" not in new.read_text()

    bad = repo.cli("makemigrations", "users", "--empty", "--phase", "later")
    assert bad.code == 2


def test_a_template_without_phase_is_refused_for_a_post_revision(repo: Monorepo, sqlite_url: str) -> None:
    repo.settings(f'[development]\ndatabase_url = "{sqlite_url}"\n')
    repo.service("users")
    template = (Path(__file__).parents[1] / "ncm_migrate/templates/schema.py.j2").read_text()
    repo.write("settings/templates/schema.py.j2", template.split("{% if phase", 1)[0]
               + template.split("{% endif %}\n", 1)[1])
    made = repo.cli("makemigrations", "users", "--empty", "--phase", "post")
    assert made.code == 2
    assert "add `phase = {{ phase | pyrepr }}`" in made.stderr
    assert not list((repo.root / "services/users/migrations").glob("*.py"))


def _rev(service: str, revision: str, down: str | None = None, phase: str = "pre",
         requires: tuple[str, ...] = ()) -> Revision:
    return Revision(service, revision, (down,) if down else (), Path(f"{revision}.py"), "",
                    requires=requires, phase=phase)  # type: ignore[arg-type]


def test_select_phase_in_memory() -> None:
    """
        a:1 (pre) -> a:2 (post)
          ^
        b:1 (pre, requires a:1) -> b:2 (pre)
    """
    graph, findings = build_graph({
        "a": [_rev("a", "1"), _rev("a", "2", "1", "post")],
        "b": [_rev("b", "1", requires=("a:1",)), _rev("b", "2", "1")],
    }, {})
    assert findings == [] and phase_findings(graph, graph.nodes, lambda _key: True) == []
    full = plan_upgrade(graph, {}, upgrade_targets(graph, ["a", "b"]))
    pre = select_phase(full, graph, "pre")
    assert [str(s.key) for s in pre.steps] == ["a:1", "b:1", "b:2"]
    assert select_phase(full, graph, "post") == full == select_phase(full, graph, None)
    after = plan_upgrade(graph, {"a": frozenset({"1"}), "b": frozenset({"1", "2"})},
                         upgrade_targets(graph, ["a", "b"]))
    assert [s.key for s in after.steps] == [RevisionKey("a", "2")]


def test_the_documented_example_runs_in_two_phases(tmp_path: Path) -> None:
    """docs/examples/expand_contract: the recipe the README shows, as written."""
    import shutil

    root = tmp_path / "example"
    shutil.copytree(Path(__file__).parents[1] / "docs/examples/expand_contract", root)
    repo = Monorepo(root)
    url = f"sqlite:///{root / 'var/example.db'}"
    assert repo.cli("migrate", "--phase", "pre").code == 0
    assert _columns(url, "accounts") == {"id", "name", "display_name"} and "orders" in _schema(url)
    assert "1 pending post-deploy" in repo.cli("showmigrations", "accounts").stdout
    assert repo.cli("migrate", "--phase", "post").code == 0
    assert _columns(url, "accounts") == {"id", "display_name"}
    found = json.loads(repo.cli("lint", "--json").stdout)["findings"]
    assert found == []
