"""Passwords never appear in any output: tables, JSON, errors, retries, -v and -vv logs,
settings errors, for reachable and unreachable databases, in-process and in a real
manage.py process."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
from monorepo import CliResult, Monorepo

FAST_RETRIES = {"NCM_CONNECT__RETRIES": "1", "NCM_CONNECT__MAX_WAIT_S": "1"}


@dataclass(frozen=True)
class Secret:
    """A password of this test only (ncm-migrate remembers the passwords a process has seen,
    so one shared between tests could be hidden by an earlier test's settings); its '@'
    must be URL-quoted, and the quoted form must not leak either."""

    raw: str
    quoted: str


@pytest.fixture
def secret() -> Secret:
    raw = f"Xq7-{uuid.uuid4().hex[:10]}@pw"
    return Secret(raw, raw.replace("@", "%40"))


def with_password(url: str, secret: Secret, user: str | None = None) -> str:
    parsed = sa.engine.make_url(url).set(password=secret.raw)
    if user:
        parsed = parsed.set(username=user)
    text = parsed.render_as_string(hide_password=False)
    assert secret.quoted in text
    return text


def assert_clean(result: CliResult, secret: Secret) -> None:
    for text in (secret.raw, secret.quoted):
        assert text not in result.stdout, result.stdout
        assert text not in result.stderr, result.stderr


def services_beside_sqlite(repo: Monorepo, sqlite_url: str, **urls: str) -> None:
    """users on SQLite (valid, no password), and each of `urls` with a password."""
    repo.table("users", "0001_initial", "users_t")
    for name in urls:
        repo.table(name, "0001_initial", f"{name}_t")
    repo.urls({"users": sqlite_url, **urls})


def test_reachable_database_with_password(
    repo: Monorepo, sqlite_url: str, pg_url: str, secret: Secret
) -> None:
    """PostgreSQL here trusts local connections, so the password is accepted: every
    command runs for real, with SQL logging on."""
    services_beside_sqlite(repo, sqlite_url, billing=with_password(pg_url, secret))
    runs = [
        repo.cli("services"),
        repo.cli("services", "--json"),
        repo.cli("showmigrations", "--json"),
        repo.cli("migrate", "--plan"),
        repo.cli("migrate", "--sql"),
        repo.cli("sqlmigrate", "billing", "0001"),
        repo.cli("-vv", "migrate"),
        repo.cli("showmigrations"),
        repo.cli("history"),
        repo.cli("history", "--json"),
        repo.cli("-v", "rollback", "billing"),
        repo.cli("-vv", "migrate", "--json"),
    ]
    assert [r.code for r in runs] == [0] * len(runs), [r.output for r in runs if r.code]
    assert "***" in runs[0].stdout + runs[1].stdout  # the URL is shown, masked
    for result in runs:
        assert_clean(result, secret)


@pytest.mark.parametrize("target", ["mysql-wrong-password", "unreachable"])
def test_unreachable_database_with_password(
    repo: Monorepo, sqlite_url: str, target: str, request: pytest.FixtureRequest, secret: Secret
) -> None:
    if target == "mysql-wrong-password":
        url = with_password(request.getfixturevalue("mysql_url"), secret, user="root")
    else:
        url = f"postgresql+psycopg://admin:{secret.quoted}@127.0.0.1:1/billing"
    services_beside_sqlite(repo, sqlite_url, billing=url)
    env = dict(FAST_RETRIES)
    runs = {
        "services": repo.cli("services", env=env),
        "showmigrations": repo.cli("showmigrations", env=env),
        "migrate": repo.cli("migrate", env=env),
        "migrate -v": repo.cli("-v", "migrate", env=env),
        "migrate -vv --json": repo.cli("-vv", "migrate", "--json", env=env),
        "history": repo.cli("history", env=env),
        "migrate users": repo.cli("migrate", "users", env=env),
    }
    assert runs["services"].code == 0
    # a wrong password is refused at once; a server that does not answer is retried
    said = "refused the connection" if target == "mysql-wrong-password" else "unreachable"
    for name in ("showmigrations", "migrate", "migrate -v", "migrate -vv --json", "history"):
        assert runs[name].code == 4, (name, runs[name].output)
        assert "billing" in runs[name].stderr and said in runs[name].stderr
    if target == "unreachable":
        assert "retrying" in runs["migrate -v"].stderr  # the retry was logged, masked
    assert runs["migrate users"].code == 0  # the valid service beside it still works
    for result in runs.values():
        assert_clean(result, secret)
    # The same in a real manage.py process, whose logging is set up from scratch.
    real = repo.run("-vv", "migrate", env=env)
    assert real.code == 4
    assert_clean(real, secret)


@pytest.mark.parametrize(
    ("settings", "variable"),
    [
        pytest.param('database_url = "postgresql://me:{pw}@db:port/x"', "", id="bad-port"),
        pytest.param('database_url = "oracle://me:{pw}@db/x"', "", id="unsupported"),
        pytest.param('database_url = "me:{pw}@db/x"', "", id="no-scheme"),
        pytest.param("", "postgresql://me:{pw}@db:port/x", id="env-var"),
        pytest.param('[development.services.users]\nbackend = "postgresql://me:{pw}@db/x"', "",
                     id="url-in-the-wrong-key"),
        pytest.param('[development.services.users]\nversion_table = "mysql://me:{raw}@db/x"', "",
                     id="unquoted-url-in-the-wrong-key"),
    ],
)
def test_settings_errors_hide_passwords(
    repo: Monorepo, settings: str, variable: str, secret: Secret
) -> None:
    repo.table("users", "0001_initial", "users_t")
    # In the secrets layer, where a password belongs: a committed settings file holding one is
    # refused before its value is even checked.
    repo.settings("[development]\n")
    repo.write("settings/.secrets.toml",
               f"[development]\n{settings.format(pw=secret.quoted, raw=secret.raw)}\n")
    environ = {"NCM_DATABASE_URL": variable.format(pw=secret.quoted)} if variable else {}
    for args in (("services",), ("-vv", "migrate")):
        result = repo.cli(*args, env=environ)
        assert result.code == 2, result.output
        assert "users" in result.stderr or "database_url" in result.stderr
        assert_clean(result, secret)


def test_an_unquoted_at_sign_in_a_password_is_refused_without_showing_it(repo: Monorepo) -> None:
    repo.table("users", "0001_a", "t")
    repo.urls({"users": "postgresql+psycopg://u:p@ss#Secr3t@127.0.0.1:5433/users"})
    for args in (("services",), ("migrate",)):
        result = repo.cli(*args)
        assert result.code == 2
        assert "URL-encoded" in result.stderr
        assert "Secr3t" not in result.output and "ss#" not in result.output


def test_vv_traceback_of_a_failed_revision_hides_the_password(
    repo: Monorepo, sqlite_url: str, pg_url: str, secret: Secret
) -> None:
    """-vv logs the traceback of a revision that raised; the password in its message is
    hidden there as in the one-line error."""
    repo.revision("billing", "0001_leaky", upgrade=(
        "raise RuntimeError('cannot reach ' + str(op.get_bind().engine.url.password))"
    ))
    services_beside_sqlite(repo, sqlite_url, billing=with_password(pg_url, secret))
    result = repo.cli("-vv", "migrate", "billing")
    assert result.code == 1, result.output
    assert "Traceback" in result.stderr and "RuntimeError: cannot reach ***" in result.stderr
    assert_clean(result, secret)


def test_the_traceback_of_a_bug_hides_the_password(repo: Monorepo, secret: Secret) -> None:
    """A bug keeps its traceback, in a real process, at -vv as at any verbosity, with every
    known password hidden (here a bug that puts the whole URL in its message)."""
    repo.table("billing", "0001_initial", "billing_t")
    repo.urls({"billing": f"postgresql+psycopg://admin:{secret.quoted}@127.0.0.1:1/billing"})
    repo.write("manage.py", (
        "from pathlib import Path\n"
        "from ncm_migrate import cli, commands\n"
        "from ncm_migrate.settings import load_settings\n"
        "ROOT = Path(__file__).resolve().parent\n\n"
        "def broken(**where):\n"
        "    url = load_settings(ROOT).service('billing').database_url\n"
        "    raise RuntimeError('a bug near ' + url)\n\n"
        "commands.services = broken\n"
        "cli.main(root=ROOT)\n"
    ))
    for args in (("-vv", "services"), ("services",)):
        result = repo.run(*args)
        assert result.code == 1, result.output
        assert "Traceback" in result.stderr and "RuntimeError: a bug near" in result.stderr
        assert "***" in result.stderr
        assert_clean(result, secret)


def test_other_libraries_warnings_hide_the_password(secret: Secret) -> None:
    """A warning from a library ncm-migrate does not configure reaches Python's last-resort
    handler; in a command's process that one hides passwords too."""
    import subprocess
    import sys

    code = (
        "import logging\n"
        "from ncm_migrate.logs import configure_logging, verbosity_levels\n"
        "from ncm_migrate.urls import remember_secret\n"
        f"url = 'postgresql://u:{secret.quoted}@db/x'\n"
        "remember_secret(url)\n"
        "configure_logging(verbosity_levels(0))\n"
        "logging.getLogger('some.driver').warning('pool trouble at %s', url)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "pool trouble at postgresql://u:***@db/x" in proc.stderr
    assert secret.raw not in proc.stderr and secret.quoted not in proc.stderr
