"""One contract, every backend: SQLite, PostgreSQL, MariaDB, MongoDB and Redis behave alike.

Apply, roll back, targets, --fake, the ledger, exactly-once under 8 concurrent runners,
a failing revision, and a lock that a killed holder gives up. MongoDB runs on mongomock
(concurrent runners are threads with clients of their own) unless NCM_TEST_MONGO_URL names
a real server (runners are processes then, as on SQL). Redis runs on the real server
(`redis`, each test under a key prefix of its own) and on fakeredis (`fakeredis`, runners
are threads there).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import MONGO_SERVER, RedisTarget
from monorepo import Monorepo, tables

from ncm_migrate import commands
from ncm_migrate.backends import make_backend
from ncm_migrate.backends.mongo import backend as mongo_backend
from ncm_migrate.errors import LockTimeout
from ncm_migrate.ledger import COLUMNS
from ncm_migrate.loader import load_project

SVC = "orders"


@dataclass
class Kind:
    """One backend under test, and how to write revisions and look at its database."""

    name: str
    url: str
    redis: RedisTarget | None = None  # the database and key prefix of a Redis kind

    @property
    def mongo(self) -> bool:
        return self.name == "mongo"

    @property
    def runners_are_processes(self) -> bool:
        if self.redis is not None:
            return not self.redis.fake
        return not self.mongo or bool(MONGO_SERVER)

    def configure(self, repo: Monorepo, extra: str = "") -> None:
        """settings.toml putting service `orders` on this backend."""
        if self.redis is None:
            repo.urls({SVC: self.url}, extra=extra)
            return
        repo.settings(f"[development]\n{extra}\n[development.services.{SVC}]\n"
                      f"{self.redis.service_settings()}")

    @property
    def transactional(self) -> bool:
        """A failed revision leaves nothing behind (no dirty mark)."""
        return self.name in ("sqlite", "postgresql")

    def revision(self, repo: Monorepo, rev: str, down: str | None, thing: str,
                 log: Path | None = None, fail: bool = False) -> None:
        """A revision that creates `thing` (a table or a collection), appends its id to `log`
        when its body runs, and raises after that if `fail`."""
        note = f"open({str(log)!r}, 'a').write({rev!r} + '\\n')" if log else ""
        boom = "raise RuntimeError('boom')" if fail else ""
        if self.redis is not None:
            key = self.redis.prefix + thing
            repo.redis_revision(SVC, rev, down=down, upgrade=f"{note}\nr.set({key!r}, 1)\n{boom}",
                                downgrade=f"r.delete({key!r})")
        elif self.mongo:
            up = f"{note}\ndb.create_collection({thing!r})\n{boom}"
            repo.mongo_revision(SVC, rev, down=down, upgrade=up, downgrade=f"db.drop_collection({thing!r})")
        else:
            create = f"op.create_table({thing!r}, sa.Column('id', sa.Integer, primary_key=True))"
            repo.revision(SVC, rev, down=down, upgrade=f"{note}\n{create}\n{boom}",
                          downgrade=f"op.drop_table({thing!r})")

    def things(self) -> set[str]:
        """Tables, collections or keys, without ncm-migrate's and Alembic's own."""
        if self.redis is not None:
            client = self.redis.client()
            try:
                keys = [k.decode() for k in client.scan_iter(match=self.redis.prefix + "*")]
            finally:
                client.close()
            return {k.removeprefix(self.redis.prefix) for k in keys
                    if not k.startswith(self.redis.ncm_prefix)}
        if self.mongo:
            client = mongo_backend.client_factory(self.url, 5.0)
            try:
                names = set(client[mongo_backend.url_database(self.url) or ""].list_collection_names())
            finally:
                client.close()
        else:
            names = tables(self.url)
        return {n for n in names if not n.startswith(("ncm_", "alembic_"))}


@pytest.fixture(params=["sqlite", "postgresql", "mysql", "mongo", "redis", "fakeredis"])
def kind(request: pytest.FixtureRequest) -> Kind:
    if request.param in ("redis", "fakeredis"):
        target = request.getfixturevalue("redis_target" if request.param == "redis" else "fake_redis_target")
        return Kind(request.param, target.url, target)
    fixture = {"sqlite": "sqlite_url", "postgresql": "pg_url", "mysql": "mysql_url",
               "mongo": "mongo_url"}[request.param]
    return Kind(request.param, request.getfixturevalue(fixture))


def three(repo: Monorepo, kind: Kind, log: Path | None = None, fail: str | None = None) -> None:
    """orders: 0001 -> 0002 -> 0003, creating t1, t2, t3."""
    for n, down in ((1, None), (2, "0001"), (3, "0002")):
        rev = f"000{n}"
        kind.revision(repo, rev, down, f"t{n}", log=log, fail=rev == fail)
    kind.configure(repo, extra="[development.lock]\nlease_s = 2.0\n")


def applied(repo: Monorepo) -> list[str]:
    status = json.loads(repo.cli("showmigrations", "--json").stdout)["services"][0]
    return [r["revision"] for r in status["revisions"] if r["applied"]]


def history(repo: Monorepo) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads(repo.cli("history", "--json").stdout)
    return rows


def test_apply_and_roll_back(repo: Monorepo, kind: Kind) -> None:
    three(repo, kind)
    result = repo.cli("migrate")
    assert result.code == 0, result.output
    assert kind.things() == {"t1", "t2", "t3"}
    assert applied(repo) == ["0001", "0002", "0003"]
    status = json.loads(repo.cli("showmigrations", "--json").stdout)["services"][0]
    assert status["current"] == ["0003"] and status["pending"] == 0 and status["dirty"] is None

    assert repo.cli("rollback", SVC).code == 0
    assert kind.things() == {"t1", "t2"}
    assert applied(repo) == ["0001", "0002"]
    assert repo.cli("migrate", SVC, "zero").code == 0
    assert kind.things() == set()
    assert applied(repo) == []
    again = repo.cli("migrate")
    assert again.code == 0 and kind.things() == {"t1", "t2", "t3"}


def test_target_forwards_and_backwards(repo: Monorepo, kind: Kind) -> None:
    three(repo, kind)
    assert repo.cli("migrate", SVC, "0002").code == 0
    assert applied(repo) == ["0001", "0002"] and kind.things() == {"t1", "t2"}
    assert repo.cli("migrate", SVC, "0001").code == 0
    assert applied(repo) == ["0001"] and kind.things() == {"t1"}
    assert repo.cli("migrate", SVC, "head").code == 0
    assert applied(repo) == ["0001", "0002", "0003"]


def test_fake_records_without_running(repo: Monorepo, kind: Kind) -> None:
    three(repo, kind)
    assert repo.cli("migrate", "--fake").code == 0
    assert kind.things() == set()
    assert applied(repo) == ["0001", "0002", "0003"]
    assert [r["status"] for r in history(repo)] == ["faked"] * 3
    assert repo.cli("migrate", SVC, "0001", "--fake").code == 0
    assert applied(repo) == ["0001"]
    assert [(r["revision"], r["direction"], r["status"]) for r in history(repo)][3:] == [
        ("0003", "down", "faked"), ("0002", "down", "faked"),
    ]


def test_ledger_rows(repo: Monorepo, kind: Kind) -> None:
    three(repo, kind)
    env = {"NCM_ACTOR": "ci-bot"}
    assert repo.cli("migrate", env=env).code == 0
    assert repo.cli("rollback", SVC, env=env).code == 0
    rows = history(repo)
    assert [(r["revision"], r["direction"], r["status"]) for r in rows] == [
        ("0001", "up", "applied"), ("0002", "up", "applied"), ("0003", "up", "applied"),
        ("0003", "down", "reverted"),
    ]
    project = load_project(repo.root)
    for row in rows:
        assert set(COLUMNS) <= set(row)
        assert row["service"] == SVC and row["actor"] == "ci-bot"
        assert row["environment"] == "development" and row["tool_version"]
        assert row["checksum"] == project.revisions[SVC][str(row["revision"])].checksum
        assert row["finished_at"] and float(str(row["duration_ms"])) >= 0
    assert len({r["run_id"] for r in rows[:3]}) == 1 and rows[0]["run_id"] != rows[3]["run_id"]
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids)
    limited = json.loads(repo.cli("history", "--json", "--limit", "2").stdout)
    assert [r["id"] for r in limited] == ids[-2:]


def test_exactly_once_under_eight_concurrent_runners(repo: Monorepo, kind: Kind, tmp_path: Path) -> None:
    log = tmp_path / "bodies.log"
    three(repo, kind, log=log)
    codes = run_concurrently(repo, kind, 8)
    assert codes == [0] * 8
    assert Counter(log.read_text().split()) == {"0001": 1, "0002": 1, "0003": 1}
    rows = history(repo)
    assert [(r["revision"], r["status"]) for r in rows] == [
        ("0001", "applied"), ("0002", "applied"), ("0003", "applied"),
    ]
    assert kind.things() == {"t1", "t2", "t3"}


def run_concurrently(repo: Monorepo, kind: Kind, n: int) -> list[int]:
    """`migrate` n times at once, released together: forked processes, or threads with
    clients of their own on mongomock (whose server lives in this process)."""
    if kind.runners_are_processes:
        ctx = multiprocessing.get_context("fork")
        start = ctx.Barrier(n)
        procs = [ctx.Process(target=_migrate_in_child, args=(repo.root, start)) for _ in range(n)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(timeout=180)
        return [p.exitcode if p.exitcode is not None else -1 for p in procs]
    start_t = threading.Barrier(n)
    codes: list[int] = []
    errors: list[BaseException] = []

    def runner() -> None:
        start_t.wait()
        try:
            codes.append(0 if commands.migrate(root=repo.root).ok else 1)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=runner) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert not errors, errors
    return codes


def _migrate_in_child(root: Path, start: Any) -> None:
    start.wait()
    try:
        ok = commands.migrate(root=root).ok
    except BaseException:
        traceback.print_exc()
        os._exit(2)
    os._exit(0 if ok else 1)


def test_failing_revision(repo: Monorepo, kind: Kind) -> None:
    three(repo, kind, fail="0002")
    result = repo.cli("migrate", "--json")
    assert result.code == 1
    outcomes = [(s["revision"], s["outcome"]) for s in json.loads(result.stdout)["steps"]]
    assert outcomes == [("0001", "applied"), ("0002", "failed"), ("0003", "not-run")]
    assert "boom" in result.stderr
    assert applied(repo) == ["0001"]
    assert [(r["revision"], r["status"]) for r in history(repo)] == [("0001", "applied"), ("0002", "failed")]
    status = json.loads(repo.cli("showmigrations", "--json").stdout)["services"][0]
    if kind.transactional:
        assert status["dirty"] is None and kind.things() == {"t1"}
        assert repo.cli("migrate").code == 1  # fails again, cleanly
    else:
        assert status["dirty"] == "0002"
        again = repo.cli("migrate")
        assert again.code == 1 and "dirty" in again.stderr and "repair" in again.stderr


HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from ncm_migrate.backends import make_backend
    from ncm_migrate.loader import load_project

    project = load_project(Path(sys.argv[1]))
    backend = make_backend(project.service(sys.argv[2]), 5.0, float(sys.argv[3]))
    backend.open()
    with backend.lock(30):
        print("locked", flush=True)
        time.sleep(600)
""")


