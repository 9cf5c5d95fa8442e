"""Real Alembic histories run unchanged: hashed ids, branches, a merge, branch labels,
depends_on, the classic `migrations/versions/` layout, a service's own env.py, and
histories written against a constraint naming convention."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from monorepo import Monorepo, ledger, tables, version_heads

SCENARIO = Path(__file__).parent / "fixtures" / "monorepos" / "alembic_classic"
MERGE, HOSTS = "55af2cb1c267", "191a2d20b025"
SHOP_TABLES = {"account", "orders", "audit_log", "network", "hosts"}


def classic(repo: Monorepo, url: str) -> dict[str, str]:
    """The scenario copied into `repo`; the environment that points it at `url`."""
    shutil.copytree(SCENARIO, repo.root, dirs_exist_ok=True)
    return {"NCM_SERVICES__SHOP__DATABASE_URL": url}


def plain_alembic(repo: Monorepo, url: str) -> Config:
    """A Config for running plain Alembic (with the service's env.py) on the same history."""
    cfg = Config()
    cfg.set_main_option("script_location", str(repo.root / "services/shop/migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def test_classic_history_runs_unchanged(repo: Monorepo, db_url: str) -> None:
    env = classic(repo, db_url)
    plan = json.loads(repo.cli("migrate", "--plan", "--json", env=env).stdout)["steps"]
    order = [s["revision"] for s in plan]
    assert sorted(order) == sorted(
        ["ae1027a6acf", "27c6a30d7c24", "1975ea83b712", "3cac04ae8714", MERGE, "d747a8a8879b", HOSTS]
    )
    # Every revision comes after what it revises and what it depends on.
    assert order.index("27c6a30d7c24") < order.index("1975ea83b712") < order.index(MERGE)
    assert order.index("3cac04ae8714") < order.index(MERGE) < order.index(HOSTS)
    assert order.index("d747a8a8879b") < order.index(HOSTS)

    result = repo.cli("migrate", env=env)
    assert result.code == 0, result.output
    assert tables(db_url) >= SHOP_TABLES
    # What plain Alembic reads (`alembic current`): as Alembic writes it, the merge is
    # absorbed by the revision that depends on it.
    assert version_heads(db_url) == {HOSTS}
    assert [r["status"] for r in ledger(db_url, "shop")] == ["applied"] * 7

    # Plain Alembic agrees there is nothing left to do (it would fail re-creating tables).
    command.upgrade(plain_alembic(repo, db_url), "heads")
    assert version_heads(db_url) == {HOSTS}


def test_plain_alembic_and_ncm_take_turns(repo: Monorepo, db_url: str) -> None:
    env = classic(repo, db_url)
    command.upgrade(plain_alembic(repo, db_url), "1975ea83b712")
    status = json.loads(repo.cli("showmigrations", "--json", env=env).stdout)["services"][0]
    assert {r["revision"] for r in status["revisions"] if r["applied"]} == {
        "ae1027a6acf", "27c6a30d7c24", "1975ea83b712",
    }
    assert status["pending"] == 4
    result = repo.cli("migrate", env=env)
    assert result.code == 0, result.output
    assert version_heads(db_url) == {HOSTS}
    command.downgrade(plain_alembic(repo, db_url), "networking@base")
    assert version_heads(db_url) == {MERGE}
    assert "hosts" not in tables(db_url)
    again = repo.cli("migrate", env=env)
    assert again.code == 0, again.output
    assert version_heads(db_url) == {HOSTS}


def test_targets_prefixes_and_branch_labels(repo: Monorepo, db_url: str) -> None:
    env = classic(repo, db_url)
    assert repo.cli("migrate", "shop", "1975", env=env).code == 0
    assert version_heads(db_url) == {"1975ea83b712"}
    assert "audit_log" not in tables(db_url)
    # The other branch of the fork: two heads in the version table, as Alembic keeps them.
    assert repo.cli("migrate", "shop", "3cac04ae8714", env=env).code == 0
    assert version_heads(db_url) == {"1975ea83b712", "3cac04ae8714"}
    # A branch label names the labelled revision.
    assert repo.cli("migrate", "shop", "networking", env=env).code == 0
    assert version_heads(db_url) == {"1975ea83b712", "3cac04ae8714", "d747a8a8879b"}
    # Backwards past the fork: what builds on 27c6 goes, the networking branch stays
    # (as `alembic downgrade 27c6a30d7c24` and Django's `migrate app 0002` do).
    back = repo.cli("migrate", "shop", "27c6a30d7c24", env=env)
    assert back.code == 0, back.output
    assert version_heads(db_url) == {"27c6a30d7c24", "d747a8a8879b"}
    assert not {"orders", "audit_log"} & tables(db_url)
    assert "network" in tables(db_url)

    assert repo.cli("migrate", env=env).code == 0
    assert version_heads(db_url) == {HOSTS}
    one = repo.cli("rollback", "shop", env=env)
    assert one.code == 0, one.output
    assert version_heads(db_url) == {MERGE, "d747a8a8879b"}
    # Rolling back to a revision before the fork unmerges and reverts both branches of it.
    assert repo.cli("rollback", "shop", "27c6a30d7c24", env=env).code == 0
    assert version_heads(db_url) == {"27c6a30d7c24", "d747a8a8879b"}
    zero = repo.cli("migrate", "shop", "zero", env=env)
    assert zero.code == 0, zero.output
    assert version_heads(db_url) == set()
    assert not SHOP_TABLES & tables(db_url)


def test_ambiguous_prefix_is_bad_input(repo: Monorepo, sqlite_url: str) -> None:
    env = classic(repo, sqlite_url)
    result = repo.cli("migrate", "shop", "1", env=env)
    assert result.code == 2
    assert "ambiguous" in result.stderr and "1975ea83b712" in result.stderr


def test_env_py_and_mako_are_not_required(repo: Monorepo, sqlite_url: str) -> None:
    env = classic(repo, sqlite_url)
    (repo.root / "services/shop/migrations/env.py").unlink()
    (repo.root / "services/shop/migrations/script.py.mako").unlink()
    result = repo.cli("migrate", env=env)
    assert result.code == 0, result.output
    assert version_heads(sqlite_url) == {HOSTS}


def test_use_env_py_hands_over_the_connection(repo: Monorepo, db_url: str, tmp_path: Path) -> None:
    env = classic(repo, db_url)
    marker = tmp_path / "env_py_ran"
    env_py = repo.root / "services/shop/migrations/env.py"
    env_py.write_text(
        env_py.read_text().replace(
            "if context.is_offline_mode():",
            f"with open({str(marker)!r}, 'a') as fh:\n"
            "    fh.write('handed' if config.attributes.get('connection') is not None else 'own')\n\n"
            "if context.is_offline_mode():",
        )
    )
    env["NCM_SERVICES__SHOP__USE_ENV_PY"] = "true"
    result = repo.cli("migrate", "shop", "1975ea83b712", env=env)
    assert result.code == 0, result.output
    assert marker.read_text() == "handed"
    assert version_heads(db_url) == {"1975ea83b712"}
    assert repo.cli("migrate", env=env).code == 0
    assert version_heads(db_url) == {HOSTS}
    assert [r["status"] for r in ledger(db_url, "shop")] == ["applied"] * 7
    back = repo.cli("rollback", "shop", env=env)
    assert back.code == 0, back.output
    assert version_heads(db_url) == {MERGE, "d747a8a8879b"}
    assert ledger(db_url, "shop")[-1]["status"] == "reverted"



def stock_env_py() -> str:
    """The env.py that `alembic init` writes, from the installed Alembic's own template."""
    import alembic

    return (Path(alembic.__file__).parent / "templates" / "generic" / "env.py").read_text()


def test_use_env_py_with_the_stock_env_py(repo: Monorepo, db_url: str) -> None:
    """The env.py of `alembic init`, unchanged: it opens its own connection from
    `sqlalchemy.url`, and the service's version table is the one used."""
    env = classic(repo, db_url)
    (repo.root / "services/shop/migrations/env.py").write_text(stock_env_py())
    env["NCM_SERVICES__SHOP__USE_ENV_PY"] = "true"
    env["NCM_SERVICES__SHOP__VERSION_TABLE"] = "shop_version"
    result = repo.cli("migrate", env=env)
    assert result.code == 0, result.output
    assert tables(db_url) >= SHOP_TABLES
    assert "alembic_version" not in tables(db_url)
    assert version_heads(db_url, "shop_version") == {HOSTS}
    assert [r["status"] for r in ledger(db_url, "shop")] == ["applied"] * 7
    back = repo.cli("rollback", "shop", env=env)
    assert back.code == 0, back.output
    assert version_heads(db_url, "shop_version") == {MERGE, "d747a8a8879b"}
    assert ledger(db_url, "shop")[-1]["status"] == "reverted"


def test_stock_env_py_failure_is_recorded(repo: Monorepo, sqlite_url: str) -> None:
    """A revision that raises under the stock env.py: exit 1, its transaction rolled back,
    a `failed` row in the ledger, the earlier revisions kept."""
    repo.table("shop", "0001_a", "a_t")
    repo.revision("shop", "0002_bad", down="0001_a", upgrade="op.create_table('b_t', "
                  "sa.Column('id', sa.Integer, primary_key=True))\nraise RuntimeError('boom')")
    repo.write("services/shop/migrations/env.py", stock_env_py())
    repo.urls({"shop": sqlite_url})
    env = {"NCM_SERVICES__SHOP__USE_ENV_PY": "true"}
    result = repo.cli("migrate", env=env)
    assert result.code == 1, result.output
    assert "shop:0002_bad" in result.stderr and "boom" in result.stderr
    assert "Traceback" not in result.output
    assert version_heads(sqlite_url) == {"0001_a"}
    assert [(r["revision"], r["status"]) for r in ledger(sqlite_url, "shop")] == [
        ("0001_a", "applied"), ("0002_bad", "failed"),
    ]


@pytest.mark.postgres
def test_stock_env_py_gets_the_url_but_never_shows_its_password(repo: Monorepo, pg_url: str) -> None:
    """sqlalchemy.url carries the password env.py needs to connect; no output shows it
    (the test server trusts local connections, so any password connects)."""
    url = sa.engine.make_url(pg_url).set(password="Sekr1tEnvPy").render_as_string(hide_password=False)
    env = classic(repo, url)
    (repo.root / "services/shop/migrations/env.py").write_text(stock_env_py())
    env["NCM_SERVICES__SHOP__USE_ENV_PY"] = "true"
    result = repo.cli("-vv", "migrate", env=env)
    assert result.code == 0, result.output
    assert version_heads(pg_url) == {HOSTS}
    assert "Sekr1tEnvPy" not in result.output
    history = repo.cli("-vv", "history", "shop", env=env)
    assert history.code == 0 and "Sekr1tEnvPy" not in history.output


# -- naming conventions ----------------------------------------------------------------

CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

NEEDS_CONVENTION_UP = """
with op.batch_alter_table("child") as batch:
    batch.create_foreign_key(None, "parent", ["parent_id"], ["id"])
    batch.create_unique_constraint(None, ["code"])
"""
NEEDS_CONVENTION_DOWN = """
with op.batch_alter_table("child") as batch:
    batch.drop_constraint(op.f("uq_child_code"), type_="unique")
    batch.drop_constraint(op.f("fk_child_parent_id_parent"), type_="foreignkey")
"""


def convention_history(repo: Monorepo, url: str) -> None:
    """shop: 0001 parent and child tables -> 0002 an unnamed FK and unique constraint,
    dropped in downgrade by the names the convention gives them."""
    repo.revision(
        "shop", "0001_tables",
        upgrade="""
            op.create_table("parent", sa.Column("id", sa.Integer, primary_key=True))
            op.create_table(
                "child",
                sa.Column("id", sa.Integer, primary_key=True),
                sa.Column("parent_id", sa.Integer),
                sa.Column("code", sa.String(20)),
            )
        """,
        downgrade='op.drop_table("child")\nop.drop_table("parent")',
    )
    repo.revision(
        "shop", "0002_constraints", down="0001_tables",
        upgrade=NEEDS_CONVENTION_UP, downgrade=NEEDS_CONVENTION_DOWN,
    )
    repo.urls({"shop": url})


def constraint_names(url: str) -> set[str]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        insp = sa.inspect(engine)
        fks = {fk["name"] for fk in insp.get_foreign_keys("child")}
        uqs = {uq["name"] for uq in insp.get_unique_constraints("child")}
        return {n for n in fks | uqs if n}
    finally:
        engine.dispose()


def run_convention_history(repo: Monorepo, url: str) -> None:
    up = repo.cli("migrate")
    assert up.code == 0, up.output
    assert constraint_names(url) >= {"fk_child_parent_id_parent", "uq_child_code"}
    down = repo.cli("migrate", "shop", "0001_tables")
    assert down.code == 0, down.output
    assert not constraint_names(url) & {"fk_child_parent_id_parent", "uq_child_code"}
    assert version_heads(url) == {"0001_tables"}


def test_naming_convention_setting(repo: Monorepo, db_url: str) -> None:
    convention_history(repo, db_url)
    table = "\n".join(f'{k} = "{v}"' for k, v in CONVENTION.items())
    repo.write("services/shop/settings.toml", f"[default.naming_convention]\n{table}\n")
    run_convention_history(repo, db_url)


def test_naming_convention_from_models_py(repo: Monorepo, db_url: str) -> None:
    convention_history(repo, db_url)
    repo.write(
        "services/shop/models.py",
        "import sqlalchemy as sa\n\n"
        f"metadata = sa.MetaData(naming_convention={CONVENTION!r})\n"
        'parent = sa.Table("parent", metadata, sa.Column("id", sa.Integer, primary_key=True))\n',
    )
    run_convention_history(repo, db_url)


def test_without_a_convention_the_history_fails(repo: Monorepo, sqlite_url: str) -> None:
    """The control: the same history with no convention cannot even add its constraints."""
    convention_history(repo, sqlite_url)
    result = repo.cli("migrate")
    assert result.code == 1
    assert "shop:0002_constraints" in result.stderr
    assert version_heads(sqlite_url) == {"0001_tables"}


@pytest.mark.parametrize("where", ["models", "setting"])
def test_models_setting_points_at_metadata(repo: Monorepo, sqlite_url: str, where: str) -> None:
    convention_history(repo, sqlite_url)
    repo.write(
        "services/shop/schema/tables.py",
        "import sqlalchemy as sa\n\n"
        "class Base:\n"
        f"    metadata = sa.MetaData(naming_convention={CONVENTION!r})\n",
    )
    value = "schema.tables:Base.metadata" if where == "models" else "schema.tables:nothing"
    repo.write("services/shop/settings.toml", f'[default]\nmodels = "{value}"\n')
    if where == "models":
        run_convention_history(repo, sqlite_url)
    else:
        result = repo.cli("migrate")
        assert result.code == 2
        assert "tables.py" in result.stderr and "schema.tables:nothing" in result.stderr
