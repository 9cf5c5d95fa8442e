"""The import contracts in pyproject.toml hold for the package, and fail when broken.

Each breaking case copies the package to a temporary folder, appends one forbidden import
to one module of the copy, and runs `lint-imports` there with the project's own contracts.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root, env=env, capture_output=True, text=True, timeout=300,
    )


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "ncm_migrate", tmp_path / "ncm_migrate",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_package_keeps_every_contract(package_copy: Path) -> None:
    result = _lint_imports(package_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" not in result.stdout.split("Contracts:")[-1].replace("0 broken", "")


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("graph.py", "import sqlalchemy", "The core imports no database library"),
        ("discovery.py", "import dynaconf", "The core imports no database library"),
        ("model.py", "from . import cli", "Layers point one way"),
        ("executor.py", "from . import commands", "Layers point one way"),
        ("planning.py", "import alembic", "Only the backends import SQLAlchemy"),
        # the cli/ package named once in a contract covers each of its modules
        ("cli/output.py", "import sqlalchemy", "Only the backends import SQLAlchemy"),
        ("model.py", "from .cli import argv", "Layers point one way"),
        ("commands.py", "import typer", "Only the CLI imports Typer, Click and Rich"),
        ("inspection.py", "from . import commands", "Layers point one way"),
        ("authoring.py", "import typer", "Only the CLI imports Typer, Click and Rich"),
        ("urls.py", "from rich.console import Console", "Only the CLI imports Typer"),
        ("executor.py", "from . import settings", "The engine does not import the Dynaconf loader"),
        ("planning.py", "from .loader import load_project", "The engine does not import the Dynaconf loader"),
        ("running.py", "from . import settings_values", "The engine does not import the Dynaconf loader"),
        ("executor.py", "from .settings_files import read_toml",
         "The engine does not import the Dynaconf loader"),
        ("settings_values.py", "from . import settings_files", "Layers point one way"),
        ("config.py", "import dynaconf", "The core imports no database library"),
        ("backends/sql/autogen.py", "from . import alembic_bridge",
         "Only backends.sql.run and .offline import the Alembic bridge"),
        ("backends/sql/backend.py", "from . import alembic_bridge",
         "Only backends.sql.run and .offline import the Alembic bridge"),
        ("backends/sql/bookkeeping.py", "from .alembic_bridge import revision_map",
         "Only backends.sql.run and .offline import the Alembic bridge"),
        ("backends/mongo/backup.py", "from ..sql import backend",
         "The SQL, MongoDB and Redis backends do not import each other"),
        ("backends/sql/backup.py", "from ..mongo.lease import Lease",
         "The SQL, MongoDB and Redis backends do not import each other"),
        ("backends/redis/backup.py", "from ..mongo.lease import Lease",
         "The SQL, MongoDB and Redis backends do not import each other"),
        ("backends/redis/ledger.py", "from .run import CLAIM",
         "The Redis backend's layers"),
    ],
)
def test_a_forbidden_import_breaks_its_contract(
    package_copy: Path, module: str, line: str, contract: str
) -> None:
    target = package_copy / "ncm_migrate" / module
    target.write_text(target.read_text() + textwrap.dedent(f"\n{line}  # noqa\n"))
    result = _lint_imports(package_copy)
    assert result.returncode != 0
    # "<name> BROKEN", or "<name> BROKEN (2 ignored imports)" for a contract with exceptions
    broken = [row for row in result.stdout.splitlines() if re.search(r"BROKEN( \(.*\))?$", row.rstrip())]
    assert any(row.startswith(contract) for row in broken), result.stdout


# What only backends/sql/alembic_bridge.py may name: Alembic's internals (its docstrings say
# which public API each stands in for, and why that was not enough).
ALEMBIC_INTERNALS = (
    "RevisionStep", "HeadMaintainer", "update_version_num", "on_version_apply_callbacks",
    "Operations.context", "should_create_branch", "should_merge_branches", ".revision_map =",
    "alembic.script.revision",
)


def test_alembic_internals_are_named_in_one_module() -> None:
    bridge = REPO / "ncm_migrate" / "backends" / "sql" / "alembic_bridge.py"
    assert all(name in bridge.read_text() for name in ALEMBIC_INTERNALS)
    for path in sorted((REPO / "ncm_migrate").rglob("*.py")):
        if path != bridge:
            found = [name for name in ALEMBIC_INTERNALS if name in path.read_text()]
            assert not found, f"{path.relative_to(REPO)} uses {found}: move it to alembic_bridge"


def test_the_core_imports_without_the_heavy_dependencies() -> None:
    """`import ncm_migrate.graph` (and the rest of the core) works where Dynaconf, Typer and
    the database libraries cannot be imported at all."""
    blocked = ["sqlalchemy", "alembic", "pymongo", "bson", "dynaconf", "typer", "click",
               "rich", "jinja2", "tenacity", "psycopg", "pymysql"]
    code = textwrap.dedent(f"""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {blocked!r}:
                    raise ImportError("blocked: " + name)
                return None
        sys.meta_path.insert(0, Block())
        import ncm_migrate
        for name in ("model", "config", "events", "errors", "graph", "discovery", "findings", "ledger",
                     "locking"):
            importlib.import_module("ncm_migrate." + name)
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_each_public_name_is_defined_once() -> None:
    """A module-level function or class name means one thing in the package: two
    `wait_for`s or two `dialect_of`s that answer differently are a trap for the reader."""
    where: dict[str, list[str]] = {}
    for path in sorted((REPO / "ncm_migrate").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            defines = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            if defines and not node.name.startswith("_"):
                where.setdefault(node.name, []).append(str(path.relative_to(REPO)))
    assert {name: paths for name, paths in where.items() if len(paths) > 1} == {}


def test_the_engine_imports_without_dynaconf() -> None:
    """The engine (and the project it plans over) takes settings as values (`config.py`):
    it imports where Dynaconf cannot be imported, while loading settings needs it."""
    code = textwrap.dedent("""
        import importlib, importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "dynaconf":
                    raise ImportError("blocked: " + name)
                return None
        sys.meta_path.insert(0, Block())
        for name in ("config", "project", "executor", "planning", "running"):
            importlib.import_module("ncm_migrate." + name)
        from pathlib import Path
        from ncm_migrate.settings import load_settings  # Dynaconf only when settings load
        try:
            load_settings(Path("."))
        except ImportError:
            print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_the_readme_lists_every_module_once() -> None:
    """README's "How the code is laid out" names each module of the package, one row each,
    and no module that is not there."""
    text = (REPO / "README.md").read_text()
    section = text.split("## How the code is laid out", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    listed = [name for row in rows for name in re.findall(r"`((?:\w+/)*\w+\.py)`", row)]
    modules = sorted(str(p.relative_to(REPO / "ncm_migrate")) for p in (REPO / "ncm_migrate").rglob("*.py"))
    assert sorted(listed) == modules
    assert all(len(re.findall(r"\.py`", row)) == 1 for row in rows)


def test_no_module_is_named_like_a_public_verb() -> None:
    """Importing a submodule sets it as an attribute of the package: a module named
    `makemigrations.py` would replace the verb `ncm_migrate.makemigrations` with itself
    once anything imported it. The modules take the noun (`linting`, `making_migrations`)."""
    import ncm_migrate

    modules = {p.stem for p in (REPO / "ncm_migrate").iterdir() if p.suffix == ".py"}
    modules |= {p.name for p in (REPO / "ncm_migrate").iterdir() if (p / "__init__.py").exists()}
    assert modules & set(ncm_migrate.__all__) == set()
