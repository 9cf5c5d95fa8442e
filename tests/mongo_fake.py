"""mongomock's in-memory server, made to answer like a standalone MongoDB where it does not.

Clients made by `FakeServer.client` share one store, as clients of one server do. On top of
mongomock: each operation runs atomically (a server executes one write at a time per
document; mongomock's check-then-insert is not thread-safe), the commands ncm-migrate uses
(`hello`, `connectionStatus`, `create` with options, `collMod`), `list_collections` with
each collection's options, and RawBSONDocument reads and writes. Validators are stored and
reported, never enforced; there are no sessions or transactions (the server says it is not
a replica set). Tests that need those run on a real server (NCM_TEST_MONGO_URL).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import bson
import mongomock
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from mongomock.store import ServerStore
from pymongo import DeleteMany, DeleteOne, InsertOne, ReplaceOne, UpdateMany, UpdateOne
from pymongo.errors import CollectionInvalid, OperationFailure


class FakeServer:
    """One in-memory MongoDB server for a test."""

    def __init__(self, replica_set: bool = False) -> None:
        self.replica_set = replica_set
        self.store = ServerStore()
        self.lock = threading.RLock()
        self.options: dict[tuple[str, str], dict[str, Any]] = {}

    def client(self, url: str, timeout_s: float = 5.0) -> FakeClient:
        del timeout_s
        return FakeClient(self, mongomock.MongoClient(url, tz_aware=True, _store=self.store))


class FakeClient:
    def __init__(self, server: FakeServer, inner: mongomock.MongoClient) -> None:
        self.server = server
        self.inner = inner

    def __getitem__(self, name: str) -> FakeDatabase:
        return FakeDatabase(self, name)

    def get_database(self, name: str) -> FakeDatabase:
        return FakeDatabase(self, name)

    @property
    def admin(self) -> FakeDatabase:
        return FakeDatabase(self, "admin")

    def server_info(self) -> dict[str, Any]:
        return dict(self.inner.server_info())

    def list_database_names(self) -> list[str]:
        return list(self.inner.list_database_names())

    def drop_database(self, name: str) -> None:
        for coll in self[name].list_collection_names():
            self[name].drop_collection(coll)

    def start_session(self, **_kw: Any) -> FakeSession:
        if not self.server.replica_set:
            raise OperationFailure("Transaction numbers are only allowed on a replica set member", 20)
        return FakeSession()

    def close(self) -> None:
        return None


class FakeSession:
    """With `FakeServer(replica_set=True)`: a session whose transactions are only markers
    (nothing is rolled back): enough to drive the code path, not to test atomicity."""

    def __init__(self) -> None:
        self.transactions = 0

    def __enter__(self) -> FakeSession:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def bind(self, end_session: bool = True) -> contextlib.nullcontext[FakeSession]:
        return contextlib.nullcontext(self)

    def start_transaction(self) -> contextlib.nullcontext[FakeSession]:
        self.transactions += 1
        return contextlib.nullcontext(self)


class FakeDatabase:
    def __init__(self, client: FakeClient, name: str) -> None:
        self.client = client
        self.name = name
        self.inner = client.inner[name]

    @property
    def _server(self) -> FakeServer:
        return self.client.server

    def __getitem__(self, name: str) -> FakeCollection:
        return FakeCollection(self, name)

    def __getattr__(self, name: str) -> FakeCollection:
        if name.startswith("_"):
            raise AttributeError(name)
        return self[name]

    def get_collection(self, name: str, codec_options: Any = None, **_kw: Any) -> FakeCollection:
        raw = codec_options is not None and codec_options.document_class is RawBSONDocument
        return FakeCollection(self, name, raw=raw)

    def list_collection_names(self, **_kw: Any) -> list[str]:
        with self._server.lock:
            return sorted(self.inner.list_collection_names())

    def list_collections(
        self, filter: Mapping[str, Any] | None = None, **_kw: Any
    ) -> Iterator[dict[str, Any]]:
        wanted = (filter or {}).get("name")
        out = []
        for name in self.list_collection_names():
            if wanted is not None and name != wanted:
                continue
            out.append({
                "name": name, "type": "collection",
                "options": dict(self._server.options.get((self.name, name), {})),
                "info": {"readOnly": False},
                "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"},
            })
        return iter(out)

    def create_collection(self, name: str, check_exists: bool = True, **options: Any) -> FakeCollection:
        with self._server.lock:
            if name in self.inner.list_collection_names():
                raise CollectionInvalid(f"collection {name} already exists")
            self.inner.create_collection(name)
            self._server.options[(self.name, name)] = dict(options)
        return self[name]

    def drop_collection(self, name: str, **_kw: Any) -> None:
        with self._server.lock:
            self.inner.drop_collection(name)
            self._server.options.pop((self.name, name), None)

    def command(self, command: str | Mapping[str, Any], **kwargs: Any) -> dict[str, Any]:
        spec = {command: 1, **kwargs} if isinstance(command, str) else dict(command)
        verb = next(iter(spec))
        if verb == "ping":
            return {"ok": 1.0}
        if verb in ("hello", "isMaster", "ismaster"):
            hello = {"isWritablePrimary": True, "ismaster": True, "maxWireVersion": 13, "ok": 1.0}
            return {**hello, "setName": "rs0"} if self._server.replica_set else hello
        if verb == "connectionStatus":
            auth = {"authenticatedUsers": [], "authenticatedUserRoles": []}
            if spec.get("showPrivileges"):
                auth["authenticatedUserPrivileges"] = []
            return {"authInfo": auth, "ok": 1.0}
        if verb == "buildInfo":
            return self.client.server_info()
        if verb == "create":
            self.create_collection(spec.pop("create"), **spec)
            return {"ok": 1.0}
        if verb == "collMod":
            name = spec.pop("collMod")
            with self._server.lock:
                if name not in self.inner.list_collection_names():
                    raise OperationFailure(f"ns does not exist: {self.name}.{name}", 26)
                options = self._server.options.setdefault((self.name, name), {})
                options.update(spec)
            return {"ok": 1.0}
        raise NotImplementedError(f"the fake MongoDB server does not know the command {verb!r}")


class FakeCollection:
    """A mongomock collection whose every operation is atomic."""

    def __init__(self, db: FakeDatabase, name: str, raw: bool = False) -> None:
        self.database = db
        self.name = name
        self.raw = raw
        self.inner = db.inner[name]

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self.inner, attr)
        if not callable(value):
            return value
        lock = self.database.client.server.lock

        @functools.wraps(value)
        def atomic(*args: Any, **kwargs: Any) -> Any:
            with lock:
                return value(*args, **kwargs)

        return atomic

    def find(self, *args: Any, **kwargs: Any) -> _Cursor:
        return _Cursor(self.inner.find(*args, **kwargs), self.database.client.server.lock, self.raw)

    def insert_many(self, documents: Any, *args: Any, **kwargs: Any) -> Any:
        docs = [_plain(d) for d in documents]
        kwargs.pop("bypass_document_validation", None)  # validators are not enforced anyway
        with self.database.client.server.lock:
            return self.inner.insert_many(docs, *args, **kwargs)

    def insert_one(self, document: Any, *args: Any, **kwargs: Any) -> Any:
        with self.database.client.server.lock:
            return self.inner.insert_one(_plain(document), *args, **kwargs)

    def drop(self) -> None:
        self.database.drop_collection(self.name)

    def rename(self, new_name: str, **_kw: Any) -> None:
        """renameCollection: the collection's options go with it."""
        server = self.database._server
        with server.lock:
            names = self.database.inner.list_collection_names()
            if self.name not in names or new_name in names:
                raise OperationFailure(f"cannot rename {self.name} to {new_name}", 26)
            self.inner.rename(new_name)
            options = server.options.pop((self.database.name, self.name), None)
            if options is not None:
                server.options[(self.database.name, new_name)] = options

    def create_indexes(self, models: Any, **_kw: Any) -> list[str]:
        """mongomock's own keeps pymongo 4's key documents as dict_items: create each."""
        names = []
        with self.database.client.server.lock:
            for model in models:
                spec = dict(model.document)
                names.append(self.inner.create_index(list(spec.pop("key").items()), **spec))
        return names

    def bulk_write(self, requests: Any, ordered: bool = True, **_kw: Any) -> BulkResult:
        """mongomock's own bulk_write does not take pymongo 4.9+'s operations: run each."""
        result = BulkResult()
        with self.database.client.server.lock:
            for op in requests:
                result.add(op, self.inner)
        return result


