"""Redis's ledger and markers: the keys that say what is applied.

Under the service's `key_prefix` (default `ncm:`): `<prefix><svc>:ledger`, a stream with
one entry per step (XADD only, never edited: a step's outcome is a second entry naming the
first one's id in `finishes`, folded into it when read); `<prefix><svc>:applied`, a hash of
revision -> marker (`applying <stamp>`, `applied`, `reverting <stamp>`) claimed before a step
runs (see `run.py`), so a revision is never applied twice even by runners that raced past
the lease; `<prefix><svc>:lock`, the lease (`lease.py`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import NamedTuple

import redis

from ... import ledger as ledger_rules
from ...model import LedgerRow, Revision, RunContext, ServiceConfig, ServiceState

Fields = dict[str, str]
_TEXT = ("revision", "direction", "status", "checksum", "started_at", "finished_at",
         "actor", "host", "environment", "tool_version")


class Keys(NamedTuple):
    """The keys of one service's bookkeeping."""

    ledger: str
    markers: str
    lock: str

    @classmethod
    def of(cls, config: ServiceConfig) -> Keys:
        base = f"{config.key_prefix}{config.name}:"
        return cls(base + "ledger", base + "applied", base + "lock")


def entry_fields(
    revision: str, direction: str, status: str, checksum: str | None, ctx: RunContext,
    started: datetime, finished: datetime | None = None, duration_ms: float | None = None,
    left_nothing: bool = False,
) -> Fields:
    """A ledger entry's fields (the SQL ledger's columns but `id` and `service`); a value
    that is None is left out. `left_nothing`: a failure that ran none of the revision
    (`transactional`, as MongoDB's ledger says it)."""
    values: dict[str, object] = {
        "revision": revision, "direction": direction, "status": status, "checksum": checksum,
        "started_at": started.isoformat(), "finished_at": finished.isoformat() if finished else None,
        "duration_ms": duration_ms, "actor": ctx.actor, "host": ctx.host,
        "environment": ctx.environment, "tool_version": ctx.tool_version,
        "transactional": "1" if left_nothing else None,
        "run_id": ctx.run_id or None, "attempt": 1, "waited_ms": 0.0,
    }
    return {k: str(v) for k, v in values.items() if v is not None}


def append_entry(r: redis.Redis, keys: Keys, fields: Fields) -> str:
    """Append one entry; its stream id (the row's `id`)."""
    return _text(r.xadd(keys.ledger, {k: v for k, v in fields.items()}))


def finish_entry(r: redis.Redis, keys: Keys, entry: str, status: str, t0: float) -> float:
    """Append the outcome of the `running` entry `entry`; the step's duration in ms since
    `t0` (`time.perf_counter()`)."""
    duration = (time.perf_counter() - t0) * 1000
    r.xadd(keys.ledger, {"finishes": entry, "status": status,
                         "finished_at": ledger_rules.utcnow().isoformat(),
                         "duration_ms": str(duration)})
    return duration


def ledger_entries(r: redis.Redis, keys: Keys) -> list[tuple[str, Fields]]:
    """The service's ledger entries, oldest first: each step's entry with its outcome folded in."""
    rows: dict[str, Fields] = {}
    for raw_id, raw in r.xrange(keys.ledger) or []:
        fields = {_text(k): _text(v) for k, v in (raw or {}).items()}
        start = fields.pop("finishes", None)
        if start is None:
            rows[_text(raw_id)] = fields
        elif start in rows:
            rows[start].update(fields)
    return list(rows.items())


def entry_rows(entries: list[tuple[str, Fields]], service: str, limit: int | None = None) -> list[LedgerRow]:
    """The entries as ledger rows (the last `limit` of them, if given)."""
    rows = [_row(entry, fields, service) for entry, fields in entries]
    return rows[-limit:] if limit else rows


def _row(entry: str, f: Fields, service: str) -> LedgerRow:
    return LedgerRow(
        id=entry, service=service, revision=f.get("revision", ""),
        direction="down" if f.get("direction") == "down" else "up",
        status=f.get("status", ""), checksum=f.get("checksum"),
        started_at=f.get("started_at", ""), finished_at=f.get("finished_at"),
        duration_ms=float(f["duration_ms"]) if "duration_ms" in f else None,
        actor=f.get("actor", ""), host=f.get("host", ""), environment=f.get("environment", ""),
        tool_version=f.get("tool_version", ""), run_id=f.get("run_id"),
        attempt=int(f["attempt"]) if "attempt" in f else None,
        waited_ms=float(f["waited_ms"]) if "waited_ms" in f else None,
    )


def state_from_entries(entries: list[tuple[str, Fields]], service: str,
                       revisions: Mapping[str, Revision]) -> ServiceState:
    """What the ledger says is applied, the heads, and whether the service is dirty (a
    failed step is, unless its entry says it left nothing behind: `transactional`)."""
    rows = entry_rows(entries, service)
    sums = ledger_rules.applied_checksums(rows)
    known = {r for r in sums if r in revisions}
    unknown = tuple(sorted(r for r in sums if r not in revisions))
    downs = {d for r in known for d in revisions[r].down_revisions}
    heads = tuple(sorted({r for r in known if r not in downs} | set(unknown)))
    return ServiceState(
        heads=heads,
        applied=frozenset(known),
        dirty=ledger_rules.dirty_mark(rows, bool(entries) and entries[-1][1].get("transactional") == "1"),
        checksums=tuple(sorted(sums.items())),
        unknown=unknown,
    )


def reset_markers(r: redis.Redis, keys: Keys, rows: Iterable[LedgerRow]) -> None:
    """Make the markers say what the ledger rows say is applied (after `repair`)."""
    applied = ledger_rules.applied_from_ledger(rows)
    pipe = r.pipeline(transaction=True)
    pipe.delete(keys.markers)
    if applied:
        pipe.hset(keys.markers, mapping=dict.fromkeys(sorted(applied), "applied"))
    pipe.execute()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
