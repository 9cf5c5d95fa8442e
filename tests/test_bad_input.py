"""Bad input, table-driven: settings files, revision files, command-line arguments and
environment variables that a user gets wrong. Each case is data (a `Case`), run through the
CLI in-process against a copy of one small monorepo, and must give:

- its exit code (2 for bad input, per the contract; 1 or 4 where the contract says so);
- exactly one error line, one sentence, on stderr: no traceback, no Python exception class;
- no change to the database (the SQLite file's bytes, or the server's tables, version table
  and ledger rows) and no file written or removed anywhere: not in the project, nor beside
  it (the tests' folder holds the project, the database and the current folder).

The monorepo: `users` (0001_initial applied, 0002_more pending) and `billing`
(0001_invoices pending, requiring users:0001_initial), sharing one database.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa
from monorepo import CliResult, Monorepo, revision_file
from typer.testing import CliRunner

from ncm_migrate import cli

SETTINGS = '[development]\ndatabase_url = "{db}"\n'
BASE_FILES: dict[str, str] = {
    "settings/settings.toml": SETTINGS,
    "services/users/migrations/0001_initial.py": revision_file(
        "0001_initial", upgrade="op.create_table('people', sa.Column('id', sa.Integer, primary_key=True))",
        downgrade="op.drop_table('people')"),
    "services/users/migrations/0002_more.py": revision_file(
        "0002_more", down="0001_initial",
        upgrade="op.add_column('people', sa.Column('email', sa.String(50)))",
        downgrade="op.drop_column('people', 'email')"),
    "services/billing/migrations/0001_invoices.py": revision_file(
        "0001_invoices", requires=["users:0001_initial"],
        upgrade="op.create_table('invoices', sa.Column('id', sa.Integer, primary_key=True))",
        downgrade="op.drop_table('invoices')"),
}
KEY = "dGhpcyBpcyBub3QgYSBrZXkgYnV0IGl0IGlzIDMyIGJ5dGVzISE="  # 32 bytes, base64: looks like one


@dataclass(frozen=True)
class Case:
    """One bad input: what to write into the monorepo (`{db}` is the database URL; None
    removes a file), the environment variables, the command line, and what must come out."""

    id: str
    args: tuple[str, ...]
    code: int = 2
    words: str = ""  # a fragment of the error sentence (case-insensitive)
    files: Mapping[str, str | None] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    user_code: bool = False  # the error quotes the user's own exception (an import that failed)
    report: bool = False  # validate/lint/check: the error is the one finding of their report


def rev(name: str, **kw: object) -> dict[str, str]:
    """A revision file for `users` after 0002_more."""
    kw.setdefault("down", "0002_more")
    return {f"services/users/migrations/{name}.py": revision_file(name, **kw)}  # type: ignore[arg-type]


def raw(name: str, text: str, service: str = "users") -> dict[str, str]:
    return {f"services/{service}/migrations/{name}.py": text}


def header(revision: str = "0003_x", down: str = "'0002_more'", extra: str = "") -> str:
    return (f'"""x"""\nrevision = {revision}\ndown_revision = {down}\nbranch_labels = None\n'
            f"depends_on = None\n{extra}\n\ndef upgrade():\n    pass\n\n\ndef downgrade():\n    pass\n")


def settings(text: str) -> dict[str, str]:
    return {"settings/settings.toml": SETTINGS + text}


MIGRATE = ("migrate",)

CLI_CASES = [
    Case("unknown-command", ("migrat",), words="No such command"),
    Case("unknown-option", ("migrate", "--nope"), words="No such option"),
    Case("unknown-global-option", ("--colour", "migrate"), words="No such option"),
    Case("migrate-unknown-service", ("migrate", "nosuch"), words="Unknown service 'nosuch'"),
    Case("migrate-unknown-revision", ("migrate", "users", "0009_nosuch"), words="0009_nosuch"),
    Case("migrate-revision-with-quote", ("migrate", "users", "x'; DROP TABLE people; --"), words="users"),
    Case("migrate-revision-too-long", ("migrate", "users", "a" * 40), words="users"),
    Case("migrate-target-of-other-service", ("migrate", "users", "0001_invoices"), words="0001_invoices"),
    Case("migrate-jobs-zero", ("migrate", "--jobs", "0"), words="jobs"),
    Case("migrate-jobs-text", ("migrate", "--jobs", "many"), words="many"),
    Case("migrate-both-rollback-flags", ("migrate", "--rollback-on-failure", "--no-rollback-on-failure"),
         words="not both"),
    Case("migrate-three-arguments", ("migrate", "users", "head", "extra"), words="extra"),
    Case("rollback-no-service", ("rollback",), words="Name the service to roll back, or give --run ID"),
    Case("rollback-unknown-service", ("rollback", "nosuch"), words="Unknown service 'nosuch'"),
    Case("rollback-steps-zero", ("rollback", "users", "--steps", "0"), words="steps"),
    Case("rollback-steps-negative", ("rollback", "users", "--steps", "-2"), words="steps"),
    Case("rollback-steps-text", ("rollback", "users", "--steps", "two"), words="two"),
    Case("rollback-unknown-target", ("rollback", "users", "0007_nosuch"), words="0007_nosuch"),
    Case("rollback-target-not-applied", ("rollback", "users", "0002_more"), words="0002_more"),
    Case("sqlmigrate-missing-revision", ("sqlmigrate", "users"), words="Missing argument"),
    Case("sqlmigrate-unknown-revision", ("sqlmigrate", "users", "0042"), words="0042"),
    Case("sqlmigrate-unknown-service", ("sqlmigrate", "nosuch", "0001"), words="nosuch"),
    Case("showmigrations-unknown-service", ("showmigrations", "nosuch"), words="Unknown service"),
    Case("status-unknown-service", ("status", "users", "nosuch"), words="Unknown service"),
    Case("history-unknown-service", ("history", "nosuch"), words="Unknown service"),
    Case("history-limit-zero", ("history", "--limit", "0"), words="limit"),
    Case("history-limit-text", ("history", "--limit", "ten"), words="ten"),
    Case("wait-negative-timeout", ("wait", "--timeout", "-1"), words="timeout"),
    Case("wait-unknown-service", ("wait", "nosuch"), words="Unknown service"),
    Case("doctor-unknown-service", ("doctor", "nosuch"), words="Unknown service"),
    Case("validate-unknown-service", ("validate", "nosuch"), words="Unknown service"),
    Case("lint-unknown-service", ("lint", "nosuch"), words="Unknown service"),
    Case("check-services-without-drift-or-roundtrip", ("check", "users"), words="--drift"),
    Case("check-drift-unknown-service", ("check", "--drift", "nosuch"), words="Unknown service"),
    Case("repair-unknown-service", ("repair", "nosuch"), words="Unknown service"),
    Case("backup-unknown-service", ("backup", "nosuch"), words="Unknown service"),
    Case("backup-output-is-a-file", ("backup", "users", "-o", "settings/settings.toml"), words="file"),
    Case("backup-output-under-a-file", ("backup", "users", "-o", "settings/settings.toml/bk"),
         words="Cannot create backup folder"),
    Case("restore-missing-folder", ("restore", "users", "no/such/folder"), words="no/such/folder"),
    Case("restore-from-a-file", ("restore", "users", "settings/settings.toml"), words="settings.toml"),
    Case("restore-empty-folder", ("restore", "users", "services/users"), words="manifest"),
    Case("restore-unknown-service", ("restore", "nosuch", "x"), words="nosuch"),
    Case("makemigrations-unknown-service", ("makemigrations", "nosuch"), words="Unknown service"),
    Case("makemigrations-unknown-type", ("makemigrations", "users", "--empty", "--type", "weird"),
         words="weird"),
    Case("makemigrations-requires-no-colon", ("makemigrations", "users", "--empty", "--requires", "billing"),
         words="billing"),
    Case("makemigrations-requires-unknown-service",
         ("makemigrations", "users", "--empty", "--requires", "nosuch:0001"), words="nosuch"),
    Case("makemigrations-requires-unknown-revision",
         ("makemigrations", "users", "--empty", "--requires", "billing:0099"), words="0099"),
    Case("makemigrations-merge-without-service", ("makemigrations", "--merge"), words="merge"),
    Case("makemigrations-merge-nothing-to-merge-unknown", ("makemigrations", "nosuch", "--merge"),
         words="nosuch"),
    Case("startservice-bad-name", ("startservice", "Bad-Name"), words="invalid"),
    Case("startservice-long-name", ("startservice", "a" * 60), words="invalid"),
    Case("startservice-exists", ("startservice", "users"), words="already exists"),
    Case("startservice-unknown-backend", ("startservice", "orders", "--backend", "oracle"), words="oracle"),
    Case("startservice-bad-url", ("startservice", "orders", "--database-url", "nonsense"),
         words="not a valid database URL"),
    Case("startservice-url-with-password",
         ("startservice", "orders", "--database-url", "postgresql://u:pw@h/db"), words="password"),
    Case("startservice-backend-mismatch",
         ("startservice", "orders", "--backend", "mongo", "--database-url", "sqlite:///x.db"),
         words="does not match"),
    Case("init-into-a-file", ("init", "settings/settings.toml"), words="not a folder"),
    Case("init-over-this-project", ("init", "."), words="Refusing to overwrite"),
    Case("help-unknown-command", ("help", "migrat"), words="Unknown command"),
    Case("migrate-empty-target", ("migrate", "users", ""), words="users"),
    Case("sqlmigrate-empty-revision", ("sqlmigrate", "users", ""), words="users"),
    Case("backup-empty-output", ("backup", "users", "-o", ""), words="backup"),
    Case("restore-empty-folder-name", ("restore", "users", ""), words="manifest"),
    Case("history-limit-huge", ("history", "--limit", "9" * 30), code=0),
    Case("wait-timeout-nan", ("wait", "--timeout", "nan"), words="timeout"),
    Case("env-unicode", ("--env", "prodüction", "migrate"), words="not a valid name"),
    Case("service-command-broken", ("users:tool",), code=2,
         files={"services/users/commands/tool.py": "def main(:\n"}, words="tool.py", user_code=True),
    Case("service-command-raises-at-import", ("users:tool",), code=2,
         files={"services/users/commands/tool.py": "raise RuntimeError('no')\n"}, words="tool.py",
         user_code=True),
    Case("service-command-exports-nothing", ("users:tool",), code=2,
         files={"services/users/commands/tool.py": "x = 1\n"}, words="tool.py"),
    Case("history-limit-negative", ("history", "--limit", "-1"), words="limit"),
    Case("rollback-target-and-steps", ("rollback", "users", "0001_initial", "--steps", "1"),
         words="not both"),
    Case("migrate-sql-unknown-service", ("migrate", "nosuch", "--sql"), words="nosuch"),
    Case("migrate-plan-unknown-revision", ("migrate", "users", "0077", "--plan"), words="0077"),
    Case("restore-garbage-manifest", ("restore", "users", "bk"), files={"bk/manifest.json": "{not json"},
         words="manifest"),
    Case("restore-manifest-of-another-service", ("restore", "users", "bk"),
         files={"bk/manifest.json": '{"format": 2, "service": "billing", "backend": "sql", "dialect": '
                '"sqlite", "environment": "development", "heads": [], "time": "x", "encrypted": false, '
                '"files": [], "tool_version": "0", "sha256": {}}'}, words="billing"),
    Case("restore-manifest-a-list", ("restore", "users", "bk"), files={"bk/manifest.json": "[1, 2]"},
         words="manifest"),
    Case("service-command-unknown", ("users:nosuch",), words="No such command"),
    Case("env-unknown", ("--env", "prodution", "migrate"), words="Unknown environment"),
    Case("env-empty", ("--env", "", "migrate"), words="environment"),
    Case("env-path", ("--env", "../x", "migrate"), words="not a valid name"),
    Case("env-too-long", ("--env", "e" * 70, "migrate"), words="64"),
    Case("env-after-command-unknown", ("migrate", "--env", "nosuch"), words="Unknown environment"),
    Case("settings-folder-missing", ("--settings", "no/such", "migrate"), words="no/such"),
    Case("settings-folder-is-a-file", ("--settings", "settings/settings.toml", "migrate"),
         words="settings.toml"),
]

ENV_CASES = [
    Case("NCM_ENV-unknown", MIGRATE, env={"NCM_ENV": "prodution"}, words="Unknown environment"),
    Case("NCM_ENV-empty", MIGRATE, env={"NCM_ENV": ""}, words="environment"),
    Case("NCM_ENV-slash", MIGRATE, env={"NCM_ENV": "a/b"}, words="not a valid name"),
    Case("NCM_ACTOR-too-long", MIGRATE, env={"NCM_ACTOR": "x" * 200}, words="NCM_ACTOR"),
    Case("NCM_RUN_ID-too-long", MIGRATE, env={"NCM_RUN_ID": "r" * 40}, words="NCM_RUN_ID"),
    Case("NCM_RUN_ID-spaces", MIGRATE, env={"NCM_RUN_ID": "deploy 42; drop"}, words="NCM_RUN_ID"),
    Case("NCM_JOBS-text", MIGRATE, env={"NCM_JOBS": "many"}, words="jobs"),
    Case("NCM_JOBS-zero", MIGRATE, env={"NCM_JOBS": "0"}, words="jobs"),
    Case("NCM_JOBS-negative", MIGRATE, env={"NCM_JOBS": "-3"}, words="jobs"),
    Case("NCM_CONNECT-retries-negative", MIGRATE, env={"NCM_CONNECT__RETRIES": "-1"}, words="retries"),
    Case("NCM_CONNECT-max-wait-text", MIGRATE, env={"NCM_CONNECT__MAX_WAIT_S": "soon"}, words="max_wait_s"),
    Case("NCM_LOCK-timeout-negative", MIGRATE, env={"NCM_LOCK__TIMEOUT_S": "-5"}, words="timeout_s"),
    Case("NCM_LOCK-timeout-list", MIGRATE, env={"NCM_LOCK__TIMEOUT_S": "[1, 2]"}, words="timeout_s"),
    Case("NCM_URL-no-scheme", MIGRATE, env={"NCM_SERVICES__USERS__DATABASE_URL": "nonsense"},
         words="NCM_SERVICES__USERS__DATABASE_URL"),
    Case("NCM_URL-unsupported", MIGRATE, env={"NCM_SERVICES__USERS__DATABASE_URL": "oracle://h/db"},
         words="oracle"),
    Case("NCM_URL-bad-port", MIGRATE,
         env={"NCM_SERVICES__USERS__DATABASE_URL": "postgresql+psycopg://u@h:notaport/db"},
         words="DATABASE_URL"),
    Case("NCM_URL-unencoded-at", MIGRATE,
         env={"NCM_SERVICES__USERS__DATABASE_URL": "postgresql+psycopg://u:p@ss@h/db"}, words="encoded"),
    Case("NCM_URL-unknown-driver", MIGRATE,
         env={"NCM_SERVICES__USERS__DATABASE_URL": "postgresql+nosuchdriver://u@h/db"},
         words="nosuchdriver"),
    Case("NCM_DATABASE_URL-no-scheme", MIGRATE, env={"NCM_DATABASE_URL": "just-a-name"},
         words="DATABASE_URL"),
    Case("NCM_BACKEND-unknown", MIGRATE, env={"NCM_SERVICES__USERS__BACKEND": "oracle"}, words="backend"),
    Case("NCM_BACKEND-mismatch", MIGRATE, env={"NCM_SERVICES__USERS__BACKEND": "mongo"}, words="users"),
    Case("NCM_VERSION_TABLE-sql", MIGRATE, env={"NCM_SERVICES__USERS__VERSION_TABLE": "v; DROP TABLE x"},
         words="version_table"),
    Case("NCM_VERSION_TABLE-too-long", MIGRATE,
         env={"NCM_SERVICES__USERS__VERSION_TABLE": "v" * 100}, words="version_table"),
    Case("NCM_DEPENDS_ON-unknown", MIGRATE, env={"NCM_SERVICES__USERS__DEPENDS_ON": '["nosuch"]'},
         words="nosuch"),
    Case("NCM_DEPENDS_ON-cycle", MIGRATE, env={"NCM_SERVICES__USERS__DEPENDS_ON": '["billing"]'},
         words="billing"),
    Case("NCM_DEPENDS_ON-number", MIGRATE, env={"NCM_SERVICES__USERS__DEPENDS_ON": "5"},
         words="depends_on"),
    Case("NCM_REVISION_IDS-unknown", ("makemigrations", "users", "--empty"),
         env={"NCM_SERVICES__USERS__REVISION_IDS": "uuid"}, words="revision_ids"),
    Case("NCM_USE_ENV_PY-maybe", MIGRATE, env={"NCM_SERVICES__USERS__USE_ENV_PY": "maybe"},
         words="use_env_py"),
    Case("NCM_ENABLED-maybe", MIGRATE, env={"NCM_SERVICES__USERS__ENABLED": "maybe"}, words="enabled"),
    Case("NCM_PROTECTED-maybe", MIGRATE, env={"NCM_PROTECTED": "maybe"}, words="protected"),
    Case("NCM_ROLLBACK_ON_FAILURE-maybe", MIGRATE, env={"NCM_ROLLBACK_ON_FAILURE": "maybe"},
         words="rollback_on_failure"),
    Case("NCM_LINT-severity", ("lint",), env={"NCM_LINT__SEVERITY": "fatal"}, words="severity"),
    Case("NCM_SERVICES_DIR-missing", MIGRATE, env={"NCM_SERVICES_DIR": "no/such/dir"}, words="no/such/dir"),
    Case("NCM_SERVICES_DIR-a-file", MIGRATE, env={"NCM_SERVICES_DIR": "settings/settings.toml"},
         words="settings.toml"),
    Case("NCM_NAMING_CONVENTION-text", MIGRATE,
         env={"NCM_SERVICES__USERS__NAMING_CONVENTION": "ix_%(column_0_label)s"},
         words="naming_convention"),
    Case("NCM_MODELS-bad", ("makemigrations", "users"), env={"NCM_SERVICES__USERS__MODELS": "no_colon"},
         words="models"),
    Case("NCM_BACKUP_KEY-bad", ("backup", "users", "-o", "var/bk"),
         env={"NCM_BACKUP__ENCRYPTION_KEY": "not-a-fernet-key"}, words="encryption_key"),
    Case("NCM_CONNECT-timeout-text", MIGRATE, env={"NCM_CONNECT__TIMEOUT_S": "fast"}, words="timeout_s"),
    Case("NCM_LOCK-lease-text", MIGRATE, env={"NCM_LOCK__LEASE_S": "long"}, words="lease_s"),
    Case("NCM_SERVICES-not-a-table", MIGRATE, env={"NCM_SERVICES": "5"}, words="services"),
    Case("NCM_SERVICES_GLOB-empty", MIGRATE, env={"NCM_SERVICES_GLOB": ""}, words="services_glob"),
    Case("NCM_JOBS-float-text", MIGRATE, env={"NCM_JOBS": "1e9"}, words="jobs"),
    Case("NCM_ACTOR-newline", MIGRATE, env={"NCM_ACTOR": "me\nDROP"}, words="NCM_ACTOR"),
    Case("NCM_SERVICES_GLOB-escapes", MIGRATE, env={"NCM_SERVICES_GLOB": "../../*"},
         words="No services found"),
    Case("NCM_WINDOWS-bad", MIGRATE, env={"NCM_WINDOWS": '["whenever"]'}, words="windows"),
]

SETTINGS_CASES = [
    Case("toml-syntax-settings", MIGRATE, files={"settings/settings.toml": "[development\nx = 1\n"},
         words="settings.toml"),
    Case("toml-syntax-secrets", MIGRATE, files={"settings/.secrets.toml": "[development]\nx = = 1\n"},
         words=".secrets.toml"),
    Case("toml-syntax-local", MIGRATE, files={"settings/settings.local.toml": "x = 'unclosed\n"},
         words="settings.local.toml"),
    Case("toml-syntax-service", MIGRATE, files={"services/users/settings.toml": "[default\n"},
         words="services/users/settings.toml"),
    Case("toml-binary", MIGRATE, files={"settings/settings.toml": "\udcff\udcfe garbage"},
         words="settings.toml"),
    Case("settings-unknown-backend", MIGRATE,
         files=settings('[development.services.users]\nbackend = "oracle"\n'), words="backend"),
    Case("settings-url-no-scheme", MIGRATE,
         files=settings('[development.services.users]\ndatabase_url = "users.db"\n'), words="database_url"),
    Case("settings-url-not-a-string", MIGRATE,
         files=settings("[development.services.users]\ndatabase_url = 5\n"), words="database_url"),
    Case("settings-password-committed", MIGRATE,
         files=settings('[staging.services.users]\ndatabase_url = "postgresql://u:hunter2@h/db"\n'),
         words="password"),
    Case("settings-key-committed", MIGRATE,
         files=settings(f'[development.backup]\nencryption_key = "{KEY}"\n'), words="encryption_key"),
    Case("settings-webhook-committed", MIGRATE,
         files=settings('[development.notify]\nwebhook_url = "https://hooks.example/abc"\n'),
         words="webhook_url"),
    Case("settings-jobs-text", MIGRATE, files=settings('jobs = "many"\n'), words="jobs"),
    Case("settings-jobs-float", MIGRATE, files=settings("jobs = 1.5\n"), words="jobs"),
    Case("settings-retries-negative", MIGRATE, files=settings("[development.connect]\nretries = -1\n"),
         words="retries"),
    Case("settings-max-wait-text", MIGRATE, files=settings('[development.connect]\nmax_wait_s = "1m"\n'),
         words="max_wait_s"),
    Case("settings-lock-timeout-text", MIGRATE, files=settings('[development.lock]\ntimeout_s = "x"\n'),
         words="timeout_s"),
    Case("settings-depends-on-string", MIGRATE,
         files=settings('[development.services.billing]\ndepends_on = 5\n'), words="depends_on"),
    Case("settings-depends-on-unknown", MIGRATE,
         files=settings('[development.services.billing]\ndepends_on = ["nosuch"]\n'), words="nosuch"),
    Case("settings-depends-on-self", MIGRATE,
         files=settings('[development.services.billing]\ndepends_on = ["billing"]\n'), words="billing"),
    Case("settings-depends-on-cycle", MIGRATE,
         files=settings('[development.services.users]\ndepends_on = ["billing"]\n'), words="billing"),
    Case("settings-protected-text", MIGRATE, files=settings('protected = "yes"\n'), words="protected"),
    Case("settings-services-dir-number", MIGRATE, files=settings("services_dir = 5\n"), words="services_dir"),
    Case("settings-services-dir-missing", MIGRATE, files=settings('services_dir = "nowhere"\n'),
         words="nowhere"),
    Case("settings-version-table-number", MIGRATE,
         files=settings("[development.services.users]\nversion_table = 5\n"), words="version_table"),
    Case("settings-version-table-clash", MIGRATE,
         files=settings('[development.services.users]\nversion_table = "shared"\n'
                        '[development.services.billing]\nversion_table = "shared"\n'), words="shared"),
    Case("settings-revision-ids", ("makemigrations", "users", "--empty"),
         files=settings('[development.services.users]\nrevision_ids = "uuid"\n'), words="revision_ids"),
    Case("settings-lint-severity", ("lint",), files=settings('[development.lint]\nseverity = "loud"\n'),
         words="severity"),
    Case("settings-audit-path-number", MIGRATE, files=settings("[development.audit]\nlog_path = 5\n"),
         words="log_path"),
    Case("settings-backup-dir-number", ("backup", "users"), files=settings("[development.backup]\ndir = 5\n"),
         words="dir"),
    Case("settings-naming-convention-list", MIGRATE,
         files=settings('[development.services.users]\nnaming_convention = ["ix"]\n'),
         words="naming_convention"),
    Case("settings-enabled-text", MIGRATE, files=settings('[development.services.users]\nenabled = "no"\n'),
         words="enabled"),
    Case("settings-service-section-not-a-table", MIGRATE,
         files=settings('[development.services]\nusers = "sqlite:///x.db"\n'), words="users"),
    Case("settings-windows-bad", MIGRATE, files=settings('windows = ["Someday 25:00-26:00"]\n'),
         words="windows"),
    Case("service-folder-bad-name", MIGRATE, files={"services/Bad-Name/migrations/.keep": ""},
         words="Bad-Name"),
    Case("service-settings-nested-key", MIGRATE,
         files={"services/users/settings.toml": '[default.services.users]\ndatabase_url = "sqlite:///x.db"\n'},
         words="services/users/settings.toml"),
    Case("service-settings-password", MIGRATE,
         files={"services/users/settings.toml": '[development]\ndatabase_url = "postgresql://u:pw@h/db"\n'},
         words="password"),
    Case("settings-toml-is-a-folder", MIGRATE,
         files={"settings/settings.toml": None, "settings/settings.toml/x": ""}, words="settings.toml"),
    Case("secrets-toml-is-a-folder", MIGRATE, files={"settings/.secrets.toml/x": ""}, words=".secrets.toml"),
    Case("settings-env-section-not-a-table", MIGRATE, files={"settings/settings.toml": 'development = 5\n'},
         words="development"),
    Case("models-syntax-error", ("makemigrations", "users"),
         files={"services/users/models.py": "import sqlalchemy as sa\nmetadata = (\n"}, words="models.py",
         user_code=True),
    Case("models-raise-at-import", ("makemigrations", "users"),
         files={"services/users/models.py": "raise ImportError('no such thing')\n"}, words="models.py",
         user_code=True),
    Case("models-no-metadata", ("makemigrations", "users"), files={"services/users/models.py": "x = 1\n"},
         words="models.py"),
    Case("models-attr-missing", ("makemigrations", "users"),
         files={**settings('[development.services.users]\nmodels = "models:nothing"\n'),
                "services/users/models.py": "x = 1\n"}, words="models"),
    Case("template-syntax-error", ("makemigrations", "users", "--empty"),
         files={"settings/templates/schema.py.j2": "{% if %}\n"}, words="schema.py.j2"),
    Case("template-undefined-variable", ("makemigrations", "users", "--empty"),
         files={"services/users/migrations/templates/schema.py.j2": "{{ nothing.at.all }}\n"},
         words="schema.py.j2"),
    Case("template-not-utf8", ("makemigrations", "users", "--empty"),
         files={"settings/templates/schema.py.j2": "\udcff\udcfe"}, words="schema.py.j2"),
    Case("template-renders-garbage", ("makemigrations", "users", "--empty"),
         files={"settings/templates/schema.py.j2": "this is not python\n"}, words="template"),
    Case("mongo-url-no-host", MIGRATE, env={"NCM_SERVICES__USERS__DATABASE_URL": "mongodb:///db"},
         words="DATABASE_URL"),
    Case("mongo-sqlmigrate", ("sqlmigrate", "users", "0001"),
         env={"NCM_SERVICES__USERS__DATABASE_URL": "mongodb://localhost:1/users"}, words="users"),
    Case("mongo-migrate-sql", ("migrate", "users", "--sql"),
         env={"NCM_SERVICES__USERS__DATABASE_URL": "mongodb://localhost:1/users"}, words="users"),
    Case("models-missing", ("makemigrations", "users"),
         files=settings('[development.services.users]\nmodels = "nosuch_module:metadata"\n'), words="models"),
]

REVISION_CASES = [
    Case("rev-syntax-error", MIGRATE, files=raw("0003_x", "revision = '0003_x'\ndef upgrade(:\n"),
         words="0003_x.py"),
    Case("rev-no-revision", MIGRATE, files=raw("0003_x", '"""x"""\ndown_revision = "0002_more"\n'),
         words="0003_x.py"),
    Case("rev-id-dash", MIGRATE, files=raw("0003_x", header("'0003-x'")), words="0003_x.py"),
    Case("rev-id-too-long", MIGRATE, files=raw("0003_x", header(repr("r" * 40))), words="0003_x.py"),
    Case("rev-id-head", MIGRATE, files=raw("0003_x", header("'head'")), words="0003_x.py"),
    Case("rev-id-base", MIGRATE, files=raw("0003_x", header("'base'")), words="0003_x.py"),
    Case("rev-id-quote", MIGRATE, files=raw("0003_x", header('"x\'; SELECT 1; --"')), words="0003_x.py"),
    Case("rev-id-empty", MIGRATE, files=raw("0003_x", header("''")), words="0003_x.py"),
    Case("rev-id-number", MIGRATE, files=raw("0003_x", header("3")), words="0003_x.py"),
    Case("rev-down-missing", MIGRATE, files=rev("0003_x", down="0002_nosuch"), words="0002_nosuch"),
    Case("rev-down-number", MIGRATE, files=raw("0003_x", header(down="5")), words="0003_x.py"),
    Case("rev-down-bad-id", MIGRATE, files=raw("0003_x", header(down="'no way'")), words="0003_x.py"),
    Case("rev-duplicate-id", MIGRATE, files=raw("0003_dup", header("'0002_more'")), words="0002_more"),
    Case("rev-cycle", MIGRATE,
         files={**raw("0001_initial", header("'0001_initial'", down="'0002_more'"))}, words="cycle"),
    Case("rev-requires-not-a-list", MIGRATE, files=raw("0003_x", header(extra="requires = 5")),
         words="requires"),
    Case("rev-requires-no-colon", MIGRATE, files=rev("0003_x", requires=["billing"]), words="billing"),
    Case("rev-requires-unknown-service", MIGRATE, files=rev("0003_x", requires=["nosuch:0001"]),
         words="nosuch"),
    Case("rev-requires-unknown-revision", MIGRATE, files=rev("0003_x", requires=["billing:0042"]),
         words="0042"),
    Case("rev-requires-cross-cycle", MIGRATE,
         files={**rev("0003_x", requires=["billing:0001_invoices"]),
                **raw("0002_more", header("'0002_more'", down="'0001_initial'",
                                          extra="requires = ['billing:0001_invoices']")),
                **raw("0001_invoices", header("'0001_invoices'", down="None",
                                              extra="requires = ['users:0002_more']"), "billing")},
         words="cycle"),
    Case("rev-requires-bad-id", MIGRATE, files=rev("0003_x", requires=["billing:no way"]), words="0003_x.py"),
    Case("rev-migration-type", MIGRATE, files=rev("0003_x", migration_type="weird"), words="migration_type"),
    Case("rev-branch-label-bad", MIGRATE, files=rev("0003_x", branch_labels=["no way"]), words="0003_x.py"),
    Case("rev-depends-on-missing", MIGRATE, files=rev("0003_x", depends_on=["0099_nosuch"]),
         words="0099_nosuch"),
    Case("rev-computed-header-raises", MIGRATE,
         files=raw("0003_x", header(down="compute()").replace('"""x"""\n', '"""x"""\ndef compute():\n'
                                                                  "    raise ValueError('nope')\n")),
         words="0003_x.py", user_code=True),
    Case("rev-computed-header-exits", MIGRATE,
         files=raw("0003_x", "import sys\nsys.exit(3)\n" + header(down="str('0002_more')")),
         words="0003_x.py", user_code=True),
    Case("rev-requires-later-own-revision", MIGRATE, files=rev("0003_x", requires=["users:0004_y"]),
         words="0004_y"),
    Case("rev-duplicate-parent", MIGRATE,
         files=raw("0003_x", header(down="('0002_more', '0002_more')")), words="0003_x.py"),
    Case("rev-label-is-a-revision-id", MIGRATE, files=rev("0003_x", branch_labels=["0001_initial"]),
         words="0001_initial"),
    Case("rev-label-used-twice", MIGRATE,
         files={**rev("0003_x", branch_labels=["extra"]),
                **rev("0004_y", down="0003_x", branch_labels=["extra"])}, words="extra"),
    Case("rev-empty-file", MIGRATE, files=raw("0003_x", ""), words="0003_x.py"),
    Case("rev-not-utf8", MIGRATE, files=raw("0003_x", "revision = '\udcff\udcfe'\n"), words="0003_x.py"),
    Case("rev-null-byte", MIGRATE, files=raw("0003_x", "revision = '0003_x'\x00\n"), words="0003_x.py"),
    Case("rev-two-heads-forked", MIGRATE, code=1, files=rev("0002_other", down="0001_initial"),
         words="--merge"),
    Case("rev-sqlmigrate-import-error", ("sqlmigrate", "users", "0003_x"),
         files=rev("0003_x", extra="import no_such_module_anywhere"), words="0003_x", user_code=True),
    Case("rev-validate-cycle", ("validate",),
         files={**raw("0003_a", header("'0003_a'", down="'0004_b'")),
                **raw("0004_b", header("'0004_b'", down="'0003_a'"))}, words="cycle", report=True),
    Case("rev-showmigrations-duplicate", ("showmigrations",), files=raw("0003_dup", header("'0002_more'")),
         words="0002_more"),
    Case("rev-rollback-bad-file", ("rollback", "users"), files=raw("0003_x", "revision = (\n"),
         words="0003_x.py"),
]

CASES = CLI_CASES + ENV_CASES + SETTINGS_CASES + REVISION_CASES

# A Python exception's class name in the output means one leaked past the error handling.
EXCEPTION_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception|Exit|Interrupt|Refused)\b|\bKeyError\b")


def test_enough_cases_and_unique_ids() -> None:
    assert len(CASES) >= 100
    assert len({c.id for c in CASES}) == len(CASES)


@dataclass
class Sandbox:
    """A project, its database and the current folder, side by side in one folder."""

    top: Path
    repo: Monorepo
    db: Path

    @property
    def url(self) -> str:
        return f"sqlite:///{self.db}"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The monorepo and its database, users at 0001_initial: copied for each case."""
    top = tmp_path_factory.mktemp("bad_input_template")
    repo = Monorepo(top / "repo")
    db = top / "db" / "app.sqlite"
    db.parent.mkdir()
    for path, text in BASE_FILES.items():
        repo.write(path, text.format(db=f"sqlite:///{db}") if path.startswith("settings") else text)
    result = repo.cli("migrate", "users", "0001_initial")
    assert result.code == 0, result.output
    for lock in db.parent.glob("*.lock"):
        lock.unlink()
    (repo.root / "settings/settings.toml").write_text(SETTINGS)
    return repo.root, db


