"""ncm-migrate: migrations for every service of a monorepo, on Alembic's engine.

The verbs below are the Python API; `python manage.py <verb>` is the same thing on the
command line.
"""

from __future__ import annotations

from .commands import (
    MigrateResult,
    amigrate,
    doctor,
    history,
    init,
    makemigrations,
    migrate,
    migrate_sql,
    plan,
    rollback,
    services,
    showmigrations,
    sqlmigrate,
    startservice,
    verify,
    wait,
)
from .errors import NcmError

__all__ = [
    "MigrateResult",
    "NcmError",
    "amigrate",
    "doctor",
    "history",
    "init",
    "makemigrations",
    "migrate",
    "migrate_sql",
    "plan",
    "rollback",
    "services",
    "showmigrations",
    "sqlmigrate",
    "startservice",
    "verify",
    "wait",
]
