"""redis_ops: each helper and its inverse give back the same keys, values and TTLs, and a
walk stopped part way resumes from its stored cursor, each key done exactly once.

Every test runs on the Redis server at NCM_TEST_REDIS_URL (default 127.0.0.1:6379; one
database number per xdist worker, keys under a prefix of the test's own, deleted after it)
and on fakeredis. Without a server the server's half skips, and fails with
NCM_TEST_REQUIRE_SERVERS=1.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
import zlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import fakeredis
import pytest
import redis
from conftest import RedisTarget
from monorepo import Monorepo
from redis.client import Pipeline

from ncm_migrate import redis_ops
from ncm_migrate.redis_ops import KeyConflict, KeyCursorStore, ScanPosition

REDIS_URL = os.environ.get("NCM_TEST_REDIS_URL", "redis://127.0.0.1:6379")
REQUIRE = os.environ.get("NCM_TEST_REQUIRE_SERVERS") == "1"
HOUR_MS = 3600 * 1000


def _server_db() -> int:
    """A database number per xdist worker (10, 11, ...): a walk's exactly-once holds while
    the keyspace does not grow or shrink a lot under it, so workers keep apart."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    return 10 + int(worker) % 6 if worker.isdigit() else 10


@pytest.fixture
def p() -> str:
    """The test's key prefix: everything it writes is under it."""
    return f"ncm_t_{uuid.uuid4().hex[:10]}:"


@pytest.fixture(params=["server", "fakeredis"])
def r(request: pytest.FixtureRequest, p: str) -> Iterator[redis.Redis]:
    """A client (the server's decodes responses, fakeredis's gives bytes: both ways are
    covered) whose helpers keep their cursors under the test's own prefix."""
    if request.param == "server":
        url = urlunsplit(urlsplit(REDIS_URL)._replace(path=f"/{_server_db()}"))  # the URL's db wins
        client = redis.Redis.from_url(url, decode_responses=True, socket_timeout=30)
        try:
            client.ping()
        except redis.RedisError as exc:
            message = f"Redis at {REDIS_URL} is not reachable: {exc}"
            if REQUIRE:
                pytest.fail(message + " (NCM_TEST_REQUIRE_SERVERS=1)")
            pytest.skip(message)
    else:
        client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    with redis_ops.using_cursor_store(KeyCursorStore(f"{p}ncm:")):
        yield client
    for pattern in (f"{p}*", f"ncm:cursor:*{p}*"):
        for key in client.scan_iter(match=pattern, count=1000):
            client.unlink(key)
    client.close()


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def snapshot(r: redis.Redis, pattern: str) -> dict[str, tuple[str, Any, bool]]:
    """Every key matching `pattern`: its type, value and whether it has a TTL."""
    out: dict[str, tuple[str, Any, bool]] = {}
    for key in r.scan_iter(match=pattern):
        kind = text(r.type(key))
        value: Any
        if kind == "string":
            value = text(r.get(key))
        elif kind == "hash":
            value = {text(f): text(v) for f, v in r.hgetall(key).items()}
        else:
            assert kind == "list", kind
            value = [text(v) for v in r.lrange(key, 0, -1)]
        out[text(key)] = (kind, value, r.pttl(key) > 0)
    return out


def ttl_kept(r: redis.Redis, key: str, set_ms: int) -> bool:
    """The key still has (about) the TTL it was given: set, and not above what was set."""
    left = r.pttl(key)
    return 0 < left <= set_ms


def fill_sessions(r: redis.Redis, p: str) -> None:
    for n in range(30):
        r.set(f"{p}sess:{n}", json.dumps({"user": n, "roles": ["a", "b"][: n % 3]}),
              px=HOUR_MS if n % 2 else None)
    r.hset(f"{p}sess:h", mapping={"a": "1"})
    r.pexpire(f"{p}sess:h", HOUR_MS)
    r.rpush(f"{p}sess:list", "x", "y")
    r.set(f"{p}other:1", "stays")


# -- rename_keys -------------------------------------------------------------------------------


