"""Safe-DDL lint rules (PostgreSQL): each fires on the unsafe form with its fix in the
message, not on the safe form nor on a table the same upgrade creates, `# ncm: allow`
silences it, and a protected environment makes it an error."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from monorepo import Monorepo, revision_file

from ncm_migrate import linting as lint
from ncm_migrate import safe_ddl
from ncm_migrate.discovery import read_revision
from ncm_migrate.model import ServiceConfig

PG = "postgresql+psycopg://u@db.invalid:5432/app"
SQLITE = "sqlite:///app.db"

# (rule, unsafe upgrade whose LAST line is the finding, the safe way to write it)
CASES = [
    ("constraint-not-valid",
     "op.create_foreign_key('fk_orders_user', 'orders', 'users', ['user_id'], ['id'])",
     "op.create_foreign_key('fk_orders_user', 'orders', 'users', ['user_id'], ['id'],\n"
     "                      postgresql_not_valid=True)"),
    ("constraint-not-valid",
     "op.create_check_constraint('ck_orders_total', 'orders', 'total >= 0')",
     "op.create_check_constraint('ck_orders_total', 'orders', 'total >= 0', postgresql_not_valid=True)"),
    ("constraint-not-valid",
     "op.execute('ALTER TABLE orders ADD CONSTRAINT fk_u FOREIGN KEY (user_id) REFERENCES users (id)')",
     "op.execute('ALTER TABLE orders ADD CONSTRAINT fk_u FOREIGN KEY (user_id) REFERENCES users (id) "
     "NOT VALID')"),
    ("constraint-not-valid",
     "with op.batch_alter_table('orders') as batch_op:\n"
     "    batch_op.create_check_constraint('ck_total', 'total >= 0')",
     "with op.batch_alter_table('orders') as batch_op:\n"
     "    batch_op.create_check_constraint('ck_total', 'total >= 0', postgresql_not_valid=True)"),
    ("set-not-null-without-check",
     "op.alter_column('orders', 'ref', nullable=False)",
     "op.create_check_constraint('ck_ref', 'orders', 'ref IS NOT NULL', postgresql_not_valid=True)\n"
     "op.execute('ALTER TABLE orders VALIDATE CONSTRAINT ck_ref')\n"
     "op.alter_column('orders', 'ref', nullable=False)"),
    ("set-not-null-without-check",
     "op.execute('ALTER TABLE orders ALTER COLUMN ref SET NOT NULL')",
     "op.execute('ALTER TABLE orders VALIDATE CONSTRAINT ck_ref')\n"
     "op.execute('ALTER TABLE orders ALTER COLUMN ref SET NOT NULL')"),
    ("volatile-default",
     "op.add_column('orders', sa.Column('token', sa.Uuid, server_default=sa.text('gen_random_uuid()')))",
     "op.add_column('orders', sa.Column('token', sa.Uuid, nullable=True))\n"
     "op.alter_column('orders', 'token', server_default=sa.text('gen_random_uuid()'))"),
    ("volatile-default",
     "op.add_column('orders', sa.Column('seen', sa.DateTime, server_default=sa.func.clock_timestamp()))",
     "op.add_column('orders', sa.Column('seen', sa.DateTime, server_default=sa.func.now()))"),
    ("unique-without-index",
     "op.create_unique_constraint('uq_orders_ref', 'orders', ['ref'])",
     "with op.get_context().autocommit_block():\n"
     "    op.create_index('uq_orders_ref', 'orders', ['ref'], unique=True, postgresql_concurrently=True)\n"
     "op.execute('ALTER TABLE orders ADD CONSTRAINT uq_orders_ref UNIQUE USING INDEX uq_orders_ref')"),
    ("ddl-with-backfill",
     "op.add_column('orders', sa.Column('total2', sa.Integer, nullable=True))\n"
     "op.execute('UPDATE orders SET total2 = total')",
     "op.add_column('orders', sa.Column('total2', sa.Integer, nullable=True))"),
    ("ddl-with-backfill",
     "op.add_column('orders', sa.Column('region', sa.Text, nullable=True))\n"
     "op.execute(sa.text('INSERT INTO regions (name) SELECT DISTINCT region FROM orders'))",
     "op.execute(sa.text('INSERT INTO regions (name) SELECT DISTINCT region FROM orders'))"),
    ("ddl-with-backfill",
     "op.create_index('ix_orders_ref', 'orders', ['ref'], postgresql_concurrently=True)\n"
     "for start in range(0, 10_000, 1000):\n"
     "    op.execute(f'DELETE FROM orders WHERE id BETWEEN {start} AND {start + 999}')",
     "for start in range(0, 10_000, 1000):\n"
     "    op.execute(f'DELETE FROM orders WHERE id BETWEEN {start} AND {start + 999}')"),
]


def _lint(tmp_path: Path, upgrade: str, url: str = PG) -> list[lint.Finding]:
    path = tmp_path / "0002_change.py"
    text = revision_file("0002_change", down="0001_initial", upgrade=upgrade)
    path.write_text(text)
    config = ServiceConfig(name="orders", root=tmp_path, backend="sql", database_url=url)
    return lint.lint_revision(config, read_revision("orders", path), "warning", tmp_path)


def _rules(found: list[lint.Finding]) -> list[str]:
    return [f.rule for f in found if f.rule in safe_ddl.RULES]


@pytest.mark.parametrize(("rule", "unsafe", "safe"), CASES)
def test_each_rule_fires_on_the_unsafe_form_only(tmp_path: Path, rule: str, unsafe: str, safe: str) -> None:
    found = [f for f in _lint(tmp_path, unsafe) if f.rule in safe_ddl.RULES]
    assert [f.rule for f in found] == [rule]
    text = (tmp_path / "0002_change.py").read_text()
    last = unsafe.splitlines()[-1].strip()
    assert found[0].line == next(n for n, line in enumerate(text.splitlines(), 1) if line.strip() == last)
    assert safe_ddl.RULES[rule] in found[0].message  # its fix included
    assert f"# ncm: allow {rule}" in found[0].message
    assert _rules(_lint(tmp_path, safe)) == []
    # Only on PostgreSQL: SQLite and MySQL lock (or rewrite) differently.
    assert _rules(_lint(tmp_path, unsafe, SQLITE)) == []


@pytest.mark.parametrize(("rule", "unsafe", "safe"), CASES)
def test_allow_comment_silences_each_rule(tmp_path: Path, rule: str, unsafe: str, safe: str) -> None:
    *head, last = unsafe.splitlines()
    assert _rules(_lint(tmp_path, "\n".join([*head, f"{last}  # ncm: allow {rule}"]))) == []
    indent = last[: len(last) - len(last.lstrip())]
    assert _rules(_lint(tmp_path, "\n".join([*head, f"{indent}# ncm: allow {rule}", last]))) == []
    assert _rules(_lint(tmp_path, "\n".join([*head, f"{last}  # ncm: allow other-rule"]))) == [rule]


def test_a_table_created_in_the_same_upgrade_is_not_existing(tmp_path: Path) -> None:
    upgrade = """
        op.create_table('orders', sa.Column('id', sa.Integer, primary_key=True),
                        sa.Column('user_id', sa.Integer), sa.Column('ref', sa.Text))
        op.create_foreign_key('fk_orders_user', 'orders', 'users', ['user_id'], ['id'])
        op.create_check_constraint('ck_ref', 'orders', 'length(ref) > 0')
        op.create_unique_constraint('uq_ref', 'orders', ['ref'])
        op.add_column('orders', sa.Column('token', sa.Uuid, server_default=sa.text('gen_random_uuid()')))
        op.alter_column('orders', 'ref', nullable=False)
        op.execute('CREATE TABLE tags (id int)')
        op.execute('ALTER TABLE tags ADD CONSTRAINT uq_id UNIQUE (id)')
    """
    assert _rules(_lint(tmp_path, upgrade)) == []
    # ... but an operation before the table is created is on an older table of that name.
    before = "op.create_unique_constraint('uq_ref', 'orders', ['ref'])\n" \
             "op.create_table('orders', sa.Column('id', sa.Integer, primary_key=True))"
    assert _rules(_lint(tmp_path, before)) == ["unique-without-index"]


def test_a_validated_check_also_answers_not_null_without_default(tmp_path: Path) -> None:
    unsafe = "op.alter_column('orders', 'ref', nullable=False)"
    assert sorted(f.rule for f in _lint(tmp_path, unsafe)) == [
        "not-null-without-default", "set-not-null-without-check"]
    safe = "op.execute('ALTER TABLE orders VALIDATE CONSTRAINT ck_ref')\n" + unsafe
    assert _lint(tmp_path, safe) == []  # no NULL can be left: the check saw every row
    # Elsewhere than on PostgreSQL the older rule stands alone, as before.
    assert [f.rule for f in _lint(tmp_path, safe, SQLITE)] == ["not-null-without-default"]


def test_a_data_revision_without_ddl_is_no_backfill_finding(tmp_path: Path) -> None:
    upgrade = """
        op.execute('UPDATE orders SET total = 0 WHERE total IS NULL')
        for chunk in range(3):
            op.execute(f'UPDATE orders SET n = {chunk}')
    """
    assert _rules(_lint(tmp_path, upgrade)) == []
    # Seeding a table the same upgrade creates keeps nobody waiting (the example's roles).
    seed = """
        op.create_table('roles', sa.Column('name', sa.String(32), primary_key=True))
        op.execute('CREATE INDEX ix_roles_name ON roles (name)')
        for name in ('admin', 'member'):
            op.execute(sa.text('INSERT INTO roles (name) SELECT :n').bindparams(n=name))
    """
    assert _rules(_lint(tmp_path, seed)) == []
    # ... but next to a change of an existing table, it holds that table's lock.
    altered = textwrap.dedent(seed) + "\nop.execute('ALTER TABLE orders ADD COLUMN x int')"
    assert _rules(_lint(tmp_path, altered)) == [
        "ddl-with-backfill"]


def _repo(repo: Monorepo) -> None:
    repo.table("orders", "0001_initial", "orders")
    repo.revision("orders", "0002_fk", down="0001_initial",
                  upgrade="op.create_foreign_key('fk_u', 'orders', 'users', ['user_id'], ['id'])")
    repo.settings(f"""
        [development]
        database_url = "{PG}"
        [production]
        protected = true
        database_url = "{PG}"
    """)


def test_lint_cli_warns_and_protected_makes_it_an_error(repo: Monorepo) -> None:
    _repo(repo)
    dev = repo.cli("lint", "--json")
    assert dev.code == 0, dev.output
    found = json.loads(dev.stdout)["findings"]
    assert [(f["rule"], f["severity"]) for f in found] == [("constraint-not-valid", "warning")]
    assert "postgresql_not_valid=True" in found[0]["message"]
    prod = repo.cli("lint", "--json", "--env", "production")
    assert prod.code == 1, prod.output
    found = json.loads(prod.stdout)["findings"]
    assert [(f["rule"], f["severity"]) for f in found] == [("constraint-not-valid", "error")]
