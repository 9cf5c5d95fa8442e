"""MongoDB specifics: URLs and connecting, the lease, the applied markers, transactions,
mongo_ops, backup and restore, templates, the notifications example, and a plan that
interleaves a MongoDB service with a SQL service.

On mongomock (the default) the tests marked `needs_server` skip: mongomock enforces no
validators and has no transactions. They run with NCM_TEST_MONGO_URL set.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import shutil
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import bson
import pytest
from bson.decimal128 import Decimal128
from bson.int64 import Int64
from conftest import MONGO_SERVER
from monorepo import Monorepo, mongo_revision_file
from pymongo.errors import DuplicateKeyError, WriteError

from ncm_migrate import mongo_ops
from ncm_migrate.backends import make_backend
from ncm_migrate.backends.mongo import backend as mongo_backend
from ncm_migrate.backends.mongo.backend import MongoBackend, database_name, url_database
from ncm_migrate.backends.mongo.backup import backup_mongo, restore_mongo
from ncm_migrate.backends.mongo.lease import COLLECTION as LOCK_COLLECTION
from ncm_migrate.backends.mongo.lease import Lease
from ncm_migrate.backends.mongo.ledger import MARKERS
from ncm_migrate.discovery import read_revision
from ncm_migrate.errors import LockLost, SettingsError
from ncm_migrate.ledger import run_context
from ncm_migrate.loader import load_project
from ncm_migrate.model import ServiceConfig, Step
from ncm_migrate.templates import RevisionText, render_revision

REPO = Path(__file__).resolve().parents[1]
needs_server = pytest.mark.skipif(
    not MONGO_SERVER, reason="mongomock enforces no validators and has no transactions"
)


def database(url: str) -> Any:
    """The database at `url`, through the client factory ncm-migrate itself uses."""
    return mongo_backend.client_factory(url, 5.0)[url_database(url)]


@pytest.fixture
def db(mongo_url: str) -> Any:
    return database(mongo_url)


def mongo_service(repo: Monorepo, url: str, extra: str = "") -> None:
    repo.urls({"orders": url}, extra=extra)


def opened(repo: Monorepo, service: str = "orders") -> Iterator[MongoBackend]:
    project = load_project(repo.root)
    backend = make_backend(project.service(service), 5.0, project.settings.lock.lease_s)
    assert isinstance(backend, MongoBackend)
    backend.open()
    try:
        yield backend
    finally:
        backend.close()


# -- URLs and connecting -------------------------------------------------------------


def test_database_name_comes_from_the_setting_or_the_url(tmp_path: Path) -> None:
    config = ServiceConfig(name="n", root=tmp_path, backend="mongo",
                           database_url="mongodb://u:p%40ss@h1:1,h2:2/app?replicaSet=rs")
    assert database_name(config) == "app"
    assert database_name(replace(config, database_name="other")) == "other"
    assert url_database("mongodb+srv://u:p@cluster.example.net/x?retryWrites=true") == "x"
    with pytest.raises(SettingsError, match=r"services\.n\.database"):
        database_name(replace(config, database_url="mongodb://h:27017/?tls=true"))


def test_database_setting_is_used(repo: Monorepo, mongo_url: str) -> None:
    name = url_database(mongo_url)
    host = mongo_url.split("/" + str(name))[0]
    repo.mongo_revision("orders", "0001", upgrade="db.create_collection('t1')")
    repo.settings(f'''
        [development.services.orders]
        database_url = "{host}/"
        database = "{name}"
    ''')
    assert repo.cli("migrate").code == 0
    assert "t1" in database(mongo_url).list_collection_names()


def test_a_url_without_a_database_is_bad_input(repo: Monorepo) -> None:
    repo.mongo_revision("orders", "0001")
    mongo_service(repo, "mongodb://localhost:27017")
    result = repo.cli("migrate")
    assert result.code == 2
    assert "orders" in result.stderr and "names no database" in result.stderr


def test_a_malformed_url_is_bad_input(repo: Monorepo) -> None:
    repo.mongo_revision("orders", "0001")
    mongo_service(repo, "mongodb://localhost:99999/db")
    result = repo.cli("showmigrations")
    assert result.code == 2 and "not a valid MongoDB URL" in result.stderr


def test_an_unreachable_server_is_exit_4_without_its_password(repo: Monorepo) -> None:
    repo.mongo_revision("orders", "0001")
    mongo_service(repo, "mongodb://ncm:s3cret-pw@127.0.0.1:9/orders",
                  extra="[development.connect]\nretries = 1\nmax_wait_s = 1.0\ntimeout_s = 0.2\n")
    result = repo.cli("showmigrations")
    assert result.code == 4, result.output
    assert "orders" in result.stderr and "s3cret-pw" not in result.output


def test_server_info(repo: Monorepo, mongo_url: str) -> None:
    repo.mongo_revision("orders", "0001")
    mongo_service(repo, mongo_url)
    for backend in opened(repo):
        info = backend.server_info()
        extra = dict(info.extra)
    assert info.server_version.startswith("mongodb ") and info.latency_ms >= 0
    assert extra["topology"] in ("standalone", "replica set", "sharded")
    assert extra["transactions"] == ("yes" if extra["topology"] != "standalone" else "no")
    assert extra["database"] == url_database(mongo_url)
    assert info.can_create is True


# -- the lease -------------------------------------------------------------------------


def test_lease_length_comes_from_settings_and_a_live_holder_renews_it(repo: Monorepo, mongo_url: str) -> None:
    # upgrade() outlasts three leases; it copies the lease document as it stands at its end.
    repo.mongo_revision("orders", "0001", extra="import time", upgrade=f"""
        time.sleep(1.6)
        db.probe.insert_one(db[{LOCK_COLLECTION!r}].find_one({{"_id": "orders"}}))
    """)
    mongo_service(repo, mongo_url, extra="[development.lock]\nlease_s = 0.5\n")
    assert repo.cli("migrate").code == 0
    lease = database(mongo_url).probe.find_one()
    assert lease["owner"]["token"] and lease["owner"]["pid"] > 0
    assert lease["renewed_at"] > lease["acquired_at"]
    assert (lease["expires_at"] - lease["renewed_at"]).total_seconds() == pytest.approx(0.5, abs=0.01)
    assert database(mongo_url)[LOCK_COLLECTION].count_documents({}) == 0  # released


def test_a_held_lease_is_exit_3_naming_its_holder(repo: Monorepo, mongo_url: str) -> None:
    repo.mongo_revision("orders", "0001")
    mongo_service(repo, mongo_url, extra="[development.lock]\ntimeout_s = 0.3\n")
    assert Lease(database(mongo_url)[LOCK_COLLECTION], "orders", 60.0).try_acquire()
    result = repo.cli("migrate")
    assert result.code == 3
    assert "held by a runner on host" in result.stderr


def test_a_lost_lease_stops_before_the_next_step(repo: Monorepo, mongo_url: str) -> None:
    for n in (1, 2):
        repo.mongo_revision("orders", f"000{n}", down=None if n == 1 else "0001",
                            upgrade=f"db.create_collection('t{n}')")
    mongo_service(repo, mongo_url)
    project = load_project(repo.root)
    steps = [Step("orders", "0001", "up"), Step("orders", "0002", "up")]
    for backend in opened(repo):
        with backend.lock(1.0):
            backend.db[LOCK_COLLECTION].update_one({"_id": "orders"}, {"$set": {"owner.token": "thief"}})
            with pytest.raises(LockLost, match="another runner took the migration lease"):
                backend.apply(steps, project.revisions["orders"], run_context("development"), False,
                              lambda *_: None)
    assert "t1" not in database(mongo_url).list_collection_names()


# -- exactly once, even past a broken lock ---------------------------------------------


def test_a_second_application_fails_even_if_two_runners_raced_past_the_lock(
    repo: Monorepo, mongo_url: str
) -> None:
    repo.mongo_revision("orders", "0001", upgrade="db.runs.insert_one({'rev': '0001'})",
                        downgrade="db.runs.insert_one({'rev': '-0001'})")
    mongo_service(repo, mongo_url)
    project = load_project(repo.root)
    revisions = project.revisions["orders"]
    ctx = run_context("development")
    up, down = [Step("orders", "0001", "up")], [Step("orders", "0001", "down")]
    first, second = opened(repo), opened(repo)
    a, b = next(first), next(second)
    try:
        # Both read the state before either applies: both think 0001 is pending.
        assert not a.read_state(revisions).applied and not b.read_state(revisions).applied
        assert [r.outcome for r in a.apply(up, revisions, ctx, False, lambda *_: None)] == ["applied"]
        with pytest.raises(LockLost, match="was applied by another runner"):
            b.apply(up, revisions, ctx, False, lambda *_: None)
        assert [r.outcome for r in a.apply(down, revisions, ctx, False, lambda *_: None)] == ["reverted"]
        with pytest.raises(LockLost, match="reverted"):
            b.apply(down, revisions, ctx, False, lambda *_: None)
    finally:
        first.close()
        second.close()
    assert [d["rev"] for d in database(mongo_url).runs.find()] == ["0001", "-0001"]
    ledger = database(mongo_url).ncm_migrations.find({}, {"_id": 0, "status": 1}).sort("seq", 1)
    assert [x["status"] for x in ledger] == ["applied", "reverted"]  # the losers wrote nothing


def test_ledger_sequence_is_unique_per_service(repo: Monorepo, mongo_url: str) -> None:
    repo.mongo_revision("orders", "0001")
    mongo_service(repo, mongo_url)
    assert repo.cli("migrate").code == 0
    ledger = database(mongo_url).ncm_migrations
    row = ledger.find_one({}, {"_id": 0})
    with pytest.raises(DuplicateKeyError):
        ledger.insert_one(dict(row))


# -- failures, dirty marks, repair, transactions -----------------------------------------


def test_a_failure_marks_the_service_dirty_until_repair(repo: Monorepo, mongo_url: str) -> None:
    path = repo.mongo_revision("orders", "0001",
                               upgrade="db.create_collection('t1')\nraise ValueError('half done')")
    mongo_service(repo, mongo_url)
    assert repo.cli("migrate").code == 1
    status = json.loads(repo.cli("showmigrations", "--json").stdout)["services"][0]
    assert status["dirty"] == "0001"
    assert database(mongo_url)[MARKERS].count_documents({}) == 0  # the claim was given back
    refused = repo.cli("migrate")
    assert refused.code == 1 and "dirty" in refused.stderr
    # The operator finishes the job by hand, makes the revision re-runnable, and repairs.
    path.write_text(mongo_revision_file(
        "0001", upgrade="if 't1' not in db.list_collection_names():\n    db.create_collection('t1')"))
    repaired = repo.cli("repair", "orders")
    assert repaired.code == 0, repaired.output
    assert json.loads(repo.cli("showmigrations", "--json").stdout)["services"][0]["dirty"] is None
    assert repo.cli("migrate").code == 0
    assert database(mongo_url)[MARKERS].find_one({"_id": "orders:0001"})["state"] == "applied"


def test_transactional_revision_runs_without_a_transaction_on_a_standalone_server(
    repo: Monorepo, mongo_url: str
) -> None:
    repo.mongo_revision("orders", "0001", transactional=True, upgrade="db.t.insert_one({'x': 1})")
    mongo_service(repo, mongo_url)
    for backend in opened(repo):
        if backend.supports_transactions():
            pytest.skip("the server is a replica set")
    result = repo.cli("migrate")
    assert result.code == 0 and "asks for a transaction" in result.stderr
    assert database(mongo_url).t.count_documents({}) == 1


def test_transactional_revisions_record_their_attempts_as_transactional(
    repo: Monorepo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The transaction's code path, on a fake replica set whose transactions roll nothing
    back: what it records (the atomicity itself is tested on a real server, below)."""
    from mongo_fake import FakeServer

    monkeypatch.setattr(mongo_backend, "client_factory", FakeServer(replica_set=True).client)
    url = "mongodb://localhost:27017/orders"
    repo.mongo_revision("orders", "0001", transactional=True, upgrade="db.t.insert_one({'x': 1})")
    path = repo.mongo_revision("orders", "0002", down="0001", transactional=True,
                               upgrade="raise ValueError('no')")
    mongo_service(repo, url)
    result = repo.cli("migrate")
    assert result.code == 1 and "asks for a transaction" not in result.stderr
    ledger = list(database(url).ncm_migrations.find().sort("seq", 1))
    assert [(d["revision"], d["status"], d["transactional"]) for d in ledger] == [
        ("0001", "applied", True), ("0002", "failed", True)]
    status = json.loads(repo.cli("showmigrations", "--json").stdout)["services"][0]
    assert status["dirty"] is None  # a failed transaction leaves nothing to repair
    assert database(url)[MARKERS].count_documents({"state": "applied"}) == 1
    path.write_text(mongo_revision_file("0002", down="0001", transactional=True))
    assert repo.cli("migrate").code == 0


