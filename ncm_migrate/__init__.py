"""ncm-migrate: migrations for every service of a monorepo, on Alembic's engine.

The verbs below are the Python API; `python manage.py <verb>` is the same thing on the
command line.
"""

from __future__ import annotations

from .commands import (
    abackup,
    amigrate,
    arepair,
    arestore,
    arollback,
    backup,
    check,
    doctor,
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
