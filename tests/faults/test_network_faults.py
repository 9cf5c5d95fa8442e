"""Network faults between ncm-migrate and real PostgreSQL and MariaDB servers, injected by
a loopback proxy (`proxy.py`): a server that accepts TCP and never answers, one that starts
late, a network that stalls mid-revision, connections cut at each point outside a step.

Every command is bounded by the subprocess's timeout (a hang fails the test, it does not
hang the suite); what is asserted is the exit code and the one sentence, never a duration.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from monorepo import CliResult, Monorepo, ledger
from proxy import BLACK_HOLE, REFUSE, fault_proxy

BOUND_S = 90  # far more than any command below may take; only a hang reaches it

FAST = """
connect.timeout_s = 1.0
connect.retries = 1
connect.max_wait_s = 3.0
lock.timeout_s = 2.0
"""


@pytest.fixture(params=["postgresql", "mysql"])
def server_url(request: pytest.FixtureRequest) -> str:
    fixture = {"postgresql": "pg_url", "mysql": "mysql_url"}[request.param]
    url: str = request.getfixturevalue(fixture)
    return url


def _repo(repo: Monorepo, url: str, extra: str = FAST) -> None:
    repo.urls({"users": url}, extra=extra)


def bounded(fn: Callable[[], object]) -> BaseException | None:
    """Run `fn` in a thread for at most BOUND_S (a hang fails the test instead of hanging the
    suite); the exception it raised, or None."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            fn()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(BOUND_S)
    assert not worker.is_alive(), f"{fn} still waits after {BOUND_S}s: it has no deadline"
    return outcome[0]


def _one_sentence(result: CliResult, *needles: str) -> None:
    assert "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in result.stderr, result.output


# -- a server that accepts TCP and never answers: every connection has a deadline ----------


@pytest.mark.parametrize("command", [
    ("migrate",), ("showmigrations",), ("wait", "--timeout", "3"), ("doctor",), ("history",),
])
def test_black_hole_every_command_gives_up(
    repo: Monorepo, server_url: str, command: tuple[str, ...]
) -> None:
    repo.table("users", "0001_initial", "people")
    with fault_proxy(server_url, mode=BLACK_HOLE) as proxy:
        _repo(repo, proxy.url(server_url))
        result = repo.run(*command, timeout=BOUND_S)
        assert proxy.accepted >= 1  # it did get through to the black hole
    expected = 1 if command[0] == "doctor" else 4
    assert result.code == expected, result.output
    _one_sentence(result, "users")
    assert f"127.0.0.1:{proxy.port}" in result.output


@pytest.mark.parametrize("driver", ["aiomysql", "asyncmy", "asyncpg", "psycopg_async"])
def test_async_drivers_give_up_on_a_black_hole(request: pytest.FixtureRequest, driver: str) -> None:
    """Async engines connect under one deadline (connect.timeout_s) whatever the driver does:
    aiomysql and asyncmy, like PyMySQL, read the server's greeting without one."""
    from ncm_migrate.backends import ConnectFailed
    from ncm_migrate.backends.sql.backend import SqlBackend
    from ncm_migrate.model import ServiceConfig

    mysql = driver in ("aiomysql", "asyncmy")
    url: str = request.getfixturevalue("mysql_url" if mysql else "pg_url")
    with fault_proxy(url, mode=BLACK_HOLE) as proxy:
        async_url = sa.engine.make_url(proxy.url(url)).set(
            drivername=f"{'mysql' if mysql else 'postgresql'}+{driver}"
        ).render_as_string(hide_password=False)
        backend = SqlBackend(ServiceConfig(name="users", root=Path("."), database_url=async_url), 1.0)
        error = bounded(backend.open)
    assert isinstance(error, ConnectFailed), error
    assert "1s" in str(error) or "timeout" in str(error).lower(), error


def test_mariadb_handshake_has_a_deadline_in_process(mysql_url: str) -> None:
    """PyMySQL reads the server's greeting without a bound; ours has connect.timeout_s."""
    from ncm_migrate.backends import ConnectFailed
    from ncm_migrate.backends.sql.backend import SqlBackend
    from ncm_migrate.model import ServiceConfig

    with fault_proxy(mysql_url, mode=BLACK_HOLE) as proxy:
        config = ServiceConfig(name="users", root=Path("."), database_url=proxy.url(mysql_url))
        backend = SqlBackend(config, 1.0)
        error = bounded(backend.open)
    assert isinstance(error, ConnectFailed) and "did not answer within 1s" in str(error)


