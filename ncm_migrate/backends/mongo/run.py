"""One MongoDB step as it runs, and the error a failed step stops the run with.

`StepRun` claims the step's marker, records the step in the ledger, runs the revision's
function (in a transaction if the revision asks for one and the server has them) and records
the outcome; `step_failed` maps what went wrong to the error `MongoBackend.apply` raises.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pymongo.errors import ConnectionFailure, DuplicateKeyError

from ... import ledger as ledger_rules
from ...errors import DatabaseUnreachable, MigrationFailed, NcmError
from ...model import Revision, RunContext, Step, StepResult
from ...pyfiles import stopped_error
from ...urls import mask_url, password_of, redact
from .. import StepCallback
from .ledger import Document, ledger_fields, marker_id

if TYPE_CHECKING:
    from .backend import MongoBackend

log = logging.getLogger(__name__)


class MarkerClaimed(Exception):
    """Another runner holds the step's marker: it applied (or reverted) the revision first."""

    def __init__(self, marker: str, what: str) -> None:
        self.marker = marker
        self.what = what
        super().__init__(marker)


class StepRun:
    """One step: claim its marker, record it, run it, record the outcome."""

    def __init__(self, backend: MongoBackend, step: Step, rev: Revision, ctx: RunContext,
                 outcome: Literal["applied", "reverted", "faked"], in_txn: bool = False) -> None:
        self.backend = backend
        self.step = step
        self.rev = rev
        self.ctx = ctx
        self.outcome = outcome
        self.in_txn = in_txn
        # Where the step is, for a message if user code exits there.
        self.phase = "while it was imported"
        # After a failure: whether it may have left part of the step behind, and why it
        # could not be recorded (if it could not).
        self.dirty = False
        self.unrecorded = ""
        self.marker = marker_id(step.service, step.revision)
        now = ledger_rules.utcnow()
        self.started = now.replace(microsecond=now.microsecond // 1000 * 1000)  # BSON keeps ms
        self.t0 = time.perf_counter()
        self.duration_ms = 0.0
        self.seq: int | None = None

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.t0) * 1000

    def execute(self, fn: Callable[..., Any] | None, check: Callable[..., Any] | None) -> None:
        if self.in_txn:
            self._in_transaction(fn, check)
            return
        try:
            self._claim()
            if fn is not None:
                self.seq = self.backend._insert_row(self._fields("running"))
                self._call(fn, check)
            self._settle()
            if self.seq is None:
                self.duration_ms = self.elapsed_ms()
                self.backend._insert_row(self._fields(self.outcome, finished=True))
            else:
                self.duration_ms = self.backend._finish_row(self.seq, self.outcome, self.t0)
        except MarkerClaimed:
            raise
        except BaseException:  # user code ran: SystemExit and KeyboardInterrupt too
            self.record_failure(transactional=False)
            raise

    def _call(self, fn: Callable[..., Any] | None, check: Callable[..., Any] | None) -> None:
        """The revision's function, then its verify(), each with the database."""
        db = self.backend.db
        if fn is not None:
            self.phase = f"in {'upgrade' if self.step.direction == 'up' else 'downgrade'}()"
            fn(db)
        if check is not None:
            self.phase = "in verify()"
            check(db)
        self.phase = "while it was recorded"

    def _in_transaction(self, fn: Callable[..., Any] | None, check: Callable[..., Any] | None) -> None:
        """Claim, run, verify and record in one transaction: a failure leaves nothing behind."""
        client = self.backend.client
        try:
            with (
                client.start_session() as session,
                session.bind(end_session=False),
                session.start_transaction(),
            ):
                self._claim()
                self._call(fn, check)
                self._settle()
                self.duration_ms = self.elapsed_ms()
                self.backend._insert_row(self._fields(self.outcome, finished=True))
        except MarkerClaimed:
            raise
        except BaseException:  # user code ran: SystemExit and KeyboardInterrupt too
            self.record_failure(transactional=True)
            raise

    def _claim(self) -> None:
        markers = self.backend.markers
        if self.step.direction == "up":
            try:
                markers.insert_one({"_id": self.marker, "service": self.step.service,
                                    "revision": self.step.revision, "state": "applying",
                                    "at": self.started})
            except DuplicateKeyError:
                raise MarkerClaimed(self.marker, "applied") from None
        else:
            taken = markers.find_one_and_update(
                {"_id": self.marker, "state": "applied"},
                {"$set": {"state": "reverting", "at": self.started}},
            )
            if taken is None:
                raise MarkerClaimed(self.marker, "reverted (or never applied)")

    def _settle(self) -> None:
        """The marker after success: `applied` after an upgrade, gone after a downgrade."""
        if self.step.direction == "up":
            self.backend.markers.update_one({"_id": self.marker}, {"$set": {"state": "applied"}})
        else:
            self.backend.markers.delete_one({"_id": self.marker})

    def record_failure(self, transactional: bool) -> None:
        """After a failed step: give this step's claim back (if an aborted transaction has not
        already) and append (or finish) a `failed` row; `transactional`: the failure left
        nothing behind. Guarded: when this fails too (the server is gone, say), the step's own
        error is the one to report, with `unrecorded` saying why this failed."""
        self.dirty = not transactional
        mine = {"_id": self.marker, "at": self.started}
        try:  # a transaction, if any, has ended: these writes stand on their own
            if self.step.direction == "up":
                self.backend.markers.delete_one({**mine, "state": "applying"})
            else:
                self.backend.markers.update_one({**mine, "state": "reverting"},
                                                {"$set": {"state": "applied"}})
            if self.seq is not None:
                self.backend._finish_row(self.seq, "failed", self.t0)
            else:
                self.backend._insert_row(
                    self._fields("failed", finished=True, transactional=transactional)
                )
        except Exception as exc:
            log.debug("could not record the failure of %s:%s in %s", self.step.service,
                      self.step.revision, ledger_rules.TABLE, exc_info=True)
            self.unrecorded = f"{type(exc).__name__}: {short_error(exc)}"

    def _fields(self, status: str, finished: bool = False, transactional: bool | None = None) -> Document:
        now = ledger_rules.utcnow() if finished else None
        return ledger_fields(
            self.step.revision, self.step.direction, status, self.rev.checksum, self.ctx,
            self.started, finished=now,
            duration_ms=(time.perf_counter() - self.t0) * 1000 if finished else None,
            transactional=self.in_txn if transactional is None else transactional,
        )


