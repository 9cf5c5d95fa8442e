"""The entry point does not pay for commands it does not run: `--help` and `--version` import
neither SQLAlchemy nor Dynaconf (nor Alembic, Jinja2, tenacity...); `showmigrations` and a
no-op `migrate` import no Alembic (it applies revisions), pymongo or cryptography. Checked in
real subprocesses through `manage.py`, by the modules loaded at exit. Nothing is timed."""

from __future__ import annotations

from pathlib import Path

import pytest
from monorepo import Monorepo

from ncm_migrate.settings import load_settings, service_folders

HEAVY = {"sqlalchemy", "dynaconf", "alembic", "jinja2", "mako", "tenacity", "pymongo", "bson",
         "cryptography", "filelock", "psycopg", "redis"}

# manage.py as generated, plus a line on stderr naming the top-level modules loaded at exit.
MANAGE_PY = """\
import atexit
import sys
from pathlib import Path

atexit.register(lambda: sys.stderr.write(
    "\\nMODULES " + " ".join(sorted(m for m in sys.modules if "." not in m)) + "\\n"))

from ncm_migrate.cli import main

main(root=Path(__file__).resolve().parent)
"""

SERVICE_COMMAND = '''"""Say hello."""


def main() -> None:
    print("hello")
'''


def loaded(repo: Monorepo, *args: str) -> tuple[set[str], str]:
    result = repo.run(*args)
    assert result.code == 0, result.output
    line = next(x for x in result.stderr.splitlines() if x.startswith("MODULES "))
    return set(line.split()[1:]), result.stdout


@pytest.fixture
def project(repo: Monorepo, tmp_path: Path) -> Monorepo:
    repo.write("manage.py", MANAGE_PY)
    repo.table("users", "0001_initial", "users_t")
    repo.write("services/users/commands/hello.py", SERVICE_COMMAND)
    repo.urls({"users": f"sqlite:///{tmp_path / 'users.db'}"})
    return repo


def test_help_and_version_import_no_database_settings_or_template_library(
    project: Monorepo,
) -> None:
    for args in (("--help",), ("--version",), ("migrate", "--help"), ()):
        modules, _ = loaded(project, *args)
        assert not modules & HEAVY, (args, sorted(modules & HEAVY))
        assert {"typer", "rich"} <= modules
    _, top = loaded(project, "--help")
    assert "users:hello" in top  # the services' own commands are still listed


def test_showmigrations_and_noop_migrate_import_no_alembic(project: Monorepo) -> None:
    assert project.run("migrate", "-q").code == 0
    for args in (("showmigrations",), ("migrate",)):
        modules, _ = loaded(project, *args)
        assert "sqlalchemy" in modules and "dynaconf" in modules
        # jinja2 is imported by Dynaconf itself (dynaconf.utils.parse_conf), not asserted here.
        unwanted = {"alembic", "mako", "pymongo", "bson", "cryptography", "redis"}
        assert not modules & unwanted, (args, sorted(modules & unwanted))


@pytest.mark.parametrize(("env", "environ"), [
    ("development", {}),
    ("staging", {}),
    ("development", {"NCM_SERVICES_GLOB": "b*"}),  # read through Dynaconf: the same answer
])
def test_service_folders_without_dynaconf_agree_with_load_settings(
    repo: Monorepo, env: str, environ: dict[str, str]
) -> None:
    for folder in ("services/users", "services/billing", "apps/orders", "apps/stock"):
        (repo.root / folder / "migrations").mkdir(parents=True)
    repo.write("settings/settings.toml", """\
[default]
services_glob = "*"

[staging]
services_dir = "apps"

[global]
jobs = 2
""")
    repo.write("settings/settings.local.toml", '[STAGING]\nservices_glob = "s*"\n')
    expected = [s.root for s in load_settings(repo.root, env, environ=environ).services]
    assert service_folders(repo.root, env, environ=environ) == expected
    assert expected  # the case is not vacuous


def test_service_folders_fall_back_to_dynaconf_for_its_own_syntax(repo: Monorepo) -> None:
    for folder in ("services/users", "apps/orders"):
        (repo.root / folder / "migrations").mkdir(parents=True)
    repo.write("settings/settings.toml", '[development]\nservices_dir = "@format apps"\n')
    expected = [s.root for s in load_settings(repo.root, environ={}).services]
    assert service_folders(repo.root, environ={}) == expected == [repo.root / "apps" / "orders"]
