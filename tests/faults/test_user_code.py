"""Revisions whose code exits or is interrupted (`sys.exit`, `SystemExit`,
`KeyboardInterrupt`, at import or in `upgrade()`, `downgrade()` or `verify()`), and failures
that cannot be recorded, on SQLite, PostgreSQL and MariaDB (and MongoDB on mongomock): the
run stops with the contract's exit code and one sentence naming the revision, the step is
recorded `failed`, the version table is unchanged, and the other services of the run are
reported as what they are."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import textwrap
import threading
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from monorepo import CliResult, Monorepo, ledger, version_heads

from ncm_migrate.backends.mongo import backend as mongo_backend

# (upgrade body, extra top-level code, verify body): how the revision leaves.
CASES: dict[str, tuple[str, str, str | None]] = {
    "sys.exit(0) in upgrade": ("op.create_table('half', sa.Column('id', sa.Integer))\nsys.exit(0)",
                               "", None),
    "sys.exit(3) in upgrade": ("sys.exit(3)", "", None),
    "raise SystemExit in upgrade": ("raise SystemExit", "", None),
    "sys.exit(0) at import": ("pass", "sys.exit(0)", None),
    "sys.exit(0) in verify": ("pass", "", "sys.exit(0)"),
    "KeyboardInterrupt in upgrade": ("raise KeyboardInterrupt", "", None),
    "KeyboardInterrupt at import": ("pass", "raise KeyboardInterrupt", None),
}
# What the one sentence on stderr says, and the exit code (SIGINT: 128 + 2).
SAYS: dict[str, tuple[int, str]] = {
    "sys.exit(0) in upgrade": (1, "called sys.exit(0) in upgrade()"),
    "sys.exit(3) in upgrade": (1, "called sys.exit(3) in upgrade()"),
    "raise SystemExit in upgrade": (1, "called sys.exit() in upgrade()"),
    "sys.exit(0) at import": (1, "called sys.exit(0) while it was imported"),
    "sys.exit(0) in verify": (1, "called sys.exit(0) in verify()"),
    "KeyboardInterrupt in upgrade": (130, "was interrupted in upgrade()"),
    "KeyboardInterrupt at import": (130, "was interrupted while it was imported"),
}


def _three_services(repo: Monorepo, url: str, upgrade: str, extra: str, verify: str | None) -> None:
    """accounts (runs first, succeeds), users (its second revision leaves as `upgrade`,
    `extra` and `verify` say) and zoo (depends on users: never runs), on one database."""
    repo.table("accounts", "0001_initial", "accounts_t")
    repo.table("users", "0001_initial", "users_t")
    code = "import sys\n" + extra
    if verify is not None:
        code += f"\n\ndef verify() -> None:\n{textwrap.indent(verify, '    ')}\n"
    repo.revision("users", "0002_leaves", down="0001_initial", upgrade=upgrade,
                  downgrade="op.drop_table('half')", extra=code)
    repo.table("zoo", "0001_initial", "zoo_t")
    repo.settings(f"""
        [development]
        database_url = "{url}"
        [development.services.users]
        depends_on = ["accounts"]
        [development.services.zoo]
        depends_on = ["users"]
    """)


def _one_sentence(result: CliResult, code: int, words: str) -> str:
    assert result.code == code, result.output
    assert "Traceback" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "users:0002_leaves" in lines[0] and words in lines[0], lines[0]
    return lines[0]


def _outcomes(result: CliResult) -> dict[tuple[str, str], str]:
    data = json.loads(result.stdout)
    assert data["ok"] is False
    return {(s["service"], s["revision"]): s["outcome"] for s in data["steps"]}


def _migrate_stops_at_the_exit(repo: Monorepo, case: str) -> None:
    """`migrate --json` over the three services: one sentence with the case's exit code,
    accounts and users:0001 applied, users:0002 failed, zoo not run."""
    code, words = SAYS[case]
    result = repo.cli("migrate", "--json")
    _one_sentence(result, code, words)
    assert _outcomes(result) == {
        ("accounts", "0001_initial"): "applied",
        ("users", "0001_initial"): "applied",
        ("users", "0002_leaves"): "failed",
        ("zoo", "0001_initial"): "not-run",
    }


@pytest.mark.parametrize("case", list(CASES))
def test_a_revision_that_exits_fails_its_step(repo: Monorepo, db_url: str, case: str) -> None:
    upgrade, extra, verify = CASES[case]
    _three_services(repo, db_url, upgrade, extra, verify)
    _migrate_stops_at_the_exit(repo, case)
    rows = [(r["service"], r["revision"], r["status"]) for r in ledger(db_url)]
    assert rows[-1] == ("users", "0002_leaves", "failed"), rows
    assert ("accounts", "0001_initial", "applied") in rows
    assert not [r for r in rows if r[0] == "zoo"]
    assert version_heads(db_url, "alembic_version_users") == {"0001_initial"}
    assert version_heads(db_url, "alembic_version_accounts") == {"0001_initial"}
    assert version_heads(db_url, "alembic_version_zoo") == set()
    history = repo.cli("history", "users", "--json")
    assert history.code == 0 and json.loads(history.stdout)[-1]["status"] == "failed"


@pytest.mark.parametrize("case", ["sys.exit(0) in upgrade", "KeyboardInterrupt in upgrade"])
def test_a_revision_that_exits_in_a_real_process(repo: Monorepo, db_url: str, case: str) -> None:
    """In a real process, where nothing between the revision and the interpreter would turn
    SystemExit into an exit status of its own (a CliRunner would)."""
    upgrade, extra, verify = CASES[case]
    _three_services(repo, db_url, upgrade, extra, verify)
    code, words = SAYS[case]
    result = repo.run("-q", "migrate")
    _one_sentence(result, code, words)
    assert ledger(db_url, "users")[-1]["status"] == "failed"
    assert version_heads(db_url, "alembic_version_users") == {"0001_initial"}


def test_a_downgrade_that_exits_fails_its_step(repo: Monorepo, db_url: str) -> None:
    _three_services(repo, db_url, "pass", "", None)
    path = repo.root / "services/users/migrations/0002_leaves.py"
    path.write_text(path.read_text().replace("op.drop_table('half')", "sys.exit(0)"))
    assert repo.cli("migrate").code == 0
    result = repo.cli("rollback", "users", "--cascade")
    _one_sentence(result, 1, "called sys.exit(0) in downgrade()")
    rows = ledger(db_url, "users")
    assert (rows[-1]["direction"], rows[-1]["status"]) == ("down", "failed")
    assert version_heads(db_url, "alembic_version_users") == {"0002_leaves"}
    assert [(r["direction"], r["status"]) for r in ledger(db_url, "zoo")] == [
        ("up", "applied"), ("down", "reverted")]
    assert version_heads(db_url, "alembic_version_zoo") == set()


def test_verify_only_reports_an_exit_as_a_failed_check(repo: Monorepo, db_url: str) -> None:
    """`migrate --verify-only` runs verify() and changes nothing: an exit is its result."""
    _three_services(repo, db_url, "pass", "", "pass")
    assert repo.cli("migrate").code == 0
    path = repo.root / "services/users/migrations/0002_leaves.py"
    text = path.read_text()
    path.write_text(text.replace("def verify() -> None:\n    pass", "def verify() -> None:\n    sys.exit(4)"))
    assert path.read_text() != text
    before = ledger(db_url)
    result = repo.cli("migrate", "--verify-only", "--json")
    assert result.code == 1 and "Traceback" not in result.output, result.output
    assert "sys.exit(4)" in result.output
    assert ledger(db_url) == before


# -- a failure that cannot be recorded ----------------------------------------------------


class _CutProxy:
    """A loopback TCP proxy to a database server that can be cut: every connection through
    it is closed and new ones are refused, as when the server goes down."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                return
            server.settimeout(None)
            with self.lock:
                self.sockets += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass

    def cut(self) -> None:
        for sock in [self.listener, *self.sockets]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@pytest.fixture