def test_rename_keys_and_its_inverse_keep_values_types_and_ttls(r: redis.Redis, p: str) -> None:
    fill_sessions(r, p)
    before = snapshot(r, f"{p}*")
    assert redis_ops.rename_keys(r, f"{p}sess:*", f"{p}session:*", count=7) == 32
    renamed = snapshot(r, f"{p}*")
    assert not any(k.startswith(f"{p}sess:") for k in renamed)
    assert renamed[f"{p}session:3"] == before[f"{p}sess:3"]
    assert renamed[f"{p}session:h"] == before[f"{p}sess:h"]
    assert renamed[f"{p}other:1"] == before[f"{p}other:1"]
    assert ttl_kept(r, f"{p}session:1", HOUR_MS) and r.pttl(f"{p}session:2") == -1

    assert redis_ops.rename_keys(r, f"{p}session:*", f"{p}sess:*") == 32
    assert snapshot(r, f"{p}*") == before
    assert ttl_kept(r, f"{p}sess:h", HOUR_MS)
    assert redis_ops.cursor_store().load(r, f"rename_keys:{p}session:*") is None  # cleared


def test_rename_keys_takes_each_wildcard_in_order_or_a_function(r: redis.Redis, p: str) -> None:
    r.set(f"{p}user:7:name", "ann")
    r.set(f"{p}user:8:name", "bob")
    redis_ops.rename_keys(r, f"{p}user:*:na?e", f"{p}name:*:*")
    assert sorted(text(k) for k in r.scan_iter(match=f"{p}*")) == [f"{p}name:7:m", f"{p}name:8:m"]
    redis_ops.rename_keys(r, f"{p}name:*", lambda key: key.replace(":name:", ":person:"))
    assert text(r.get(f"{p}person:7:m")) == "ann"


def test_rename_keys_refuses_to_overwrite_and_to_rename_into_its_pattern(r: redis.Redis, p: str) -> None:
    r.set(f"{p}old:1", "one")
    r.set(f"{p}old:2", "two")
    r.set(f"{p}new:2", "taken")
    with pytest.raises(KeyConflict, match="new:2"):
        redis_ops.rename_keys(r, f"{p}old:*", f"{p}new:*")
    # The whole batch was refused: nothing renamed, nothing overwritten.
    assert text(r.get(f"{p}old:1")) == "one" and text(r.get(f"{p}new:2")) == "taken"
    assert redis_ops.rename_keys(r, f"{p}old:*", f"{p}new:*", overwrite=True) == 2
    assert text(r.get(f"{p}new:2")) == "two"

    with pytest.raises(ValueError, match="matches"):
        redis_ops.rename_keys(r, f"{p}new:*", f"{p}new:v2:*")
    with pytest.raises(ValueError, match="one '\\*' for each"):
        redis_ops.rename_keys(r, f"{p}new:*", f"{p}renamed")
    assert text(r.get(f"{p}new:1")) == "one"


def test_glob_patterns_match_as_redis_matches_them(r: redis.Redis, p: str) -> None:
    names = ["a1", "b1", "ab", "a[1]", "a*", "a\\x", "c-1", "cx1"]
    for name in names:
        r.set(f"{p}{name}", "v")
    for pattern in ["a?", "[ab]1", "[^a]1", "a\\[1\\]", "a\\*", "a\\\\x", "c[a-z-]1", "*1"]:
        server = sorted(text(k)[len(p):] for k in r.scan_iter(match=f"{p}{pattern}"))
        ours = sorted(n for n in names if redis_ops.glob_regex(f"{p}{pattern}").match(f"{p}{n}"))
        assert ours == server, pattern
    assert redis_ops.glob_escape("a[1]*?\\") == "a\\[1\\]\\*\\?\\\\"


# -- re_encode ---------------------------------------------------------------------------------


def packed(value: Any) -> bytes:
    """A binary encoding (not UTF-8), as msgpack's would be."""
    return zlib.compress(json.dumps(value, sort_keys=True).encode())


