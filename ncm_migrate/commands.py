"""The public verbs, for Python callers and the CLI alike.

Each verb loads the project for an environment, wires discovery, graph, backends and the
executor, and returns plain values; none prints. Errors are `NcmError`s with exit codes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import health
from .audit import AuditLog
from .backups import Manifest
from .errors import BadInput, MultipleHeads, RollbackRefused, ServiceNotConfigured
from .executor import (
    Event,
    Reporter,
    RunReport,
    SegmentJob,
    apply_plan,
    check_state,
    open_backend,
    segments,
)
from .findings import Report
from .graph import (
    HEAD,
    ZERO,
    dependents_outside,
    keep_for_target,
    last_applied,
    plan_downgrade,
    plan_upgrade,
    removal_set,
    undo_plan,
    upgrade_targets,
)
from .model import LedgerRow, Plan, RevisionKey, ServiceConfig, ServiceState, StepResult
from .project import Project, find_root, load_project
from .questioner import NonInteractiveQuestioner, Questioner, confirm_plan
from .repairs import RepairAction
from .settings import load_settings, settings_dir_of
from .urls import mask_url

if TYPE_CHECKING:
    from .new_revisions import Outcome

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceInfo:
    name: str
    backend: str
    url: str
    version_table: str
    depends_on: tuple[str, ...]
    enabled: bool
    skip_reason: str | None


@dataclass(frozen=True)
class RevisionStatus:
    revision: str
    applied: bool
    path: str
    doc: str = ""


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    backend: str
    heads: tuple[str, ...]
    current: tuple[str, ...]
    pending: int
    dirty: str | None
    revisions: tuple[RevisionStatus, ...]
    conflicting_heads: tuple[str, ...] = ()


@dataclass
class MigrateResult:
    """What `migrate` and `rollback` did: the plan, each step's outcome, and (with
    rollback on failure) what was undone afterwards."""

    plan: Plan
    report: RunReport = field(default_factory=RunReport)
    undo: RunReport | None = None

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
        if self.undo is not None:
            undone = [f"{r.service}:{r.revision}" for r in self.undo.results if r.outcome == "reverted"]
            note = f" Rolled back this run's revisions: {', '.join(undone) or 'none'}."
            if self.undo.error is not None:
                note += f" Could not roll back further: {self.undo.error}"
            error.args = (f"{error}{note}",)
        raise error


def services(
    *, env: str | None = None, root: Path | None = None, settings_dir: Path | None = None
) -> list[ServiceInfo]:
    """The services found, with masked URLs."""
    project = load_project(root, env, settings_dir)
    return [
        ServiceInfo(
            name=s.name,
            backend=s.backend,
            url=mask_url(s.database_url),
            version_table=s.version_table,
            depends_on=s.depends_on,
            enabled=s.enabled,
            skip_reason=s.skip_reason,
        )
        for s in project.settings.services
    ]


def read_states(project: Project, names: Sequence[str]) -> dict[str, ServiceState]:
    """Each named service's state, read from its database (connecting with retries)."""
    states: dict[str, ServiceState] = {}
    for name in names:
        backend = open_backend(project.service(name), project.settings.connect)
        try:
            states[name] = backend.read_state(project.revisions[name])
        finally:
            backend.close()
    return states


def showmigrations(
    services: Sequence[str] = (),
    *,
    env: str | None = None,
    root: Path | None = None,
    settings_dir: Path | None = None,
) -> list[ServiceStatus]:
    """Every revision of the selected services, applied or not, in the order they run."""
    project = load_project(root, env, settings_dir)
    selected = project.select(services)
    states = read_states(project, [s.name for s in selected])
    out = []
    # One plan for every selected service (not one per service: with cross-service
    # `requires` each would walk most of the graph again), split per service.
    names = [svc.name for svc in selected]
    order = plan_upgrade(project.graph, {}, upgrade_targets(project.graph, names)).steps
    for svc in selected:
        state = states[svc.name]
        revs = [s for s in order if s.service == svc.name]
        statuses = tuple(
            RevisionStatus(
                revision=s.revision,
                applied=s.revision in state.applied,
                path=str(project.revisions[svc.name][s.revision].path.relative_to(project.root)),
                doc=project.revisions[svc.name][s.revision].doc,
            )
            for s in revs
        )
        out.append(
            ServiceStatus(
                name=svc.name,
                backend=svc.backend,
                heads=project.graph.heads(svc.name),
                current=state.heads,
                pending=sum(1 for r in statuses if not r.applied),
                dirty=state.dirty,
                revisions=statuses,
                conflicting_heads=project.graph.conflicting_heads(svc.name),
            )
        )
    return out


