"""Backup and restore of one MongoDB database without mongodump, in mongodump's layout.

`<dir>/<db>/<collection>.bson` holds the documents back to back, byte for byte as the server
sent them, and `<collection>.metadata.json` the collection's options (validator, capped,
collation, view pipeline, ...), indexes and type in canonical Extended JSON, as mongodump
writes them (so `mongorestore` reads these folders too). Restoring replaces the database:
each collection is created under a scratch name with its options, filled and indexed, and
only then swapped in by renaming, so a failed restore leaves the database as it was.
The migration lock (`ncm_migration_lock`) is a runner's live state, not data: it is
neither backed up nor touched by a restore.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
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

from ...errors import BackupFailed, BackupInvalid
from ...model import ServiceConfig
from ...urls import redact_known
from .backend import connect, database_name
from .lease import COLLECTION as LOCK_COLLECTION
from .ledger import Document

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
        raise BackupFailed(f"Backup of service '{config.name}' failed: {redact_known(str(exc))}.") from None
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


def check_mongo(config: ServiceConfig, folder: Path, files: Sequence[str] | None = None) -> None:
    """Read every metadata file and every document of the backup under `folder`, touching no
    database; `BackupInvalid` naming the first file that is damaged."""
    source = _source_folder(config, folder)
    for meta in _read_metadata(source, _listed(folder, source, files)):
        if meta.get("type") != "view":
            path = source / f"{meta['collectionName']}.bson"
            for raw in read_bson(path):
                try:
                    bson.decode(raw)
                except (bson.errors.InvalidBSON, ValueError) as exc:
                    raise BackupInvalid(f"{path} holds a damaged document: {exc}.") from None


def restore_mongo(config: ServiceConfig, folder: Path, connect_timeout_s: float = 5.0,
                  files: Sequence[str] | None = None) -> None:
    """Replace `config`'s database with the backup under `folder` (written by `backup_mongo`).

    The collections are loaded under scratch names first; only when all of them are loaded
    are the database's collections renamed aside, the loaded ones renamed into place, and
    the old ones dropped. A failure before that drops the scratch collections; a failure
    while renaming undoes the renames: either way the database is left as it was. `files`
    (the manifest's list) limits the restore to those files.
    """
    source = _source_folder(config, folder)
    metas = _read_metadata(source, _listed(folder, source, files))
    token = secrets.token_hex(4)
    client = connect(config, connect_timeout_s)
    try:
        db = client[database_name(config)]
        staged = _stage(db, metas, source, f"ncm_restore_{token}.")
        _swap(db, staged, metas, f"ncm_restore_{token}.", f"ncm_replaced_{token}.")
        for meta in metas:
            log.info("restored %s.%s", db.name, meta["collectionName"])
    except PyMongoError as exc:
        raise BackupFailed(
            f"Restore of service '{config.name}' failed: {redact_known(str(exc))}; "
            "the database was left as it was."
        ) from None
    finally:
        client.close()


def _listed(folder: Path, source: Path, files: Sequence[str] | None) -> set[str] | None:
    """The names under `source` that the manifest lists (None: every file there)."""
    if files is None:
        return None
    prefix = source.relative_to(folder).as_posix() + "/"
    return {name.removeprefix(prefix) for name in files if name.startswith(prefix)}


def _read_metadata(source: Path, listed: set[str] | None) -> list[dict[str, Any]]:
    metas = []
    for path in sorted(source.glob("*.metadata.json")):
        if listed is not None and path.name not in listed:
            continue
        try:
            meta = json_util.loads(path.read_text())
            if not isinstance(meta, dict) or not isinstance(meta.get("collectionName"), str):
                raise ValueError("it names no collection")
            data = (source / f"{meta['collectionName']}.bson").resolve()
            if not meta["collectionName"] or not data.is_relative_to(source.resolve()):
                raise ValueError(f"the collection name {meta['collectionName']!r} leads outside the backup")
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            raise BackupInvalid(f"{path} is not valid mongodump metadata: {exc}.") from None
        metas.append(meta)
    return metas


def _kept(name: str) -> bool:
    """Collections a restore leaves alone: the server's own and the migration lock."""
    return name.startswith("system.") or name == LOCK_COLLECTION


def _stage(db: Database[Document], metas: list[dict[str, Any]], source: Path, scratch: str) -> list[str]:
    """Load every collection (not the views) under `scratch` + its name; the names loaded.
    On failure the scratch collections are dropped."""
    staged: list[str] = []
    try:
        for meta in metas:
            if meta.get("type") != "view":
                staged.append(str(meta["collectionName"]))
                _restore_collection(db, meta, source, scratch + staged[-1])
    except BaseException:
        for name in staged:
            _quietly(partial(db.drop_collection, scratch + name))
        raise
    return staged


def _swap(db: Database[Document], staged: list[str], metas: list[dict[str, Any]],
          scratch: str, aside: str) -> None:
    """Rename the database's collections aside and the staged ones into place, create the
    backup's views, then drop what was set aside; undo every step when one fails."""
    present = [info for info in db.list_collections()
               if not _kept(str(info["name"])) and not str(info["name"]).startswith(scratch)]
    undo: list[Callable[[], object]] = []
    try:
        for info in present:
            name = str(info["name"])
            if info.get("type") == "view":
                options = dict(info.get("options") or {})
                db.drop_collection(name)
                undo.append(partial(db.create_collection, name, **options))
            else:
                db[name].rename(aside + name)
                undo.append(partial(db[aside + name].rename, name))
        for name in staged:
            db[scratch + name].rename(name)
            undo.append(partial(db[name].rename, scratch + name))
        for meta in metas:
            if meta.get("type") == "view":
                name = str(meta["collectionName"])
                db.create_collection(name, check_exists=False, **dict(meta.get("options") or {}))
                undo.append(partial(db.drop_collection, name))
    except BaseException:
        for step in reversed(undo):
            _quietly(step)
        for name in staged:
            _quietly(partial(db.drop_collection, scratch + name))
        raise
    for info in present:
        if info.get("type") != "view":
            _quietly(partial(db.drop_collection, aside + str(info["name"])))


def _quietly(step: Callable[[], object]) -> None:
    """Run one clean-up step; its failure is logged, not raised over the error being handled."""
    try:
        step()
    except PyMongoError as exc:
        log.error("clean-up after a failed restore failed: %s", exc)


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


def _restore_collection(db: Database[Document], meta: dict[str, Any], source: Path, name: str) -> None:
    """Create collection `name` with the backup's options, fill it and index it."""
    db.create_collection(name, check_exists=False, **dict(meta.get("options") or {}))
    coll = db.get_collection(name, codec_options=RAW)
    batch: list[RawBSONDocument] = []
    size = 0
    for raw in read_bson(source / f"{meta['collectionName']}.bson"):
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
