"""The Docker image and the Compose dev stack (docker/).

The Dockerfile, the shell scripts and the Compose file go through real linters and the
Compose specification's schema; the entrypoint and the PostgreSQL bootstrap script run for
real on this machine (no Docker) against the local PostgreSQL and MariaDB.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import sqlalchemy as sa
from conftest import PG_ADMIN, REQUIRE

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
ENTRYPOINT = DOCKER / "entrypoint.sh"
PG_INITDB = DOCKER / "initdb" / "postgres" / "10-create-databases.sh"
EXAMPLE_SERVICES = ("users", "billing", "catalog")
DATABASES = ("postgres", "mariadb", "mongodb", "redis")


def _tool(name: str) -> str:
    """The path of a linter from the [dev] extra; fails in CI, skips elsewhere when missing."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        message = f"{name} is not installed (pip install -e '.[dev]')"
        if REQUIRE:
            pytest.fail(message + " (NCM_TEST_REQUIRE_SERVERS=1)")
        pytest.skip(message)
    return found


def _lint(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def _compose() -> dict[str, Any]:
    from ruamel.yaml import YAML

    data: dict[str, Any] = YAML(typ="safe").load(DOCKER / "docker-compose.yml")
    return data


def _env_example() -> dict[str, str]:
    pairs = {}
    for line in (DOCKER / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


# -- linters and the Compose specification ----------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    result = _lint(_tool("hadolint"), "--no-color", "--failure-threshold", "style",
                   str(DOCKER / "Dockerfile"))
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_reports_a_finding(tmp_path: Path) -> None:
    """The linter is real: the same call fails on a Dockerfile with known problems."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get update && apt-get install curl\nUSER root\n")
    result = _lint(_tool("hadolint"), "--no-color", "--failure-threshold", "style", str(bad))
    assert result.returncode != 0
    assert "DL3006" in result.stdout  # untagged base image


def test_shell_scripts_pass_shellcheck() -> None:
    # Every optional check too, except SC2250 (braces around every variable), a style choice.
    result = _lint(_tool("shellcheck"), "--severity=style", "--enable=all", "--exclude=SC2250",
                   str(ENTRYPOINT), str(PG_INITDB))
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_reports_a_finding(tmp_path: Path) -> None:
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/bin/sh\nset -eu\nfor f in $(ls $1); do echo $f; done\n")
    result = _lint(_tool("shellcheck"), "--severity=style", str(bad))
    assert result.returncode != 0 and "SC2045" in result.stdout


def test_compose_file_matches_the_compose_specification(tmp_path: Path) -> None:
    checker = _tool("check-jsonschema")
    compose = DOCKER / "docker-compose.yml"
    result = _lint(checker, "--builtin-schema", "vendor.compose-spec", str(compose))
    assert result.returncode == 0, result.stdout + result.stderr
    # The same call rejects a condition that Compose does not know.
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(compose.read_text().replace("service_completed_successfully", "service_done"))
    result = _lint(checker, "--builtin-schema", "vendor.compose-spec", str(broken))
    assert result.returncode != 0 and "depends_on" in result.stdout


# -- what the Compose stack promises ----------------------------------------------------


def test_databases_have_real_healthchecks_named_volumes_and_localhost_ports() -> None:
    compose = _compose()
    services, volumes = compose["services"], compose["volumes"]
    probes = {
        "postgres": "pg_isready -h 127.0.0.1",
        "mariadb": "healthcheck.sh --connect --innodb_initialized",
        "mongodb": "mongosh --quiet --eval quit(db.adminCommand('ping').ok",
        "redis": "redis-cli -h 127.0.0.1 ping",
    }
    for name, probe in probes.items():
        svc = services[name]
        test = svc["healthcheck"]["test"]
        command = test[1] if test[0] == "CMD-SHELL" else " ".join(test[1:])
        assert command.startswith(probe), (name, command)
        named = [v.split(":", 1)[0] for v in svc["volumes"] if not v.startswith(".")]
        assert named and all(v in volumes for v in named), (name, svc["volumes"])
        assert all(str(p).startswith("127.0.0.1:") for p in svc["ports"]), (name, svc["ports"])


def test_migrate_waits_for_every_database_and_the_app_for_migrate() -> None:
    services = _compose()["services"]
    migrate, app = services["migrate"], services["app"]
    assert migrate["depends_on"] == {db: {"condition": "service_healthy"} for db in DATABASES}
    assert "command" not in migrate  # the entrypoint's default: wait, then migrate
    assert migrate["restart"] == "no"
    assert migrate["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
    assert app["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}
    assert app["image"] == migrate["image"]


def test_stack_variables_come_from_the_env_file_and_reach_the_settings() -> None:
    """Every variable the Compose file requires is in .env.example, and every variable that
    settings.toml's [docker] URLs read is given to the containers that run manage.py."""
    text = (DOCKER / "docker-compose.yml").read_text()
    example = _env_example()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    assert required and required <= set(example), required - set(example)
    assert all("change-me" in example[k] for k in example if "PASSWORD" in k)

    docker_section = tomllib.loads((REPO / "settings" / "settings.toml").read_text())["docker"]
    urls = [s["database_url"] for s in docker_section["services"].values()]
    read = {v for url in urls for v in re.findall(r"env(?:\.get\(|\[)'?(\w+)", url)}
    assert {"POSTGRES_HOST", "MARIADB_HOST", "USERS_DB", "CATALOG_DB"} <= read
    given = set(_compose()["services"]["migrate"]["environment"])
    assert read <= given, read - given


def test_image_is_python_311_slim_non_root_and_installs_dependencies_before_sources() -> None:
    lines = [ln for ln in (DOCKER / "Dockerfile").read_text().splitlines() if ln.strip()]
    assert any(ln.startswith("FROM python:3.11-slim") for ln in lines)
    user = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert user and user[-1].split(":")[0] not in ("0", "root")

    def first(prefix: str) -> int:
        return next(i for i, ln in enumerate(lines) if ln.startswith(prefix))

    assert first("COPY pyproject.toml") < first("RUN python -c") < first("COPY ncm_migrate/")
    assert first("COPY ncm_migrate/") < first("COPY services/")
    assert any(ln.startswith("HEALTHCHECK") for ln in lines)
    assert first("COPY services/") < first("RUN python -m compileall") < first("USER ")
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert {"docker/.env", "settings/.secrets.toml", ".git", ".venv"} <= set(ignored)


def test_the_build_makes_bytecode_and_the_header_cache(tmp_path: Path) -> None:
    """The Dockerfile's warming step, run as written on a copy of /app: afterwards the
    revision files have bytecode and every header is in the cache, with no database."""
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    [step] = [ln[len("RUN "):] for ln in text.splitlines() if ln.startswith("RUN python -m compileall")]
    step = step.split("&& chown")[0].strip().removesuffix("&&")
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy(REPO / "manage.py", app)
    for folder in ("settings", "services"):
        shutil.copytree(REPO / folder, app / folder, ignore=shutil.ignore_patterns("__pycache__"))
    python = Path(sys.executable).parent
    env = {**os.environ, "NCM_ENV": "docker", "PATH": f"{python}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(["sh", "-ec", step], cwd=app, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    revisions = sorted(app.glob("services/*/migrations/*.py"))
    assert revisions
    for revision in revisions:
        assert list((revision.parent / "__pycache__").glob(f"{revision.stem}.*.pyc")), revision
    cached = (app / "var" / "cache" / "ncm-headers.json").read_text()
    assert all(revision.name in cached for revision in revisions)


# -- the entrypoint and the bootstrap script, for real ----------------------------------


def _fresh_name() -> str:
    return f"ncm_t_{uuid.uuid4().hex[:12]}"


def _engine(url: str) -> sa.Engine:
    return sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


@pytest.fixture
def pg_names() -> Iterator[list[str]]:
    """Two fresh database names on PostgreSQL, dropped afterwards if they were created."""
    names = [_fresh_name(), _fresh_name()]
    yield names
    admin = _engine(PG_ADMIN)
    with admin.connect() as conn:
        for name in names:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture
def pg_pair(pg_url: str, pg_names: list[str]) -> list[str]:
    """Two fresh PostgreSQL databases (for users and billing)."""
    del pg_url  # skips or fails, as every PostgreSQL test does, when the server is down
    admin = _engine(PG_ADMIN)
    with admin.connect() as conn:
        for name in pg_names:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    admin.dispose()
    return pg_names


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    """A copy of this monorepo's manage.py, settings.toml and services/ (no local overrides)."""
    app = tmp_path / "app"
    (app / "settings").mkdir(parents=True)
    shutil.copy2(REPO / "manage.py", app / "manage.py")
    shutil.copy2(REPO / "settings" / "settings.toml", app / "settings" / "settings.toml")
    shutil.copytree(REPO / "services", app / "services",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return app


def _stack_env(app: Path, *, users: str, billing: str, catalog: str, pg_port: int = 5432) -> dict[str, str]:
    """The variables Compose gives the `migrate` container, pointed at this machine."""
    pg, my = sa.engine.make_url(PG_ADMIN), sa.engine.make_url(os.environ.get(
        "NCM_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("NCM_")}
    env.update(
        NCM_APP_DIR=str(app), PYTHON=sys.executable,
        POSTGRES_USER=pg.username or "postgres",
        # Trust authentication ignores it; it must never be printed all the same.
        POSTGRES_PASSWORD=pg.password or "pw-never-shown-7Q",
        POSTGRES_HOST=pg.host or "127.0.0.1", POSTGRES_PORT=str(pg_port),
        USERS_DB=users, BILLING_DB=billing,
        MARIADB_ROOT_PASSWORD=my.password or "", MARIADB_HOST=my.host or "127.0.0.1",
        MARIADB_PORT=str(my.port or 3306), CATALOG_DB=catalog,
        # A MongoDB service of the stack, if the monorepo has one, is left out here.
        MONGO_HOST="127.0.0.1", MONGO_PORT="9", REDIS_HOST="127.0.0.1", REDIS_PORT="9",
    )
    for folder in sorted((app / "services").iterdir()):
        if (folder / "migrations").is_dir() and folder.name not in EXAMPLE_SERVICES:
            env[f"NCM_SERVICES__{folder.name.upper()}__ENABLED"] = "false"
    return env


def _free_port() -> int:
    """A local port that nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tables(url: str) -> set[str]:
    engine = _engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _on(url: str, database: str) -> str:
    return sa.engine.make_url(url).set(database=database).render_as_string(hide_password=False)


@pytest.mark.postgres
@pytest.mark.mysql
def test_entrypoint_waits_then_migrates_every_service(
    app_dir: Path, pg_pair: list[str], mysql_url: str
) -> None:
    users, billing = pg_pair
    catalog = sa.engine.make_url(mysql_url).database or ""
    env = _stack_env(app_dir, users=users, billing=billing, catalog=catalog)
    result = subprocess.run([str(ENTRYPOINT)], env=env, capture_output=True, text=True,
                            timeout=300, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "users: up" in output and "catalog: up" in output  # `wait` ran first
    assert env["POSTGRES_PASSWORD"] not in output
    assert {"users", "roles", "alembic_version", "ncm_migrations"} <= _tables(_on(PG_ADMIN, users))
    assert {"invoices", "invoice_lines", "alembic_version"} <= _tables(_on(PG_ADMIN, billing))
    assert {"products", "alembic_version"} <= _tables(mysql_url)
    engine = _engine(_on(PG_ADMIN, users))
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "0003_seed_roles"
    engine.dispose()


@pytest.mark.postgres
@pytest.mark.mysql
def test_entrypoint_exits_4_within_its_bound_when_a_database_never_comes_up(
    app_dir: Path, mysql_url: str
) -> None:
    catalog = sa.engine.make_url(mysql_url).database or ""
    env = _stack_env(app_dir, users="users", billing="billing", catalog=catalog, pg_port=_free_port())
    env.update(NCM_CONNECT__MAX_WAIT_S="2", NCM_CONNECT__RETRIES="2")
    started = time.monotonic()
    result = subprocess.run([str(ENTRYPOINT)], env=env, capture_output=True, text=True,
                            timeout=120, check=False)
    took = time.monotonic() - started
    assert result.returncode == 4, result.stdout + result.stderr
    assert "unreachable" in result.stderr
    # The bound: connect.max_wait_s (2 s) plus interpreter start-up, with room for a slow CI.
    assert took < 20, took
    assert _tables(mysql_url) == set()  # migrate never started, not even for the live database


def test_entrypoint_runs_the_manage_py_command_it_is_given(app_dir: Path) -> None:
    env = _stack_env(app_dir, users="u_db", billing="b_db", catalog="c_db")
    result = subprocess.run([str(ENTRYPOINT), "services", "--json"], env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert '"name": "catalog"' in result.stdout and "/c_db" in result.stdout
    assert env["POSTGRES_PASSWORD"] not in result.stdout
    # And a bad invocation keeps manage.py's exit code.
    result = subprocess.run([str(ENTRYPOINT), "migrate", "nosuchservice"], env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stdout + result.stderr


def test_entrypoint_without_manage_py_says_where_it_looked(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "NCM_APP_DIR": str(tmp_path)}
    result = subprocess.run([str(ENTRYPOINT)], env=env, capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 2 and str(tmp_path) in result.stderr


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _readline(stream: IO[str], limit_s: float = 60.0) -> str:
    """One line from a child's pipe, failing rather than hanging when none comes."""
    ready, _, _ = select.select([stream], [], [], limit_s)
    if not ready:
        pytest.fail(f"no output within {limit_s:.0f}s")
    return stream.readline()


def _until(condition: Any, what: str, limit_s: float = 60.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_entrypoint_execs_the_command_it_is_given(app_dir: Path) -> None:
    """With arguments the entrypoint replaces itself with manage.py: signals reach it."""
    env = _stack_env(app_dir, users="u", billing="b", catalog="c", pg_port=_free_port())
    env.update(NCM_CONNECT__MAX_WAIT_S="120")
    proc = subprocess.Popen([str(ENTRYPOINT), "wait", "users", "--timeout", "120"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _until(lambda: "manage.py wait" in _cmdline(proc.pid), "manage.py to replace the shell")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == -signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_entrypoint_hands_sigterm_to_wait(app_dir: Path) -> None:
    """Stopping the container during `wait` stops `wait` too, and migrate never starts."""
    env = _stack_env(app_dir, users="u", billing="b", catalog="c", pg_port=_free_port())
    env.update(NCM_CONNECT__MAX_WAIT_S="120")
    proc = subprocess.Popen([str(ENTRYPOINT)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        # The first retry's line: `wait` runs, and the trap was set before it started.
        lines = [_readline(proc.stderr)]
        while "not reachable" not in lines[-1] and len(lines) < 20 and lines[-1]:
            lines.append(_readline(proc.stderr))
        assert "not reachable" in lines[-1], lines
        waiting = [p for p in _children(proc.pid) if "manage.py wait" in _cmdline(p)]
        assert waiting, _children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
        _until(lambda: not _alive(waiting[0]), "manage.py wait to stop")
        assert "migrate" not in (proc.stdout.read() if proc.stdout else "")
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.postgres
def test_postgres_bootstrap_script_creates_the_databases_once(pg_url: str, pg_names: list[str]) -> None:
    """docker/initdb/postgres/ as the postgres image runs it, here over TCP with psql."""
    psql = shutil.which("psql")
    if psql is None:
        if REQUIRE:
            pytest.fail("psql is not installed (NCM_TEST_REQUIRE_SERVERS=1)")
        pytest.skip("psql is not installed")
    admin = sa.engine.make_url(PG_ADMIN)
    env = {
        "PATH": os.environ["PATH"], "PGHOST": admin.host or "127.0.0.1",
        "PGPORT": str(admin.port or 5432), "POSTGRES_USER": admin.username or "postgres",
        "POSTGRES_DB": admin.database or "postgres",
        "USERS_DB": pg_names[0], "BILLING_DB": pg_names[1],
    }
    if admin.password:
        env["PGPASSWORD"] = admin.password
    for _ in range(2):  # the second run finds them there and keeps them
        result = subprocess.run([str(PG_INITDB)], env=env, capture_output=True, text=True,
                                timeout=60, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
    engine = _engine(pg_url)
    with engine.connect() as conn:
        found = conn.execute(
            sa.text("SELECT datname FROM pg_database WHERE datname IN (:a, :b)"),
            {"a": pg_names[0], "b": pg_names[1]},
        ).scalars().all()
    engine.dispose()
    assert sorted(found) == sorted(pg_names)
