"""Runs a plan: for each service's run of steps, lock, read state, apply, record, report.

The executor never prints: it reports through a callback the command supplies. With
`jobs > 1`, runs of independent services go to separate processes (Alembic's `op` and
`context` are module-level state, unsafe across threads); one failure stops new work from
starting while running work finishes. Ctrl-C or SIGTERM stops the run where it is: the
interrupted step is recorded as failed, workers are told to stop (and stop on their own
when their parent dies), and the report holds what was done before it.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.context
import multiprocessing.queues
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

from .backends import Backend, closing_backend, make_backend
from .backends.retry import open_with_retries
from .config import ConnectSettings, DdlSettings
from .errors import Interrupted, NcmError, signal_name
from .events import Event, Reporter, RunReport
from .graph import Graph
from .interrupts import POLL_S, StopRequest, WorkerGuard
from .logs import configure_logging, current_levels
from .model import Plan, Revision, RunContext, ServiceConfig, Step, StepResult
from .rules import check_state
from .urls import remember_secret, sqlite_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentJob:
    """One service's consecutive steps, with everything a worker process needs."""

    config: ServiceConfig
    connect: ConnectSettings
    lock_timeout_s: float
    revisions: Mapping[str, Revision]
    steps: tuple[Step, ...]
    ctx: RunContext
    fake: bool
    allow_checksum_drift: bool
    lock_lease_s: float = 30.0
    ddl: DdlSettings = field(default_factory=DdlSettings)


def run_segment(job: SegmentJob, report: Reporter, stop: StopRequest | None = None) -> list[StepResult]:
    """Apply one service's steps under its lock, skipping what another runner already did.

    Interrupted (Ctrl-C, SIGTERM: `KeyboardInterrupt` in this thread), it records the step
    that was running as failed and raises `Interrupted` with what was done before it.
    """
    remember_secret(job.config.database_url)
    backend = _backend(job)
    track = _Tracker(report)
    try:
        open_with_retries(backend, job.connect)
        with closing_backend(backend), backend.lock(job.lock_timeout_s):
            state = backend.read_state(job.revisions)
            check_state(job.config, state, job.revisions, job.allow_checksum_drift)
            todo = []
            for s in job.steps:
                if (s.direction == "up") != (s.revision in state.applied):
                    todo.append(s)
                else:
                    log.info("%s:%s already done by another runner", s.service, s.revision)
                    track.done.append(StepResult(s.service, s.revision, s.direction, "skipped"))
            skipped = list(track.done)
            try:
                return skipped + backend.apply(todo, job.revisions, job.ctx, job.fake, track)
            except NcmError as exc:
                exc.results = _dirty_marked(skipped + exc.results, backend, job)
                if isinstance(exc, Interrupted):
                    _stop_on_server(backend)
                    _set_signal(exc, _signum(stop, exc.signum))
                raise
            except KeyboardInterrupt:
                if track.running is None and not _signalled(stop):
                    raise  # no step under way, and not a signal: the caller's own
                # The backend let the interrupt through: record the step it stopped.
                raise _record_interrupt(backend, job, track, _signum(stop)) from None
    except KeyboardInterrupt:  # connecting, waiting for the lock, reading state: no step ran
        if not _signalled(stop):
            raise
        raise _interrupted(_signum(stop), track.done) from None


def _backend(job: SegmentJob) -> Backend:
    return make_backend(job.config, job.connect, job.lock_lease_s, job.ddl)


class _Tracker:
    """Passes a segment's progress on to the reporter, and keeps what it needs should the
    segment be interrupted: the results so far and the step that is running."""

    def __init__(self, report: Reporter) -> None:
        self.report = report
        self.done: list[StepResult] = []
        self.running: Step | None = None
        self.t0 = 0.0

    def __call__(self, step: Step, phase: str, result: StepResult | None) -> None:
        if phase == "start":
            self.running, self.t0 = step, time.perf_counter()
        else:
            self.running = None
            if result is not None:
                self.done.append(result)
        self.report(Event("start" if phase == "start" else "done", step, result))


def _signalled(stop: StopRequest | None) -> bool:
    """Whether a signal this run handles stopped it (not a `KeyboardInterrupt` that a
    caller's callback raised, which goes on up as it is when no step is under way)."""
    return stop is not None and stop.signum is not None