def cut_proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], str]]:
    """Makes a URL that goes through a `_CutProxy`; a revision cuts it with
    `import ncm_test_cut; ncm_test_cut.cut()` (the CLI runs in this process)."""
    proxies: list[_CutProxy] = []

    def through(url: str) -> str:
        parsed = sa.engine.make_url(url)
        proxy = _CutProxy(parsed.host or "127.0.0.1", parsed.port or 0)
        proxies.append(proxy)
        module = types.ModuleType("ncm_test_cut")
        module.cut = proxy.cut  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "ncm_test_cut", module)
        return parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)

    yield through
    for proxy in proxies:
        proxy.cut()


# The step's server goes away mid-step, so the `failed` row cannot be written either.
CUT = "import ncm_test_cut\nncm_test_cut.cut()\nraise RuntimeError('boom')"
# SQLite has no server to lose: its connection is made to refuse writes to the ledger.
SQLITE_CUT = """
import sqlite3
def deny(action, table, *_rest):
    refuse = action == sqlite3.SQLITE_INSERT and table == 'ncm_migrations'
    return sqlite3.SQLITE_DENY if refuse else sqlite3.SQLITE_OK
op.get_bind().connection.dbapi_connection.set_authorizer(deny)
raise RuntimeError('boom')
"""