def unpacked(raw: bytes) -> Any:
    return json.loads(zlib.decompress(raw))


def test_re_encode_and_its_inverse_keep_values_and_ttls(r: redis.Redis, p: str) -> None:
    fill_sessions(r, p)
    before = snapshot(r, f"{p}*")
    assert redis_ops.re_encode(r, f"{p}sess:*", json.loads, packed) == 30  # strings only
    raw = r.execute_command("GET", f"{p}sess:4", NEVER_DECODE=True)
    assert unpacked(raw) == {"user": 4, "roles": ["a"]}
    assert ttl_kept(r, f"{p}sess:5", HOUR_MS) and r.pttl(f"{p}sess:4") == -1
    assert snapshot(r, f"{p}sess:h") == {f"{p}sess:h": before[f"{p}sess:h"]}

    redis_ops.re_encode(r, f"{p}sess:*", unpacked, lambda v: json.dumps(v))
    after = snapshot(r, f"{p}*")
    assert {k: (t, json.loads(v) if t == "string" and "sess" in k else v, ttl)
            for k, (t, v, ttl) in after.items()} == {
        k: (t, json.loads(v) if t == "string" and "sess" in k else v, ttl)
        for k, (t, v, ttl) in before.items()}


# -- expire_prefix -----------------------------------------------------------------------------


def test_expire_prefix_and_persist_prefix(r: redis.Redis, p: str) -> None:
    fill_sessions(r, p)
    r.set(f"{p}se*:literal", "the prefix is escaped")
    assert redis_ops.expire_prefix(r, f"{p}sess:", 600) == 32
    assert all(0 < r.ttl(f"{p}sess:{n}") <= 600 for n in (1, 2))
    assert r.ttl(f"{p}sess:list") > 0
    assert r.ttl(f"{p}other:1") == -1 and r.ttl(f"{p}se*:literal") == -1
    assert redis_ops.expire_prefix(r, f"{p}se*:", 60) == 1
    assert 0 < r.ttl(f"{p}se*:literal") <= 60

    assert redis_ops.persist_prefix(r, f"{p}sess:") == 32
    assert all(r.ttl(f"{p}sess:{n}") == -1 for n in range(30))
    assert r.ttl(f"{p}se*:literal") > 0
    with pytest.raises(ValueError, match="at least 1"):
        redis_ops.expire_prefix(r, f"{p}sess:", 0)


# -- copy_hash_fields --------------------------------------------------------------------------


def test_copy_hash_fields_and_its_inverse(r: redis.Redis, p: str) -> None:
    for n in range(12):
        r.hset(f"{p}user:{n}", mapping={"name": f"u{n}", "email": f"u{n}@x", "phone": str(n)})
    r.pexpire(f"{p}user:1", HOUR_MS)
    r.pexpire(f"{p}user:2", HOUR_MS)
    r.hset(f"{p}user:5", "other", "no email")
    r.hdel(f"{p}user:5", "email", "phone")
    r.hset(f"{p}contact:2", "kept", "yes")  # an existing target keeps its fields and no TTL
    r.set(f"{p}user:str", "not a hash")
    before = snapshot(r, f"{p}*")

    copied = redis_ops.copy_hash_fields(r, f"{p}user:*", {"email": "mail", "phone": "phone"},
                                        f"{p}contact:*", count=5)
    assert copied == 12  # hashes visited
    assert {text(f): text(v) for f, v in r.hgetall(f"{p}contact:3").items()} == {
        "mail": "u3@x", "phone": "3"}
    assert {text(f) for f in r.hkeys(f"{p}contact:2")} == {"kept", "mail", "phone"}
    assert r.exists(f"{p}contact:5") == 0 and r.exists(f"{p}contact:str") == 0
    assert ttl_kept(r, f"{p}contact:1", HOUR_MS) and r.pttl(f"{p}contact:3") == -1
    assert r.pttl(f"{p}contact:2") == -1
    assert {k: v for k, v in snapshot(r, f"{p}user:*").items()} == {
        k: v for k, v in before.items() if k.startswith(f"{p}user:")}

    redis_ops.delete_hash_fields(r, f"{p}contact:*", ["mail", "phone"])
    assert snapshot(r, f"{p}*") == before