@dataclass
class BulkResult:
    """What `bulk_write` answers, added up over its operations."""

    inserted_count: int = 0
    matched_count: int = 0
    modified_count: int = 0
    deleted_count: int = 0
    upserted_count: int = 0
    acknowledged: bool = True

    def add(self, op: Any, coll: Any) -> None:
        if isinstance(op, InsertOne):
            coll.insert_one(_plain(op._doc))
            self.inserted_count += 1
        elif isinstance(op, UpdateOne | UpdateMany | ReplaceOne):
            method = {UpdateOne: coll.update_one, UpdateMany: coll.update_many,
                      ReplaceOne: coll.replace_one}[type(op)]
            done = method(op._filter, op._doc, upsert=op._upsert)
            self.matched_count += done.matched_count
            self.modified_count += done.modified_count
            self.upserted_count += done.upserted_id is not None
        elif isinstance(op, DeleteOne | DeleteMany):
            method = coll.delete_one if isinstance(op, DeleteOne) else coll.delete_many
            self.deleted_count += method(op._filter).deleted_count
        else:
            raise NotImplementedError(f"the fake MongoDB server cannot bulk_write {op!r}")


class _Cursor:
    """mongomock's cursor, read in one go under the server's lock."""

    def __init__(self, inner: Any, lock: threading.RLock, raw: bool) -> None:
        self.inner = inner
        self.lock = lock
        self.raw = raw

    def sort(self, *args: Any, **kwargs: Any) -> _Cursor:
        self.inner = self.inner.sort(*args, **kwargs)
        return self

    def limit(self, n: int) -> _Cursor:
        self.inner = self.inner.limit(n)
        return self

    def __iter__(self) -> Iterator[Any]:
        with self.lock:
            docs = list(self.inner)
        if self.raw:
            return iter([RawBSONDocument(bson.encode(d)) for d in docs])
        return iter(docs)


def _plain(doc: Any) -> Any:
    """A document as the server stores it: through BSON (bytes, not Binary subtype 0; times
    in milliseconds), given an `_id` first as pymongo does."""
    if isinstance(doc, RawBSONDocument):
        return bson.decode(doc.raw, codec_options=_TZ_AWARE)
    doc.setdefault("_id", bson.ObjectId())
    return bson.decode(bson.encode(doc), codec_options=_TZ_AWARE)


_TZ_AWARE: CodecOptions[dict[str, Any]] = CodecOptions(tz_aware=True)
