"""Ctrl-C (SIGINT), SIGTERM and kill -9 while `manage.py migrate` runs a revision, on SQLite,
PostgreSQL and MariaDB, serial and with --jobs.

Each slow revision writes a file when it has started and then blocks until it is
interrupted (bounded by the subprocess timeout, never by a clock assertion): the test signals
the process only once every file it waits for is there. The run then stops with exit 128 +
the signal, says where each service stands, records the interrupted step as failed in the
ledger and the audit log, and leaves no process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from monorepo import Monorepo, ledger, tables, version_heads

import ncm_migrate
from ncm_migrate import commands
from ncm_migrate.audit import read_entries
from ncm_migrate.errors import MigrationFailed

TIMEOUT_S = 90  # a bound on every wait below: a broken run fails the test, it never hangs it


def blocking(ready: Path, block: Path, table: str) -> str:
    """An upgrade() body that creates `table` then, while `block` exists, says it is ready
    and blocks until a signal interrupts it."""
    return f"""
        op.create_table({table!r}, sa.Column('id', sa.Integer, primary_key=True))
        import pathlib, time
        if pathlib.Path({str(block)!r}).exists():
            pathlib.Path({str(ready)!r}).write_text('started')
            time.sleep({TIMEOUT_S * 2})
    """


def serial_repo(root: Path, url: str) -> Monorepo:
    """billing: 0001_a -> 0002_slow (blocks) -> 0003_c; users: 0001_u. One database."""
    repo = Monorepo(root)
    root.mkdir()
    (root / "block").touch()
    repo.table("billing", "0001_a", "t_a")
    repo.revision("billing", "0002_slow", down="0001_a",
                  upgrade=blocking(root / "ready_billing", root / "block", "t_slow"),
                  downgrade="op.drop_table('t_slow')")
    repo.table("billing", "0003_c", "t_c", down="0002_slow")
    repo.table("users", "0001_u", "t_u")
    repo.settings(f'[development]\ndatabase_url = "{url}"\n[development.audit]\nlog_path = "audit.jsonl"\n')
    return repo


def parallel_repo(root: Path, urls: dict[str, str]) -> Monorepo:
    """a and b: 0001 -> 0002 (blocks) -> 0003, side by side; c: 0001 requires a's head."""
    repo = Monorepo(root)
    root.mkdir()
    (root / "block").touch()
    for s in "ab":
        repo.table(s, f"0001_{s}", f"t_{s}1")
        repo.revision(s, f"0002_{s}", down=f"0001_{s}",
                      upgrade=blocking(root / f"ready_{s}", root / "block", f"t_{s}2"),
                      downgrade=f"op.drop_table('t_{s}2')")
        repo.table(s, f"0003_{s}", f"t_{s}3", down=f"0002_{s}")
    repo.table("c", "0001_c", "t_c1", requires=["a:0003_a"])
    repo.urls(urls, extra='[development.audit]\nlog_path = "audit.jsonl"\n')
    return repo


@contextmanager
def started(repo: Monorepo, *args: str, ready: Sequence[str]) -> Iterator[subprocess.Popen[str]]:
    """`manage.py ARGS` in its own process group, yielded once every `ready` file exists."""
    manage = repo.root / "manage.py"
    manage.write_text("from pathlib import Path\nfrom ncm_migrate.cli import main\n"
                      "main(root=Path(__file__).resolve().parent)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NCM_") or k.startswith("NCM_TEST_")}
    proc = subprocess.Popen(
        [sys.executable, str(manage), *args], cwd=repo.root, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not all((repo.root / name).exists() for name in ready):
            if proc.poll() is not None or time.monotonic() > deadline:
                out, err = proc.communicate()
                pytest.fail(f"the revisions never started (exit {proc.returncode}):\n{out}\n{err}")
            time.sleep(0.05)
        yield proc
    finally:
        # Whatever the test found, nothing of the run outlives it (a worker left migrating on
        # its own would also hold the output pipes open).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired, ValueError):
            proc.communicate(timeout=TIMEOUT_S)


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=TIMEOUT_S)
    return proc.returncode, out, err