def test_the_original_error_survives_a_failure_that_cannot_be_recorded(
    repo: Monorepo, db_url: str, cut_proxy: Callable[[str], str]
) -> None:
    sqlite = db_url.startswith("sqlite")
    _three_services(repo, db_url if sqlite else cut_proxy(db_url), SQLITE_CUT if sqlite else CUT,
                    "", None)
    result = repo.cli("migrate")
    assert result.code == 1, result.output
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.stderr
    step_error, _, recording_error = errors[0].partition("could not be recorded")
    assert recording_error, errors[0]
    said = "RuntimeError: boom"
    assert f"Revision users:0002_leaves failed (upgrade): {said}" in step_error, errors[0]
    assert "refused" not in step_error and "Can't connect" not in step_error, errors[0]
    assert version_heads(db_url, "alembic_version_users") == {"0001_initial"}
    assert ledger(db_url, "accounts")[-1]["status"] == "applied"


# -- MongoDB (mongomock) --------------------------------------------------------------------

MONGO_CASES: dict[str, tuple[str, str, str | None]] = {
    "sys.exit(0) in upgrade": ("db.create_collection('half')\nsys.exit(0)", "", None),
    "sys.exit(3) in upgrade": ("sys.exit(3)", "", None),
    "raise SystemExit in upgrade": ("raise SystemExit", "", None),
    "sys.exit(0) at import": ("pass", "sys.exit(0)", None),
    "sys.exit(0) in verify": ("pass", "", "sys.exit(0)"),
    "KeyboardInterrupt in upgrade": ("raise KeyboardInterrupt", "", None),
    "KeyboardInterrupt at import": ("pass", "raise KeyboardInterrupt", None),
}


def _mongo_services(repo: Monorepo, url: str, upgrade: str, extra: str, verify: str | None) -> None:
    repo.mongo_revision("accounts", "0001_initial", upgrade="db.accounts_t.insert_one({'a': 1})")
    repo.mongo_revision("users", "0001_initial", upgrade="db.users_t.insert_one({'u': 1})")
    code = "import sys\n" + extra
    if verify is not None:
        code += f"\n\ndef verify(db: Database) -> None:\n{textwrap.indent(verify, '    ')}\n"
    repo.mongo_revision("users", "0002_leaves", down="0001_initial", upgrade=upgrade,
                        downgrade="sys.exit(0)", extra=code)
    repo.mongo_revision("zoo", "0001_initial")
    repo.settings(f"""
        [development]
        database_url = "{url}"
        [development.services.users]
        depends_on = ["accounts"]
        [development.services.zoo]
        depends_on = ["users"]
    """)


def _mongo_db(url: str) -> Any:
    return mongo_backend.client_factory(url, 5.0)[mongo_backend.url_database(url)]


def _mongo_rows(url: str, service: str) -> list[tuple[str, str, str]]:
    docs = _mongo_db(url)["ncm_migrations"].find({"service": service}).sort("seq", 1)
    return [(d["revision"], d["direction"], d["status"]) for d in docs]


