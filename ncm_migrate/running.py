"""Running a plan for a command: confirmation in protected environments, backups before
migrating, the audit log, the executor, and rolling back on failure.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .audit import AuditLog
from .backends import opened_backend
from .backups import Manifest
from .callbacks import RunCallbacks
from .errors import Interrupted
from .events import Event, Reporter, RunReport
from .executor import SegmentJob, apply_plan, segments
from .graph import undo_plan
from .interrupts import stopping_on_signals
from .model import Plan, RevisionKey, ServiceConfig, StepResult
from .project import Project
from .questioner import NonInteractiveQuestioner, Questioner, confirm_plan

log = logging.getLogger(__name__)


@dataclass
class MigrateResult:
    """What `migrate` and `rollback` did: the plan, each step's outcome, and (with
    rollback on failure) what was undone afterwards."""

    plan: Plan
    report: RunReport = field(default_factory=RunReport)
    run_id: str | None = None  # this run's, in the ledger and the audit log
    undid_run: str | None = None  # `rollback --run`/`--last-run`: the run it reverted
    undo: RunReport | None = None
    kept: list[str] = field(default_factory=list)  # not rolled back: a dirty service needs them
    # after_* hooks that failed and a webhook that could not be told: reported, not errors
    callback_failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.report.ok

    @property
    def results(self) -> list[StepResult]:
        return self.report.results + (self.undo.results if self.undo else [])

    def raise_for_error(self) -> MigrateResult:
        """Raise the error that stopped the run, carrying every step's outcome."""
        error = self.report.error
        if error is None:
            return self
        error.results = self.results
        error.run_id = self.run_id
        if self.undo is not None:
            undone = [f"{r.service}:{r.revision}" for r in self.undo.results if r.outcome == "reverted"]
            note = f" Rolled back this run's revisions: {', '.join(undone) or 'none'}."
            if self.undo.error is not None:
                note += f" Could not roll back further: {self.undo.error}"
            error.args = (f"{error}{note}",)
        if self.undo is not None or self.kept:
            for service in self.left_dirty():
                error.args = (f"{error} {self._kept_note(service)}",)
        if self.kept:
            error.args = (f"{error} Also not rolled back, as those revisions require them: "
                          f"{', '.join(self.kept)}.",)
        raise error

    def _kept_note(self, service: str) -> str:
        failed = next(r for r in self.report.results if r.service == service and r.dirty)
        applied = [r.revision for r in self.report.results
                   if r.service == service and r.outcome == "applied"]
        then = (f", then roll back what this run applied there ({', '.join(applied)}) with "
                f"`manage.py rollback {service}`" if applied else "")
        return (f"Service '{service}' is left as it is, dirty at {failed.revision} (part of it "
                f"may have run): check the database, run `manage.py repair {service}`{then}.")

    def left_dirty(self) -> list[str]:
        """The services whose failed step this run left dirty."""
        return list(dict.fromkeys(r.service for r in self.report.results if r.dirty))


