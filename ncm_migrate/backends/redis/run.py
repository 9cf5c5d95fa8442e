"""One Redis step as it runs, and the error a failed step stops the run with.

`RedisStep` claims the step's marker (in one Lua script that also checks the lease is still
ours), records the step in the ledger, runs the revision's function and records the
outcome; `failed_step_error` maps what went wrong to the error `RedisBackend.apply` raises.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import redis

from ... import ledger as ledger_rules
from ...errors import DatabaseUnreachable, MigrationFailed, NcmError
from ...model import Revision, RunContext, Step, StepResult
from ...pyfiles import stopped_error
from ...urls import mask_url, password_of, redact
from .ledger import Fields, entry_fields

if TYPE_CHECKING:
    from .. import StepCallback
    from .backend import RedisBackend

log = logging.getLogger(__name__)

# KEYS: lease, markers; ARGV: lease value ('' without a lease), revision, direction, claim.
# -1: the lease is not ours; 0: another runner holds the marker; 1: claimed.
CLAIM = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
if ARGV[3] == 'up' then
    return redis.call('HSETNX', KEYS[2], ARGV[2], 'applying ' .. ARGV[4])
end
if redis.call('HGET', KEYS[2], ARGV[2]) == 'applied' then
    redis.call('HSET', KEYS[2], ARGV[2], 'reverting ' .. ARGV[4])
    return 1
end
return 0
"""
# KEYS: markers; ARGV: revision, claim. Give back this run's claim after a failure.
GIVE_BACK = """
local held = redis.call('HGET', KEYS[1], ARGV[1])
if held == 'applying ' .. ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
if held == 'reverting ' .. ARGV[2] then return redis.call('HSET', KEYS[1], ARGV[1], 'applied') end
return 0
"""


class MarkerTaken(Exception):
    """Another runner holds the step's marker: it applied (or reverted) the revision first."""

    def __init__(self, marker: str, what: str) -> None:
        self.marker = marker
        self.what = what
        super().__init__(marker)


class LeaseLost(Exception):
    """The lease is no longer this runner's when it came to claim a step."""