def wait_group_gone(pgid: int) -> None:
    """Every process of the run's group has exited (workers included), within the bound."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        if time.monotonic() > deadline:
            os.killpg(pgid, signal.SIGKILL)
            pytest.fail("worker processes were still running after their parent was gone")
        time.sleep(0.05)


def statuses(url: str, service: str) -> list[tuple[str, str]]:
    return [(str(r["revision"]), str(r["status"])) for r in ledger(url, service)]


def audit_of(repo: Monorepo, revision: str) -> list[dict[str, object]]:
    return [vars(e) for e in read_entries(repo.root / "audit.jsonl") if e.revision == revision]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_revision_stops_the_run_and_says_where_each_service_stands(
    tmp_path: Path, db_url: str, signum: int
) -> None:
    repo = serial_repo(tmp_path / "r", db_url)
    with started(repo, "migrate", ready=["ready_billing"]) as proc:
        proc.send_signal(signum)
        code, out, err = finish(proc)
    name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
    mysql = db_url.startswith("mysql")

    assert code == 128 + signum, out + err
    assert "Traceback" not in out + err
    assert f"Interrupted by {name}. Where each service stands:" in out
    assert "billing: applied: 0001_a; 0002_slow interrupted" in out
    assert "not run: 0003_c" in out and "users: not run: 0001_u" in out
    assert "Error: Revision billing:0002_slow was interrupted" in err and f"({name})" in err
    if mysql:  # DDL commits on its own: the table of the half-run revision stays, and says so
        assert "DIRTY" in out and "`manage.py repair billing`" in out + err
        assert "t_slow" in tables(db_url)
    else:
        assert "rolled back: nothing of it remains" in out
        assert "t_slow" not in tables(db_url)
        assert version_heads(db_url, "alembic_version_billing") == {"0001_a"}

    # The ledger and the audit log both have the interrupted step, as failed.
    rows = statuses(db_url, "billing")
    assert rows[0] == ("0001_a", "applied")
    assert rows[-1] == ("0002_slow", "failed")
    assert statuses(db_url, "users") == []
    assert [e["outcome"] for e in audit_of(repo, "0002_slow")] == ["failed"]
    assert "interrupt" in str(audit_of(repo, "0002_slow")[0]["detail"]).lower()

    # What is left is consistent: a transactional database migrates on; MariaDB refuses the
    # dirty service until it is repaired.
    (repo.root / "block").unlink()
    status = {s.name: s for s in commands.showmigrations(root=repo.root)}
    if mysql:
        assert status["billing"].dirty == "0002_slow"
        again = repo.run("migrate", "billing")
        assert again.code == 1 and "manage.py repair billing" in again.stderr
    else:
        assert status["billing"].dirty is None
        again = repo.run("migrate")
        assert again.code == 0, again.output
        assert {"t_slow", "t_c", "t_u"} <= tables(db_url)


def test_signals_while_it_stops_leave_no_traceback(tmp_path: Path, sqlite_url: str) -> None:
    """Ctrl-C pressed again and again, and a SIGTERM, while the run records where it stopped."""
    repo = serial_repo(tmp_path / "r", sqlite_url)
    with started(repo, "migrate", ready=["ready_billing"]) as proc:
        for signum in (signal.SIGINT, signal.SIGINT, signal.SIGTERM, signal.SIGINT):
            try:
                proc.send_signal(signum)
            except ProcessLookupError:
                break
        code, out, err = finish(proc)
    assert code == 130, out + err
    assert "Traceback" not in out + err
    assert "Interrupted by Ctrl-C" in out
    assert "SIGTERM received: already stopping" in err  # the first one is what stopped it
    assert statuses(sqlite_url, "billing")[-1] == ("0002_slow", "failed")


@pytest.mark.parametrize(("group", "kind"), [(False, "sqlite"), (True, "sqlite"), (False, "postgresql")],
                         ids=["parent-sqlite", "process-group-sqlite", "parent-postgresql"])
def test_jobs_a_signal_stops_every_worker_and_the_parent_sums_up(
    tmp_path: Path, group: bool, kind: str, request: pytest.FixtureRequest
) -> None:
    """SIGTERM to the parent alone (docker stop, Kubernetes): it tells its workers. Ctrl-C at a
    terminal reaches the whole process group: the workers stop on their own signal."""
    if kind == "sqlite":
        urls = {s: f"sqlite:///{tmp_path / f'{s}.db'}" for s in "abc"}
    else:
        url = request.getfixturevalue("pg_url")
        urls = dict.fromkeys("abc", url)
    repo = parallel_repo(tmp_path / "r", urls)
    if kind != "sqlite":  # one database: each service gets its own version table
        repo.settings(f'[development]\ndatabase_url = "{url}"\n'
                      '[development.audit]\nlog_path = "audit.jsonl"\n')
    signum = signal.SIGINT if group else signal.SIGTERM
    name = "Ctrl-C" if group else "SIGTERM"
    with started(repo, "migrate", "--jobs", "3", ready=["ready_a", "ready_b"]) as proc:
        if group:
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        code, out, err = finish(proc)
    wait_group_gone(proc.pid)

    assert code == 128 + signum, out + err
    assert "Traceback" not in out + err
    assert f"Interrupted by {name}. Where each service stands:" in out
    assert "a: applied: 0001_a; 0002_a interrupted and rolled back" in out
    assert "b: applied: 0001_b; 0002_b interrupted and rolled back" in out
    assert "c: not run: 0001_c" in out
    assert f"Error: Interrupted ({name}) while 2 revisions ran: a:0002_a, b:0002_b" in err
    for s in "ab":
        assert statuses(urls[s], s) == [(f"0001_{s}", "applied"), (f"0002_{s}", "failed")]
        table = "alembic_version" if kind == "sqlite" else f"alembic_version_{s}"
        assert version_heads(urls[s], table) == {f"0001_{s}"}
        assert [e["outcome"] for e in audit_of(repo, f"0002_{s}")] == ["failed"]
    assert statuses(urls["c"], "c") == []


@pytest.mark.parametrize("kind", ["sqlite", "mysql"])
def test_jobs_kill_9_of_the_parent_stops_its_workers(
    tmp_path: Path, kind: str, request: pytest.FixtureRequest
) -> None:
    """Nobody is left to sum up, but no worker goes on migrating on its own: each records
    its step as failed and exits, and nothing after it runs."""
    if kind == "sqlite":
        urls = {s: f"sqlite:///{tmp_path / f'{s}.db'}" for s in "abc"}
    else:
        url = request.getfixturevalue("mysql_url")
        urls = dict.fromkeys("abc", url)
    repo = parallel_repo(tmp_path / "r", urls)
    if kind == "mysql":  # one database: each service gets its own version table
        repo.settings(f'[development]\ndatabase_url = "{url}"\n')
        # The ledger made first: workers creating it side by side on MariaDB race (1684,
        # "definition is being modified by concurrent DDL"), which is not what this tests.
        assert repo.run("migrate", "a", "0001_a").code == 0
    with started(repo, "migrate", "--jobs", "3", ready=["ready_a", "ready_b"]) as proc:
        proc.kill()
        finish(proc)
        wait_group_gone(proc.pid)
    for s in "ab":
        assert statuses(urls[s], s)[-1] == (f"0002_{s}", "failed")
        assert f"0003_{s}" not in {rev for rev, _ in statuses(urls[s], s)}
    assert statuses(urls["c"], "c") == []
    (repo.root / "block").unlink()
    status = {s.name: s for s in commands.showmigrations(root=repo.root)}
    assert status["a"].dirty == ("0002_a" if kind == "mysql" else None)


def test_handlers_are_installed_for_the_run_and_put_back(tmp_path: Path, sqlite_url: str) -> None:
    """During a run in the main thread SIGTERM stops it cleanly; afterwards the process's
    handlers are what they were, and an application's own handler is left alone."""
    repo = Monorepo(tmp_path / "r")
    repo.root.mkdir()
    seen = tmp_path / "seen"
    repo.revision("svc", "0001_x", upgrade=f"""
        import pathlib, signal
        with open({str(seen)!r}, 'a') as f:
            f.write(getattr(signal.getsignal(signal.SIGTERM), '__qualname__', 'other') + '\\n')
    """, downgrade="pass")
    repo.settings(f'[development]\ndatabase_url = "{sqlite_url}"\n')
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    commands.migrate(root=repo.root)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before

    def own(_signum: int, _frame: object) -> None:
        return None

    previous = signal.signal(signal.SIGTERM, own)
    try:
        commands.migrate(["svc"], "zero", root=repo.root)
        commands.migrate(root=repo.root)
        assert signal.getsignal(signal.SIGTERM) is own
    finally:
        signal.signal(signal.SIGTERM, previous)
    first, then = seen.read_text().splitlines()
    assert first == "StopRequest.handle"
    assert then.endswith("<locals>.own")


