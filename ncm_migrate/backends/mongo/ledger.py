"""MongoDB's ledger and markers: the two collections that say what is applied.

MongoDB has no version table: what is applied comes from the ledger (`ncm_migrations`), one
document per step with a per-service `seq`. A marker per applied revision in
`ncm_migration_applied`, keyed by `service:revision`, is claimed before a step runs (see
`run.py`), so a second application of one revision fails with a duplicate key even if two
runners raced past the lease lock. `MongoBackend` reads and writes both through these.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from ... import ledger as ledger_rules
from ...errors import MigrationFailed
from ...model import LedgerRow, Revision, RunContext, ServiceState

Document = dict[str, Any]
MARKERS = "ncm_migration_applied"


def ensure_ledger_index(ledger: Collection[Document]) -> None:
    """The unique (service, seq) index that makes two writers of one seq collide."""
    ledger.create_index(
        [("service", ASCENDING), ("seq", ASCENDING)], unique=True, name="ncm_service_seq"
    )


def ledger_docs(ledger: Collection[Document], service: str, limit: int | None = None) -> list[Document]:
    """The service's ledger documents, oldest first (the last `limit` of them, if given)."""
    query = ledger.find({"service": service})
    if limit:
        return list(reversed(list(query.sort("seq", DESCENDING).limit(limit))))
    return list(query.sort("seq", ASCENDING))


def state_from_docs(docs: list[Document], revisions: Mapping[str, Revision]) -> ServiceState:
    """What the ledger documents say is applied, the heads, and whether the service is dirty."""
    rows = [ledger_row(d) for d in docs]
    sums = ledger_rules.applied_checksums(rows)
    known = {r for r in sums if r in revisions}
    unknown = tuple(sorted(r for r in sums if r not in revisions))
    downs = {d for r in known for d in revisions[r].down_revisions}
    heads = tuple(sorted({r for r in known if r not in downs} | set(unknown)))
    last_transactional = bool(docs[-1].get("transactional")) if docs else False
    return ServiceState(
        heads=heads,
        applied=frozenset(known),
        dirty=ledger_rules.dirty_mark(rows, last_transactional),
        checksums=tuple(sorted(sums.items())),
        unknown=unknown,
    )


def append_ledger_doc(ledger: Collection[Document], service: str, fields: Document) -> int:
    """Append one ledger document with the service's next `seq`; returns the seq."""
    for _ in range(100):
        last = ledger.find_one({"service": service}, sort=[("seq", DESCENDING)])
        seq = int(last["seq"]) + 1 if last else 1
        try:
            ledger.insert_one({"seq": seq, "service": service, **fields})
            return seq
        except DuplicateKeyError:
            continue  # another writer took this seq: read the new last one
    raise MigrationFailed(f"Service '{service}': could not append to {ledger_rules.TABLE}.")


def finish_ledger_doc(ledger: Collection[Document], service: str, seq: int, status: str,
                      t0: float) -> float:
    """Move a `running` document to its outcome (the only update the ledger ever sees);
    returns the step's duration in ms since `t0` (`time.perf_counter()`)."""
    duration = (time.perf_counter() - t0) * 1000
    ledger.update_one(
        {"service": service, "seq": seq, "status": "running"},
        {"$set": {"status": status, "finished_at": ledger_rules.utcnow(), "duration_ms": duration}},
    )
    return duration


def reconcile_markers(markers: Collection[Document], service: str, docs: Iterable[Document]) -> None:
    """Make the markers say what the ledger documents `docs` say is applied (after `repair`)."""
    applied = ledger_rules.applied_from_ledger(ledger_row(d) for d in docs)
    for marker in markers.find({"service": service}):
        if marker["revision"] not in applied:
            markers.delete_one({"_id": marker["_id"]})
        elif marker.get("state") != "applied":
            markers.update_one({"_id": marker["_id"]}, {"$set": {"state": "applied"}})
    for revision in applied:
        markers.update_one(
            {"_id": marker_id(service, revision)},
            {"$setOnInsert": {"service": service, "revision": revision, "state": "applied",
                              "at": ledger_rules.utcnow()}},
            upsert=True,
        )


def ledger_fields(
    revision: str, direction: str, status: str, checksum: str | None, ctx: RunContext,
    started: datetime, finished: datetime | None = None, duration_ms: float | None = None,
    transactional: bool = False,
) -> Document:
    """A ledger document's fields, but for `seq` and `service`."""
    return {
        "revision": revision, "direction": direction, "status": status, "checksum": checksum,
        "started_at": started, "finished_at": finished, "duration_ms": duration_ms,
        "actor": ctx.actor, "host": ctx.host, "environment": ctx.environment,
        "tool_version": ctx.tool_version, "transactional": transactional,
        "run_id": ctx.run_id or None,
    }


def marker_id(service: str, revision: str) -> str:
    return f"{service}:{revision}"


def ledger_row(doc: Mapping[str, Any]) -> LedgerRow:
    def iso(v: Any) -> str | None:
        return v.isoformat() if isinstance(v, datetime) else (str(v) if v is not None else None)

    return LedgerRow(
        id=int(doc["seq"]), service=doc["service"], revision=doc["revision"],
        direction=doc["direction"], status=doc["status"], checksum=doc.get("checksum"),
        started_at=iso(doc.get("started_at")) or "", finished_at=iso(doc.get("finished_at")),
        duration_ms=doc.get("duration_ms"), actor=doc.get("actor", ""), host=doc.get("host", ""),
        environment=doc.get("environment", ""), tool_version=doc.get("tool_version", ""),
        run_id=doc.get("run_id"), attempt=doc.get("attempt"), waited_ms=doc.get("waited_ms"),
    )
