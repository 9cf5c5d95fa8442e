"""Lock timeouts with retry (issue 15): a second connection holds a lock on the table a
revision alters; the step waits `ddl.lock_timeout`, is rolled back and retried, and
succeeds once the holder ends its transaction, or stops within `ddl.retry_budget_s` naming
the holder, with nothing of it left. The holder is driven by events, never by the clock.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa
from monorepo import Monorepo, ledger, tables

from ncm_migrate.backends.sql.ddl_timeouts import (
    Attempts,
    StepTimeouts,
    lock_failure,
    offline_statements,
)
from ncm_migrate.config import DdlSettings, duration_ms
from ncm_migrate.errors import ToolMissing
from ncm_migrate.squawk import find_squawk, one_transaction

SAFETY_S = 60.0  # a safety net only: every wait below ends on an event


class Holder:
    """A second session that reads `table` in an open transaction (so holding a lock that
    ALTER TABLE must wait for) until `release` is set, then commits."""

    def __init__(self, url: str, table: str) -> None:
        self.engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        self.table = table
        self.holding = threading.Event()
        self.release = threading.Event()
        self.pid = 0
        self.thread = threading.Thread(target=self._hold, daemon=True)

    def _hold(self) -> None:
        with self.engine.connect() as conn:
            pid_query = ("SELECT pg_backend_pid()" if self.engine.dialect.name == "postgresql"
                         else "SELECT CONNECTION_ID()")
            self.pid = int(conn.exec_driver_sql(pid_query).scalar() or 0)
            conn.commit()
            conn.exec_driver_sql(f"SELECT * FROM {self.table}").all()  # opens the transaction
            self.holding.set()
            self.release.wait(SAFETY_S)
            conn.commit()

    def __enter__(self) -> Holder:
        self.thread.start()
        assert self.holding.wait(SAFETY_S)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release.set()
        self.thread.join(SAFETY_S)
        self.engine.dispose()


@contextmanager
def released_after_a_retry(url: str, holder: Holder, service: str) -> Iterator[None]:
    """Let `holder` go once the ledger shows a `blocked` attempt of `service`."""
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if any(r["status"] == "blocked" for r in ledger(url, service)):
                holder.release.set()
                return
            done.wait(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(SAFETY_S)


def _repo(repo: Monorepo, url: str, lock_timeout: str, retries: int, budget_s: float,
          first: bool = True) -> None:
    """shop: 0001 creates `items`; 0002 creates `shop_audit` (unless not `first`), then
    adds a column to `items`."""
    repo.table("shop", "0001_items", "items")
    audit = "op.create_table('shop_audit', sa.Column('id', sa.Integer, primary_key=True))"
    repo.revision("shop", "0002_note", down="0001_items", upgrade=f"""
        {audit if first else ''}
        op.add_column('items', sa.Column('note', sa.Text))
    """, downgrade="op.drop_column('items', 'note')")
    repo.urls({"shop": url}, extra=f"""
        [development.ddl]
        lock_timeout = "{lock_timeout}"
        retries = {retries}
        retry_budget_s = {budget_s}
    """)
    assert repo.cli("migrate", "shop", "0001_items").code == 0


def _columns(url: str, table: str) -> set[str]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        return {c["name"] for c in sa.inspect(engine).get_columns(table)}
    finally:
        engine.dispose()


def _rows(url: str, revision: str) -> list[dict[str, object]]:
    return [r for r in ledger(url, "shop") if r["revision"] == revision]


# -- PostgreSQL ------------------------------------------------------------------------------


def test_postgres_step_waits_retries_and_succeeds_when_the_holder_commits(
    repo: Monorepo, pg_url: str
) -> None:
    _repo(repo, pg_url, "200ms", retries=50, budget_s=120)
    with Holder(pg_url, "items") as holder, released_after_a_retry(pg_url, holder, "shop"):
        result = repo.cli("migrate", "shop")
    assert result.code == 0, result.output
    assert "note" in _columns(pg_url, "items")
    rows = _rows(pg_url, "0002_note")
    assert [r["status"] for r in rows[:-1]] == ["blocked"] * (len(rows) - 1) and len(rows) >= 2
    assert rows[-1]["status"] == "applied"
    assert [r["attempt"] for r in rows] == list(range(1, len(rows) + 1))
    assert all(float(r["waited_ms"] or 0) > 0 for r in rows)  # every row after a lock wait
    assert len({r["run_id"] for r in rows}) == 1
    assert repo.cli("check").code == 0


def test_postgres_budget_runs_out_naming_the_holder_and_nothing_stays(
    repo: Monorepo, pg_url: str
) -> None:
    _repo(repo, pg_url, "300ms", retries=2, budget_s=60)
    with Holder(pg_url, "items") as holder:
        result = repo.cli("migrate", "shop")
    assert result.code == 1, result.output
    err = " ".join(result.stderr.split())
    assert "shop:0002_note could not take its locks" in err and "3 attempts" in err, err
    assert f"pid {holder.pid}" in err and "SELECT * FROM items" in err, err
    assert "idle in transaction" in err and "run the same command again" in err, err
    assert "manage.py migrate shop" not in err  # the command run had its own options (--phase)
    assert "Traceback" not in result.output
    # Nothing half-applied: the table its first statement created is gone with the rest.
    assert "note" not in _columns(pg_url, "items") and "shop_audit" not in tables(pg_url)
    rows = _rows(pg_url, "0002_note")
    assert [(r["status"], r["attempt"]) for r in rows] == [("blocked", 1), ("blocked", 2),
                                                             ("blocked", 3)]
    # Not dirty: the next migrate just runs it, and succeeds with the lock free.
    assert repo.cli("migrate", "shop").code == 0
    assert "note" in _columns(pg_url, "items")


def test_postgres_timeouts_are_set_after_our_own_lock_and_reset_per_step(
    repo: Monorepo, pg_url: str
) -> None:
    # The revision reads the timeouts it runs under: its header beats the settings.
    repo.table("shop", "0001_items", "items")
    repo.revision("shop", "0002_read", down="0001_items", extra='lock_timeout = "7s"\n'
                  'statement_timeout = "0"\n', upgrade="""
        conn = op.get_bind()
        got = conn.exec_driver_sql("SELECT current_setting('lock_timeout'), "
                                   "current_setting('statement_timeout')").one()
        conn.exec_driver_sql(f"CREATE TABLE seen_{got[0]}_{got[1]} (id int)")
    """)
    repo.urls({"shop": pg_url}, extra='[development.ddl]\nlock_timeout = "2s"\n'
                                      'statement_timeout = "1min"\n')
    assert repo.cli("migrate", "shop").code == 0
    assert {"seen_7s_0"} <= tables(pg_url)


# -- MariaDB ---------------------------------------------------------------------------------


def test_mariadb_first_statement_waits_retries_and_succeeds(repo: Monorepo, mysql_url: str) -> None:
    _repo(repo, mysql_url, "1s", retries=50, budget_s=300, first=False)
    with Holder(mysql_url, "items") as holder, released_after_a_retry(mysql_url, holder, "shop"):
        result = repo.cli("migrate", "shop")
    assert result.code == 0, result.output
    assert "note" in _columns(mysql_url, "items")
    rows = _rows(mysql_url, "0002_note")
    assert len(rows) >= 2 and {r["status"] for r in rows[:-1]} == {"blocked"}
    assert rows[-1]["status"] == "applied"
    assert [r["attempt"] for r in rows] == list(range(1, len(rows) + 1))
    assert repo.cli("check").code == 0


def test_mariadb_budget_runs_out_and_the_service_is_not_dirty(repo: Monorepo, mysql_url: str) -> None:
    _repo(repo, mysql_url, "1s", retries=1, budget_s=60, first=False)
    with Holder(mysql_url, "items"):
        result = repo.cli("migrate", "shop")
    assert result.code == 1, result.output
    err = " ".join(result.stderr.split())
    assert "could not take its locks" in err and "2 attempts" in err and "lock_wait_timeout" in err
    assert "note" not in _columns(mysql_url, "items")
    rows = _rows(mysql_url, "0002_note")
    assert [(r["status"], r["attempt"]) for r in rows] == [("blocked", 1), ("blocked", 2)]
    # Not dirty: the next migrate just runs it, and succeeds with the lock free.
    assert repo.cli("migrate", "shop").code == 0
    assert "note" in _columns(mysql_url, "items")


def test_mariadb_later_statement_is_not_retried_and_says_so(repo: Monorepo, mysql_url: str) -> None:
    _repo(repo, mysql_url, "1s", retries=5, budget_s=60)
    with Holder(mysql_url, "items"):
        result = repo.cli("migrate", "shop")
    assert result.code == 1, result.output
    err = " ".join(result.stderr.split())
    assert "not retried" in err and "at its statement" in err, err
    rows = _rows(mysql_url, "0002_note")
    assert [r["status"] for r in rows] == ["failed"]  # dirty, as any half-run MySQL step
    assert "shop_audit" in tables(mysql_url)  # its first statement did run and commit


# -- offline SQL and squawk --------------------------------------------------------------------


def test_offline_sql_carries_the_set_lines(repo: Monorepo, pg_url: str) -> None:
    repo.table("shop", "0001_items", "items")
    repo.revision("shop", "0002_index", down="0001_items", extra='statement_timeout = "0"\n'
                  'lock_timeout = "10s"\n',
                  upgrade="op.add_column('items', sa.Column('note', sa.Text))")
    repo.urls({"shop": pg_url}, extra='[development.ddl]\nlock_timeout = "2s"\n'
                                      'statement_timeout = "30s"\n')
    first = repo.cli("sqlmigrate", "shop", "0001_items")
    assert first.code == 0
    assert "SET LOCAL lock_timeout = '2000ms';" in first.stdout
    assert "SET LOCAL statement_timeout = '30000ms';" in first.stdout
    second = repo.cli("sqlmigrate", "shop", "0002_index").stdout
    assert "SET LOCAL lock_timeout = '10000ms';" in second
    assert "SET LOCAL statement_timeout = '0';" in second
    # Inside the step's transaction, before its DDL.
    assert second.index("BEGIN;") < second.index("SET LOCAL") < second.index("ALTER TABLE")
    whole = repo.cli("migrate", "--sql").stdout
    assert whole.count("SET LOCAL lock_timeout") == 2


def test_squawk_passes_its_timeout_rules(repo: Monorepo, pg_url: str) -> None:
    try:
        find_squawk()
    except ToolMissing:
        pytest.fail("squawk-cli is a dev dependency and must be installed")
    repo.table("shop", "0001_items", "items")
    repo.revision("shop", "0002_note", down="0001_items",
                  upgrade="op.add_column('items', sa.Column('note', sa.Text))")
    repo.urls({"shop": pg_url}, extra='[development.lint]\nsquawk = true\npg_version = "16"\n')
    rules = {f["rule"] for f in json.loads(repo.cli("lint", "--json").stdout)["findings"]}
    assert not rules & {"squawk:require-lock-timeout", "squawk:require-statement-timeout",
                        "squawk:transaction-nesting"}, rules
    # Without the SET lines (no timeouts), squawk does flag them: the check above is real.
    repo.urls({"shop": pg_url}, extra='[development.lint]\nsquawk = true\n'
                                      '[development.ddl]\nlock_timeout = ""\nstatement_timeout = ""\n')
    rules = {f["rule"] for f in json.loads(repo.cli("lint", "--json").stdout)["findings"]}
    assert "squawk:require-lock-timeout" in rules


def test_one_transaction_is_given_to_squawk_without_its_begin_and_commit() -> None:
    sql, inside = one_transaction("BEGIN;\n\nSET LOCAL lock_timeout = '1s';\nALTER TABLE t;\n\nCOMMIT;\n")
    assert inside and "BEGIN" not in sql and "COMMIT" not in sql
    assert sql.splitlines()[2] == "SET LOCAL lock_timeout = '1s';"  # lines kept in place
    split = "BEGIN;\nSET x;\nCOMMIT;\nCREATE INDEX CONCURRENTLY i ON t (a);\nBEGIN;\nCOMMIT;\n"
    assert one_transaction(split) == (split, False)


@pytest.mark.parametrize(("text", "ms"), [("2s", 2000), ("500ms", 500), ("1min", 60_000),
                                          ("0", 0), (0, 0), ("1.5s", 1500), ("", -1),
                                          ("soon", None), ("-1s", None), (True, None),
                                          # no unit: ms to PostgreSQL, s to our *_s settings
                                          (250, None), ("5", None)])
def test_durations_read_as_postgresql_writes_them(text: object, ms: int | None) -> None:
    assert duration_ms(text) == ms


def test_set_statements_per_database() -> None:
    t = StepTimeouts(lock_ms=1500, statement_ms=0)
    assert offline_statements("postgresql", t) == ["SET LOCAL lock_timeout = '1500ms'",
                                                   "SET LOCAL statement_timeout = '0'"]
    assert offline_statements("mysql", t) == [
        "SET SESSION lock_wait_timeout = 2, innodb_lock_wait_timeout = 2"]
    assert offline_statements("sqlite", t) == []
    assert offline_statements("postgresql", StepTimeouts(None, None)) == []


def test_bad_timeout_settings_and_headers_are_one_sentence(repo: Monorepo, sqlite_url: str) -> None:
    repo.table("shop", "0001_items", "items")
    for value in ('"soon"', "5"):
        repo.urls({"shop": sqlite_url}, extra=f"[development.ddl]\nlock_timeout = {value}\n")
        result = repo.cli("showmigrations")
        assert result.code == 2 and "ddl.lock_timeout" in result.stderr and "2s" in result.stderr
    assert "Traceback" not in result.output
    repo.urls({"shop": sqlite_url})
    repo.revision("shop", "0002_x", down="0001_items", extra='lock_timeout = "a while"\n')
    result = repo.cli("showmigrations")
    assert result.code == 2 and "0002_x.py" in result.stderr and "lock_timeout" in result.stderr


def _lock_timeout_error() -> sa.exc.OperationalError:
    class Orig(Exception):
        sqlstate = "55P03"

    return sa.exc.OperationalError("ALTER TABLE items ...", {},
                                   Orig("canceling statement due to lock timeout"))


@pytest.mark.parametrize(("retries", "budget_s", "attempts"),
                         [(10, 5.0, (3, 4)), (2, 100.0, (3,)), (0, 100.0, (1,))])
def test_attempts_stop_within_the_retries_and_the_budget(retries: int, budget_s: float,
                                                         attempts: tuple[int, ...]) -> None:
    """Each attempt waits its whole lock_timeout (1 s on a fake clock); none starts unless
    its lock wait, after the pause, still ends within the budget. With a 5 s budget the
    pauses' jitter (up to 0.25, 0.5, 1 s) leaves room for 3 or 4 attempts."""
    now = [0.0]
    pauses: list[float] = []

    def sleep(seconds: float) -> None:
        pauses.append(seconds)
        now[0] += seconds

    settings = DdlSettings(lock_timeout_ms=1000, retries=retries, retry_budget_s=budget_s)
    tries = Attempts(settings, StepTimeouts(1000, 0), sleep=sleep, clock=lambda: now[0])
    recorded: list[int] = []
    with pytest.raises(sa.exc.OperationalError):
        for attempt in tries.retrying(lambda exc: lock_failure(exc) is not None,
                                      lambda _exc: recorded.append(tries.number)):
            with attempt:
                now[0] += 1.0  # the lock wait
                raise _lock_timeout_error()
    assert tries.number in attempts and recorded == list(range(1, tries.number))
    assert now[0] <= budget_s and len(pauses) == tries.number - 1
    assert all(0 <= p <= 10 for p in pauses)