def test_async_twins_run_in_a_worker_thread_without_touching_signals(
    tmp_path: Path, sqlite_url: str
) -> None:
    """`amigrate` runs the verb in a worker thread, where Python allows no signal handler:
    it installs none, and works."""
    repo = Monorepo(tmp_path / "r")
    repo.root.mkdir()
    repo.table("svc", "0001_x", "t_x")
    repo.revision("svc", "0002_boom", down="0001_x", upgrade="raise RuntimeError('boom')")
    repo.settings(f'[development]\ndatabase_url = "{sqlite_url}"\n')
    before = signal.getsignal(signal.SIGTERM)

    async def main() -> None:
        with pytest.raises(MigrationFailed, match="boom"):
            await ncm_migrate.amigrate(root=repo.root)
        result = await ncm_migrate.arollback("svc", root=repo.root)
        assert [r.outcome for r in result.results] == ["reverted"]

    asyncio.run(main())
    assert signal.getsignal(signal.SIGTERM) == before
    assert statuses(sqlite_url, "svc") == [
        ("0001_x", "applied"), ("0002_boom", "failed"), ("0001_x", "reverted"),
    ]


def test_rollback_on_failure_undoes_the_other_services_when_the_failing_one_is_dirty(
    tmp_path: Path, mysql_url: str
) -> None:
    """MariaDB commits DDL as it runs, so z's failed step leaves z dirty: z is left as it is
    (with the repair command); a, which this run migrated beside it, is rolled back."""
    repo = Monorepo(tmp_path / "r")
    repo.root.mkdir()
    repo.table("a", "0001_a", "t_a")
    repo.table("z", "0001_z", "t_z")
    repo.revision("z", "0002_boom", down="0001_z", upgrade="""
        op.create_table('t_half', sa.Column('id', sa.Integer, primary_key=True))
        raise RuntimeError('boom')
    """)
    repo.settings(f'[development]\ndatabase_url = "{mysql_url}"\n')
    # a, then z: rolling back starts with z's revision, which the dirty mark refused, and
    # stopped there before a's.
    run = repo.run("migrate", "--rollback-on-failure", "--json")
    assert run.code == 1, run.output
    assert "Traceback" not in run.output, run.output
    report = json.loads(run.stdout)
    outcomes = {(s["service"], s["revision"], s["direction"]): s["outcome"] for s in report["steps"]}
    assert outcomes[("a", "0001_a", "down")] == "reverted"
    assert ("z", "0001_z", "down") not in outcomes
    assert [s["dirty"] for s in report["steps"] if s["outcome"] == "failed"] == [True]
    assert "Rolled back this run's revisions: a:0001_a." in report["error"]
    assert "Service 'z' is left as it is, dirty at 0002_boom" in report["error"]
    assert "`manage.py repair z`" in report["error"]
    assert version_heads(mysql_url, "alembic_version_a") == set()
    assert version_heads(mysql_url, "alembic_version_z") == {"0001_z"}
    assert "t_a" not in tables(mysql_url)


