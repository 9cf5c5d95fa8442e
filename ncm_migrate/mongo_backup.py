"""Backup and restore of one MongoDB database without mongodump, in mongodump's layout.

`<dir>/<db>/<collection>.bson` holds the documents back to back, byte for byte as the server
sent them, and `<collection>.metadata.json` the collection's options (validator, capped,
collation, view pipeline, ...), indexes and type in canonical Extended JSON, as mongodump
writes them (so `mongorestore` reads these folders too). Restoring replaces the database:
every collection is dropped, then each is created with its options, filled, and indexed.
The migration lock (`ncm_migration_lock`) is a runner's live state, not data: it is
neither backed up nor touched by a restore.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import bson
from bson import json_util
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo import IndexModel
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import PyMongoError

from .backends.mongo import Document, connect, database_name
from .backends.mongo_lease import COLLECTION as LOCK_COLLECTION
from .errors import BackupFailed, BackupInvalid
from .model import ServiceConfig

log = logging.getLogger(__name__)

RAW: CodecOptions[RawBSONDocument] = CodecOptions(document_class=RawBSONDocument)
BATCH_DOCS = 1000
BATCH_BYTES = 8 * 1024 * 1024
_DERIVED_INDEX_KEYS = ("v", "ns")


def backup_mongo(config: ServiceConfig, out_dir: Path, connect_timeout_s: float = 5.0) -> list[Path]:
    """Write every collection of `config`'s database under `out_dir/<db>/`; the files written."""
    client = connect(config, connect_timeout_s)
    try:
        db = client[database_name(config)]
        folder = out_dir / db.name
        folder.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        for info in sorted(db.list_collections(), key=lambda i: str(i["name"])):
            name = str(info["name"])
            if name.startswith("system.") or name == LOCK_COLLECTION:
                continue
            written.extend(_dump_collection(db, info, folder))
            log.info("backed up %s.%s", db.name, name)
        return written
    except PyMongoError as exc:
        raise BackupFailed(f"Backup of service '{config.name}' failed: {exc}.") from None
    finally:
        client.close()


def _dump_collection(db: Database[Document], info: Mapping[str, Any], folder: Path) -> list[Path]:
    name = str(info["name"])
    kind = str(info.get("type", "collection"))
    meta: dict[str, Any] = {
        "indexes": [],
        "collectionName": name,
        "type": kind,
        "options": dict(info.get("options") or {}),
    }
    uuid = (info.get("info") or {}).get("uuid")
    if isinstance(uuid, bson.Binary):
        meta["uuid"] = uuid.hex()
    paths = []
    if kind != "view":
        # pymongo's stubs keep the database's document type; the codec makes them raw.
        coll = cast("Collection[RawBSONDocument]", db.get_collection(name, codec_options=RAW))
        meta["indexes"] = [dict(ix) for ix in db[name].list_indexes()]
        data = folder / f"{name}.bson"
        with data.open("wb") as fh:
            for doc in coll.find():
                fh.write(doc.raw)
        paths.append(data)
    metadata = folder / f"{name}.metadata.json"
    metadata.write_text(json_util.dumps(meta, json_options=json_util.CANONICAL_JSON_OPTIONS))
    paths.append(metadata)
    return paths


def restore_mongo(config: ServiceConfig, folder: Path, connect_timeout_s: float = 5.0) -> None:
    """Replace `config`'s database with the backup under `folder` (written by `backup_mongo`)."""
    source = _source_folder(config, folder)
    metas = []
    for path in sorted(source.glob("*.metadata.json")):
        try:
            metas.append(json_util.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise BackupInvalid(f"{path} is not valid mongodump metadata: {exc}.") from None
    client = connect(config, connect_timeout_s)
    try:
        db = client[database_name(config)]
        for name in db.list_collection_names():
            if not name.startswith("system.") and name != LOCK_COLLECTION:
                db.drop_collection(name)
        # Views last: they may read collections restored before them.
        for meta in sorted(metas, key=lambda m: (m.get("type") == "view", m["collectionName"])):
            _restore_collection(db, meta, source)
            log.info("restored %s.%s", db.name, meta["collectionName"])
    except PyMongoError as exc:
        raise BackupFailed(f"Restore of service '{config.name}' failed: {exc}.") from None
    finally:
        client.close()


def _source_folder(config: ServiceConfig, folder: Path) -> Path:
    """`folder/<db>`: the service's database name, else the only database in the backup."""
    own = folder / database_name(config)
    if own.is_dir():
        return own
    candidates = [d for d in folder.iterdir() if d.is_dir() and any(d.glob("*.metadata.json"))]
    if len(candidates) == 1:
        return candidates[0]
    raise BackupInvalid(
        f"{folder} holds no MongoDB backup of service '{config.name}': expected one folder "
        f"<db>/ with <collection>.metadata.json files, found {len(candidates)}."
    )


def _restore_collection(db: Database[Document], meta: dict[str, Any], source: Path) -> None:
    name = str(meta["collectionName"])
    db.create_collection(name, check_exists=False, **dict(meta.get("options") or {}))
    if meta.get("type") == "view":
        return
    coll = db.get_collection(name, codec_options=RAW)
    batch: list[RawBSONDocument] = []
    size = 0
    for raw in read_bson(source / f"{name}.bson"):
        batch.append(RawBSONDocument(raw))
        size += len(raw)
        if len(batch) >= BATCH_DOCS or size >= BATCH_BYTES:
            coll.insert_many(batch, ordered=True, bypass_document_validation=True)
            batch, size = [], 0
    if batch:
        coll.insert_many(batch, ordered=True, bypass_document_validation=True)
    models = [
        IndexModel(list(ix["key"].items()),
                   **{k: v for k, v in ix.items() if k not in ("key", *_DERIVED_INDEX_KEYS)})
        for ix in meta.get("indexes") or []
        if ix.get("name") != "_id_"
    ]
    if models:
        db[name].create_indexes(models)


def read_bson(path: Path) -> Iterator[bytes]:
    """The documents of a `.bson` file, one raw document at a time (bounded memory)."""
    if not path.is_file():
        return
    with path.open("rb") as fh:
        while True:
            head = fh.read(4)
            if not head:
                return
            length = int.from_bytes(head, "little")
            body = fh.read(length - 4)
            if len(head) < 4 or length < 5 or len(body) != length - 4:
                raise BackupInvalid(f"{path} is truncated or not a BSON file.")
            yield head + body
