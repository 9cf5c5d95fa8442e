"""lint: each rule fires on a sample with file and line, and `# ncm: allow <rule>` silences it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from monorepo import Monorepo, mongo_revision_file, revision_file

from ncm_migrate import linting as lint
from ncm_migrate import squawk
from ncm_migrate.discovery import read_revision
from ncm_migrate.errors import ToolMissing
from ncm_migrate.model import ServiceConfig

PG = "postgresql+psycopg://u@db.invalid:5432/app"
SQLITE = "sqlite:///app.db"

# (rule, backend URL, upgrade body whose LAST line is the dangerous call)
SAMPLES = [
    ("drop-table", SQLITE, "op.drop_table('users')"),
    ("drop-column", SQLITE, "with op.batch_alter_table('users') as batch:\n    batch.drop_column('email')"),
    ("drop-index", SQLITE, "op.drop_index('ix_users_email', table_name='users')"),
    ("rename-table", SQLITE, "op.rename_table('users', 'people')"),
    ("rename-column", SQLITE, "op.alter_column('users', 'name', new_column_name='full_name')"),
    ("not-null-without-default", SQLITE,
     "op.add_column('users', sa.Column('age', sa.Integer, nullable=False))"),
    ("not-null-without-default", SQLITE, "op.alter_column('users', 'email', nullable=False)"),
    ("type-change", SQLITE, "op.alter_column('users', 'age', type_=sa.BigInteger())"),
    ("non-concurrent-index", PG, "op.create_index('ix_users_age', 'users', ['age'])"),
    ("raw-sql-drop", SQLITE, "op.execute('DROP TABLE legacy')"),
    ("raw-sql-drop", SQLITE, "op.execute(sa.text('truncate table sessions'))"),
    ("raw-sql-drop", SQLITE, "op.get_bind().exec_driver_sql(f'ALTER TABLE t DROP COLUMN {1}')"),
]
MONGO_SAMPLES = [
    ("drop-collection", "db.drop_collection('sessions')"),
    ("drop-collection", "db['sessions'].drop()"),
    ("drop-collection", "db.sessions.drop()"),
    ("drop-index", "db.users.drop_index('email_1')"),
    ("drop-index", "db['users'].drop_indexes()"),
    ("drop-collection", "mongo_ops.drop_collection(db, 'sessions')"),
    ("drop-index", "mongo_ops.drop_index(db, 'users', 'email_1')"),
    ("drop-collection", "db.command('drop', 'sessions')"),
]


def _config(tmp_path: Path, url: str, backend: str = "sql") -> ServiceConfig:
    return ServiceConfig(name="users", root=tmp_path, backend=backend, database_url=url)  # type: ignore[arg-type]


def _lint(tmp_path: Path, text: str, url: str, backend: str = "sql") -> list[lint.Finding]:
    path = tmp_path / "0002_change.py"
    path.write_text(text)
    rev = read_revision("users", path)
    return lint.lint_revision(_config(tmp_path, url, backend), rev, "warning", tmp_path)


def _line_of(text: str, code: str) -> int:
    last = code.splitlines()[-1].strip()
    return next(n for n, line in enumerate(text.splitlines(), 1) if line.strip() == last)


@pytest.mark.parametrize(("rule", "url", "code"), SAMPLES)
def test_each_sql_rule_fires_and_is_silenced_by_its_comment(
    tmp_path: Path, rule: str, url: str, code: str
) -> None:
    text = revision_file("0002_change", down="0001_initial", upgrade=code)
    found = _lint(tmp_path, text, url)
    assert [(f.rule, f.line) for f in found] == [(rule, _line_of(text, code))]
    f = found[0]
    assert (f.service, f.revision, f.severity) == ("users", "0002_change", "warning")
    assert f.file == "0002_change.py"
    assert lint.RULES[rule] in f.message

    # The comment on the line itself, or on the line above, silences exactly that rule.
    *head, last = code.splitlines()
    on_line = "\n".join([*head, f"{last}  # ncm: allow {rule}"])
    assert _lint(tmp_path, revision_file("0002_change", down="0001_initial", upgrade=on_line), url) == []
    indent = last[: len(last) - len(last.lstrip())]
    above = "\n".join([*head, f"{indent}# ncm: allow {rule}", last])
    assert _lint(tmp_path, revision_file("0002_change", down="0001_initial", upgrade=above), url) == []
    other = "\n".join([*head, f"{last}  # ncm: allow some-other-rule"])
    assert len(_lint(tmp_path, revision_file("0002_change", down="0001_initial", upgrade=other), url)) == 1


@pytest.mark.parametrize(("rule", "code"), MONGO_SAMPLES)
def test_each_mongo_rule_fires_and_is_silenced_by_its_comment(tmp_path: Path, rule: str, code: str) -> None:
    mongo = "mongodb://db.invalid:27017/app"
    text = mongo_revision_file("0002_change", down="0001_initial", upgrade=code)
    found = _lint(tmp_path, text, mongo, "mongo")
    assert [(f.rule, f.line) for f in found] == [(rule, _line_of(text, code))]
    silenced = mongo_revision_file("0002_change", down="0001_initial", upgrade=f"{code}  # ncm: allow {rule}")
    assert _lint(tmp_path, silenced, mongo, "mongo") == []


def test_safe_operations_and_downgrade_are_not_findings(tmp_path: Path) -> None:
    upgrade = """
        op.create_table('t', sa.Column('id', sa.Integer, primary_key=True),
                        sa.Column('name', sa.String(10), nullable=False))
        op.add_column('users', sa.Column('nick', sa.String(10), nullable=True))
        op.add_column('users', sa.Column('flag', sa.Boolean, nullable=False, server_default=sa.false()))
        op.create_index('ix_t_name', 't', ['name'], postgresql_concurrently=True)
        # A backfill next to DDL is a safe-DDL finding on PostgreSQL (test_safe_ddl.py).
        op.execute("UPDATE users SET nick = 'x' WHERE dropped = false")  # ncm: allow ddl-with-backfill
    """
    text = revision_file("0002_change", down="0001_initial", upgrade=upgrade,
                         downgrade="op.drop_table('t')\nop.drop_column('users', 'nick')")
    assert _lint(tmp_path, text, PG) == []
    # A non-concurrent index is only a finding on PostgreSQL.
    index = revision_file("0002_change", down="0001_initial", upgrade="op.create_index('i', 't', ['a'])")
    assert _lint(tmp_path, index, SQLITE) == []
    assert [f.rule for f in _lint(tmp_path, index, PG)] == ["non-concurrent-index"]


def test_operations_on_a_table_created_in_the_same_upgrade_are_not_findings(tmp_path: Path) -> None:
    # What autogenerate writes for a new model with `index=True` and a NOT NULL column.
    upgrade = """
        op.create_table('orders', sa.Column('id', sa.Integer, primary_key=True),
                        sa.Column('ref', sa.String(10), nullable=False, index=True),
                        sa.Index('ix_orders_id_ref', 'id', 'ref'))
        op.create_index(op.f('ix_orders_ref'), 'orders', ['ref'], unique=False)
        op.create_index('ix_orders_named', table_name='orders', columns=['id'])
        op.add_column('orders', sa.Column('total', sa.Integer, nullable=False))
        op.alter_column('orders', 'ref', nullable=False, type_=sa.String(20))
        with op.batch_alter_table('orders') as batch_op:
            batch_op.alter_column('total', new_column_name='amount')
            batch_op.drop_column('ref')
        op.create_table('audit', sa.Column('id', sa.Integer), schema='ops')
        op.create_index('ix_audit_id', 'audit', ['id'], schema='ops')
    """
    text = revision_file("0002_change", down="0001_initial", upgrade=upgrade)
    assert _lint(tmp_path, text, PG) == []

    # The same operations on tables that already exist are still findings, in the same
    # file, and so is an index created before its table is (re)created.
    existing = """
        op.create_table('orders', sa.Column('id', sa.Integer, primary_key=True))
        op.create_index('ix_users_ref', 'users', ['ref'])
        op.add_column('users', sa.Column('total', sa.Integer, nullable=False))
        op.create_index('ix_audit_id', 'audit', ['id'], schema='other')
        with op.batch_alter_table('users') as batch_op:
            batch_op.drop_column('ref')
        op.create_index('ix_later_id', 'later', ['id'])
        op.create_table('later', sa.Column('id', sa.Integer))
    """
    text = revision_file("0002_change", down="0001_initial", upgrade=existing)
    assert [f.rule for f in sorted(_lint(tmp_path, text, PG), key=lambda f: f.line or 0)] == [
        "non-concurrent-index", "not-null-without-default", "non-concurrent-index", "drop-column",
        "non-concurrent-index",
    ]


def _lint_repo(repo: Monorepo, env_section: str = "development") -> None:
    repo.table("users", "0001_initial", "users_t")
    repo.revision("users", "0002_drop", down="0001_initial", upgrade="op.drop_table('users_t')")
    repo.settings(f"""
        [{env_section}]
        database_url = "sqlite:///var/db.sqlite"
        [production]
        protected = true
        database_url = "sqlite:///var/prod.sqlite"
    """)


def test_lint_cli_json_and_severity_from_settings(repo: Monorepo) -> None:
    _lint_repo(repo)
    result = repo.cli("lint", "--json")
    assert result.code == 0, result.output
    data = json.loads(result.stdout)
    text = (repo.root / "services/users/migrations/0002_drop.py").read_text()
    assert data["ok"] is True
    assert data["findings"] == [{
        "service": "users", "revision": "0002_drop", "rule": "drop-table", "severity": "warning",
        "message": data["findings"][0]["message"], "file": "services/users/migrations/0002_drop.py",
        "line": _line_of(text, "op.drop_table('users_t')"),
    }]
    # Warnings fail only with --strict; a protected environment makes findings errors.
    assert repo.cli("lint", "--strict").code == 1
    prod = repo.cli("lint", "--env", "production")
    assert prod.code == 1 and "error" in prod.stdout and "drop-table" in prod.stdout
    # No database is touched by lint.
    assert not (repo.root / "var").exists()


@pytest.mark.parametrize("args", [("users",), ()])
def test_lint_needs_no_database_url_in_the_environment(repo: Monorepo, args: tuple[str, ...]) -> None:
    _lint_repo(repo, env_section="staging")  # development gives users no database
    result = repo.cli("lint", "--json", *args)
    assert result.code == 0, result.output
    assert [f["rule"] for f in json.loads(result.stdout)["findings"]] == ["drop-table"]


def test_lint_severity_setting_overrides(repo: Monorepo) -> None:
    _lint_repo(repo)
    repo.write("settings/settings.local.toml", "[development.lint]\nseverity = 'error'\n")
    assert repo.cli("lint").code == 1


# -- squawk ---------------------------------------------------------------------------


def _squawk_repo(repo: Monorepo) -> None:
    repo.table("users", "0001_initial", "users_t")
    repo.revision("users", "0002_index", down="0001_initial",
                  upgrade="op.create_index('ix_a', 'users_t', ['id'])  # ncm: allow non-concurrent-index")
    repo.settings(f"""
        [development]
        database_url = "{PG}"
        [development.lint]
        squawk = true
    """)


def test_squawk_findings_are_merged_for_postgresql(repo: Monorepo) -> None:
    pytest.importorskip("psycopg")
    try:
        squawk.find_squawk()
    except ToolMissing:
        pytest.skip("squawk-cli is not installed")
    _squawk_repo(repo)
    result = repo.cli("lint", "--json")
    data = json.loads(result.stdout)
    rules = {(f["revision"], f["rule"]) for f in data["findings"]}
    assert ("0002_index", "squawk:require-concurrent-index-creation") in rules, result.output
    # The version table is Alembic's, not the user's: squawk is not run over it.
    assert all("alembic_version" not in f["message"] for f in data["findings"])
    hit = next(f for f in data["findings"] if f["rule"] == "squawk:require-concurrent-index-creation")
    text = (repo.root / "services/users/migrations/0002_index.py").read_text()
    assert hit["file"] == "services/users/migrations/0002_index.py"
    assert hit["line"] == _line_of(text, "def upgrade() -> None:")

    # `# ncm: allow squawk:<rule>` on the `def upgrade` line silences a squawk rule too.
    path = repo.root / "services/users/migrations/0002_index.py"
    path.write_text(path.read_text().replace(
        "def upgrade() -> None:",
        "def upgrade() -> None:  # ncm: allow squawk:require-concurrent-index-creation",
    ))
    again = json.loads(repo.cli("lint", "--json").stdout)
    assert "squawk:require-concurrent-index-creation" not in {f["rule"] for f in again["findings"]}


def test_squawk_missing_is_a_clear_error(
    repo: Monorepo, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _squawk_repo(repo)
    monkeypatch.setattr(squawk.shutil, "which", lambda _name: None)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "nowhere" / "python"))
    result = repo.cli("lint")
    assert result.code == 1
    assert "squawk" in result.stderr and "pip install squawk-cli" in result.stderr
    assert "Traceback" not in result.output


def test_lint_help() -> None:
    result = Monorepo(Path.cwd()).cli("lint", "--help")
    assert result.code == 0 and "Example:" in result.stdout and "ncm: allow" in result.stdout