@pytest.mark.parametrize("case", list(MONGO_CASES))
def test_a_mongo_revision_that_exits_fails_its_step(repo: Monorepo, mongo_url: str, case: str) -> None:
    upgrade, extra, verify = MONGO_CASES[case]
    _mongo_services(repo, mongo_url, upgrade, extra, verify)
    _migrate_stops_at_the_exit(repo, case)
    assert _mongo_rows(mongo_url, "users")[-1] == ("0002_leaves", "up", "failed")
    assert _mongo_rows(mongo_url, "accounts") == [("0001_initial", "up", "applied")]
    assert _mongo_rows(mongo_url, "zoo") == []
    markers = {m["_id"] for m in _mongo_db(mongo_url)["ncm_migration_applied"].find()}
    assert markers == {"accounts:0001_initial", "users:0001_initial"}


def test_a_mongo_downgrade_that_exits_fails_its_step(repo: Monorepo, mongo_url: str) -> None:
    _mongo_services(repo, mongo_url, "pass", "", None)
    assert repo.cli("migrate").code == 0
    result = repo.cli("rollback", "users", "--cascade")
    _one_sentence(result, 1, "called sys.exit(0) in downgrade()")
    assert _mongo_rows(mongo_url, "zoo") == [("0001_initial", "up", "applied"),
                                             ("0001_initial", "down", "reverted")]
    assert _mongo_rows(mongo_url, "users")[-1] == ("0002_leaves", "down", "failed")
    markers = {m["_id"] for m in _mongo_db(mongo_url)["ncm_migration_applied"].find()}
    assert "users:0002_leaves" in markers


def test_a_mongo_failure_that_cannot_be_recorded_keeps_the_original_error(
    repo: Monorepo, mongo_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pymongo.errors import AutoReconnect

    _mongo_services(repo, mongo_url, "raise RuntimeError('boom')", "", None)

    finish = mongo_backend.MongoBackend._finish_row

    def cut(backend: mongo_backend.MongoBackend, seq: int, status: str, t0: float) -> float:
        if status == "failed":
            raise AutoReconnect("connection closed")
        return finish(backend, seq, status, t0)

    monkeypatch.setattr(mongo_backend.MongoBackend, "_finish_row", cut)
    result = repo.cli("migrate")
    assert result.code == 1 and "Traceback" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "users:0002_leaves failed (upgrade): RuntimeError: boom" in lines[0], lines[0]
    assert "could not be recorded" in lines[0] and "connection closed" in lines[0], lines[0]


# -- MariaDB ledger times keep microseconds ---------------------------------------------------


def _time_precision(url: str) -> dict[str, int]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT COLUMN_NAME, DATETIME_PRECISION FROM information_schema.COLUMNS "
                "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'ncm_migrations' "
                "AND COLUMN_NAME IN ('started_at', 'finished_at')"
            ))
            return {str(name): int(precision) for name, precision in rows}
    finally:
        engine.dispose()


def _quick_steps(repo: Monorepo, url: str) -> None:
    repo.revision("users", "0001_initial")
    repo.revision("users", "0002_next", down="0001_initial")
    repo.revision("users", "0003_last", down="0002_next")
    repo.urls({"users": url})


def _ordered_in_microseconds(rows: list[dict[str, Any]]) -> None:
    times = [(r["started_at"], r["finished_at"]) for r in rows]
    starts = [start for start, _ in times]
    assert starts == sorted(starts) and len(set(starts)) == len(starts), times
    assert all(start <= finish for start, finish in times), times
    # Whole seconds throughout would mean the column drops the fraction.
    assert any(t.microsecond for pair in times for t in pair), times


def test_mariadb_ledger_times_keep_microseconds(repo: Monorepo, mysql_url: str) -> None:
    _quick_steps(repo, mysql_url)
    assert repo.cli("migrate").code == 0
    assert _time_precision(mysql_url) == {"started_at": 6, "finished_at": 6}
    rows = ledger(mysql_url, "users")
    assert [r["status"] for r in rows] == ["applied"] * 3
    _ordered_in_microseconds(rows)
    history = json.loads(repo.cli("history", "users", "--json").stdout)
    assert [h["revision"] for h in history] == ["0001_initial", "0002_next", "0003_last"]
    assert all("." in h["started_at"] for h in history), history


