"""Shared fixtures: fresh databases on the local servers, and throw-away monorepos.

PostgreSQL and MariaDB tests skip when a server is down, except with
NCM_TEST_REQUIRE_SERVERS=1 (as in CI), where they fail instead. Redis tests run on the
server when it answers, else on fakeredis (but fail with NCM_TEST_REQUIRE_SERVERS=1).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from monorepo import Monorepo

PG_ADMIN = os.environ.get("NCM_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
MYSQL_ADMIN = os.environ.get("NCM_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
REQUIRE = os.environ.get("NCM_TEST_REQUIRE_SERVERS") == "1"
MONGO_SERVER = os.environ.get("NCM_TEST_MONGO_URL")  # unset: mongomock's in-memory server
REDIS_URL = os.environ.get("NCM_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _unavailable(what: str, exc: Exception) -> None:
    message = f"{what} is not reachable: {exc}"
    if REQUIRE:
        pytest.fail(message + " (NCM_TEST_REQUIRE_SERVERS=1)")
    pytest.skip(message)


def _with_db(url: str, name: str) -> str:
    return sa.engine.make_url(url).set(database=name).render_as_string(hide_password=False)


def _fresh_database(server: str, admin_url: str, quote: str, drop_options: str = "") -> Iterator[str]:
    """Create a database with a random name on `server`, yield its URL, drop it afterwards."""
    name = f"ncm_t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {quote}{name}{quote}")
    except sa.exc.OperationalError as exc:
        _unavailable(server, exc)
    yield _with_db(admin_url, name)
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {quote}{name}{quote}{drop_options}")
    admin.dispose()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards."""
    yield from _fresh_database("PostgreSQL", PG_ADMIN, '"', " WITH (FORCE)")


@pytest.fixture
def mysql_url() -> Iterator[str]:
    """A fresh MariaDB/MySQL database, dropped afterwards."""
    yield from _fresh_database("MariaDB", MYSQL_ADMIN, "`")


@pytest.fixture
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("sqlite")
    return f"sqlite:///{folder / 'db.sqlite'}"


@pytest.fixture
def mongo_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh MongoDB database, dropped afterwards: on NCM_TEST_MONGO_URL's server when it is
    set, else on a mongomock server that every client made in this process reaches
    (`ncm_migrate.backends.mongo.backend.client_factory` makes clients either way)."""
    name = f"ncm_t_{uuid.uuid4().hex[:12]}"
    if not MONGO_SERVER:
        from mongo_fake import FakeServer

        from ncm_migrate.backends.mongo import backend as mongo

        monkeypatch.setattr(mongo, "client_factory", FakeServer().client)
        yield f"mongodb://localhost:27017/{name}"
        return
    import pymongo

    base, _, query = MONGO_SERVER.partition("?")
    scheme, _, rest = base.partition("://")
    url = f"{scheme}://{rest.split('/', 1)[0]}/{name}" + (f"?{query}" if query else "")
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(url, serverSelectionTimeoutMS=3000)
    try:
        client.admin.command("ping")
    except pymongo.errors.PyMongoError as exc:
        client.close()
        _unavailable("MongoDB", exc)
    yield url
    client.drop_database(name)
    client.close()


@dataclass(frozen=True)
class RedisTarget:
    """A Redis database to test on, and the key prefix this test owns there: its own keys
    under `prefix`, ncm-migrate's (the setting `key_prefix`) under `ncm_prefix`."""

    url: str
    prefix: str
    fake: bool

    @property
    def ncm_prefix(self) -> str:
        return self.prefix + "ncm:"

    def service_settings(self) -> str:
        """The lines of a `[<env>.services.<svc>]` table that put the service here."""
        return (f'database_url = "{self.url}"\nkey_prefix = "{self.ncm_prefix}"\n'
                f'key_prefixes = ["{self.prefix}"]\n')

    def client(self) -> Any:
        """A client on this database, made the way ncm-migrate makes its own."""
        from ncm_migrate.backends.redis import backend
        from ncm_migrate.config import ConnectSettings

        return backend.client_factory(self.url, ConnectSettings())


_redis_answers: list[bool] = []


def _redis_server_answers() -> bool:
    """Whether NCM_TEST_REDIS_URL's server (default 127.0.0.1:6379) answers, asked once."""
    if not _redis_answers:
        import redis

        client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        try:
            client.ping()
            _redis_answers.append(True)
        except redis.RedisError as exc:
            if REQUIRE:
                pytest.fail(f"Redis is not reachable at {REDIS_URL}: {exc} (NCM_TEST_REQUIRE_SERVERS=1)")
            _redis_answers.append(False)
        finally:
            client.close()
    return _redis_answers[0]


@pytest.fixture
def redis_target(monkeypatch: pytest.MonkeyPatch) -> Iterator[RedisTarget]:
    """A key prefix of this test's own on the real Redis server (NCM_TEST_REDIS_URL, default
    127.0.0.1:6379; its keys deleted afterwards), or, where no server answers (and
    NCM_TEST_REQUIRE_SERVERS is not 1), on a fakeredis server that every client made in this
    process reaches (`ncm_migrate.backends.redis.backend.client_factory` makes them)."""
    prefix = f"ncm_t_{uuid.uuid4().hex[:12]}:"
    if not _redis_server_answers():
        yield _fake_redis(monkeypatch, prefix)
        return
    target = RedisTarget(REDIS_URL, prefix, fake=False)
    yield target
    client = target.client()
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def fake_redis_target(monkeypatch: pytest.MonkeyPatch) -> RedisTarget:
    """As `redis_target`, always on fakeredis."""
    return _fake_redis(monkeypatch, f"ncm_t_{uuid.uuid4().hex[:12]}:")


def _fake_redis(monkeypatch: pytest.MonkeyPatch, prefix: str) -> RedisTarget:
    import fakeredis

    from ncm_migrate.backends.redis import backend

    server = fakeredis.FakeServer()
    monkeypatch.setattr(backend, "client_factory",
                        lambda url, _connect: fakeredis.FakeRedis.from_url(url, server=server))
    return RedisTarget("redis://localhost:6379/0", prefix, fake=True)


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def db_url(request: pytest.FixtureRequest) -> str:
    """The same test on SQLite, PostgreSQL and MariaDB."""
    fixture = {"sqlite": "sqlite_url", "postgresql": "pg_url", "mysql": "mysql_url"}[request.param]
    url: str = request.getfixturevalue(fixture)
    return url


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never see the developer's NCM_* variables."""
    for name in list(os.environ):
        if name.startswith("NCM_") and not name.startswith("NCM_TEST_"):
            monkeypatch.delenv(name, raising=False)


@pytest.fixture
def repo(tmp_path: Path) -> Monorepo:
    """An empty monorepo in a temporary folder."""
    root = tmp_path / "repo"
    root.mkdir()
    return Monorepo(root)


@pytest.fixture
def scratches(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URL of every scratch database built during the test (checked to exist while
    it is used)."""
    from scratch_dbs import exists

    from ncm_migrate.backends.sql import autogen

    made: list[str] = []
    real = autogen.scratch_database

    @contextmanager
    def spy(config: Any, project: Any) -> Iterator[str | None]:
        with real(config, project) as url:
            if url is not None:
                made.append(url)
            yield url
            assert url is None or exists(url), f"{url} was not there while it was used"

    monkeypatch.setattr(autogen, "scratch_database", spy)
    return made