def plan(
    services: Sequence[str] = (),
    target: str | None = None,
    *,
    env: str | None = None,
    root: Path | None = None,
    settings_dir: Path | None = None,
    cascade: bool = False,
) -> Plan:
    """The exact steps `migrate` would run, in order, without changing anything."""
    project = load_project(root, env, settings_dir)
    return _plan(project, services, target, cascade)[0]


def migrate(
    services: Sequence[str] = (),
    target: str | None = None,
    *,
    env: str | None = None,
    root: Path | None = None,
    settings_dir: Path | None = None,
    fake: bool = False,
    jobs: int | None = None,
    cascade: bool = False,
    report: Reporter | None = None,
    confirm: Callable[[Plan], None] | None = None,
    questioner: Questioner | None = None,
    rollback_on_failure: bool | None = None,
) -> MigrateResult:
    """Bring services to head (or one service to `target`, forwards or backwards).

    Raises the error that stopped the run (`MigrationFailed`, `DirtyService`, ...) with
    every step's outcome in its `results`; with `rollback_on_failure` (default: the
    setting), first rolls back every revision this run applied, in reverse order.

    In a protected environment `questioner` (default: refuse) confirms downgrades,
    destructive revisions and `fake`; `confirm` then sees the plan before anything runs
    and may raise to refuse it.
    """
    project = load_project(root, env, settings_dir)
    steps, _states = _plan(project, services, target, cascade)
    _confirm_protected(project, steps, fake, questioner)
    if confirm is not None:
        confirm(steps)
    return _execute(project, steps, fake, jobs, report, rollback_on_failure).raise_for_error()


async def amigrate(
    services: Sequence[str] = (), target: str | None = None, **options: Any
) -> MigrateResult:
    """`migrate` without blocking the event loop (for FastAPI/Starlette lifespans): the
    same work, the same results and errors, in a worker thread."""
    return await asyncio.to_thread(functools.partial(migrate, services, target, **options))


@dataclass(frozen=True)
class VerifyResult:
    service: str
    revision: str
    ok: bool
    error: str | None = None


def verify(
    services: Sequence[str] = (),
    *,
    env: str | None = None,
    root: Path | None = None,
    settings_dir: Path | None = None,
) -> list[VerifyResult]:
    """Re-run the `verify` functions of applied revisions, changing nothing."""
    project = load_project(root, env, settings_dir)
    out = []
    for svc in project.select(services):
        backend = open_backend(svc, project.settings.connect)
        try:
            state = backend.read_state(project.revisions[svc.name])
            order = plan_upgrade(project.graph, {}, upgrade_targets(project.graph, [svc.name]))
            for step in order.steps:
                rev = project.revisions[svc.name].get(step.revision)
                if step.service != svc.name or rev is None or step.revision not in state.applied:
                    continue
                if "verify" in rev.defines:
                    error = backend.verify(rev)
                    out.append(VerifyResult(svc.name, rev.revision, error is None, error))
        finally:
            backend.close()
    return out