@needs_server
def test_a_failed_transactional_revision_leaves_nothing_and_no_dirty_mark(
    repo: Monorepo, mongo_url: str
) -> None:
    repo.mongo_revision("orders", "0001", transactional=True,
                        upgrade="db.t.insert_one({'x': 1})\nraise ValueError('no')")
    mongo_service(repo, mongo_url)
    for backend in opened(repo):
        if not backend.supports_transactions():
            pytest.skip("transactions need a replica set")
    assert repo.cli("migrate").code == 1
    db = database(mongo_url)
    assert db.t.count_documents({}) == 0 and db[MARKERS].count_documents({}) == 0
    status = json.loads(repo.cli("showmigrations", "--json").stdout)["services"][0]
    assert status["dirty"] is None
    assert [(r["status"]) for r in json.loads(repo.cli("history", "--json").stdout)] == ["failed"]


# -- mongo_ops ---------------------------------------------------------------------------


PEOPLE = mongo_ops.json_schema({"name": {"bsonType": "string"}, "age": {"bsonType": "int"}},
                               required=["name"])


def test_validators_can_be_set_and_put_back(db: Any) -> None:
    mongo_ops.create_collection(db, "people", PEOPLE)
    first = mongo_ops.get_validator(db, "people")
    assert first.validator == PEOPLE and first.level == "strict" and first.action == "error"
    stricter = mongo_ops.json_schema({"name": {"bsonType": "string"}}, required=["name", "age"])
    previous = mongo_ops.set_validator(db, "people", stricter, action="warn")
    assert previous == first
    assert mongo_ops.get_validator(db, "people").validator == stricter
    mongo_ops.set_validator(db, "people", previous)
    assert mongo_ops.get_validator(db, "people") == first
    mongo_ops.drop_collection(db, "people")
    assert "people" not in db.list_collection_names()