def test_an_older_mariadb_ledger_is_widened_on_first_use(repo: Monorepo, mysql_url: str) -> None:
    """A ledger made by an earlier version (DATETIME, whole seconds) gets DATETIME(6) the
    first time a run writes to it, keeping its rows; twice is the same as once."""
    _quick_steps(repo, mysql_url)
    engine = sa.create_engine(mysql_url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE ncm_migrations (id INTEGER NOT NULL AUTO_INCREMENT, "
            "service VARCHAR(64) NOT NULL, revision VARCHAR(128) NOT NULL, "
            "direction VARCHAR(4) NOT NULL, status VARCHAR(16) NOT NULL, checksum VARCHAR(64), "
            "started_at DATETIME NOT NULL, finished_at DATETIME, duration_ms FLOAT, "
            "actor VARCHAR(128) NOT NULL, host VARCHAR(255) NOT NULL, "
            "environment VARCHAR(64) NOT NULL, tool_version VARCHAR(32) NOT NULL, "
            "PRIMARY KEY (id))"
        )
        conn.exec_driver_sql("CREATE INDEX ix_ncm_migrations_service ON ncm_migrations (service, id)")
        conn.exec_driver_sql(
            "INSERT INTO ncm_migrations (service, revision, direction, status, checksum, "
            "started_at, finished_at, duration_ms, actor, host, environment, tool_version) "
            "VALUES ('other', '0001_old', 'up', 'applied', 'x', '2026-01-02 03:04:05', "
            "'2026-01-02 03:04:06', 1000, 'someone', 'h', 'development', '0.0.1')"
        )
    engine.dispose()
    assert _time_precision(mysql_url) == {"started_at": 0, "finished_at": 0}
    before = ledger(mysql_url, "other")
    assert repo.cli("migrate", "users", "0002_next").code == 0
    assert _time_precision(mysql_url) == {"started_at": 6, "finished_at": 6}
    # Its rows kept, and the columns 0.2 added, empty for them.
    later = {"run_id": None, "attempt": None, "waited_ms": None}
    assert ledger(mysql_url, "other") == [{**row, **later} for row in before]
    assert repo.cli("migrate").code == 0
    assert _time_precision(mysql_url) == {"started_at": 6, "finished_at": 6}
    rows = ledger(mysql_url, "users")
    assert [r["revision"] for r in rows] == ["0001_initial", "0002_next", "0003_last"]
    _ordered_in_microseconds(rows)


# -- the other user code a run executes --------------------------------------------------------


def test_sqlmigrate_of_a_revision_that_exits(repo: Monorepo, sqlite_url: str) -> None:
    """Rendering SQL runs upgrade() too (offline): an exit there is one sentence, not an
    exit status of the revision's choosing with half the SQL printed."""
    _three_services(repo, sqlite_url, "sys.exit(0)", "", None)
    result = repo.cli("sqlmigrate", "users", "0002_leaves")
    assert result.code == 1 and "Traceback" not in result.output, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "users:0002_leaves called sys.exit(0) while it was rendered as SQL" in lines[0]
    assert "nothing was changed" in lines[0]


def test_a_models_file_that_exits_is_bad_input(repo: Monorepo, db_url: str) -> None:
    _three_services(repo, db_url, "pass", "", None)
    repo.write("services/users/models.py", "import sys\nsys.exit(0)\n")
    result = repo.cli("migrate")
    assert result.code == 2 and "Traceback" not in result.output, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "models.py failed to import: SystemExit: 0" in errors[0], result.stderr
    assert version_heads(db_url, "alembic_version_users") == set()


def test_an_env_py_that_exits_fails_the_run(repo: Monorepo, db_url: str) -> None:
    _three_services(repo, db_url, "pass", "", None)
    repo.write("services/users/migrations/env.py", "import sys\nsys.exit(0)\n")
    repo.write("services/users/settings.toml", "[default]\nuse_env_py = true\n")
    result = repo.cli("migrate", "--json")
    assert result.code == 1 and "Traceback" not in result.stderr, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Service 'users': its env.py called sys.exit(0)" in lines[0], lines
    assert _outcomes(result)[("accounts", "0001_initial")] == "applied"
    assert version_heads(db_url, "alembic_version_users") == set()


def test_ctrl_c_between_steps_is_not_blamed_on_the_step_before(repo: Monorepo, db_url: str) -> None:
    """A KeyboardInterrupt after a step committed (here: from the progress callback) is not
    that step's failure: its row stays `applied`, and the interrupt goes on up as it is."""
    from ncm_migrate import commands
    from ncm_migrate.executor import Event

    _three_services(repo, db_url, "pass", "", None)

    def report(event: Event) -> None:
        if event.kind == "done" and event.step is not None and event.step.revision == "0001_initial" \
                and event.step.service == "users":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        commands.migrate(root=repo.root, report=report)
    rows = [(r["service"], r["revision"], r["status"]) for r in ledger(db_url)]
    assert rows == [("accounts", "0001_initial", "applied"), ("users", "0001_initial", "applied")]
    assert version_heads(db_url, "alembic_version_users") == {"0001_initial"}


def test_mongo_ctrl_c_between_steps_is_not_blamed_on_the_step_before(
    repo: Monorepo, mongo_url: str
) -> None:
    from ncm_migrate import commands
    from ncm_migrate.executor import Event

    _mongo_services(repo, mongo_url, "pass", "", None)

    def report(event: Event) -> None:
        if event.kind == "done" and event.step is not None and event.step.revision == "0001_initial" \
                and event.step.service == "users":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        commands.migrate(root=repo.root, report=report)
    assert _mongo_rows(mongo_url, "users") == [("0001_initial", "up", "applied")]


@pytest.mark.parametrize("case", ["sys.exit(0) in upgrade", "KeyboardInterrupt in upgrade"])
def test_a_revision_that_exits_in_a_worker_process(repo: Monorepo, db_url: str, case: str) -> None:
    """With --jobs the step runs in a worker process: the same error comes back from it."""
    upgrade, extra, verify = CASES[case]
    _three_services(repo, db_url, upgrade, extra, verify)
    code, words = SAYS[case]
    result = repo.cli("migrate", "--jobs", "2", "--json")
    _one_sentence(result, code, words)
    assert _outcomes(result) == {
        ("accounts", "0001_initial"): "applied",
        ("users", "0001_initial"): "applied",
        ("users", "0002_leaves"): "failed",
        ("zoo", "0001_initial"): "not-run",
    }
    assert ledger(db_url, "users")[-1]["status"] == "failed"


def test_an_interruption_by_sigterm_keeps_its_signal(repo: Monorepo, db_url: str) -> None:
    """A signal handler may raise `Interrupted` itself (SIGTERM: exit 143) while a step
    runs: the step is recorded failed and the error keeps the signal."""
    upgrade = "from ncm_migrate.errors import Interrupted\nraise Interrupted('stopped', 15)"
    _three_services(repo, db_url, upgrade, "", None)
    result = repo.cli("migrate", "--json")
    _one_sentence(result, 143, "was interrupted in upgrade() (SIGTERM)")
    assert _outcomes(result)[("users", "0002_leaves")] == "failed"
    assert ledger(db_url, "users")[-1]["status"] == "failed"
    assert version_heads(db_url, "alembic_version_users") == {"0001_initial"}


def test_a_mongo_interruption_by_sigterm_keeps_its_signal(repo: Monorepo, mongo_url: str) -> None:
    upgrade = "from ncm_migrate.errors import Interrupted\nraise Interrupted('stopped', 15)"
    _mongo_services(repo, mongo_url, upgrade, "", None)
    result = repo.cli("migrate", "--json")
    _one_sentence(result, 143, "was interrupted in upgrade() (SIGTERM)")
    assert _mongo_rows(mongo_url, "users")[-1] == ("0002_leaves", "up", "failed")