def test_wait_sees_a_server_that_starts_late(repo: Monorepo, server_url: str) -> None:
    """Refused until the test says so: `wait` keeps trying within its timeout and succeeds."""
    repo.table("users", "0001_initial", "people")
    with fault_proxy(server_url, mode=REFUSE) as proxy:
        _repo(repo, proxy.url(server_url))
        proc = _start(repo, "wait", "--timeout", "60")
        try:
            proxy.wait_for("refused", 2)  # it tried, was refused, and tried again
            proxy.forward()
            out, err = proc.communicate(timeout=BOUND_S)
        finally:
            proc.kill()
        assert proc.returncode == 0, out + err
        assert proxy.accepted >= 1


def test_a_port_nobody_listens_on_yet(repo: Monorepo, server_url: str) -> None:
    """The kernel refuses (no listener at all) until the proxy starts listening."""
    repo.table("users", "0001_initial", "people")
    with fault_proxy(server_url, listening=False) as proxy:
        _repo(repo, proxy.url(server_url))
        result = repo.run("wait", "--timeout", "2", timeout=BOUND_S)
        assert result.code == 4, result.output
        _one_sentence(result, "users", "stayed unreachable")
        proxy.listen()
        assert repo.run("wait", "--timeout", "30", timeout=BOUND_S).code == 0


