"""Operations for MongoDB revision files, each with its inverse where one exists.

Collections with a JSON-schema validator (`create_collection` / `drop_collection`),
validator changes (`set_validator`, which returns the previous one for `downgrade`),
indexes (`create_index` / `drop_index`, unique and TTL), `rename_field` (its own inverse),
`batched_update` over large collections in bounded memory, and idempotent seeds
(`seed` / `unseed`). Written for a real server; see the README for what mongomock lacks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pymongo import ASCENDING, UpdateOne
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import OperationFailure

log = logging.getLogger(__name__)

Document = dict[str, Any]
Update = Mapping[str, Any] | Sequence[Mapping[str, Any]]
NAMESPACE_NOT_FOUND = 26


@dataclass(frozen=True)
class Validator:
    """A collection's validation settings, as `collMod` takes them."""

    validator: Mapping[str, Any] | None = None
    level: str = "strict"
    action: str = "error"


@dataclass(frozen=True)
class Progress:
    """How far a `batched_update` has got."""

    collection: str
    done: int
    batches: int
    last_id: Any
    elapsed_s: float


def json_schema(properties: Mapping[str, Any], required: Sequence[str] = (), **extra: Any) -> Document:
    """A `$jsonSchema` validator for `create_collection` and `set_validator`."""
    schema: Document = {"bsonType": "object", "properties": dict(properties), **extra}
    if required:
        schema["required"] = list(required)
    return {"$jsonSchema": schema}


def create_collection(
    db: Database[Document],
    name: str,
    validator: Mapping[str, Any] | None = None,
    *,
    level: str = "strict",
    action: str = "error",
    **options: Any,
) -> Collection[Document]:
    """Create `name`, with `validator` (e.g. `json_schema(...)`) if given; inverse:
    `drop_collection`."""
    if validator is not None:
        options.update(validator=dict(validator), validationLevel=level, validationAction=action)
    return db.create_collection(name, **options)


def drop_collection(db: Database[Document], name: str) -> None:
    """Drop `name` (no error if it does not exist)."""
    db.drop_collection(name)


def get_validator(db: Database[Document], name: str) -> Validator:
    """`name`'s validation settings now (an empty `Validator` when it has none)."""
    for info in db.list_collections(filter={"name": name}):
        options = info.get("options") or {}
        return Validator(
            validator=options.get("validator") or None,
            level=options.get("validationLevel", "strict"),
            action=options.get("validationAction", "error"),
        )
    raise OperationFailure(f"collection {db.name}.{name} does not exist", NAMESPACE_NOT_FOUND)


def set_validator(
    db: Database[Document],
    name: str,
    validator: Mapping[str, Any] | Validator | None,
    *,
    level: str = "strict",
    action: str = "error",
) -> Validator:
    """Replace `name`'s validator (`collMod`); returns the previous settings, which
    `set_validator(db, name, previous)` puts back in `downgrade`."""
    previous = get_validator(db, name)
    if isinstance(validator, Validator):
        spec, level, action = validator.validator, validator.level, validator.action
    else:
        spec = validator
    db.command({
        "collMod": name,
        "validator": dict(spec or {}),
        "validationLevel": level,
        "validationAction": action,
    })
    return previous


def create_index(
    db: Database[Document],
    collection: str,
    keys: str | Sequence[tuple[str, Any]],
    *,
    name: str | None = None,
    unique: bool = False,
    ttl_s: int | None = None,
    partial: Mapping[str, Any] | None = None,
    **options: Any,
) -> str:
    """Create an index (unique, TTL with `ttl_s`, partial with a filter); returns its name.
    Inverse: `drop_index(db, collection, name)`."""
    spec = [(keys, ASCENDING)] if isinstance(keys, str) else list(keys)
    if name is not None:
        options["name"] = name
    if unique:
        options["unique"] = True
    if ttl_s is not None:
        options["expireAfterSeconds"] = int(ttl_s)
    if partial is not None:
        options["partialFilterExpression"] = dict(partial)
    return db[collection].create_index(spec, **options)


