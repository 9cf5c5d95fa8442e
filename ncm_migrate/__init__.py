"""ncm-migrate: migrations for every service of a monorepo, on Alembic's engine.

The verbs below are the Python API; `python manage.py <verb>` is the same thing on the
command line. They are imported on first use (PEP 562), so `import ncm_migrate.graph`
needs none of the database libraries, Dynaconf or Typer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .commands import (
        abackup,
        amigrate,
        arepair,
        arestore,
        arollback,
        backup,
        check,
        doctor,
        drift,
        history,
        init,
        lint,
        makemigrations,
        migrate,
        migrate_sql,
        plan,
        repair,
        restore,
        rollback,
        services,
        showmigrations,
        sqlmigrate,
        startservice,
        validate,
        verify,
        wait,
    )
    from .errors import NcmError
    from .running import MigrateResult

__all__ = [
    "MigrateResult",
    "NcmError",
    "abackup",
    "amigrate",
    "arepair",
    "arestore",
    "arollback",
    "backup",
    "check",
    "doctor",
    "drift",
    "history",
    "init",
    "lint",
    "makemigrations",
    "migrate",
    "migrate_sql",
    "plan",
    "repair",
    "restore",
    "rollback",
    "services",
    "showmigrations",
    "sqlmigrate",
    "startservice",
    "validate",
    "verify",
    "wait",
]

# Where each public name lives, read by __getattr__ when the name is first asked for: the
# verbs live in `commands`, the other two as named.
_HOMES = {"MigrateResult": "running", "NcmError": "errors"}


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'ncm_migrate' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES.get(name, 'commands')}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