def rollback(
    service: str,
    target: str | None = None,
    *,
    steps: int | None = None,
    cascade: bool = False,
    env: str | None = None,
    root: Path | None = None,
    settings_dir: Path | None = None,
    fake: bool = False,
    report: Reporter | None = None,
    confirm: Callable[[Plan], None] | None = None,
    questioner: Questioner | None = None,
) -> MigrateResult:
    """Move `service` backwards to `target`, or by `steps` revisions (default 1); in a
    protected environment only once `questioner` (default: refuse) confirms it."""
    project = load_project(root, env, settings_dir)
    svc = project.select([service])[0]
    if target is not None and steps is not None:
        raise BadInput("Give rollback either a TARGET or --steps, not both.")
    states = _states_for(project, [svc.name])
    applied = {name: st.applied for name, st in states.items()}
    if target is None:
        remove = last_applied(project.graph, applied, svc.name, steps or 1)
    else:
        keep = keep_for_target(project.graph, svc.name, target)
        remove = removal_set(project.graph, applied, svc.name, keep)
    downgrade = _downgrade_plan(project, applied, remove, cascade)
    _confirm_protected(project, downgrade, fake, questioner)
    if confirm is not None:
        confirm(downgrade)
    return _execute(project, downgrade, fake, 1, report, rollback_on_failure=False,
                    command="rollback").raise_for_error()


def sqlmigrate(
    service: str,
    revision: str,
    *,
    backwards: bool = False,
    env: str | None = None,
    root: Path | None = None,
    settings_dir: Path | None = None,
) -> str:
    """The SQL one revision runs, rendered without a database."""
    project = load_project(root, env, settings_dir)
    svc = project.select([service])[0]
    _require_sql(svc, "sqlmigrate")
    rev = project.graph.resolve(svc.name, revision)
    node = project.revisions[svc.name][rev]
    from .backends.sql import SqlBackend
    from .model import Step

    start = (rev,) if backwards else node.down_revisions
    step = Step(svc.name, rev, "down" if backwards else "up")
    return SqlBackend(svc, 1.0).offline_sql([step], project.revisions[svc.name], start)


def migrate_sql(
    services: Sequence[str] = (),
    target: str | None = None,
    *,
    env: str | None = None,
    root: Path | None = None,
    settings_dir: Path | None = None,
) -> str:
    """The SQL `migrate` would run against the databases' current state, without running it."""
    project = load_project(root, env, settings_dir)
    steps, states = _plan(project, services, target, cascade=False)
    from .backends.sql import SqlBackend

    applied = {name: set(st.applied) for name, st in states.items()}
    chunks = []
    for seg in segments(steps):
        svc = project.service(seg[0].service)
        _require_sql(svc, "migrate --sql")
        start = project.graph.heads_of(svc.name, frozenset(applied[svc.name]))
        sql = SqlBackend(svc, 1.0).offline_sql(list(seg), project.revisions[svc.name], start)
        chunks.append(f"-- service {svc.name} ({mask_url(svc.database_url)})\n{sql}")
        for step in seg:
            (applied[svc.name].add if step.direction == "up" else applied[svc.name].discard)(
                step.revision
            )
    return "\n".join(chunks)


def history(
    services: Sequence[str] = (),
    *,
    limit: int | None = None,
    env: str | None = None,
    root: Path | None = None,
    settings_dir: Path | None = None,
) -> list[LedgerRow]:
    """The ledger rows of the selected services, oldest first."""
    project = load_project(root, env, settings_dir)
    rows: list[LedgerRow] = []
    for svc in project.select(services):
        backend = open_backend(svc, project.settings.connect)
        try:
            rows.extend(backend.history(limit))
        finally:
            backend.close()
    rows.sort(key=lambda r: (r.started_at, str(r.id)))
    return rows[-limit:] if limit else rows


def wait(
    services: Sequence[str] = (),
    *,
    timeout: float | None = None,
    env: str | None = None,
    root: Path | None = None,
    settings_dir: Path | None = None,
) -> dict[str, float]:
    """Wait until every selected database accepts a real query (default budget:
    `connect.max_wait_s`); the seconds each took. `DatabaseUnreachable` (exit 4) otherwise."""
    project = load_project(root, env, settings_dir)
    budget = project.settings.connect.max_wait_s if timeout is None else timeout
    return health.wait_for(project, project.select(services), budget)


def doctor(
    services: Sequence[str] = (),
    *,
    env: str | None = None,
    root: Path | None = None,
    settings_dir: Path | None = None,
) -> list[health.Diagnosis]:
    """Connectivity, latency, server version, privileges, heads, pending and lock state."""
    project = load_project(root, env, settings_dir)
    return health.diagnose(project, project.select(services))


