"""Repairing a service's ledger after a manual fix, by appending rows (never editing them),
and dropping the indexes a failed concurrent build left INVALID.

A dirty mark is cleared with a `reverted` down row for the failed revision (or a `faked`
up row when the version table says it did get applied); an applied revision whose file
was edited on purpose gets a `faked` up row carrying the file's new checksum. An INVALID
index that a revision names is dropped concurrently (no ledger row: its revision was never
recorded as applied), so that the revision builds it again when it runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from .backends import Backend
from .model import Direction, Revision, RunContext


@dataclass(frozen=True)
class RepairAction:
    """One ledger row `repair` appended (or, `kind` "index", an INVALID index it dropped),
    and why."""

    revision: str
    direction: Direction
    status: str
    reason: str
    kind: Literal["ledger", "index"] = "ledger"


def repair_service(
    backend: Backend, revisions: Mapping[str, Revision], ctx: RunContext, lock_timeout_s: float
) -> list[RepairAction]:
    """Clear the dirty mark and re-record drifted checksums of one service, under its lock."""
    actions: list[RepairAction] = []
    with backend.lock(lock_timeout_s):
        state = backend.read_state(revisions)
        recorded = dict(state.checksums)
        if state.dirty:
            rev = revisions.get(state.dirty)
            if state.dirty in state.applied and rev is not None:
                backend.record(state.dirty, "up", "faked", rev.checksum, ctx)
                recorded[state.dirty] = rev.checksum
                actions.append(RepairAction(
                    state.dirty, "up", "faked",
                    "cleared its dirty mark: the version table has it applied, so it now counts "
                    "as applied and will not run again",
                ))
            else:
                backend.record(state.dirty, "down", "reverted", None, ctx)
                again = ("the next migrate runs it again (undo what its failed run left first)"
                         if rev is not None else
                         "its file is gone, so nothing runs it again until the file is back")
                actions.append(RepairAction(
                    state.dirty, "down", "reverted",
                    f"cleared its dirty mark: the version table does not have it applied, so {again}",
                ))
        for rev_id, checksum in sorted(recorded.items()):
            rev = revisions.get(rev_id)
            if rev is not None and checksum and checksum != rev.checksum:
                backend.record(rev_id, "up", "faked", rev.checksum, ctx)
                actions.append(RepairAction(
                    rev_id, "up", "faked",
                    f"accepted the edit of {rev.path.name}: its checksum is now {rev.checksum[:12]} "
                    f"(was {checksum[:12]}); the edit is not run against the database",
                ))
        for index in backend.drop_indexes(backend.invalid_indexes(revisions)):
            actions.append(RepairAction(
                index.revision, "up", "dropped-index",
                f"dropped the INVALID index {index.name} on {index.table} (DROP INDEX "
                "CONCURRENTLY), left by a failed CREATE INDEX CONCURRENTLY; the next migrate "
                "builds it again", kind="index",
            ))
    return actions