def test_rollback_on_failure_keeps_what_the_dirty_service_requires(
    tmp_path: Path, mysql_url: str
) -> None:
    """z's applied revision requires a:0001_a: rolling a back would break it, so it stays too."""
    repo = Monorepo(tmp_path / "r")
    repo.root.mkdir()
    repo.table("a", "0001_a", "t_a")
    repo.table("b", "0001_b", "t_b")
    repo.table("z", "0001_z", "t_z", requires=["a:0001_a"])
    repo.revision("z", "0002_boom", down="0001_z", upgrade="raise RuntimeError('boom')")
    repo.settings(f'[development]\ndatabase_url = "{mysql_url}"\n')
    with pytest.raises(MigrationFailed) as failed:
        commands.migrate(root=repo.root, rollback_on_failure=True)
    message = str(failed.value)
    assert "Rolled back this run's revisions: b:0001_b." in message
    assert "Also not rolled back, as those revisions require them: a:0001_a." in message
    assert version_heads(mysql_url, "alembic_version_a") == {"0001_a"}
    assert version_heads(mysql_url, "alembic_version_b") == set()


def test_mariadb_stops_the_interrupted_statement_on_the_server(tmp_path: Path, mysql_url: str) -> None:
    """MySQL runs a statement to its end after its client is gone (an ALTER TABLE would go
    on after the run said it stopped): the interrupted session is killed, so nothing of
    this run still runs there, and its lock is free."""
    import sqlalchemy as sa

    repo = Monorepo(tmp_path / "r")
    repo.root.mkdir()
    repo.revision("billing", "0001_sleep", upgrade=f"""
        import pathlib
        pathlib.Path({str(repo.root / 'ready')!r}).write_text('started')
        op.execute('SELECT SLEEP({TIMEOUT_S * 2})')
    """)
    repo.settings(f'[development]\ndatabase_url = "{mysql_url}"\n[development.lock]\ntimeout_s = 5\n')
    with started(repo, "migrate", ready=["ready"]) as proc:
        proc.send_signal(signal.SIGTERM)
        code, out, err = finish(proc)
    assert code == 143, out + err
    assert "Traceback" not in out + err
    database = sa.engine.make_url(mysql_url).database
    engine = sa.create_engine(mysql_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            still = conn.execute(sa.text(
                "SELECT info FROM information_schema.processlist WHERE db = :db AND info LIKE 'SELECT SLEEP%'"
            ), {"db": database}).all()
    finally:
        engine.dispose()
    assert still == []
    assert statuses(mysql_url, "billing")[-1] == ("0001_sleep", "failed")
    again = repo.run("migrate")
    assert again.code == 1 and "manage.py repair billing" in again.stderr  # dirty, not a held lock


def test_json_output_of_an_interrupted_run(tmp_path: Path, sqlite_url: str) -> None:
    repo = serial_repo(tmp_path / "r", sqlite_url)
    with started(repo, "migrate", "--json", ready=["ready_billing"]) as proc:
        proc.send_signal(signal.SIGTERM)
        code, out, err = finish(proc)
    assert code == 143, out + err
    report = json.loads(out)
    assert report["ok"] is False
    assert "billing:0002_slow was interrupted" in report["error"]
    steps = {(s["service"], s["revision"]): (s["outcome"], s["dirty"]) for s in report["steps"]}
    assert steps == {
        ("billing", "0001_a"): ("applied", False),
        ("billing", "0002_slow"): ("failed", False),
        ("billing", "0003_c"): ("not-run", False),
        ("users", "0001_u"): ("not-run", False),
    }


def test_rollback_interrupted_mid_downgrade(tmp_path: Path, db_url: str) -> None:
    """`rollback` stops the same way: the downgrade that was running is recorded as failed."""
    repo = Monorepo(tmp_path / "r")
    repo.root.mkdir()
    block = repo.root / "block"
    repo.table("billing", "0001_a", "t_a")
    repo.revision("billing", "0002_slow", down="0001_a", upgrade="pass",
                  downgrade=blocking(repo.root / "ready", block, "t_undo"))
    repo.settings(f'[development]\ndatabase_url = "{db_url}"\n')
    assert repo.run("migrate").code == 0
    block.touch()
    with started(repo, "rollback", "billing", "--steps", "2", ready=["ready"]) as proc:
        proc.send_signal(signal.SIGTERM)
        code, out, err = finish(proc)
    assert code == 143, out + err
    assert "Traceback" not in out + err
    assert "Interrupted by SIGTERM. Where each service stands:" in out
    assert "billing: 0002_slow interrupted" in out and "not run: 0001_a" in out
    assert statuses(db_url, "billing")[-1] == ("0002_slow", "failed")
    if not db_url.startswith("mysql"):
        assert version_heads(db_url, "alembic_version_billing") == {"0002_slow"}


def test_async_twin_with_jobs(tmp_path: Path) -> None:
    """`amigrate(jobs=2)`: worker processes started from the twin's worker thread."""
    repo = Monorepo(tmp_path / "r")
    repo.root.mkdir()
    repo.table("a", "0001_a", "t_a")
    repo.table("b", "0001_b", "t_b")
    repo.urls({s: f"sqlite:///{tmp_path / f'{s}.db'}" for s in "ab"})
    result = asyncio.run(ncm_migrate.amigrate(root=repo.root, jobs=2))
    assert sorted((r.service, r.outcome) for r in result.results) == [("a", "applied"), ("b", "applied")]