def _start(repo: Monorepo, *args: str) -> subprocess.Popen[str]:
    repo.run("--help")  # writes manage.py
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("NCM_") or k.startswith("NCM_TEST_")}
    return subprocess.Popen([sys.executable, str(repo.root / "manage.py"), *args], cwd=repo.root,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# -- a network that stalls mid-revision --------------------------------------------------

STALLING = "op.execute(\"SELECT 'ncm-stall-here'\")"


def test_stall_mid_revision_fails_with_exit_4(repo: Monorepo, server_url: str) -> None:
    """The stalled runner does not hang: `connect.read_timeout_s` bounds each wait on the
    server; the run fails with exit 4 naming the service and the server, never the password.
    Once the network is gone for good, the server lets the lock go, and another runner can go
    on (on MariaDB after `repair`: DDL is not transactional)."""
    repo.table("users", "0001_initial", "people")
    repo.revision("users", "0002_stall", upgrade=STALLING)
    with fault_proxy(server_url) as proxy:
        _repo(repo, proxy.url(server_url), FAST + "connect.read_timeout_s = 2.0\n")
        proxy.stall_on(b"ncm-stall-here")
        result = repo.run("migrate", timeout=BOUND_S)
        assert proxy.triggered.is_set()
        proxy.cut()
    assert result.code == 4, result.output
    _one_sentence(result, "Service 'users'", "lost the connection", f"127.0.0.1:{proxy.port}",
                  "connect.read_timeout_s")
    rows = ledger(server_url, "users")
    assert [(r["revision"], r["status"]) for r in rows][:1] == [("0001_initial", "applied")]
    _repo(repo, server_url)
    again = repo.run("migrate", timeout=BOUND_S)
    if server_url.startswith("postgresql"):
        assert again.code == 0, again.output  # the stalled step rolled back with its session
    else:
        assert again.code == 1 and "repair users" in again.output, again.output


def test_keepalive_settings_reach_the_driver_and_the_server(server_url: str) -> None:
    """`connect.keepalive_s` reaches libpq's parameters, PyMySQL's socket, and PostgreSQL's
    side of the connection: a peer that is gone is noticed without limiting query time."""
    from ncm_migrate.backends.sql.backend import create_engine
    from ncm_migrate.config import ConnectSettings

    engine = create_engine(server_url, ConnectSettings(keepalive_s=6.0))
    try:
        with engine.connect() as conn:
            dbapi = conn.connection.dbapi_connection
            if server_url.startswith("postgresql"):
                params = dbapi.info.get_parameters()  # type: ignore[union-attr]
                assert params["keepalives_idle"] == "6" and params["tcp_user_timeout"] == "12000"
                # and the server's side, so that it lets a vanished runner's lock go
                assert conn.exec_driver_sql("SHOW tcp_keepalives_idle").scalar() == "6"
                assert conn.exec_driver_sql("SHOW tcp_keepalives_count").scalar() == "3"
            else:
                import socket

                sock = dbapi._sock  # type: ignore[union-attr]  # PyMySQL keeps no public handle
                assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 6
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 12000
    finally:
        engine.dispose()


# -- connections cut outside a step: one sentence, exit 4 --------------------------------


@pytest.mark.parametrize(("where", "pg_pattern", "mysql_pattern"), [
    ("taking its migration lock", b"pg_try_advisory_lock(", b"GET_LOCK("),
    ("reading its migration state", b"SELECT version_num", b"SELECT version_num"),
])
def test_cut_outside_a_step_is_exit_4(
    repo: Monorepo, server_url: str, where: str, pg_pattern: bytes, mysql_pattern: bytes
) -> None:
    """Cut as the command sends the lock's, or the state's, first query: exit 4 naming what
    it was doing (the database already has a version table, so that its state is read)."""
    repo.table("users", "0001_initial", "people")
    _repo(repo, server_url)
    assert repo.run("migrate", timeout=BOUND_S).code == 0
    repo.table("users", "0002_more", "more_people")
    with fault_proxy(server_url) as proxy:
        _repo(repo, proxy.url(server_url))
        proxy.cut_on(pg_pattern if server_url.startswith("postgresql") else mysql_pattern)
        result = repo.run("migrate", timeout=BOUND_S)
        assert proxy.triggered.is_set()
    assert result.code == 4, result.output
    _one_sentence(result, "Service 'users'", "lost the connection", where, f"127.0.0.1:{proxy.port}")


def test_cut_while_creating_the_ledger_is_exit_4(repo: Monorepo, server_url: str) -> None:
    repo.table("users", "0001_initial", "people")
    with fault_proxy(server_url) as proxy:
        _repo(repo, proxy.url(server_url))
        proxy.cut_on(b"CREATE TABLE ncm_migrations")
        result = repo.run("migrate", timeout=BOUND_S)
        assert proxy.triggered.is_set()
    assert result.code == 4, result.output
    _one_sentence(result, "Service 'users'", "lost the connection", "preparing its ledger")
    assert "ncm_migrations" not in sa.inspect(sa.create_engine(server_url)).get_table_names()


def test_cut_mid_revision_is_exit_4(repo: Monorepo, server_url: str) -> None:
    repo.table("users", "0001_initial", "people")
    repo.revision("users", "0002_cut", upgrade="op.execute(\"SELECT 'ncm-cut-here'\")")
    with fault_proxy(server_url) as proxy:
        _repo(repo, proxy.url(server_url))
        proxy.cut_on(b"ncm-cut-here")
        result = repo.run("migrate", timeout=BOUND_S)
    assert result.code == 4, result.output
    _one_sentence(result, "Service 'users'", "lost the connection", "applying users:0002_cut")
    assert "((" not in result.stderr  # MySQL's (code, 'message') read as words, not a tuple


# -- the database programs of backup and restore -----------------------------------------


def test_restore_client_gives_up_on_a_black_hole(mysql_url: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The mariadb client that loads a dump connects with a deadline (pg_dump, pg_restore and
    psql have PGCONNECT_TIMEOUT): a BackupFailed, not a hang."""
    from ncm_migrate.backends.sql import backup as sql_backup
    from ncm_migrate.errors import BackupFailed
    from ncm_migrate.model import ServiceConfig

    monkeypatch.setattr(sql_backup, "CLIENT_CONNECT_TIMEOUT_S", 1)
    dump = tmp_path / "db.sql"
    dump.write_text("SELECT 1;\n")
    with fault_proxy(mysql_url, mode=BLACK_HOLE) as proxy:
        config = ServiceConfig(name="users", root=tmp_path, database_url=proxy.url(mysql_url))

        def load() -> None:
            with sql_backup._mysql_options(config) as opts:
                sql_backup._run([sql_backup.program("mariadb", "mysql"), *opts, "test"], config,
                                stdin=dump)

        error = bounded(load)
    assert isinstance(error, BackupFailed) and "users" in str(error)


# -- MongoDB: a connection lost outside a step -------------------------------------------


@pytest.mark.parametrize("command", [("showmigrations",), ("history",), ("migrate",)])
def test_mongo_connection_lost_outside_a_step_is_exit_4(
    repo: Monorepo, mongo_url: str, monkeypatch: pytest.MonkeyPatch, command: tuple[str, ...]
) -> None:
    """pymongo's own errors for a server gone (AutoReconnect, a server selection that timed
    out) while reading the ledger: one sentence naming the service and the server, exit 4."""
    from mongo_fake import FakeCollection
    from pymongo.errors import AutoReconnect

    repo.mongo_revision("orders", "0001_initial")
    repo.urls({"orders": mongo_url})
    assert repo.cli("migrate").code == 0
    repo.mongo_revision("orders", "0002_more", down="0001_initial")

    def gone(*_args: object, **_kwargs: object) -> None:
        raise AutoReconnect("connection closed")

    monkeypatch.setattr(FakeCollection, "find", gone)
    result = repo.cli(*command)
    assert result.code == 4, result.output
    _one_sentence(result, "Service 'orders'", "lost the connection", "localhost:27017",
                  "connection closed")


def test_cut_mid_revision_in_a_worker_process_is_exit_4(repo: Monorepo, server_url: str,
                                                         sqlite_url: str) -> None:
    """With --jobs, the lost connection crosses the process boundary whole: exit 4 and the
    same sentence; the other service's work is not lost."""
    repo.table("users", "0001_initial", "people")
    repo.revision("users", "0002_cut", upgrade="op.execute(\"SELECT 'ncm-cut-here'\")")
    repo.table("orders", "0001_initial", "orders")
    with fault_proxy(server_url) as proxy:
        repo.urls({"users": proxy.url(server_url), "orders": sqlite_url}, extra=FAST)
        proxy.cut_on(b"ncm-cut-here")
        result = repo.run("migrate", "--jobs", "2", timeout=BOUND_S)
    assert result.code == 4, result.output
    _one_sentence(result, "Service 'users'", "lost the connection", "applying users:0002_cut")
    assert "orders" in result.stdout


def test_doctor_reports_a_connection_lost_after_it_answered(repo: Monorepo, server_url: str) -> None:
    """Cut after the first query answered: doctor still reports every service (exit 1, as
    for one it could not reach), not exit 4 for the whole command."""
    repo.table("users", "0001_initial", "people")
    with fault_proxy(server_url) as proxy:
        _repo(repo, proxy.url(server_url))
        proxy.cut_on(b"pg_try_advisory_lock(" if server_url.startswith("postgresql") else b"GET_LOCK(")
        result = repo.run("doctor", timeout=BOUND_S)
        assert proxy.triggered.is_set()
    assert result.code == 1, result.output
    _one_sentence(result, "Service 'users'", "lost the connection")


@pytest.mark.parametrize("transactional", [False, True])
def test_mongo_connection_lost_during_a_step_is_exit_4(
    repo: Monorepo, mongo_url: str, transactional: bool
) -> None:
    """pymongo's AutoReconnect from inside upgrade() (the server gone mid-step) is exit 4
    naming the service, the server and the revision, as on SQL, not a revision's own
    failure (exit 1); what the step may have left is said."""
    repo.mongo_revision("orders", "0001_initial")
    repo.mongo_revision(
        "orders", "0002_lost", down="0001_initial", transactional=transactional,
        extra="from pymongo.errors import AutoReconnect",
        upgrade='db["orders"].insert_one({"n": 1})\nraise AutoReconnect("connection closed")',
    )
    repo.urls({"orders": mongo_url})
    result = repo.cli("migrate")
    assert result.code == 4, result.output
    _one_sentence(result, "Service 'orders'", "lost the connection", "localhost:27017",
                  "applying orders:0002_lost", "connection closed")
    shown = repo.cli("showmigrations", "orders", "--json")
    assert shown.code == 0, shown.output
    assert "0001_initial" in shown.stdout