def confirm_protected(
    project: Project,
    steps: Plan,
    fake: bool,
    questioner: Questioner | None,
    also: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """In a protected environment, have destructive work (and what `also` names, per
    service) confirmed before anything runs."""
    if project.settings.protected and steps:
        configs = {s.name: s for s in project.settings.services}
        confirm_plan(questioner or NonInteractiveQuestioner(), project.settings.env, steps,
                     project.revisions, configs, project.root, fake, also)


def take_backup(
    project: Project, svc: ServiceConfig, out: Path | None, audit: AuditLog
) -> tuple[Path, Manifest]:
    """A backup of one service, taken under its lock and written to the audit log."""
    from .backups import backup_database, check_target, default_dir

    settings = project.settings
    folder = out or default_dir(settings.backup.dir, settings.env, svc.name)
    check_target(folder, settings.backup.encryption_key)
    with opened_backend(svc, settings.connect) as backend, backend.lock(settings.lock.timeout_s):
        heads = backend.read_state(project.revisions[svc.name]).heads
        manifest = backup_database(svc, folder, environment=settings.env, heads=heads,
                                   encryption_key=settings.backup.encryption_key,
                                   lock_timeout_s=settings.lock.timeout_s)
    audit.record(svc.name, "backed-up", detail=f"to {folder}")
    return folder, manifest


def run_plan(
    project: Project,
    steps: Plan,
    fake: bool,
    jobs: int | None,
    report: Reporter | None,
    rollback_on_failure: bool | None = None,
    command: str = "migrate",
) -> MigrateResult:
    """Run `steps` between the settings' hooks (`callbacks.RunCallbacks`): nothing runs
    when a `before_migrate` hook fails; the after hooks and the webhook see the outcome."""
    settings = project.settings
    audit = AuditLog.open(settings.audit_log_path, settings.root, command, settings.env)
    callbacks = RunCallbacks(settings, steps, command, audit.ctx)
    refused = callbacks.before()
    if refused is not None:
        return MigrateResult(steps, RunReport(error=refused), run_id=audit.ctx.run_id)
    try:
        result = _run_plan(project, steps, fake, jobs, callbacks.after_step(report or _ignore),
                           rollback_on_failure, audit)
    except BaseException as exc:
        callbacks.after([], exc)
        raise
    callbacks.after(result.results, result.report.error)
    result.callback_failures = callbacks.failures
    return result


def _run_plan(
    project: Project,
    steps: Plan,
    fake: bool,
    jobs: int | None,
    report: Reporter,
    rollback_on_failure: bool | None,
    audit: AuditLog,
) -> MigrateResult:
    settings = project.settings
    if settings.backup.before_migrate and not fake:
        for name in steps.services():
            folder, _manifest = take_backup(project, project.service(name), None, audit)
            log.warning("backed up service '%s' to %s before migrating", name, folder)
    report = audit.reporter(report)
    ctx = audit.ctx

    def jobs_for(plan: Plan) -> list[SegmentJob]:
        return [
            SegmentJob(
                config=project.service(seg[0].service),
                connect=settings.connect,
                lock_timeout_s=settings.lock.timeout_s,
                revisions=project.revisions[seg[0].service],
                steps=seg,
                ctx=ctx,
                fake=fake,
                allow_checksum_drift=settings.allow_checksum_drift,
                lock_lease_s=settings.lock.lease_s,
                ddl=settings.ddl,
            )
            for seg in segments(plan)
        ]

    parallel = jobs if jobs is not None else settings.jobs
    if rollback_on_failure is None:
        rollback_on_failure = settings.rollback_on_failure
    with audit.held_open(), stopping_on_signals() as stop:
        run = apply_plan(steps, project.graph, jobs_for(steps), parallel, report, stop)
        result = MigrateResult(steps, run, run_id=ctx.run_id)
        if isinstance(run.error, Interrupted):
            if rollback_on_failure:
                log.warning("interrupted: nothing is rolled back (that is more work after being "
                            "asked to stop); run `manage.py migrate` again, or roll back by hand")
        elif run.error is not None and rollback_on_failure:
            kept = kept_by_dirty(project, run.results)
            undo = undo_plan([r for r in run.results
                              if RevisionKey(r.service, r.revision) not in kept])
            dirty = set(result.left_dirty())
            result.kept = [f"{r.service}:{r.revision}" for r in run.results
                           if r.outcome == "applied" and r.service not in dirty
                           and RevisionKey(r.service, r.revision) in kept]
            if undo.steps:
                log.warning("rolling back the %d revision(s) this run applied", len(undo.steps))
                result.undo = apply_plan(undo, project.graph, jobs_for(undo), 1, report, stop)
            elif dirty:
                result.undo = RunReport()  # nothing to roll back: say so, and why
    return result


def kept_by_dirty(project: Project, results: list[StepResult]) -> set[RevisionKey]:
    """What rolling back must leave alone after a failure that left a service dirty: that
    service's revisions (what its failed step left behind needs a person first: `repair`),
    and every revision they require."""
    dirty = {r.service for r in results if r.dirty}
    keep = [RevisionKey(r.service, r.revision) for r in results
            if r.service in dirty and r.outcome in ("applied", "failed")]
    return project.graph.ancestors(keep, intra_only=False) if keep else set()


def _ignore(_event: Event) -> None:
    return None
