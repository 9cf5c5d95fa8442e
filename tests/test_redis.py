"""Redis specifics: URLs and connecting, the lease, the applied markers, dirty marks and
repair, backup and restore (TTLs included, a damaged backup refused), templates and
startservice, the sessions example, and a plan across Redis, MongoDB and SQL services.

Tests on `redis_target` run on the real server (NCM_TEST_REDIS_URL, default
127.0.0.1:6379, each under a key prefix of its own) when it answers, else on fakeredis;
the backend contract suite (test_backend_contract.py) runs on both.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import RedisTarget
from monorepo import Monorepo, redis_revision_file

from ncm_migrate.backends import make_backend
from ncm_migrate.backends.redis.backend import RedisBackend, redis_client
from ncm_migrate.backends.redis.lease import RedisLease
from ncm_migrate.backends.redis.ledger import Keys
from ncm_migrate.config import ConnectSettings
from ncm_migrate.discovery import read_revision
from ncm_migrate.errors import LockLost
from ncm_migrate.ledger import run_context
from ncm_migrate.loader import load_project
from ncm_migrate.model import ServiceConfig, Step
from ncm_migrate.templates import RevisionText, render_revision
from ncm_migrate.urls import backend_of, check_url, dialect_of, mask_url, redis_db

REPO = Path(__file__).resolve().parents[1]
KEY = "GgtVj9ovHkJ_2LGdbQwd3K1RwHjZtVp7mKfEqZ4KxVQ="
OTHER_KEY = "ZmRZdE9nNUZ4cF9TRnRjYjNqV2xPVlZVRnRNbXFhYTc="


def configure(repo: Monorepo, target: RedisTarget, extra: str = "", service: str = "orders",
              others: str = "") -> None:
    repo.settings(f"[development]\n{extra}\n[development.services.{service}]\n"
                  f"{target.service_settings()}\n{others}")


def opened(repo: Monorepo, service: str = "orders") -> Iterator[RedisBackend]:
    project = load_project(repo.root)
    backend = make_backend(project.service(service), project.settings.connect,
                           project.settings.lock.lease_s)
    assert isinstance(backend, RedisBackend)
    backend.open()
    try:
        yield backend
    finally:
        backend.close()


def status(repo: Monorepo) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(repo.cli("showmigrations", "--json").stdout)["services"][0]
    return result


# -- URLs and connecting -------------------------------------------------------------


def test_redis_urls_mean_a_redis_service_with_the_database_from_the_url() -> None:
    for url in ("redis://localhost:6379/3", "rediss://u:pw@h:6380/3", "unix:///run/redis.sock?db=3"):
        assert (backend_of(url), dialect_of(url), check_url(url)) == ("redis", "redis", None)
        assert redis_db(url) == 3
    assert redis_db("redis://localhost") == 0
    assert mask_url("rediss://app:s3cret@h:6380/1") == "rediss://app:***@h:6380/1"
    assert "not a number" in str(check_url("redis://localhost/sessions"))
    assert "socket path" in str(check_url("unix://"))


def test_backend_redis_is_accepted_and_must_match_the_url(repo: Monorepo, redis_target: RedisTarget) -> None:
    repo.redis_revision("orders", "0001")
    configure(repo, redis_target, others='backend = "redis"\n')
    assert repo.cli("migrate").code == 0
    repo.settings(f'[development.services.orders]\nbackend = "mongo"\ndatabase_url = "{redis_target.url}"\n')
    result = repo.cli("showmigrations")
    assert result.code == 2 and "is a redis URL" in result.stderr


def test_a_url_with_a_bad_database_number_is_bad_input(repo: Monorepo) -> None:
    repo.redis_revision("orders", "0001")
    repo.urls({"orders": "redis://localhost:6379/sessions"})
    result = repo.cli("migrate")
    assert result.code == 2 and "not a number" in result.stderr and "Traceback" not in result.output


def test_an_unreachable_server_is_exit_4_without_its_password(repo: Monorepo) -> None:
    repo.redis_revision("orders", "0001")
    repo.urls({"orders": "redis://ncm:s3cret-pw@127.0.0.1:9/0"},
              extra="[development.connect]\nretries = 1\nmax_wait_s = 1.0\ntimeout_s = 0.2\n")
    for command in ("showmigrations", "migrate"):
        result = repo.cli(command)
        assert result.code == 4, result.output
        assert "orders" in result.stderr and "s3cret-pw" not in result.output
        assert "redis://ncm:***@127.0.0.1:9/0" in result.stderr


def test_socket_timeouts_come_from_the_connect_settings() -> None:
    client = redis_client("redis://localhost:6379/2", ConnectSettings(timeout_s=1.5, read_timeout_s=7))
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["socket_connect_timeout"], kwargs["socket_timeout"], kwargs["db"]) == (1.5, 7, 2)
    assert client.get_retry().get_retries() == 0  # connecting is retried by ncm-migrate's policy
    unbounded = redis_client("redis://localhost", ConnectSettings(read_timeout_s=0))
    assert unbounded.connection_pool.connection_kwargs["socket_timeout"] is None


def test_doctor_wait_and_server_info(repo: Monorepo, redis_target: RedisTarget) -> None:
    repo.redis_revision("orders", "0001")
    configure(repo, redis_target)
    for backend in opened(repo):
        info = backend.server_info()
    assert info.server_version.startswith("redis ") and info.latency_ms >= 0
    assert dict(info.extra)["key_prefix"] == redis_target.ncm_prefix
    assert repo.cli("wait").code == 0
    doctor = repo.cli("doctor")
    assert doctor.code == 0, doctor.output
    assert "redis" in doctor.stdout


# -- the lease -------------------------------------------------------------------------


def test_the_lease_is_released_only_by_its_owner_and_lapses(redis_target: RedisTarget) -> None:
    r = redis_target.client()
    key = redis_target.ncm_prefix + "orders:lock"
    mine, theirs = RedisLease(r, key, 60.0), RedisLease(r, key, 60.0)
    assert mine.try_acquire() and not theirs.try_acquire()
    theirs.release()  # not its lease: nothing happens
    assert r.get(key) == mine.value.encode()
    assert f"pid {os.getpid()}" in str(theirs.holder())
    assert 0 < r.pttl(key) <= 60_000
    mine.release()
    assert r.get(key) is None and theirs.holder() is None and theirs.try_acquire()
    r.pexpire(key, 1)  # as if its holder had died and the lease lapsed
    for _ in range(1000):
        if not r.exists(key):
            break
        threading.Event().wait(0.01)
    assert mine.try_acquire() and not theirs.renew()
    mine.release()
    r.close()


def test_a_live_holder_renews_its_lease(repo: Monorepo, redis_target: RedisTarget) -> None:
    # upgrade() outlasts three leases; it copies the lease's TTL as it stands at its end.
    lock = Keys.of(load_project_config(repo, redis_target)).lock
    probe = redis_target.prefix + "probe"
    repo.redis_revision("orders", "0001", extra="import time", upgrade=f"""
        time.sleep(1.6)
        r.set({probe!r}, r.get({lock!r}))
    """)
    assert repo.cli("migrate").code == 0
    r = redis_target.client()
    assert r.get(probe) and r.get(lock) is None  # it was held throughout, then released
    r.close()


def load_project_config(repo: Monorepo, target: RedisTarget) -> ServiceConfig:
    repo.redis_revision("orders", "0001")
    configure(repo, target, extra="[development.lock]\nlease_s = 0.5\n")
    return load_project(repo.root).service("orders")


def test_a_held_lease_is_exit_3_naming_its_holder(repo: Monorepo, redis_target: RedisTarget) -> None:
    repo.redis_revision("orders", "0001")
    configure(repo, redis_target, extra="[development.lock]\ntimeout_s = 0.3\n")
    r = redis_target.client()
    assert RedisLease(r, Keys.of(load_project(repo.root).service("orders")).lock, 60.0).try_acquire()
    result = repo.cli("migrate")
    assert result.code == 3 and "held by a runner on host" in result.stderr
    r.close()


def test_a_lost_lease_stops_before_the_next_step(repo: Monorepo, redis_target: RedisTarget) -> None:
    one, two = redis_target.prefix + "t1", redis_target.prefix + "t2"
    repo.redis_revision("orders", "0001", upgrade=f"r.set({one!r}, 1)")
    repo.redis_revision("orders", "0002", down="0001", upgrade=f"r.set({two!r}, 1)")
    configure(repo, redis_target)
    revisions = load_project(repo.root).revisions["orders"]
    steps = [Step("orders", "0001", "up"), Step("orders", "0002", "up")]
    for backend in opened(repo):
        with backend.lock(1.0):
            backend.client.set(backend.keys.lock, "thief")
            with pytest.raises(LockLost, match="another runner took the migration lease"):
                backend.apply(steps, revisions, run_context("development"), False, lambda *_: None)
            # Past that check, the claim itself (one Lua script) checks the lease and the
            # marker together: -1 while the lease is another's, 0 once the marker is taken.
            claim = backend.claim_script
            keys = [backend.keys.lock, backend.keys.markers]
            assert claim(keys=keys, args=["mine", "0001", "up", "c1"]) == -1
            backend.client.set(backend.keys.lock, "mine")
            assert claim(keys=keys, args=["mine", "0001", "up", "c1"]) == 1
            assert claim(keys=keys, args=["mine", "0001", "up", "c2"]) == 0
            assert claim(keys=keys, args=["", "0001", "up", "c3"]) == 0
            assert backend.client.hget(backend.keys.markers, "0001") == b"applying c1"
        assert backend.client.exists(one, two) == 0 and backend.history() == []


def test_a_second_application_fails_even_if_two_runners_raced_past_the_lock(
    repo: Monorepo, redis_target: RedisTarget
) -> None:
    runs = redis_target.prefix + "runs"
    repo.redis_revision("orders", "0001", upgrade=f"r.rpush({runs!r}, '0001')",
                        downgrade=f"r.rpush({runs!r}, '-0001')")
    configure(repo, redis_target)
    revisions = load_project(repo.root).revisions["orders"]
    ctx = run_context("development")
    up, down = [Step("orders", "0001", "up")], [Step("orders", "0001", "down")]
    first, second = opened(repo), opened(repo)
    a, b = next(first), next(second)
    try:
        assert not a.read_state(revisions).applied and not b.read_state(revisions).applied
        assert [r.outcome for r in a.apply(up, revisions, ctx, False, lambda *_: None)] == ["applied"]
        with pytest.raises(LockLost, match="was applied by another runner"):
            b.apply(up, revisions, ctx, False, lambda *_: None)
        assert [r.outcome for r in a.apply(down, revisions, ctx, False, lambda *_: None)] == ["reverted"]
        with pytest.raises(LockLost, match="reverted"):
            b.apply(down, revisions, ctx, False, lambda *_: None)
        assert [x.status for x in a.history()] == ["applied", "reverted"]  # the losers wrote nothing
        assert a.client.lrange(runs, 0, -1) == [b"0001", b"-0001"]
    finally:
        first.close()
        second.close()


# -- the ledger, failures, dirty marks, repair ---------------------------------------------


def test_the_ledger_is_an_append_only_stream(repo: Monorepo, redis_target: RedisTarget) -> None:
    repo.redis_revision("orders", "0001")
    configure(repo, redis_target)
    assert repo.cli("migrate").code == 0
    assert repo.cli("rollback", "orders").code == 0
    r = redis_target.client()
    keys = Keys.of(load_project(repo.root).service("orders"))
    entries = r.xrange(keys.ledger)
    # Each step: its `running` entry, then one naming it in `finishes` (never an edit).
    assert [e[1][b"status"] for e in entries] == [b"running", b"applied", b"running", b"reverted"]
    assert entries[1][1][b"finishes"] == entries[0][0]
    assert r.type(keys.ledger) == b"stream" and r.hgetall(keys.markers) == {}
    r.close()


def test_a_failure_marks_the_service_dirty_until_repair(repo: Monorepo, redis_target: RedisTarget) -> None:
    key = redis_target.prefix + "t1"
    path = repo.redis_revision("orders", "0001", upgrade=f"r.set({key!r}, 1)\nraise ValueError('half done')")
    configure(repo, redis_target)
    failed = repo.cli("migrate")
    assert failed.code == 1 and "half done" in failed.stderr
    assert status(repo)["dirty"] == "0001"
    markers = Keys.of(load_project(repo.root).service("orders")).markers
    r = redis_target.client()
    assert r.hgetall(markers) == {}  # the claim was given back
    refused = repo.cli("migrate")
    assert refused.code == 1 and "dirty" in refused.stderr and "repair" in refused.stderr
    path.write_text(redis_revision_file("0001", upgrade=f"r.set({key!r}, 1)"))
    repaired = repo.cli("repair", "orders")
    assert repaired.code == 0, repaired.output
    assert status(repo)["dirty"] is None
    assert repo.cli("migrate").code == 0
    assert r.hgetall(markers) == {b"0001": b"applied"}
    validated = repo.cli("validate")
    assert validated.code == 0, validated.output
    r.close()


def test_an_edited_revision_fails_validate_until_repair(repo: Monorepo, redis_target: RedisTarget) -> None:
    path = repo.redis_revision("orders", "0001")
    configure(repo, redis_target)
    assert repo.cli("migrate").code == 0
    path.write_text(path.read_text() + "\n# edited\n")
    assert repo.cli("validate").code != 0
    assert repo.cli("repair", "orders").code == 0
    assert repo.cli("validate").code == 0


def test_verify_failing_fails_the_revision(repo: Monorepo, redis_target: RedisTarget) -> None:
    repo.redis_revision("orders", "0001", verify="assert r.exists('nothing-here'), 'not there'")
    configure(repo, redis_target)
    result = repo.cli("migrate")
    assert result.code == 1 and "not there" in result.stderr
    assert status(repo)["dirty"] == "0001"


# -- backup and restore ----------------------------------------------------------------


def _fill(target: RedisTarget) -> dict[bytes, tuple[Any, int]]:
    """Keys of every type, some with TTLs; returns what `_snapshot` says of them."""
    r = target.client()
    p = target.prefix
    r.set(p + "str", b"\x00binary\xff")
    r.set(p + "ttl", "soon", px=3_600_000)
    r.hset(p + "hash", mapping={"a": "1", "b": "2"})
    r.rpush(p + "list", "x", "y", "x")
    r.sadd(p + "set", "m", "n")
    r.zadd(p + "zset", {"a": 1.5, "b": -2})
    r.xadd(p + "stream", {"f": "v"})
    r.expire(p + "hash", 7200)
    r.close()
    return _snapshot(target)


def _snapshot(target: RedisTarget) -> dict[bytes, tuple[Any, int]]:
    """Each of the test's keys (ncm-migrate's aside): its value, and its TTL in minutes."""
    r = target.client()
    out: dict[bytes, tuple[Any, int]] = {}
    for key in r.scan_iter(match=target.prefix + "*"):
        if key.startswith(target.ncm_prefix.encode()):
            continue
        kind = r.type(key)
        value: Any = {
            b"string": lambda k: r.get(k), b"hash": lambda k: r.hgetall(k),
            b"list": lambda k: r.lrange(k, 0, -1), b"set": lambda k: r.smembers(k),
            b"zset": lambda k: r.zrange(k, 0, -1, withscores=True),
            b"stream": lambda k: [f for _, f in r.xrange(k)],
        }[kind](key)
        ttl = r.pttl(key)
        out[key] = (value, -1 if ttl < 0 else round(ttl / 60_000))
    r.close()
    return out


def _destructive(repo: Monorepo, target: RedisTarget) -> None:
    p = target.prefix
    repo.redis_revision("orders", "0002", down="0001", upgrade=f"""
        r.delete({p + 'hash'!r}, {p + 'set'!r})
        r.set({p + 'str'!r}, 'overwritten')
        r.persist({p + 'ttl'!r})
        r.set({p + 'new'!r}, 'junk')
    """)


def test_backup_destructive_revision_restore(
    repo: Monorepo, redis_target: RedisTarget, tmp_path: Path
) -> None:
    repo.redis_revision("orders", "0001")
    configure(repo, redis_target)
    assert repo.cli("migrate").code == 0
    before = _fill(redis_target)
    assert len(before) == 7 and before[(redis_target.prefix + "ttl").encode()][1] == 60
    other = redis_target.prefix.rstrip(":") + "_other:key"  # not under the service's prefixes
    redis_target.client().set(other, "left alone")

    folder = tmp_path / "bk"
    backup = repo.cli("backup", "orders", "-o", str(folder))
    assert backup.code == 0, backup.output
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (manifest["backend"], manifest["dialect"], manifest["heads"]) == ("redis", "redis", ["0001"])
    assert manifest["files"] == ["keys.jsonl"] and set(manifest["sha256"]) == {"keys.jsonl"}

    _destructive(repo, redis_target)
    assert repo.cli("migrate").code == 0
    assert _snapshot(redis_target) != before
    restored = repo.cli("restore", "orders", str(folder))
    assert restored.code == 0, restored.output
    assert _snapshot(redis_target) == before  # same keys, values and TTLs; `new` is gone
    assert status(repo)["current"] == ["0001"]  # the ledger came back with the data
    r = redis_target.client()
    assert r.get(other) == b"left alone"
    r.delete(other)
    r.close()
    assert repo.cli("migrate").code == 0  # 0002 applies again


def test_a_damaged_backup_is_refused_before_anything_is_touched(
    repo: Monorepo, redis_target: RedisTarget, tmp_path: Path
) -> None:
    repo.redis_revision("orders", "0001")
    configure(repo, redis_target)
    assert repo.cli("migrate").code == 0
    _fill(redis_target)
    folder = tmp_path / "bk"
    assert repo.cli("backup", "orders", "-o", str(folder)).code == 0
    _destructive(repo, redis_target)
    assert repo.cli("migrate").code == 0
    wrecked = _snapshot(redis_target)

    data = folder / "keys.jsonl"
    lines = data.read_text().splitlines()
    data.write_text("\n".join(lines[:-1]) + "\n")  # truncated
    result = repo.cli("restore", "orders", str(folder))
    assert result.code == 2 and "does not match the sha256" in result.stderr
    assert _snapshot(redis_target) == wrecked

    # Damage that the manifest's checksum agrees with is found when the file is read.
    import hashlib

    data.write_text("\n".join([*lines[:-1], '{"key": "!!", "pttl": 0}']) + "\n")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["sha256"]["keys.jsonl"] = hashlib.sha256(data.read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    result = repo.cli("restore", "orders", str(folder))
    assert result.code == 2 and "keys.jsonl line" in result.stderr and "damaged" in result.stderr
    assert _snapshot(redis_target) == wrecked and status(repo)["current"] == ["0002"]


def test_encrypted_backup_needs_its_key(repo: Monorepo, redis_target: RedisTarget, tmp_path: Path) -> None:
    repo.redis_revision("orders", "0001")
    configure(repo, redis_target)
    assert repo.cli("migrate").code == 0
    before = _fill(redis_target)
    folder = tmp_path / "bk"
    keyed = {"NCM_BACKUP__ENCRYPTION_KEY": KEY}
    assert repo.cli("backup", "orders", "-o", str(folder), env=keyed).code == 0
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["encrypted"] is True and manifest["files"] == ["keys.jsonl.enc"]
    r = redis_target.client()
    r.delete(redis_target.prefix + "hash")
    wrong = repo.cli("restore", "orders", str(folder), env={"NCM_BACKUP__ENCRYPTION_KEY": OTHER_KEY})
    assert wrong.code == 2 and "cannot be decrypted" in wrong.stderr
    assert r.exists(redis_target.prefix + "hash") == 0
    assert repo.cli("restore", "orders", str(folder), env=keyed).code == 0
    assert _snapshot(redis_target) == before
    r.close()


# -- templates, startservice, the example service, and a plan across backends -------------


@pytest.mark.parametrize("kind", ["schema", "data", "index", "seed", "merge"])
def test_redis_templates_render_valid_revisions(tmp_path: Path, kind: str) -> None:
    config = ServiceConfig(name="sessions", root=tmp_path, backend="redis",
                           database_url="redis://localhost:6379/0")
    text = RevisionText(message="Re-key sessions", revision="0003_rekey", migration_type=kind,
                        service="sessions", backend="redis", dialect="redis",
                        create_date="2026-01-01", down_revision=("0002_user_index",),
                        requires=("users:0002_add_email",))
    path = tmp_path / "0003_rekey.py"
    path.write_text(render_revision(config, tmp_path, text))
    header = read_revision("sessions", path)
    assert (header.revision, header.down_revisions, header.requires, header.migration_type) == (
        "0003_rekey", ("0002_user_index",), ("users:0002_add_email",), kind)
    assert {"upgrade", "downgrade"} <= header.defines
    names = {n.id for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Name)}
    assert "redis" in names  # the annotation's import is used
    namespace: dict[str, Any] = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    assert namespace["upgrade"].__code__.co_varnames[:1] == ("r",)


def test_makemigrations_and_startservice_on_redis(repo: Monorepo, redis_target: RedisTarget) -> None:
    made = repo.cli("startservice", "sessions", "--backend", "redis")
    assert made.code == 0, made.output
    settings = (repo.root / "services/sessions/settings.toml").read_text()
    assert 'backend = "redis"' in settings and not (repo.root / "services/sessions/models.py").exists()
    configure(repo, redis_target, service="sessions")
    result = repo.cli("makemigrations", "sessions", "--type", "data", "-m", "re-key sessions")
    assert result.code == 0, result.output
    [path] = (repo.root / "services/sessions/migrations").glob("0001_*.py")
    assert "def upgrade(r: redis.Redis)" in path.read_text()
    assert repo.cli("migrate").code == 0 and status(repo)["current"] == [path.stem]
    wrong = repo.cli("startservice", "cache", "--backend", "memcached")
    assert wrong.code == 2 and "sql, mongo or redis" in wrong.stderr


def test_the_sessions_example_service(repo: Monorepo, fake_redis_target: RedisTarget, tmp_path: Path) -> None:
    for name in ("users", "billing", "catalog", "sessions"):
        shutil.copytree(REPO / "services" / name, repo.root / "services" / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    sqlite = {s: f"sqlite:///{tmp_path / s}.db" for s in ("users", "billing", "catalog")}
    repo.urls({**sqlite, "sessions": fake_redis_target.url})
    r = fake_redis_target.client()
    r.hset("sess:abc", mapping={"user_id": "7"})
    result = repo.cli("migrate")
    assert result.code == 0, result.output
    assert 0 < r.ttl("sess:abc") <= 14 * 24 * 3600
    assert r.smembers("sessions:by_user:7") == {b"abc"}
    assert repo.cli("migrate", "sessions", "zero").code == 0
    assert r.exists("sessions:config", "sessions:by_user:7") == 0 and r.exists("sess:abc")


def test_the_example_service_is_left_out_where_there_is_no_redis() -> None:
    services = json.loads(Monorepo(REPO).cli("services", "--json").stdout)
    sessions = next(s for s in services if s["name"] == "sessions")
    assert sessions["url"] == "" and sessions["backend"] == "redis"
    docker = json.loads(Monorepo(REPO).cli("--env", "docker", "services", "--json").stdout)
    assert next(s for s in docker if s["name"] == "sessions")["url"].startswith("redis://")


def test_requires_across_redis_mongodb_and_sql(
    repo: Monorepo, redis_target: RedisTarget, mongo_url: str, sqlite_url: str, tmp_path: Path
) -> None:
    """users (SQL) 0001 <- sessions (Redis) 0001 <- notifications (MongoDB) 0001 <- sessions 0002."""
    log = tmp_path / "order.log"
    note = f"open({str(log)!r}, 'a').write"
    repo.revision("users", "0001", upgrade=f"{note}('users:0001\\n')")
    repo.redis_revision("sessions", "0001", requires=["users:0001"],
                        upgrade=f"{note}('sessions:0001\\n')\nr.set({redis_target.prefix + 's'!r}, 1)")
    repo.mongo_revision("notifications", "0001", requires=["sessions:0001"],
                        upgrade=f"{note}('notifications:0001\\n')")
    repo.redis_revision("sessions", "0002", down="0001", requires=["notifications:0001"],
                        upgrade=f"{note}('sessions:0002\\n')")
    repo.settings(f'[development.services.users]\ndatabase_url = "{sqlite_url}"\n'
                  f'[development.services.notifications]\ndatabase_url = "{mongo_url}"\n'
                  f"[development.services.sessions]\n{redis_target.service_settings()}")
    expected = ["users:0001", "sessions:0001", "notifications:0001", "sessions:0002"]
    plan = json.loads(repo.cli("migrate", "--plan", "--json").stdout)["steps"]
    assert [f"{s['service']}:{s['revision']}" for s in plan] == expected
    result = repo.cli("migrate")
    assert result.code == 0, result.output
    assert log.read_text().split() == expected
    rows = json.loads(repo.cli("history", "--json").stdout)
    assert {(r["service"], r["revision"], r["status"]) for r in rows} == {
        (k.split(":")[0], k.split(":")[1], "applied") for k in expected}
    assert len({r["run_id"] for r in rows}) == 1
    refused = repo.cli("rollback", "sessions", "zero")
    assert refused.code == 1 and "notifications:0001" in refused.stderr


def test_which_keys_a_backup_holds(repo: Monorepo, fake_redis_target: RedisTarget, tmp_path: Path) -> None:
    """By default every key of the database but ncm-migrate's own, except this service's
    ledger and markers; never its lease nor another service's bookkeeping (on fakeredis:
    the real server's database is shared)."""
    from ncm_migrate.backends.redis.backup import read_key_lines

    repo.redis_revision("orders", "0001")
    repo.urls({"orders": fake_redis_target.url})
    assert repo.cli("migrate").code == 0
    r = fake_redis_target.client()
    r.set("a:1", 1)
    r.set("b:1", 1, px=600_000)
    r.set("ncm:billing:ledger", "another service's")
    # backup holds the service's lease (ncm:orders:lock) while it runs: not in the backup.
    assert repo.cli("backup", "orders", "-o", str(tmp_path / "all")).code == 0
    keys = {e.key for e in read_key_lines(tmp_path / "all" / "keys.jsonl")}
    assert keys == {b"a:1", b"b:1", b"ncm:orders:ledger", b"ncm:orders:applied"}

    repo.settings(f'[development.services.orders]\ndatabase_url = "{fake_redis_target.url}"\n'
                  'key_prefixes = ["a:", "a:", "a:1"]\n')
    assert repo.cli("backup", "orders", "-o", str(tmp_path / "a")).code == 0
    lines = [e.key for e in read_key_lines(tmp_path / "a" / "keys.jsonl")]
    assert sorted(lines) == [b"a:1", b"ncm:orders:applied", b"ncm:orders:ledger"]  # each once
    r.set("a:2", 2)
    r.delete("b:1")
    assert repo.cli("restore", "orders", str(tmp_path / "a")).code == 0
    assert r.exists("a:2") == 0 and r.exists("b:1") == 0  # b:1 is not the service's now
    assert r.get("ncm:billing:ledger") == b"another service's"