@needs_server
def test_the_server_enforces_the_validator(db: Any) -> None:
    mongo_ops.create_collection(db, "people", PEOPLE)
    with pytest.raises(WriteError):
        db.people.insert_one({"age": 3})
    previous = mongo_ops.set_validator(db, "people", None)
    db.people.insert_one({"age": 3})
    mongo_ops.set_validator(db, "people", previous)
    with pytest.raises(WriteError):
        db.people.insert_one({"age": 4})


def test_indexes_unique_and_ttl(db: Any) -> None:
    name = mongo_ops.create_index(db, "sessions", "token", unique=True)
    mongo_ops.create_index(db, "sessions", "seen_at", name="ttl_seen", ttl_s=3600)
    mongo_ops.create_index(db, "sessions", [("user", 1), ("seen_at", -1)], name="ix_user_seen",
                           partial={"user": {"$exists": True}})
    info = db.sessions.index_information()
    assert info[name]["unique"] is True and info["ttl_seen"]["expireAfterSeconds"] == 3600
    assert info["ix_user_seen"]["key"] == [("user", 1), ("seen_at", -1)]
    db.sessions.insert_one({"token": "a"})
    with pytest.raises(DuplicateKeyError):
        db.sessions.insert_one({"token": "a"})
    mongo_ops.drop_index(db, "sessions", "ttl_seen")
    assert "ttl_seen" not in db.sessions.index_information()


