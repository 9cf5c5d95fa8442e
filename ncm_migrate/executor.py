"""Runs a plan: for each service's run of steps, lock, read state, apply, record, report.

The executor never prints: it reports through a callback the command supplies. With
`jobs > 1`, runs of independent services go to separate processes (Alembic's `op` and
`context` are module-level state, unsafe across threads); one failure stops new work from
starting while running work finishes.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.context
import multiprocessing.queues
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Literal

from .backends import Backend, make_backend
from .errors import NcmError
from .graph import Graph
from .logs import configure_logging, current_levels
from .model import Plan, Revision, RunContext, ServiceConfig, Step, StepResult
from .retry import open_with_retries
from .rules import check_state
from .settings import ConnectSettings
from .urls import remember_secret

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    """Progress: the plan about to run (`plan`), or one step that started or finished."""

    kind: Literal["plan", "start", "done"]
    step: Step | None = None
    result: StepResult | None = None
    plan: Plan | None = None


Reporter = Callable[[Event], None]


@dataclass
class RunReport:
    """Every step's outcome, and the error that stopped the run, if one did."""

    results: list[StepResult] = field(default_factory=list)
    error: NcmError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


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


def run_segment(job: SegmentJob, report: Reporter) -> list[StepResult]:
    """Apply one service's steps under its lock, skipping what another runner already did."""
    remember_secret(job.config.database_url)
    backend = make_backend(job.config, job.connect, job.lock_lease_s)
    open_with_retries(backend, job.connect)
    try:
        with backend.lock(job.lock_timeout_s):
            state = backend.read_state(job.revisions)
            check_state(job.config, state, job.revisions, job.allow_checksum_drift)
            todo = [s for s in job.steps if (s.direction == "up") != (s.revision in state.applied)]
            skipped = [
                StepResult(s.service, s.revision, s.direction, "skipped")
                for s in job.steps
                if (s.direction == "up") == (s.revision in state.applied)
            ]
            for result in skipped:
                log.info("%s:%s already done by another runner", result.service, result.revision)

            def on_step(step: Step, phase: str, result: StepResult | None) -> None:
                report(Event("start" if phase == "start" else "done", step, result))

            try:
                return skipped + backend.apply(todo, job.revisions, job.ctx, job.fake, on_step)
            except NcmError as exc:
                exc.results = skipped + exc.results
                raise
    finally:
        backend.close()


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
) -> RunReport:
    """Run every segment job (one per segment of `plan`), at most `parallel` at once."""
    run = RunReport()
    report(Event("plan", plan=plan))
    if parallel <= 1 or len(jobs) <= 1:
        for job in jobs:
            try:
                run.results.extend(run_segment(job, report))
            except NcmError as exc:
                run.results.extend(_failed_results(exc))
                run.error = exc
                break
        _not_run(run, jobs)
        return run
    return _apply_parallel(plan, graph, jobs, parallel, report, run)


def _apply_parallel(
    plan: Plan,
    graph: Graph,
    jobs: list[SegmentJob],
    parallel: int,
    report: Reporter,
    run: RunReport,
) -> RunReport:
    segs = [job.steps for job in jobs]
    waits = segment_waits(graph, segs)
    mp = _process_context()
    events: multiprocessing.queues.Queue[Event | None] = mp.Queue()
    drain = threading.Thread(target=_drain, args=(events, report), daemon=True)
    done: set[int] = set()
    running: dict[Future[list[StepResult]], int] = {}
    pending = list(range(len(jobs)))
    try:
        with ProcessPoolExecutor(
            max_workers=min(parallel, len(jobs)), mp_context=mp,
            initializer=_init_worker, initargs=(current_levels(), events),
        ) as pool:
            while pending or running:
                if run.error is None:
                    for i in [i for i in pending if waits[i] <= done]:
                        if len(running) >= parallel:
                            break
                        pending.remove(i)
                        running[pool.submit(_worker, jobs[i])] = i
                if drain.ident is None:  # after the first workers are forked
                    drain.start()
                if not running:
                    break
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in finished:
                    i = running.pop(fut)
                    try:
                        run.results.extend(fut.result())
                        done.add(i)
                    except NcmError as exc:
                        run.results.extend(_failed_results(exc))
                        if run.error is None:
                            run.error = exc
    finally:
        events.put(None)
        if drain.ident is None:
            drain.start()
        drain.join()
        events.close()
    _not_run(run, jobs)
    order = {s.key: n for n, s in enumerate(plan.steps)}
    run.results.sort(key=lambda r: order.get(Step(r.service, r.revision, r.direction).key, 0))
    return run


def _process_context() -> multiprocessing.context.BaseContext:
    """Worker processes that start fast. On Linux, fork: the parent has closed every
    connection and runs no other thread while the pool forks (the event drain starts
    after), and children need no imports. Elsewhere, spawn."""
    if sys.platform == "linux":
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


_events: multiprocessing.queues.Queue[Event | None] | None = None


def _init_worker(levels: dict[str, int], events: multiprocessing.queues.Queue[Event | None]) -> None:
    global _events
    configure_logging(levels)
    _events = events


def _worker(job: SegmentJob) -> list[StepResult]:
    assert _events is not None
    return run_segment(job, _events.put)


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


def open_backend(config: ServiceConfig, connect: ConnectSettings) -> Backend:
    backend = make_backend(config, connect)
    open_with_retries(backend, connect)
    return backend
