"""A MongoDB database's schema as a `schemas.Schema`: its collections with their options
(validator, validation level and action, capped size...), and their indexes. Read only."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from pymongo.database import Database

from ...schemas import Schema
from .ledger import Document


def read_mongo_schema(db: Database[Document], ignored: Iterable[str]) -> Schema:
    """The collections of `db` but those in `ignored` (the ledger, markers and lease)."""
    skip = set(ignored)
    objects: dict[str, str] = {}
    for info in db.list_collections():
        name = str(info["name"])
        if name in skip or name.startswith("system."):
            continue
        at = f"collection {name}"
        options = {k: v for k, v in dict(info.get("options") or {}).items() if k != "uuid"}
        objects[at] = "collection"
        for key in ("validator", "validationLevel", "validationAction"):
            if key in options:
                objects[f"{at} / {key}"] = _canonical(options.pop(key))
        if options:
            objects[f"{at} / options"] = _canonical(options)
        for index, spec in db[name].index_information().items():
            described = {k: v for k, v in dict(spec).items() if k not in ("v", "ns")}
            objects[f"{at} / index {index}"] = _canonical(described)
    return Schema.of(objects)


def _canonical(value: Any) -> str:
    """One spelling of a document: keys sorted (index keys keep their order: a list)."""
    return json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