def test_rename_field_is_its_own_inverse(db: Any) -> None:
    db.people.insert_many([{"_id": 1, "nm": "a"}, {"_id": 2, "nm": "b"}, {"_id": 3, "other": 1}])
    assert mongo_ops.rename_field(db, "people", "nm", "name") == 2
    assert db.people.find_one({"_id": 1}) == {"_id": 1, "name": "a"}
    assert mongo_ops.rename_field(db, "people", "name", "nm") == 2
    assert db.people.find_one({"_id": 2}) == {"_id": 2, "nm": "b"}


def test_batched_update_in_id_ranges_with_progress(db: Any) -> None:
    db.items.insert_many([{"_id": n, "n": n, "kind": "odd" if n % 2 else "even"} for n in range(250)])
    seen: list[mongo_ops.Progress] = []
    changed = mongo_ops.batched_update(db, "items", {"$set": {"flag": True}}, filter={"kind": "even"},
                                       batch_size=40, progress=seen.append)
    assert changed == 125
    assert [p.done for p in seen] == [40, 80, 120, 125] and seen[-1].batches == 4
    assert db.items.count_documents({"flag": True}) == 125
    assert db.items.count_documents({"flag": True, "kind": "odd"}) == 0
    doubled = mongo_ops.batched_update(db, "items", lambda d: {"$set": {"twice": d["n"] * 2}},
                                       projection={"n": 1}, batch_size=100)
    assert doubled == 250 and db.items.find_one({"_id": 7})["twice"] == 14
    with pytest.raises(ValueError):
        mongo_ops.batched_update(db, "items", {"$set": {"x": 1}}, batch_size=0)