class RedisStep:
    """One step: claim its marker, record it, run it, record the outcome."""

    def __init__(self, backend: RedisBackend, step: Step, rev: Revision, ctx: RunContext,
                 outcome: Literal["applied", "reverted", "faked"]) -> None:
        self.backend = backend
        self.step = step
        self.rev = rev
        self.ctx = ctx
        self.outcome = outcome
        # Where the step is, for a message if user code exits there.
        self.phase = "while it was imported"
        self.dirty = False
        self.unrecorded = ""
        self.claim = secrets.token_hex(8)
        self.started = ledger_rules.utcnow()
        self.t0 = time.perf_counter()
        self.duration_ms = 0.0
        self.entry: str | None = None

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.t0) * 1000

    def execute(self, fn: Callable[..., Any] | None, check: Callable[..., Any] | None) -> None:
        self._claim()
        try:
            if fn is not None:
                self.entry = self.backend.append(self._fields("running"))
                self._call(fn, check)
            self._settle()
            if self.entry is None:
                self.duration_ms = self.elapsed_ms()
                self.backend.append(self._fields(self.outcome, finished=True))
            else:
                self.duration_ms = self.backend.finish(self.entry, self.outcome, self.t0)
        except BaseException:  # user code ran: SystemExit and KeyboardInterrupt too
            self.record_failure(left_nothing=False)
            raise

    def _call(self, fn: Callable[..., Any], check: Callable[..., Any] | None) -> None:
        """The revision's function, then its verify(), each with the client."""
        r = self.backend.client
        self.phase = f"in {'upgrade' if self.step.direction == 'up' else 'downgrade'}()"
        fn(r)
        if check is not None:
            self.phase = "in verify()"
            check(r)
        self.phase = "while it was recorded"

    def _claim(self) -> None:
        keys = self.backend.keys
        lease = self.backend.lease_value
        got = int(self.backend.claim_script(
            keys=[keys.lock, keys.markers],
            args=[lease or "", self.step.revision, self.step.direction, self.claim],
        ))
        if got == -1:
            raise LeaseLost()
        if got == 0:
            what = "applied" if self.step.direction == "up" else "reverted (or never applied)"
            raise MarkerTaken(f"{keys.markers} {self.step.revision}", what)

    def _settle(self) -> None:
        """The marker after success: `applied` after an upgrade, gone after a downgrade."""
        keys = self.backend.keys
        if self.step.direction == "up":
            self.backend.client.hset(keys.markers, self.step.revision, "applied")
        else:
            self.backend.client.hdel(keys.markers, self.step.revision)

    def record_failure(self, left_nothing: bool) -> None:
        """After a failed step: give this step's claim back and append (or finish) a `failed`
        row; `left_nothing`: the revision's functions never had the client (not dirty).
        Guarded: when this fails too, the step's own error is the one to report, with
        `unrecorded` saying why this failed."""
        self.dirty = not left_nothing
        try:
            self.backend.give_back_script(keys=[self.backend.keys.markers],
                                          args=[self.step.revision, self.claim])
            if self.entry is not None:
                self.backend.finish(self.entry, "failed", self.t0)
            else:
                self.backend.append(self._fields("failed", finished=True, left_nothing=left_nothing))
        except Exception as exc:
            log.debug("could not record the failure of %s:%s", self.step.service,
                      self.step.revision, exc_info=True)
            self.unrecorded = f"{type(exc).__name__}: {error_line(exc)}"

    def _fields(self, status: str, finished: bool = False, left_nothing: bool = False) -> Fields:
        return entry_fields(
            self.step.revision, self.step.direction, status, self.rev.checksum, self.ctx,
            self.started, finished=ledger_rules.utcnow() if finished else None,
            duration_ms=self.elapsed_ms() if finished else None, left_nothing=left_nothing,
        )


def failed_step_error(run: RedisStep, exc: BaseException, results: list[StepResult],
                on_step: StepCallback) -> NcmError:
    """The error a failed step (already recorded, if it could be) stops the run with."""
    step = run.step
    message = f"{type(exc).__name__}: {error_line(exc)}" if str(exc) else type(exc).__name__
    results.append(StepResult(step.service, step.revision, step.direction, "failed",
                              run.elapsed_ms(), message))
    on_step(step, "done", results[-1])
    log.debug("step %s:%s failed", step.service, step.revision, exc_info=True)
    stopped = stopped_error(exc, step.service, step.revision, run.phase, results,
                            dirty=run.dirty, unrecorded=run.unrecorded)
    if stopped is not None:
        return stopped
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return connection_lost_in_step(run, exc, results)
    unrecorded = (f"; the failure could not be recorded in the ledger "
                  f"({run.unrecorded})" if run.unrecorded else "")
    return MigrationFailed(
        f"Revision {step.service}:{step.revision} failed "
        f"({'upgrade' if step.direction == 'up' else 'downgrade'}): {message}{unrecorded}",
        step.service, step.revision, results,
    )


def connection_lost_in_step(run: RedisStep, exc: BaseException,
                            results: list[StepResult]) -> DatabaseUnreachable:
    """A connection lost while a step ran: exit 4 naming the service and the server, and
    that the step may be half applied."""
    step = run.step
    url = run.backend.config.database_url or ""
    lost = DatabaseUnreachable(
        f"Service '{step.service}': lost the connection to the database at {mask_url(url)} "
        f"while applying {step.service}:{step.revision} "
        f"({redact(error_line(exc), [password_of(url)])}). The revision {step.revision} may be "
        f"half applied: check the database once the server is back, then run "
        f"manage.py repair {step.service}."
    )
    lost.results = results
    return lost


def error_line(exc: BaseException) -> str:
    """The first line of an error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