def test_lock_is_released_when_its_holder_is_killed(repo: Monorepo, kind: Kind) -> None:
    three(repo, kind)
    lease_s = 1.5
    config = load_project(repo.root).service(SVC)
    if kind.runners_are_processes:
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(repo.root), SVC, str(lease_s)],
                                  stdout=subprocess.PIPE, text=True)
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        kill = lambda: (holder.send_signal(signal.SIGKILL), holder.wait())  # noqa: E731
    elif kind.redis is not None:
        # A holder that dies leaves its lease key behind, unrenewed: take it, never renew it.
        from ncm_migrate.backends.redis.lease import RedisLease
        from ncm_migrate.backends.redis.ledger import Keys

        redis_lease = RedisLease(kind.redis.client(), Keys.of(config).lock, lease_s)
        assert redis_lease.try_acquire()
        kill = lambda: None  # noqa: E731
    else:
        # A holder in another process that dies leaves its lease document behind, unrenewed:
        # take the lease and never renew or release it.
        from ncm_migrate.backends.mongo.lease import COLLECTION, Lease

        client = mongo_backend.client_factory(kind.url, 5.0)
        lease = Lease(client[mongo_backend.url_database(kind.url) or ""][COLLECTION], SVC, lease_s)
        assert lease.try_acquire()
        kill = lambda: None  # noqa: E731
    runner = make_backend(config, 5.0, lease_s)
    runner.open()
    try:
        with pytest.raises(LockTimeout), runner.lock(0.2):
            pass
        kill()
        with runner.lock(30):  # the killed holder's lock is gone (a lease once it lapsed)
            state = runner.read_state(load_project(repo.root).revisions[SVC])
        assert state.applied == frozenset()
    finally:
        runner.close()
    assert repo.cli("migrate").code == 0