# -- batched_scan_update -----------------------------------------------------------------------


class Interrupted(Exception):
    pass


def test_an_interrupted_walk_resumes_from_its_cursor_and_does_each_key_once(
    r: redis.Redis, p: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Each key holds "0" and the walk increments it: a key written twice would hold 2. The
    walk covers the whole prefix, where the cursor itself is kept: it never sees that key."""
    keys = [f"{p}k:{n}" for n in range(200)]
    r.mset(dict.fromkeys(keys, "0"))
    store = redis_ops.cursor_store()
    seen: list[str] = []
    stop_after = 70

    def incr(pipe: Pipeline, key: Any) -> None:
        assert not text(key).startswith(store.prefix)
        if len(seen) == stop_after:
            raise Interrupted
        seen.append(text(key))
        pipe.incr(key)

    with pytest.raises(Interrupted):
        redis_ops.batched_scan_update(r, f"{p}*", incr, count=20, name="bump")
    stored = store.load(r, "bump")
    assert stored is not None and stored.pattern == f"{p}*" and stored.cursor != 0
    written = [k for k in keys if text(r.get(k)) == "1"]
    assert 0 < len(written) == stored.done <= stop_after  # the failed batch wrote nothing
    assert all(text(r.get(k)) in ("0", "1") for k in keys)

    stop_after = -1  # no more interruptions
    progress: list[redis_ops.ScanProgress] = []
    with caplog.at_level(logging.INFO, logger="ncm_migrate.redis_ops"):
        done = redis_ops.batched_scan_update(r, f"{p}*", incr, count=20, name="bump",
                                             progress=progress.append)
    assert done == 200
    assert [text(r.get(k)) for k in keys] == ["1"] * 200
    assert store.load(r, "bump") is None
    assert progress[-1].done == 200
    assert f"bump: resuming after {stored.done} keys" in caplog.text
    assert "bump: 200 keys done in" in caplog.text


def test_the_default_cursor_is_under_the_ledger_prefix(r: redis.Redis, p: str) -> None:
    r.mset({f"{p}k:{n}": "0" for n in range(30)})

    def fail(pipe: Pipeline, key: Any) -> None:
        raise Interrupted

    default = KeyCursorStore()
    assert default.prefix == "ncm:"
    with redis_ops.using_cursor_store(default), pytest.raises(Interrupted):
        redis_ops.batched_scan_update(r, f"{p}k:*", fail, count=10)
    assert redis_ops.cursor_store() != default  # the context put the test's store back
    # A first batch that fails leaves no cursor: the walk starts over.
    assert r.exists(f"ncm:cursor:{p}k:*") == 0
    with redis_ops.using_cursor_store(default):

        def stop(state: redis_ops.ScanProgress) -> None:
            raise Interrupted  # after the first batch was written, with its cursor

        with pytest.raises(Interrupted):
            redis_ops.batched_scan_update(r, f"{p}k:*", lambda pipe, key: pipe.incr(key), count=2,
                                          progress=stop)
        assert r.exists(f"ncm:cursor:{p}k:*") == 1
        assert redis_ops.batched_scan_update(r, f"{p}k:*", lambda pipe, key: pipe.incr(key)) == 30
        assert r.exists(f"ncm:cursor:{p}k:*") == 0
    assert sorted(text(v) for v in r.mget([f"{p}k:{n}" for n in range(30)])) == ["1"] * 30


def test_a_stored_cursor_must_be_of_the_same_pattern_and_a_finished_one_is_only_cleared(
    r: redis.Redis, p: str
) -> None:
    store = redis_ops.cursor_store()
    r.set(f"{p}a:1", "0")
    with r.pipeline() as pipe:
        store.save(pipe, "walk", ScanPosition(f"{p}b:*", 17, 3))
        pipe.execute()
    with pytest.raises(ValueError, match="belongs to a walk over"):
        redis_ops.batched_scan_update(r, f"{p}a:*", lambda pipe, key: pipe.incr(key), name="walk")

    # A walk that wrote its last batch but was stopped before clearing its cursor: done.
    with r.pipeline() as pipe:
        store.save(pipe, "walk", ScanPosition(f"{p}a:*", 0, 1))
        pipe.execute()
    assert redis_ops.batched_scan_update(r, f"{p}a:*", lambda pipe, key: pipe.incr(key), name="walk") == 1
    assert text(r.get(f"{p}a:1")) == "0" and store.load(r, "walk") is None
    with pytest.raises(ValueError, match="count"):
        redis_ops.batched_scan_update(r, f"{p}a:*", lambda pipe, key: None, count=0)


def test_a_walk_can_keep_to_one_type_of_key(r: redis.Redis, p: str) -> None:
    fill_sessions(r, p)
    seen: list[str] = []
    assert redis_ops.batched_scan_update(r, f"{p}*", lambda pipe, key: seen.append(text(key)),
                                         key_type="hash") == 1
    assert seen == [f"{p}sess:h"]


def test_a_command_failing_at_exec_says_what_was_written(r: redis.Redis, p: str) -> None:
    """Redis applies the rest of a transaction whose command fails: the batch and its cursor
    are written, the error says so and names the command, and a re-run does nothing twice."""
    r.mset({f"{p}k:a": 0, f"{p}k:b": 0})
    r.hset(f"{p}k:h", "f", "v")
    with pytest.raises(redis_ops.PartlyWritten, match=f"INCRBY {p}k:h 1.*WRONGTYPE.*by hand"):
        redis_ops.batched_scan_update(r, f"{p}k:*", lambda pipe, key: pipe.incr(key), name="mixed")
    assert [text(v) for v in r.mget(f"{p}k:a", f"{p}k:b")] == ["1", "1"]
    assert redis_ops.batched_scan_update(r, f"{p}k:*", lambda pipe, key: pipe.incr(key), name="mixed") == 3
    assert [text(v) for v in r.mget(f"{p}k:a", f"{p}k:b")] == ["1", "1"]


# -- in a revision -----------------------------------------------------------------------------


def test_a_revision_stopped_mid_walk_goes_on_from_its_cursor_after_repair(
    repo: Monorepo, redis_target: RedisTarget
) -> None:
    """The backend keeps a revision's cursors under the service's `key_prefix`; the first
    run stops after one batch, and the run after `repair` finishes the walk, each key once."""
    p = redis_target.prefix
    r = redis_target.client()
    r.mset({f"{p}item:{n}": 0 for n in range(40)})
    stop, once = f"{p}stop", f"{p}stopped-once"
    upgrade = f"""
        from ncm_migrate import redis_ops

        def bump(pipe, key):
            if r.exists({stop!r}):
                raise RuntimeError("stopped mid-walk")
            pipe.incr(key)

        def stop_once(state):
            if r.set({once!r}, 1, nx=True):
                r.set({stop!r}, 1)

        redis_ops.batched_scan_update(r, {p + "item:*"!r}, bump, count=5, name="bump",
                                      progress=stop_once)
    """
    repo.redis_revision("orders", "0001", upgrade=upgrade)
    repo.settings(f"[development.services.orders]\n{redis_target.service_settings()}")
    failed = repo.cli("migrate")
    assert failed.code == 1 and "stopped mid-walk" in failed.stderr, failed.output
    position = KeyCursorStore(redis_target.ncm_prefix).load(r, "bump")
    assert position is not None and 0 < position.done < 40
    assert sum(int(v) for v in r.mget([f"{p}item:{n}" for n in range(40)])) == position.done

    r.delete(stop)
    assert repo.cli("repair", "orders").code == 0
    done = repo.cli("migrate")
    assert done.code == 0, done.output
    assert [int(v) for v in r.mget([f"{p}item:{n}" for n in range(40)])] == [1] * 40
    assert r.exists(f"{redis_target.ncm_prefix}cursor:bump") == 0