def validate(
    services: Sequence[str] = (),
    *,
    strict: bool = False,
    env: str | None = None,
    root: Path | None = None,
    settings_dir: Path | None = None,
) -> Report:
    """Graph, files, version tables, applied checksums and lint, as findings (no exception
    for what it finds: `Report.exit_code` says 0, 1 or 2)."""
    from .validation import validate_settings

    settings = load_settings(root or find_root(), env, settings_dir)
    return Report.of(validate_settings(settings, services), strict)


def lint(
    services: Sequence[str] = (),
    *,
    strict: bool = False,
    env: str | None = None,
    root: Path | None = None,
    settings_dir: Path | None = None,
) -> Report:
    """Dangerous operations in the selected services' `upgrade()`s (no database needed)."""
    from .linting import lint_service
    from .validation import read_inventory, select

    settings = load_settings(root or find_root(), env, settings_dir)
    revisions = read_inventory(settings).revisions
    findings = []
    for svc in select(settings, services):
        findings += lint_service(svc, revisions[svc.name], settings.lint_severity, settings.root,
                                 squawk=settings.lint_squawk)
    return Report.of(findings, strict)


def check(
    *,
    strict: bool = False,
    env: str | None = None,
    root: Path | None = None,
    settings_dir: Path | None = None,
) -> Report:
    """For CI: validate every service, plus pending revisions, dirty marks and models.py
    changes that no revision holds yet (`makemigrations --check`)."""
    from .validation import models_findings, validate_settings

    settings = load_settings(root or find_root(), env, settings_dir)
    findings = validate_settings(settings, (), pending=True)
    report = Report.of(findings, strict)
    if report.exit_code == 2:
        return report  # the graph cannot be built: nothing to compare models with
    return Report.of(findings + models_findings(load_project(root, env, settings_dir)), strict)


def repair(
    service: str,
    *,
    questioner: Questioner | None = None,
    env: str | None = None,
    root: Path | None = None,
    settings_dir: Path | None = None,
) -> list[RepairAction]:
    """Clear `service`'s dirty mark and re-record edited revisions' checksums, in the ledger
    and the audit log."""
    from .repairs import repair_service

    project = load_project(root, env, settings_dir)
    svc = project.select([service])[0]
    settings = project.settings
    if settings.protected:
        (questioner or NonInteractiveQuestioner()).confirm(
            settings.env, svc.name, ["rewrites its ledger (repair)"]
        )
    audit = AuditLog.open(settings.audit_log_path, settings.root, "repair", settings.env)
    backend = open_backend(svc, settings.connect)
    try:
        actions = repair_service(backend, project.revisions[svc.name], audit.ctx, settings.lock.timeout_s)
    finally:
        backend.close()
    for action in actions:
        audit.record(svc.name, action.status, revision=action.revision, direction=action.direction,
                     detail=action.reason)
    return actions


def backup(
    service: str,
    out: Path | None = None,
    *,
    env: str | None = None,
    root: Path | None = None,
    settings_dir: Path | None = None,
) -> tuple[Path, Manifest]:
    """Back up one service's database into `out` (default `backup.dir/<env>/<svc>/<time>/`)."""
    project = load_project(root, env, settings_dir)
    svc = project.select([service])[0]
    audit = AuditLog.open(project.settings.audit_log_path, project.root, "backup", project.settings.env)
    return _backup(project, svc, out, audit)


def restore(
    service: str,
    folder: Path,
    *,
    questioner: Questioner | None = None,
    env: str | None = None,
    root: Path | None = None,
    settings_dir: Path | None = None,
) -> Manifest:
    """Replace one service's database with a backup (confirmed first where protected)."""
    from .backups import read_manifest, restore_database

    project = load_project(root, env, settings_dir)
    svc = project.select([service])[0]
    settings = project.settings
    manifest = read_manifest(folder)
    if settings.protected:
        (questioner or NonInteractiveQuestioner()).confirm(
            settings.env, svc.name, [f"replaces its whole database with the backup in {folder}"]
        )
    audit = AuditLog.open(settings.audit_log_path, settings.root, "restore", settings.env)
    backend = open_backend(svc, settings.connect)
    try:
        with backend.lock(settings.lock.timeout_s):
            manifest = restore_database(svc, folder, encryption_key=settings.backup.encryption_key)
    finally:
        backend.close()
    audit.record(svc.name, "restored", detail=f"from {folder} (heads {', '.join(manifest.heads) or 'none'})")
    return manifest