def drop_index(db: Database[Document], collection: str, name: str) -> None:
    """Drop the index `name` (no error if it is already gone)."""
    try:
        db[collection].drop_index(name)
    except OperationFailure as exc:
        if exc.code not in (27, NAMESPACE_NOT_FOUND):  # IndexNotFound, NamespaceNotFound
            raise


def rename_field(
    db: Database[Document], collection: str, old: str, new: str,
    filter: Mapping[str, Any] | None = None,
) -> int:
    """Rename a field in every document that has it; the count changed. Its inverse is
    `rename_field(db, collection, new, old)`."""
    query = {**(filter or {}), old: {"$exists": True}}
    result = db[collection].update_many(query, {"$rename": {old: new}})
    return result.modified_count


def batched_update(
    db: Database[Document],
    collection: str,
    update: Update | Callable[[Document], Update | None],
    *,
    filter: Mapping[str, Any] | None = None,
    batch_size: int = 1000,
    projection: Mapping[str, Any] | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> int:
    """Update every document matching `filter`, `batch_size` at a time, in `_id` order.

    Memory stays bounded by one batch whatever the collection's size. `update` is an update
    document or pipeline applied to each batch's `_id` range, or a function from a document
    (with the fields in `projection`) to its update (None skips it), sent with `bulk_write`.
    Documents' `_id`s must be of one BSON type (ObjectId, as usual): a range query does not
    cross types. Each batch is logged and passed to `progress`; returns the count modified.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    coll = db[collection]
    per_doc = callable(update)
    fields = dict(projection) if per_doc and projection is not None else None
    if fields is None:
        fields = {"_id": 1} if not per_doc else None
    started = time.monotonic()
    last: Any = None
    done = modified = batches = 0
    while True:
        query = dict(filter or {})
        if last is not None:
            query = {"$and": [query, {"_id": {"$gt": last}}]} if query else {"_id": {"$gt": last}}
        docs = list(coll.find(query, fields).sort("_id", ASCENDING).limit(batch_size))
        if not docs:
            break
        first_id, last_id = docs[0]["_id"], docs[-1]["_id"]
        if per_doc:
            assert callable(update)
            ops = [UpdateOne({"_id": d["_id"]}, u) for d in docs if (u := update(d)) is not None]
            if ops:
                modified += coll.bulk_write(ops, ordered=False).modified_count
        else:
            window = {"_id": {"$gte": first_id, "$lte": last_id}}
            ranged = {"$and": [dict(filter), window]} if filter else window
            modified += coll.update_many(ranged, update).modified_count  # type: ignore[arg-type]
        done += len(docs)
        batches += 1
        last = last_id
        state = Progress(collection, done, batches, last_id, time.monotonic() - started)
        log.info("%s: %d documents updated in %d batches (%.1fs)", collection, done, batches,
                 state.elapsed_s)
        if progress is not None:
            progress(state)
        if len(docs) < batch_size:
            break
    return modified


def seed(
    db: Database[Document],
    collection: str,
    documents: Iterable[Mapping[str, Any]],
    key: str | Sequence[str] = "_id",
    *,
    overwrite: bool = False,
) -> int:
    """Upsert `documents` by `key`, so running twice adds nothing; the count inserted.

    Existing documents keep their values unless `overwrite`. Inverse: `unseed`.
    """
    keys = [key] if isinstance(key, str) else list(key)
    ops = []
    for doc in documents:
        match = {k: doc[k] for k in keys}
        rest = {k: v for k, v in doc.items() if k not in keys}
        ops.append(UpdateOne(match, {"$set" if overwrite else "$setOnInsert": rest}, upsert=True)
                   if rest else UpdateOne(match, {"$setOnInsert": match}, upsert=True))
    if not ops:
        return 0
    return db[collection].bulk_write(ops, ordered=True).upserted_count


def unseed(
    db: Database[Document],
    collection: str,
    documents: Iterable[Mapping[str, Any]],
    key: str | Sequence[str] = "_id",
) -> int:
    """Delete the documents `seed` wrote (matched by `key`); the count deleted."""
    keys = [key] if isinstance(key, str) else list(key)
    matches = [{k: doc[k] for k in keys} for doc in documents]
    if not matches:
        return 0
    return db[collection].delete_many({"$or": matches}).deleted_count
