"""The public verbs, for Python callers and the CLI alike.

Each verb loads the project for an environment, wires discovery, graph, backends and the
executor, and returns plain values; none prints. Errors are `NcmError`s with exit codes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import health
from .errors import BadInput, MultipleHeads, RollbackRefused, ServiceNotConfigured
from .executor import Event, Reporter, RunReport, SegmentJob, apply_plan, open_backend, segments
from .graph import (
    HEAD,
    ZERO,
    dependents_outside,
    keep_for_target,
    last_applied,
    plan_downgrade,
    plan_upgrade,
    removal_set,
    upgrade_targets,
)
from .ledger import run_context
from .model import LedgerRow, Plan, RevisionKey, ServiceConfig, ServiceState
from .project import Project, load_project
from .urls import mask_url

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
    """What `migrate` and `rollback` did: the plan, and each step's outcome."""

    plan: Plan
    report: RunReport = field(default_factory=RunReport)

    @property
    def ok(self) -> bool:
        return self.report.ok


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
    for svc in selected:
        state = states[svc.name]
        order = plan_upgrade(project.graph, {}, upgrade_targets(project.graph, [svc.name]))
        revs = [s for s in order.steps if s.service == svc.name]
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
) -> MigrateResult:
    """Bring services to head (or one service to `target`, forwards or backwards).

    `confirm` sees the plan before anything runs and may raise to refuse it.
    """
    project = load_project(root, env, settings_dir)
    steps, _states = _plan(project, services, target, cascade)
    if confirm is not None:
        confirm(steps)
    return _execute(project, steps, fake, jobs, report)


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
) -> MigrateResult:
    """Move `service` backwards to `target`, or by `steps` revisions (default 1)."""
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
    if confirm is not None:
        confirm(downgrade)
    return _execute(project, downgrade, fake, 1, report)


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


# -- wiring ------------------------------------------------------------------------


def _require_sql(svc: ServiceConfig, what: str) -> None:
    if svc.backend != "sql":
        raise BadInput(f"`{what}` works on SQL services; '{svc.name}' is a {svc.backend} service.")


def _states_for(project: Project, names: Sequence[str]) -> dict[str, ServiceState]:
    """States of every active service (a plan may reach into any of them)."""
    active = [s.name for s in project.settings.services if s.active]
    return read_states(project, sorted(set(active) | set(names)))


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
    return plan_downgrade(project.graph, remove | blockers)


def _execute(
    project: Project, steps: Plan, fake: bool, jobs: int | None, report: Reporter | None
) -> MigrateResult:
    settings = project.settings
    ctx = run_context(settings.env)
    segment_jobs = [
        SegmentJob(
            config=project.service(seg[0].service),
            connect=settings.connect,
            lock_timeout_s=settings.lock.timeout_s,
            revisions=project.revisions[seg[0].service],
            steps=seg,
            ctx=ctx,
            fake=fake,
            allow_checksum_drift=settings.allow_checksum_drift,
        )
        for seg in segments(steps)
    ]
    parallel = jobs if jobs is not None else settings.jobs
    run = apply_plan(steps, project.graph, segment_jobs, parallel, report or _ignore)
    return MigrateResult(steps, run)


def _ignore(_event: Event) -> None:
    return None