def test_seeds_are_idempotent_and_undone_by_unseed(db: Any) -> None:
    docs = [{"_id": "admin", "level": 3}, {"_id": "viewer", "level": 1}]
    assert mongo_ops.seed(db, "roles", docs) == 2
    db.roles.update_one({"_id": "admin"}, {"$set": {"level": 9}})
    assert mongo_ops.seed(db, "roles", docs) == 0
    assert db.roles.count_documents({}) == 2 and db.roles.find_one({"_id": "admin"})["level"] == 9
    mongo_ops.seed(db, "roles", docs, overwrite=True)
    assert db.roles.find_one({"_id": "admin"})["level"] == 3
    assert mongo_ops.seed(db, "roles", [{"_id": "guest"}]) == 1
    assert mongo_ops.unseed(db, "roles", [*docs, {"_id": "guest"}]) == 3
    assert db.roles.count_documents({}) == 0


def test_batched_update_benchmark_smoke(db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    path = REPO / "benchmarks" / "mongo_batched_update.py"
    spec = importlib.util.spec_from_file_location("mongo_batched_update", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "mongo_batched_update", bench)
    spec.loader.exec_module(bench)
    for target in (bench.MemoryDatabase(), db):
        results = bench.run(target, 120, 50)  # raises if a document was not updated
        assert [m.batches for m in results] == [3, 3, 1]
        assert all(m.peak_bytes > 0 for m in results)


# -- backup and restore --------------------------------------------------------------------


def everything(db: Any) -> dict[str, Any]:
    """Each collection's options, indexes and documents (in _id order)."""
    out = {}
    for info in db.list_collections():
        name = info["name"]
        out[name] = {
            "options": info.get("options") or {},
            "indexes": db[name].index_information(),
            "docs": list(db[name].find().sort("_id", 1)),
        }
    return out


def test_backup_drop_restore_gives_identical_collections(
    repo: Monorepo, mongo_url: str, tmp_path: Path
) -> None:
    repo.mongo_revision("orders", "0001")
    mongo_service(repo, mongo_url)
    db = database(mongo_url)
    mongo_ops.create_collection(db, "people", PEOPLE, level="moderate")
    mongo_ops.create_index(db, "people", "name", unique=True)
    mongo_ops.create_index(db, "people", "seen_at", name="ttl_seen", ttl_s=86400)
    now = dt.datetime.now(dt.UTC).replace(microsecond=6000)  # the TTL index keeps it a day
    db.people.insert_many([
        {"_id": bson.ObjectId(), "name": "ann", "age": 41, "big": Int64(2**40), "seen_at": now,
         "price": Decimal128(Decimal("12.34")), "tags": ["a", "b"], "address": {"city": "Oslo"},
         "blob": bson.Binary(b"\x00\x01", 0)},
        {"_id": bson.ObjectId(), "name": "bob", "ratio": 0.5, "none": None},
    ])
    mongo_ops.create_collection(db, "empty")
    config = load_project(repo.root).service("orders")
    before = everything(db)

    assert Lease(db[LOCK_COLLECTION], "orders", 60.0).try_acquire()
    files = backup_mongo(config, tmp_path / "backup")  # the lease is left out
    db.drop_collection(LOCK_COLLECTION)
    folder = tmp_path / "backup" / str(url_database(mongo_url))
    assert {p.relative_to(folder).as_posix() for p in files} == {
        "people.bson", "people.metadata.json", "empty.bson", "empty.metadata.json"}
    meta = bson.json_util.loads((folder / "people.metadata.json").read_text())
    assert meta["collectionName"] == "people" and meta["options"]["validator"] == PEOPLE
    assert {ix["name"] for ix in meta["indexes"]} == {"_id_", "name_1", "ttl_seen"}

    for name in db.list_collection_names():
        db.drop_collection(name)
    db.stray.insert_one({"y": 1})  # restoring replaces the database: this goes
    lease = Lease(db[LOCK_COLLECTION], "orders", 60.0)
    assert lease.try_acquire()  # a runner's live lease is not data: it stays
    restore_mongo(config, tmp_path / "backup")
    assert db[LOCK_COLLECTION].find_one()["owner"]["token"] == lease.owner.token
    db.drop_collection(LOCK_COLLECTION)
    after = everything(db)
    for name in before:
        for part in ('options', 'indexes', 'docs'):
            assert after[name][part] == before[name][part], (name, part)
    assert after == before
    ann = next(d for d in after["people"]["docs"] if d["name"] == "ann")
    assert [type(v) for v in ann.values()] == [  # Int64 stays Int64, and so on
        type(v) for v in next(d for d in before["people"]["docs"] if d["name"] == "ann").values()]
    assert type(ann["big"]) is Int64 and type(ann["price"]) is Decimal128


def test_backup_and_restore_commands(repo: Monorepo, mongo_url: str, tmp_path: Path) -> None:
    repo.mongo_revision("orders", "0001", upgrade="db.create_collection('t1')\ndb.t1.insert_one({'a': 1})",
                        downgrade="db.drop_collection('t1')")
    mongo_service(repo, mongo_url)
    assert repo.cli("migrate").code == 0
    backed_up = repo.cli("backup", "orders", "-o", str(tmp_path / "bk"))
    assert backed_up.code == 0, backed_up.output
    manifest = json.loads((tmp_path / "bk" / "manifest.json").read_text())
    assert manifest["dialect"] == "mongodb" and manifest["heads"] == ["0001"]
    assert f"{url_database(mongo_url)}/t1.bson" in manifest["files"]
    assert repo.cli("migrate", "orders", "zero").code == 0
    restored = repo.cli("restore", "orders", str(tmp_path / "bk"), "--yes")
    assert restored.code == 0, restored.output
    assert [d["a"] for d in database(mongo_url).t1.find()] == [1]
    assert json.loads(repo.cli("showmigrations", "--json").stdout)["services"][0]["current"] == ["0001"]


def test_restore_reads_a_backup_of_a_database_with_another_name(mongo_url: str, tmp_path: Path) -> None:
    db = database(mongo_url)
    db.things.insert_one({"_id": 1})
    name = str(url_database(mongo_url))
    config = ServiceConfig(name="orders", root=tmp_path, backend="mongo", database_url=mongo_url)
    backup_mongo(config, tmp_path / "b")
    shutil.move(tmp_path / "b" / name, tmp_path / "b" / "production_name")
    db.things.delete_many({})
    restore_mongo(config, tmp_path / "b")
    assert list(db.things.find()) == [{"_id": 1}]


# -- templates, the example service, and a plan across backends ---------------------------------


@pytest.mark.parametrize("kind", ["schema", "data", "index", "seed", "merge"])
def test_mongo_templates_render_valid_revisions(tmp_path: Path, kind: str) -> None:
    config = ServiceConfig(name="notifications", root=tmp_path, backend="mongo",
                           database_url="mongodb://localhost/notifications")
    text = RevisionText(message="Add things", revision="0002_things", migration_type=kind,
                        service="notifications", backend="mongo", dialect="mongo",
                        create_date="2026-01-01", down_revision=("0001_initial",),
                        requires=("users:0002_add_email",))
    path = tmp_path / "0002_things.py"
    path.write_text(render_revision(config, tmp_path, text))
    header = read_revision("notifications", path)
    assert (header.revision, header.down_revisions, header.requires, header.migration_type) == (
        "0002_things", ("0001_initial",), ("users:0002_add_email",), kind)
    assert {"upgrade", "downgrade"} <= header.defines
    namespace: dict[str, Any] = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    assert namespace["transactional"] is False
    assert namespace["upgrade"].__code__.co_varnames[:1] == ("db",)


def copy_example_services(repo: Monorepo) -> None:
    for name in ("users", "billing", "catalog", "notifications"):
        shutil.copytree(REPO / "services" / name, repo.root / "services" / name,
                        ignore=shutil.ignore_patterns("__pycache__"))


def test_notifications_example_service(repo: Monorepo, mongo_url: str, tmp_path: Path) -> None:
    copy_example_services(repo)
    sqlite = {s: f"sqlite:///{tmp_path / s}.db" for s in ("users", "billing", "catalog")}
    repo.urls({**sqlite, "notifications": mongo_url})
    steps = json.loads(repo.cli("migrate", "--plan", "--json").stdout)["steps"]
    order = [f"{s['service']}:{s['revision']}" for s in steps]
    assert order.index("users:0002_add_email") < order.index("notifications:0001_initial")
    result = repo.cli("migrate")
    assert result.code == 0, result.output
    db = database(mongo_url)
    assert {"notifications", "templates"} <= set(db.list_collection_names())
    assert mongo_ops.get_validator(db, "notifications").validator["$jsonSchema"]["required"] == [
        "user_id", "email", "body", "created_at"]
    indexes = set(db.notifications.index_information())
    assert {"ix_user_created", "ttl_read_at", "ix_unread_by_user"} <= indexes
    assert db.templates.count_documents({}) == 2
    assert repo.cli("migrate", "notifications", "zero").code == 0
    assert not {"notifications", "templates"} & set(db.list_collection_names())


def test_the_example_service_is_left_out_where_there_is_no_mongodb() -> None:
    result = Monorepo(REPO).cli("services", "--json")
    notifications = next(s for s in json.loads(result.stdout) if s["name"] == "notifications")
    assert notifications["url"] == "" and notifications["enabled"] is True
    docker = json.loads(Monorepo(REPO).cli("--env", "docker", "services", "--json").stdout)
    assert next(s for s in docker if s["name"] == "notifications")["backend"] == "mongo"


def test_a_plan_interleaving_mongodb_and_sql_runs_in_order(
    repo: Monorepo, mongo_url: str, sqlite_url: str, tmp_path: Path
) -> None:
    """users (SQL) 0001 <- notifications (MongoDB) 0001 <- users 0002 <- notifications 0002."""
    log = tmp_path / "order.log"
    note = f"open({str(log)!r}, 'a').write"
    create = "op.create_table('users_t', sa.Column('id', sa.Integer, primary_key=True))"
    repo.revision("users", "0001", upgrade=f"{note}('users:0001\\n')\n{create}")
    repo.mongo_revision("notifications", "0001", requires=["users:0001"],
                        upgrade=f"{note}('notifications:0001\\n')\ndb.create_collection('inbox')")
    repo.revision("users", "0002", down="0001", requires=["notifications:0001"],
                  upgrade=f"{note}('users:0002\\n')")
    repo.mongo_revision("notifications", "0002", down="0001", requires=["users:0002"],
                        upgrade=f"{note}('notifications:0002\\n')")
    repo.urls({"users": sqlite_url, "notifications": mongo_url})
    expected = ["users:0001", "notifications:0001", "users:0002", "notifications:0002"]
    plan = json.loads(repo.cli("migrate", "--plan", "--json").stdout)["steps"]
    assert [f"{s['service']}:{s['revision']}" for s in plan] == expected
    result = repo.cli("migrate")
    assert result.code == 0, result.output
    assert log.read_text().split() == expected
    rows = json.loads(repo.cli("history", "--json").stdout)
    assert {(r["service"], r["revision"], r["status"]) for r in rows} == {
        (k.split(":")[0], k.split(":")[1], "applied") for k in expected}
    # One run, one run id, in SQL's ledger and MongoDB's alike.
    assert len({r["run_id"] for r in rows}) == 1 and rows[0]["run_id"]
    refused = repo.cli("rollback", "users", "0001")
    assert refused.code == 1 and "notifications:0002" in refused.stderr


def test_lease_renewal_thread_stops_with_the_lock(repo: Monorepo, mongo_url: str) -> None:
    repo.mongo_revision("orders", "0001")
    mongo_service(repo, mongo_url, extra="[development.lock]\nlease_s = 0.3\n")
    for backend in opened(repo):
        with backend.lock(1.0):
            assert any(t.name == "ncm-lease-orders" for t in threading.enumerate())
        assert not any(t.name == "ncm-lease-orders" for t in threading.enumerate())
        assert backend.db[LOCK_COLLECTION].count_documents({}) == 0


def test_connection_errors_are_one_short_line() -> None:
    """pymongo's server-selection errors carry a long topology description; retry lines
    and the final error show only what went wrong."""
    from ncm_migrate.backends.mongo.run import short_error

    raw = ("localhost:27017: [Errno 111] Connection refused (configured timeouts: "
           "socketTimeoutMS: 20000.0ms, connectTimeoutMS: 20000.0ms), Timeout: 5.0s, "
           "Topology Description: <TopologyDescription id: 1, topology_type: Unknown>")
    assert short_error(RuntimeError(raw)) == "localhost:27017: [Errno 111] Connection refused, Timeout: 5.0s"