def _signum(stop: StopRequest | None, default: int = signal.SIGINT) -> int:
    return stop.signum if stop is not None and stop.signum is not None else default


def _dirty_marked(results: list[StepResult], backend: Backend, job: SegmentJob) -> list[StepResult]:
    """The failed step marked dirty if it left its service dirty."""
    return [replace(r, dirty=True) if r.outcome == "failed" and _left_dirty(backend, job, r.revision)
            else r for r in results]


def _left_dirty(backend: Backend, job: SegmentJob, revision: str) -> bool:
    """Whether a failed step left its service dirty, as its database now says (a MongoDB
    revision in a transaction does not); where that cannot be read (the connection was
    cut), as the kind of database says."""
    try:
        return backend.read_state(job.revisions).dirty == revision
    except Exception:
        return not backend.transactional


def _set_signal(exc: Interrupted, signum: int) -> None:
    """The signal that really stopped the run: a backend sees only `KeyboardInterrupt`,
    which it reports as Ctrl-C; SIGTERM reaches it the same way."""
    if exc.signum == signum:
        return
    text = str(exc)
    for old in (signal_name(exc.signum), "Ctrl-C"):
        text = text.replace(f"({old})", f"({signal_name(signum)})")
    exc.signum = signum
    exc.args = (text,)


def _record_interrupt(backend: Backend, job: SegmentJob, track: _Tracker, signum: int) -> Interrupted:
    """The step that was running recorded as failed (guarded: a failure to record is
    logged, and the interruption still reported), and the error that stops the run."""
    step = track.running
    if step is None:
        return _interrupted(signum, track.done)
    _stop_on_server(backend)
    recorded = _record_failed(backend, job, step)
    dirty = _left_dirty(backend, job, step.revision)
    failed = StepResult(step.service, step.revision, step.direction, "failed",
                        (time.perf_counter() - track.t0) * 1000,
                        f"interrupted ({signal_name(signum)})", dirty)
    try:
        track(step, "done", failed)
    except Exception:  # the audit log or the terminal: the interruption is still reported
        log.exception("could not report the interrupted step %s:%s", step.service, step.revision)
    return _interrupted(signum, track.done, step, recorded)


def _stop_on_server(backend: Backend) -> None:
    try:
        backend.interrupt()
    except Exception:
        log.exception("could not stop the interrupted statement of service '%s'",
                      backend.config.name)


def _record_failed(backend: Backend, job: SegmentJob, step: Step) -> str:
    """Append a `failed` row for `step`; on a fresh connection if the signal cut the
    backend's own. Empty when recorded, else why it could not be."""
    checksum = job.revisions[step.revision].checksum
    try:
        backend.record(step.revision, step.direction, "failed", checksum, job.ctx)
        return ""
    except Exception as exc:
        log.debug("recording on the run's connection failed: %s", exc)
    with closing_backend(_backend(job)) as fresh:
        try:
            fresh.open()
            fresh.record(step.revision, step.direction, "failed", checksum, job.ctx)
            return ""
        except Exception as exc:
            log.error("could not record the interrupted step %s:%s as failed: %s",
                      step.service, step.revision, exc)
            return str(exc) or type(exc).__name__


def _interrupted(
    signum: int, results: Sequence[StepResult], step: Step | None = None, unrecorded: str = ""
) -> Interrupted:
    name = signal_name(signum)
    if step is None:
        return Interrupted(f"Interrupted ({name}) between steps; no step was left part way.",
                           signum, results=list(results))
    failed = results[-1]
    recorded = (f"the step could not be recorded as failed ({unrecorded})" if unrecorded
                else "the step is recorded as failed")
    after = (f"; part of it may have run: check the database, then run "
             f"`manage.py repair {step.service}`" if failed.dirty else "; nothing of it remains")
    return Interrupted(
        f"Revision {step.service}:{step.revision} was interrupted ({name}): {recorded}{after}.",
        signum, step.service, step.revision, list(results),
    )