def test_other_errors_are_not_retried() -> None:
    tries = Attempts(DdlSettings(), StepTimeouts(1000, 0), sleep=lambda _s: None)
    with pytest.raises(ValueError):
        for attempt in tries.retrying(lambda exc: lock_failure(exc) is not None, lambda _e: None):
            with attempt:
                raise ValueError("not a lock")
    assert tries.number == 1


def test_postgres_under_the_stock_env_py_times_out_and_is_not_retried(
    repo: Monorepo, pg_url: str
) -> None:
    """With `use_env_py`, Alembic's own loop owns the step's transaction: the timeout still
    applies (the step does not wait for ever), but the step is not retried, and says so."""
    import alembic

    _repo(repo, pg_url, "300ms", retries=5, budget_s=60, first=False)
    stock = (Path(alembic.__file__).parent / "templates" / "generic" / "env.py").read_text()
    repo.write("services/shop/migrations/env.py", stock)
    with Holder(pg_url, "items"):
        result = repo.cli("migrate", "shop", env={"NCM_SERVICES__SHOP__USE_ENV_PY": "true"})
    assert result.code == 1, result.output
    err = " ".join(result.stderr.split())
    assert "could not take its locks" in err and "not retried: with use_env_py" in err, err
    assert [r["status"] for r in _rows(pg_url, "0002_note")] == ["blocked"]
    assert "note" not in _columns(pg_url, "items")