def makemigrations(
    services: Sequence[str] = (),
    *,
    message: str | None = None,
    migration_type: str | None = None,
    empty: bool = False,
    requires: Sequence[str] = (),
    check: bool = False,
    dry_run: bool = False,
    merge: bool = False,
    env: str | None = None,
    root: Path | None = None,
    settings_dir: Path | None = None,
) -> Outcome:
    """New revision files from templates, autogenerated from models.py where a service has
    one (compared with a scratch database, never the service's own).

    `check` writes nothing and raises `ModelsChanged` (exit 1) naming the services whose
    models differ; `merge` writes a merge revision for one service's conflicting heads.
    """
    from . import new_revisions as mm

    project = load_project(root, env, settings_dir)
    templates_dir = settings_dir_of(project.root, settings_dir)
    if check:
        mm.check_models(project, services)
        return mm.Outcome()
    if merge:
        if len(services) != 1:
            raise BadInput("--merge needs exactly one service: `makemigrations SVC --merge`.")
        new = mm.make_merge(project, services[0], templates_dir, message, dry_run)
        return mm.Outcome(written=(new,) if new else (), unchanged=() if new else (services[0],),
                          dry_run=dry_run)
    request = mm.Request(message, migration_type, empty, tuple(requires))
    return mm.make_migrations(project, services, request, templates_dir, dry_run)


def startservice(
    name: str,
    *,
    backend: str | None = None,
    database_url: str | None = None,
    env: str | None = None,
    root: Path | None = None,
    settings_dir: Path | None = None,
) -> list[Path]:
    """Scaffold `services/<name>/`: migrations/, models.py (SQL) and its settings.toml."""
    from .scaffold import start_service

    return start_service(root or find_root(), name, backend, database_url, env, settings_dir)


def init(directory: Path | None = None) -> list[Path]:
    """Scaffold manage.py, settings/ and services/ into `directory` (default: here)."""
    from .scaffold import init_project

    return init_project(directory or Path.cwd())


# -- wiring ------------------------------------------------------------------------


def _require_sql(svc: ServiceConfig, what: str) -> None:
    if svc.backend != "sql":
        raise BadInput(f"`{what}` works on SQL services; '{svc.name}' is a {svc.backend} service.")


def _states_for(project: Project, names: Sequence[str]) -> dict[str, ServiceState]:
    """States of `names` and of every active service a plan over them may reach: what
    they need (forwards) and what needs them (backwards, for the cross-service rule)."""
    graph = project.graph
    keys = [k for k in graph.nodes if k.service in names]
    reach = graph.ancestors(keys, intra_only=False) | graph.descendants(keys)
    involved = set(names) | {k.service for k in reach}
    active = {s.name for s in project.settings.services if s.active}
    return read_states(project, sorted(involved & active | set(names)))