def segments(plan: Plan) -> list[tuple[Step, ...]]:
    """The plan cut into runs of consecutive steps of one service."""
    out: list[list[Step]] = []
    for step in plan.steps:
        if out and out[-1][0].service == step.service:
            out[-1].append(step)
        else:
            out.append([step])
    return [tuple(s) for s in out]


def segment_waits(graph: Graph, segs: Sequence[tuple[Step, ...]]) -> list[set[int]]:
    """For each segment, the earlier segments it must wait for."""
    where = {step.key: i for i, seg in enumerate(segs) for step in seg}
    waits: list[set[int]] = []
    for i, seg in enumerate(segs):
        needs: set[int] = set()
        for step in seg:
            others = graph.parents[step.key] if step.direction == "up" else graph.children(step.key)
            needs.update(where[o] for o in others if o in where and where[o] != i)
        needs.update(j for j in range(i) if segs[j][0].service == seg[0].service)
        waits.append({j for j in needs if j < i})
    return waits


def apply_plan(
    plan: Plan,
    graph: Graph,
    jobs: list[SegmentJob],
    parallel: int,
    report: Reporter,
    stop: StopRequest | None = None,
) -> RunReport:
    """Run every segment job (one per segment of `plan`), at most `parallel` at once.

    `stop` is the run's signal handling (`interrupts.stopping_on_signals`): with it, Ctrl-C
    or SIGTERM ends the run with `Interrupted` in the report.
    """
    run = RunReport()
    report(Event("plan", plan=plan))
    if parallel <= 1 or len(jobs) <= 1:
        for job in jobs:
            try:
                run.results.extend(run_segment(job, report, stop))
            except NcmError as exc:
                run.results.extend(_failed_results(exc))
                run.error = exc
                break
            except KeyboardInterrupt:  # between two segments
                if not _signalled(stop):
                    raise
                run.error = _interrupted(_signum(stop), [])
                break
        _not_run(run, jobs)
        return run
    return _apply_parallel(plan, graph, jobs, parallel, report, run, stop)


