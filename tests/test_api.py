"""The Python API: paths as `str` or `os.PathLike`, the project's own example services, a
dependency this environment leaves out, and the async twins of every verb that changes a
database (a sync verb inside a running event loop names its twin)."""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from monorepo import REPO, Monorepo, version_heads

import ncm_migrate
from ncm_migrate import commands
from ncm_migrate.errors import BadInput, NcmError, ServiceNotConfigured
from ncm_migrate.loader import load_project


class PathLikeOnly(os.PathLike[str]):
    """A path-like object that is neither `str` nor `Path`."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __fspath__(self) -> str:
        return self.path


@pytest.fixture
def example(repo: Monorepo) -> Monorepo:
    """A copy of this repository's own services/ and settings/ (SQLite in development)."""
    for folder in ("services", "settings"):
        shutil.copytree(REPO / folder, repo.root / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.db"))
    return repo


def test_showmigrations_of_one_service_of_the_example(example: Monorepo) -> None:
    """billing requires users:0001 and users:0002 and depends_on users, outside the selection."""
    result = example.cli("showmigrations", "billing")
    assert result.code == 0, result.output
    assert result.stdout.splitlines()[0] == "billing [sql]"
    assert "users [sql]" not in result.stdout and "3 pending" in result.stdout
    assert example.cli("migrate").code == 0
    applied = example.cli("showmigrations", "billing")
    assert applied.code == 0 and "[ ]" not in applied.stdout
    assert applied.stdout.count("[X]") == 3


@pytest.mark.parametrize("as_arg", [str, PathLikeOnly], ids=["str", "pathlike"])
def test_every_path_argument_takes_str_and_pathlike(
    example: Monorepo, tmp_path: Path, as_arg: Callable[[Path], str | os.PathLike[str]]
) -> None:
    root, settings = as_arg(example.root), as_arg(example.root / "settings")
    where = {"root": root, "settings_dir": settings}
    status = ncm_migrate.showmigrations(["billing"], **where)
    assert [s.name for s in status] == ["billing"]
    assert [r.revision for r in status[0].revisions] == [
        "0001_initial", "0002_invoice_lines", "0003_backfill_lines",
    ]
    assert load_project(root, settings_dir=settings).root == example.root
    assert {s.name for s in ncm_migrate.services(**where)} >= {"users", "billing"}
    assert ncm_migrate.plan(["billing"], **where).steps
    assert ncm_migrate.validate(["billing"], **where).exit_code == 0
    assert ncm_migrate.lint(["users"], **where).exit_code == 0
    ncm_migrate.check(**where)
    done = ncm_migrate.migrate(["users"], **where)
    assert {r.outcome for r in done.results} == {"applied"}
    assert ncm_migrate.history(["users"], **where)
    assert ncm_migrate.doctor(["users"], **where)[0].reachable
    assert ncm_migrate.wait(["users"], timeout=5, **where)
    assert [v.ok for v in ncm_migrate.verify(["users"], **where)] == [True]
    assert ncm_migrate.repair("users", **where) == []
    folder, _ = ncm_migrate.backup("users", as_arg(tmp_path / "b"), **where)
    assert folder == tmp_path / "b"
    assert ncm_migrate.rollback("users", "zero", **where).results
    assert ncm_migrate.restore("users", as_arg(folder), **where).heads == ("0003_seed_roles",)
    assert ncm_migrate.sqlmigrate("users", "0001", **where)
    made = ncm_migrate.makemigrations(["users"], empty=True, message="x", dry_run=True, **where)
    assert [n.service for n in made.written] == ["users"]
    assert ncm_migrate.startservice("orders", **where).name == "orders"
    assert (example.root / "services" / "orders" / "migrations").is_dir()
    assert ncm_migrate.init(as_arg(tmp_path / "fresh"))


def test_a_dependency_left_out_of_the_environment(example: Monorepo) -> None:
    """
    users (no database_url in `partial`)  <-- requires / depends_on --  billing
    """
    settings = example.root / "settings" / "settings.toml"
    settings.write_text(settings.read_text() + (
        '\n[partial.services.billing]\ndatabase_url = "sqlite:///var/partial/billing.db"\n'
    ))
    shown = example.cli("showmigrations", "billing", "--env", "partial")
    assert shown.code == 0, shown.output
    assert "billing [sql]" in shown.stdout and "3 pending" in shown.stdout
    assert "billing:0001_initial needs users:0001_initial" in shown.stderr
    assert "'users' cannot be used in environment 'partial'" in shown.stderr
    assert "Traceback" not in shown.output
    assert [s.name for s in ncm_migrate.showmigrations(env="partial", root=example.root)] == [
        "billing"
    ]
    for args in (("migrate", "billing"), ("migrate", "--plan", "billing"), ("migrate",),
                 ("migrate", "billing", "0002_invoice_lines")):
        refused = example.cli(*args, "--env", "partial")
        assert refused.code == 2, (args, refused.output)
        assert "'users' cannot be used in environment 'partial': no database_url" in refused.stderr
        assert "Traceback" not in refused.output
    with pytest.raises(ServiceNotConfigured, match="users"):
        ncm_migrate.migrate(["billing"], env="partial", root=example.root)
    billing_db = f"sqlite:///{example.root / 'var' / 'partial' / 'billing.db'}"
    assert version_heads(billing_db, "alembic_version_billing") == set()


@pytest.mark.parametrize("env", ["development", "partial"])
def test_every_command_on_a_service_whose_dependency_is_outside_the_selection(
    example: Monorepo, env: str
) -> None:
    """billing selected alone; in `partial` users has no database (billing shares the
    development database, where everything was applied)."""
    settings = example.root / "settings" / "settings.toml"
    settings.write_text(settings.read_text() + (
        '\n[partial.services.billing]\ndatabase_url = "sqlite:///var/development/billing.db"\n'
    ))
    assert example.cli("migrate").code == 0
    for args in (("showmigrations", "billing"), ("showmigrations", "billing", "--json"),
                 ("migrate", "billing"), ("migrate", "--plan", "billing"),
                 ("migrate", "--verify-only", "billing"), ("validate", "billing"),
                 ("history", "billing"), ("doctor", "billing"), ("migrate", "--sql", "billing"),
                 ("migrate", "billing", "0002", "--plan"), ("rollback", "billing"),
                 ("migrate", "billing"), ("showmigrations",)):
        result = example.cli(*args, "--env", env)
        assert result.code == 0, (args, result.output)
        assert "Traceback" not in result.output and "cannot be used" not in result.stderr
    assert [s.pending for s in ncm_migrate.showmigrations(["billing"], env=env, root=example.root)] == [0]


def two_revisions(repo: Monorepo, tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'users.db'}"
    repo.table("users", "0001_a", "users_a")
    repo.table("users", "0002_b", "users_b", down="0001_a")
    repo.urls({"users": url})
    return url


def test_async_twins_do_the_same_work(repo: Monorepo, tmp_path: Path) -> None:
    url = two_revisions(repo, tmp_path)

    async def app() -> None:
        await ncm_migrate.amigrate(root=repo.root)
        folder, manifest = await ncm_migrate.abackup("users", tmp_path / "b", root=repo.root)
        assert manifest.heads == ("0002_b",)
        back = await ncm_migrate.arollback("users", root=repo.root)
        assert [(r.revision, r.outcome) for r in back.results] == [("0002_b", "reverted")]
        assert await ncm_migrate.arepair("users", root=repo.root) == []
        restored = await ncm_migrate.arestore("users", folder, root=repo.root)
        assert restored.heads == ("0002_b",)

    asyncio.run(app())
    assert version_heads(url) == {"0002_b"}


VERBS: dict[str, Callable[[Path, Path], object]] = {
    "migrate": lambda root, _: ncm_migrate.migrate(root=root),
    "rollback": lambda root, _: ncm_migrate.rollback("users", root=root),
    "repair": lambda root, _: ncm_migrate.repair("users", root=root),
    "backup": lambda root, out: ncm_migrate.backup("users", out, root=root),
    "restore": lambda root, out: ncm_migrate.restore("users", out, root=root),
}


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_a_sync_verb_inside_a_running_loop_names_its_twin(
    repo: Monorepo, tmp_path: Path, verb: str
) -> None:
    url = two_revisions(repo, tmp_path)
    assert repo.cli("migrate", "users", "0001_a").code == 0
    assert callable(getattr(ncm_migrate, f"a{verb}"))
    assert asyncio.iscoroutinefunction(getattr(commands, f"a{verb}"))

    async def app() -> None:
        VERBS[verb](repo.root, tmp_path / "b")

    with pytest.raises(BadInput) as info:
        asyncio.run(app())
    assert isinstance(info.value, NcmError) and info.value.exit_code == 2
    assert f"await ncm_migrate.a{verb}(" in str(info.value)
    assert f"ncm_migrate.{verb}()" in str(info.value)
    assert version_heads(url) == {"0001_a"}
    assert not (tmp_path / "b").exists()


def test_async_twins_keep_the_signature_and_errors(repo: Monorepo, tmp_path: Path) -> None:
    two_revisions(repo, tmp_path)
    twin: Callable[..., Awaitable[object]] = ncm_migrate.arollback
    assert twin.__name__ == "arollback" and "rollback" in (twin.__doc__ or "")
    assert inspect.signature(twin) == inspect.signature(ncm_migrate.rollback)
    with pytest.raises(NcmError) as info:
        asyncio.run(ncm_migrate.arollback("nope", root=repo.root))
    assert info.value.exit_code == 2


def test_a_close_that_fails_after_an_error_does_not_hide_that_error(
    repo: Monorepo, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `history` opens and closes a backend per service (`backends.opened_backend`): the
    # error that stopped it is the one raised, not the close's that came after it.
    from ncm_migrate.backends.sql.backend import SqlBackend
    from ncm_migrate.errors import DatabaseUnreachable

    repo.table("users", "0001_initial", "users_t")
    repo.settings(f'[development]\ndatabase_url = "{sqlite_url}"\n')
    ncm_migrate.migrate(root=repo.root)

    def lost(self: SqlBackend, limit: int | None = None) -> list[object]:
        raise DatabaseUnreachable("the connection was lost")

    def broken_close(self: SqlBackend) -> None:
        raise RuntimeError("close failed")

    monkeypatch.setattr(SqlBackend, "close", broken_close)
    with pytest.raises(RuntimeError, match="close failed"):  # nothing else went wrong
        ncm_migrate.history(root=repo.root)
    monkeypatch.setattr(SqlBackend, "history", lost)
    with pytest.raises(DatabaseUnreachable, match="the connection was lost"):
        ncm_migrate.history(root=repo.root)


def test_every_verb_takes_where_once_and_refuses_an_unknown_keyword() -> None:
    """The verbs take the monorepo, environment and settings folder as one `Where`
    (`**where`), declared once; a misspelt keyword is still Python's TypeError."""
    from ncm_migrate.loader import Where

    verbs = [name for name in ncm_migrate.__all__
             if inspect.isfunction(getattr(ncm_migrate, name))
             and "where" in inspect.signature(getattr(ncm_migrate, name)).parameters]
    assert {"migrate", "rollback", "showmigrations", "validate", "makemigrations",
            "amigrate"} <= set(verbs)
    for name in verbs:
        params = inspect.signature(getattr(ncm_migrate, name)).parameters
        assert not {"env", "root", "settings_dir"} & set(params), name
    assert Where.__optional_keys__ == {"env", "root", "settings_dir"}
    with pytest.raises(TypeError, match="unexpected keyword argument 'enviroment'"):
        ncm_migrate.showmigrations(enviroment="staging")  # type: ignore[call-arg]


def test_the_lazy_package_exports_every_verb_of_commands() -> None:
    """`ncm_migrate.__all__` is written out (the package imports lazily, so it cannot read
    `commands.__all__` without importing Dynaconf); this keeps the two lists one."""
    verbs = {name for name in commands.__all__ if inspect.isfunction(getattr(commands, name))}
    assert verbs == set(ncm_migrate.__all__) - {"MigrateResult", "NcmError"}