def _plan(
    project: Project, names: Sequence[str], target: str | None, cascade: bool
) -> tuple[Plan, dict[str, ServiceState]]:
    if target is not None and len(names) != 1:
        raise BadInput("A TARGET needs exactly one service: `migrate SVC TARGET`.")
    selected = project.select(names)
    for svc in selected:
        heads = project.graph.conflicting_heads(svc.name)
        if heads and not (target and target not in HEAD):
            raise MultipleHeads(
                f"Service '{svc.name}' has several heads that fork without a merge: "
                f"{', '.join(heads)}; run `manage.py makemigrations {svc.name} --merge`."
            )
    states = _states_for(project, [s.name for s in selected])
    applied = {name: st.applied for name, st in states.items()}
    if target is not None and target not in HEAD:
        svc = selected[0]
        keep = keep_for_target(project.graph, svc.name, target)
        remove = removal_set(project.graph, applied, svc.name, keep)
        if target in ZERO or remove:
            return _downgrade_plan(project, applied, remove, cascade), states
        rev = project.graph.resolve(svc.name, target)
        targets = [RevisionKey(svc.name, rev)]
    else:
        targets = upgrade_targets(project.graph, [s.name for s in selected])
    steps = plan_upgrade(project.graph, applied, targets)
    for step in steps.steps:
        if step.service not in applied:
            config = project.service(step.service)
            raise ServiceNotConfigured(
                f"{step.service}:{step.revision} must be applied first (something in the plan "
                f"requires it), but service '{step.service}' cannot be used in environment "
                f"'{project.settings.env}': {config.skip_reason}."
            )
    busy = set(steps.services())
    for svc in selected:
        # With nothing to do a service is still refused when dirty or drifted: its database
        # needs `repair`. (With steps, the executor checks under the lock: read here, a
        # `running` row may be another live runner's.)
        if svc.name not in busy:
            check_state(svc, states[svc.name], project.revisions[svc.name],
                        project.settings.allow_checksum_drift)
    return steps, states


def _downgrade_plan(
    project: Project,
    applied: dict[str, frozenset[str]],
    remove: set[RevisionKey],
    cascade: bool,
) -> Plan:
    blockers = dependents_outside(project.graph, applied, remove)
    if blockers and not cascade:
        raise RollbackRefused(
            "Refusing to roll back: applied revisions of other services still require it: "
            + ", ".join(str(b) for b in sorted(blockers))
            + "; roll those back first, or use --cascade."
        )
    return plan_downgrade(project.graph, remove | blockers, first=blockers)


def _confirm_protected(
    project: Project, steps: Plan, fake: bool, questioner: Questioner | None
) -> None:
    """In a protected environment, have destructive work confirmed before anything runs."""
    if project.settings.protected and steps:
        configs = {s.name: s for s in project.settings.services}
        confirm_plan(questioner or NonInteractiveQuestioner(), project.settings.env, steps,
                     project.revisions, configs, project.root, fake)


def _backup(project: Project, svc: ServiceConfig, out: Path | None, audit: AuditLog) -> tuple[Path, Manifest]:
    """A backup of one service, taken under its lock and written to the audit log."""
    from .backups import backup_database, default_dir

    settings = project.settings
    folder = out or default_dir(settings.backup.dir, settings.env, svc.name)
    backend = open_backend(svc, settings.connect)
    try:
        with backend.lock(settings.lock.timeout_s):
            heads = backend.read_state(project.revisions[svc.name]).heads
            manifest = backup_database(svc, folder, environment=settings.env, heads=heads,
                                       encryption_key=settings.backup.encryption_key)
    finally:
        backend.close()
    audit.record(svc.name, "backed-up", detail=f"to {folder}")
    return folder, manifest


def _execute(
    project: Project,
    steps: Plan,
    fake: bool,
    jobs: int | None,
    report: Reporter | None,
    rollback_on_failure: bool | None = None,
    command: str = "migrate",
) -> MigrateResult:
    settings = project.settings
    audit = AuditLog.open(settings.audit_log_path, settings.root, command, settings.env)
    if settings.backup.before_migrate and not fake:
        for name in steps.services():
            folder, _manifest = _backup(project, project.service(name), None, audit)
            log.warning("backed up service '%s' to %s before migrating", name, folder)
    report = audit.reporter(report or _ignore)
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
            )
            for seg in segments(plan)
        ]

    parallel = jobs if jobs is not None else settings.jobs
    run = apply_plan(steps, project.graph, jobs_for(steps), parallel, report)
    result = MigrateResult(steps, run)
    if rollback_on_failure is None:
        rollback_on_failure = settings.rollback_on_failure
    if run.error is not None and rollback_on_failure:
        undo = undo_plan(run.results)
        if undo.steps:
            log.warning("rolling back the %d revision(s) this run applied", len(undo.steps))
            result.undo = apply_plan(undo, project.graph, jobs_for(undo), 1, report)
    return result


def _ignore(_event: Event) -> None:
    return None