def step_failed(run: StepRun, exc: BaseException, results: list[StepResult],
                on_step: StepCallback) -> NcmError:
    """The error a failed step (already recorded, if it could be) stops the run with."""
    step = run.step
    message = f"{type(exc).__name__}: {short_error(exc)}" if str(exc) else type(exc).__name__
    results.append(StepResult(step.service, step.revision, step.direction, "failed",
                              run.elapsed_ms(), message))
    on_step(step, "done", results[-1])
    log.debug("step %s:%s failed", step.service, step.revision, exc_info=True)
    stopped = stopped_error(exc, step.service, step.revision, run.phase, results,
                            dirty=run.dirty, unrecorded=run.unrecorded)
    if stopped is not None:
        return stopped
    if isinstance(exc, ConnectionFailure):  # the server went away during the step
        return lost_in_step(run, exc, results)
    unrecorded = (f"; the failure could not be recorded in {ledger_rules.TABLE} "
                  f"({run.unrecorded})" if run.unrecorded else "")
    return MigrationFailed(
        f"Revision {step.service}:{step.revision} failed "
        f"({'upgrade' if step.direction == 'up' else 'downgrade'}): {message}{unrecorded}",
        step.service, step.revision, results,
    )

def lost_in_step(run: StepRun, exc: ConnectionFailure,
                 results: list[StepResult]) -> DatabaseUnreachable:
    """A connection lost while a step ran: exit 4 naming the service and the server, and
    what the step may have left (as the SQL backend says it)."""
    step = run.step
    url = run.backend.config.database_url or ""
    if run.in_txn:
        left = (f"Nothing of revision {step.revision} stays: the server aborts its "
                "transaction when the session is gone.")
    else:
        left = (f"The revision {step.revision} may be half applied: check the database "
                f"once the server is back, then run manage.py repair {step.service}.")
    lost = DatabaseUnreachable(
        f"Service '{step.service}': lost the connection to the database at "
        f"{mask_url(url)} while applying {step.service}:{step.revision} "
        f"({redact(short_error(exc), [password_of(url)])}). {left}"
    )
    lost.results = results
    return lost


def short_error(exc: BaseException) -> str:
    """The first line of an error, without the full server reply or the topology
    description and timeouts that pymongo appends."""
    text = str(exc).split(", full error:", 1)[0].split(", Topology Description:", 1)[0]
    text = re.sub(r" \(configured timeouts: [^)]*\)", "", text).strip()
    return text.splitlines()[0] if text else type(exc).__name__