@pytest.fixture
def sandbox(template: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    root, db = template
    shutil.copytree(root, tmp_path / "repo")
    shutil.copytree(db.parent, tmp_path / "db")  # with SQLite's -wal file, if any
    box = Sandbox(tmp_path, Monorepo(tmp_path / "repo"), tmp_path / "db" / db.name)
    monkeypatch.chdir(box.repo.root)
    return box


def write_files(box: Sandbox, files: Mapping[str, str | None], url: str) -> None:
    for rel, text in files.items():
        path = box.repo.root / rel
        if text is None:
            path.unlink()
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        body = text.replace("{db}", url)
        path.write_bytes(body.encode("utf-8", errors="surrogateescape"))
    settings_file = box.repo.root / "settings/settings.toml"
    if not settings_file.is_file():
        return
    text = settings_file.read_bytes().decode(errors="surrogateescape")
    settings_file.write_bytes(text.replace("{db}", url).encode(errors="surrogateescape"))


def tree(top: Path) -> dict[str, str]:
    """Every file under `top` with a hash of its contents; but caches: Python's, and the
    revision-header cache (`var/cache/`, rebuilt from the files whenever it is stale)."""
    found: dict[str, str] = {}
    for path in sorted(top.rglob("*")):
        rel = path.relative_to(top)
        if "__pycache__" in rel.parts or rel.parts[1:3] == ("var", "cache") or path.is_dir():
            continue
        found[str(path.relative_to(top))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def error_lines(case: Case, result: CliResult) -> list[str]:
    """The error: Click's usage error (one message in a box), else every `Error:` line; for
    a report, its error findings (a heading line, then the message)."""
    if case.report:
        lines = result.stdout.splitlines()
        return [f"{line} {lines[i + 1].strip()}" for i, line in enumerate(lines)
                if line.startswith("error ") and i + 1 < len(lines)]
    text = result.stderr
    if "Usage:" in text or "╭" in text:
        inside = [line.strip("│ ").strip() for line in text.splitlines() if line.startswith("│")]
        message = " ".join(line for line in inside if line)
        return [message] if message else []
    return [line for line in text.splitlines() if line.startswith("Error:")]


def assert_one_sentence(case: Case, result: CliResult) -> None:
    assert result.code == case.code, f"{case.id}: exit {result.code}\n{result.output}"
    assert "Traceback" not in result.output, f"{case.id}:\n{result.output}"
    errors = error_lines(case, result)
    assert len(errors) == 1, f"{case.id}: expected one error line\n{result.stderr}"
    message = errors[0]
    assert case.words.lower() in message.lower(), f"{case.id}: {case.words!r} not in {message!r}"
    if not case.user_code:
        leaked = EXCEPTION_NAME.search(message)
        assert leaked is None, f"{case.id}: {leaked.group(0) if leaked else ''} in {message!r}"
    # One sentence: no second error stacked after the first, and nothing but warnings and
    # progress (a service left out, a connection retried) beside it.
    others = [line for line in result.stderr.splitlines()
              if line.strip() and not line.startswith(("Error:", "Warning", "│", "╭", "╰", "Usage:", "Try "))
              and not re.search(r"left out|skipping|skipped|retrying in", line, re.IGNORECASE)]
    assert not others, f"{case.id}: more than one sentence on stderr:\n{result.stderr}"


def run(box: Sandbox, args: tuple[str, ...], env: Mapping[str, str]) -> CliResult:
    """The CLI in-process as `manage.py` runs it: with the services' own commands."""
    argv = cli.hoist_global_options(list(args))
    result = CliRunner().invoke(cli.app_for(box.repo.root, argv), argv, env=dict(env),
                                catch_exceptions=False, obj=box.repo.root)
    return CliResult(result.exit_code, result.stdout, result.stderr)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, sandbox: Sandbox) -> None:
    write_files(sandbox, case.files, sandbox.url)
    before = tree(sandbox.top)
    result = run(sandbox, case.args, case.env)
    if case.code == 0:  # not bad input after all, and handled as such: no error at all
        assert result.code == 0 and not result.stderr.strip(), f"{case.id}:\n{result.output}"
        return
    assert_one_sentence(case, result)
    after = tree(sandbox.top)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert not changed, f"{case.id}: files changed: {sorted(changed)}"


# -- on the servers: URLs and connections ---------------------------------------------------


def server_state(url: str) -> dict[str, object]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            names = sorted(sa.inspect(conn).get_table_names())
            state: dict[str, object] = {"tables": names}
            for name in names:
                if name.startswith("alembic_version") or name == "ncm_migrations":
                    rows = conn.execute(sa.text(f"SELECT * FROM {name}")).all()
                    state[name] = sorted(map(str, rows))
            return state
    finally:
        engine.dispose()


def with_database(url: str, name: str) -> str:
    return sa.engine.make_url(url).set(database=name).render_as_string(hide_password=False)


SERVER_CASES = [
    # (id, args, env given the server's URL, code, words)
    ("unknown-database", MIGRATE, lambda u: {"NCM_DATABASE_URL": with_database(u, "ncm_no_such_db")}, 4,
     "ncm_no_such_db"),
    ("unknown-revision", ("migrate", "users", "0042_nosuch"), lambda u: {"NCM_DATABASE_URL": u}, 2, "0042"),
    ("rollback-not-applied", ("rollback", "users", "0002_more"), lambda u: {"NCM_DATABASE_URL": u}, 2,
     "0002_more"),
    ("unknown-user", MIGRATE,
     lambda u: {"NCM_DATABASE_URL": sa.engine.make_url(u).set(username="ncm_no_such_user", password="pw")
                .render_as_string(hide_password=False)}, 4, "ncm_no_such_user"),
    ("closed-port", MIGRATE,
     lambda u: {"NCM_DATABASE_URL": sa.engine.make_url(u).set(port=1).render_as_string(hide_password=False),
                "NCM_CONNECT__MAX_WAIT_S": "1"}, 4, "unreachable"),
    ("actor-too-long", MIGRATE, lambda u: {"NCM_DATABASE_URL": u, "NCM_ACTOR": "a" * 300}, 2, "NCM_ACTOR"),
    ("unknown-driver", MIGRATE,
     lambda u: {"NCM_DATABASE_URL": u.replace("+psycopg", "+nosuch").replace("+pymysql", "+nosuch")}, 2,
     "nosuch"),
]


@pytest.fixture(params=["postgresql", "mysql"])
def server_url(request: pytest.FixtureRequest) -> Iterator[str]:
    fixture = {"postgresql": "pg_url", "mysql": "mysql_url"}[request.param]
    yield request.getfixturevalue(fixture)


@pytest.mark.parametrize("case", SERVER_CASES, ids=[c[0] for c in SERVER_CASES])
def test_bad_input_on_a_server(
    case: tuple[str, tuple[str, ...], object, int, str], sandbox: Sandbox, server_url: str
) -> None:
    name, args, make_env, code, words = case
    prepare = sandbox.repo.cli("migrate", "users", "0001_initial", env={"NCM_DATABASE_URL": server_url})
    assert prepare.code == 0, prepare.output
    env = make_env(server_url)  # type: ignore[operator]
    env.setdefault("NCM_CONNECT__RETRIES", "1")
    before = (server_state(server_url), tree(sandbox.top))
    result = sandbox.repo.cli(*args, env=env)
    assert_one_sentence(Case(name, args, code=code, words=words), result)
    assert (server_state(server_url), tree(sandbox.top)) == before