def _apply_parallel(
    plan: Plan,
    graph: Graph,
    jobs: list[SegmentJob],
    parallel: int,
    report: Reporter,
    run: RunReport,
    stop: StopRequest | None,
) -> RunReport:
    segs = [job.steps for job in jobs]
    waits = segment_waits(graph, segs)
    _one_writer_per_file(jobs, waits)
    mp = _process_context()
    events: multiprocessing.queues.Queue[Event | None] = mp.Queue()
    # The signal this process received, once it did: each worker's watchdog then interrupts
    # the segment it runs with it.
    stop_workers = mp.RawValue("i", 0)
    drain = threading.Thread(target=_drain, args=(events, report), daemon=True)
    done: set[int] = set()
    running: dict[Future[list[StepResult]], int] = {}
    pending = list(range(len(jobs)))
    interrupts: list[Interrupted] = []
    # Here the main thread only waits: a signal is noted, and passed on to the workers.
    deferred = stop.deferred() if stop is not None else nullcontext()
    try:
        with deferred, ProcessPoolExecutor(
            max_workers=min(parallel, len(jobs)), mp_context=mp, initializer=_init_worker,
            initargs=(current_levels(), events, os.getpid(), stop_workers),
        ) as pool:
            try:
                while pending or running:
                    stopping = stop is not None and stop.signum is not None
                    if stopping and not stop_workers.value:
                        assert stop is not None and stop.signum is not None
                        stop_workers.value = stop.signum
                    if run.error is None and not stopping:
                        for i in [i for i in pending if waits[i] <= done]:
                            if len(running) >= parallel:
                                break
                            pending.remove(i)
                            running[pool.submit(_worker, jobs[i])] = i
                    if drain.ident is None:  # after the first workers are forked
                        drain.start()
                    if not running:
                        break
                    finished, _ = wait(list(running), timeout=POLL_S, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        i = running.pop(fut)
                        try:
                            run.results.extend(fut.result())
                            done.add(i)
                        except Interrupted as exc:
                            run.results.extend(_failed_results(exc))
                            interrupts.append(exc)
                        except NcmError as exc:
                            run.results.extend(_failed_results(exc))
                            if run.error is None:
                                run.error = exc
            except BaseException:
                # Not a signal this run handles (none was given it): its workers must not
                # go on without it while the pool waits for them on the way out.
                stop_workers.value = stop_workers.value or signal.SIGINT
                raise
    finally:
        events.put(None)
        if drain.ident is None:
            drain.start()
        drain.join()
        events.close()
    order = {s.key: n for n, s in enumerate(plan.steps)}
    interrupts.sort(key=lambda e: min((order.get(Step(r.service, r.revision, r.direction).key, 0)
                                       for r in e.results if r.outcome == "failed"), default=0))
    if stop is not None and stop.signum is not None:
        run.error = _combined(stop.signum, interrupts)
    elif interrupts and run.error is None:
        run.error = interrupts[0]  # a worker was sent a signal of its own
    _not_run(run, jobs)
    run.results.sort(key=lambda r: order.get(Step(r.service, r.revision, r.direction).key, 0))
    if isinstance(run.error, Interrupted):
        run.error.results = run.results
    return run


def _combined(signum: int, interrupts: Sequence[Interrupted]) -> Interrupted:
    """One error for a parallel run that a signal stopped, naming each worker's step."""
    stopped = [e for e in interrupts if e.service]
    if len(stopped) == 1:
        _set_signal(stopped[0], signum)
        return stopped[0]
    if not stopped:
        return _interrupted(signum, [])
    steps = ", ".join(f"{e.service}:{e.revision}" for e in stopped)
    dirty = [e.service for e in stopped if any(r.dirty for r in e.results)]
    after = ("; part of them may have run in " + ", ".join(dirty) + ": check the database, then run "
             + " and ".join(f"`manage.py repair {d}`" for d in dirty)) if dirty else (
             "; nothing of them remains")
    return Interrupted(
        f"Interrupted ({signal_name(signum)}) while {len(stopped)} revisions ran: {steps}, each "
        f"recorded as failed{after}.",
        signum, stopped[0].service, stopped[0].revision,
    )


def _one_writer_per_file(jobs: Sequence[SegmentJob], waits: list[set[int]]) -> None:
    """SQLite has one writer at a time per file, and a writer that finds it taken fails
    ("database is locked") rather than waits in many cases: segments of services that
    share a file wait for the one before them, as segments of one service do."""
    last: dict[str, int] = {}
    for i, job in enumerate(jobs):
        path = sqlite_file(job.config.database_url or "")
        if path is None:
            continue
        key = str(path.resolve())
        if key in last:
            waits[i].add(last[key])
        last[key] = i


def _process_context() -> multiprocessing.context.BaseContext:
    """Worker processes that start fast. On Linux, fork: the parent has closed every
    connection and runs no other thread while the pool forks (the event drain starts
    after), and children need no imports. Elsewhere, spawn."""
    if sys.platform == "linux":
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


_events: multiprocessing.queues.Queue[Event | None] | None = None
_guard: WorkerGuard | None = None


def _init_worker(
    levels: dict[str, int],
    events: multiprocessing.queues.Queue[Event | None],
    parent_pid: int,
    stop: Any,
) -> None:
    global _events, _guard
    configure_logging(levels)
    _events = events
    _guard = WorkerGuard(parent_pid, stop)
    _guard.install()


def _worker(job: SegmentJob) -> list[StepResult]:
    assert _events is not None and _guard is not None
    try:
        with _guard.running() as request:
            return run_segment(job, _events.put, request)
    except KeyboardInterrupt:  # asked to stop before the segment started
        raise _interrupted(_guard.request.signum or signal.SIGTERM, []) from None
    finally:
        if _guard.parent_gone:
            # Nobody is left to report to, or to hand this worker more work.
            logging.shutdown()
            os._exit(128 + signal.SIGTERM)


def _drain(events: multiprocessing.queues.Queue[Event | None], report: Reporter) -> None:
    while True:
        event = events.get()
        if event is None:
            return
        report(event)


def _failed_results(exc: NcmError) -> list[StepResult]:
    return list(exc.results)


def _not_run(run: RunReport, jobs: list[SegmentJob]) -> None:
    seen = {(r.service, r.revision, r.direction) for r in run.results}
    for job in jobs:
        for step in job.steps:
            if (step.service, step.revision, step.direction) not in seen:
                run.results.append(StepResult(step.service, step.revision, step.direction, "not-run"))
