"""The verbs that read and change nothing: the services, their status and plans, the SQL a
plan runs, the ledger, `verify`, `wait`, `doctor`, and the checks (`validate`, `lint`, `check`,
`drift`).

Re-exported by `commands`, where a Python caller finds every verb.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Unpack

from . import health, windows
from .backends import opened_backend
from .changes import Selection, changed_files, looks_like_path, select_changed, services_of_paths
from .config import Settings
from .errors import BadInput, NcmError, RevisionFileError
from .executor import segments
from .findings import Report
from .graph import Graph, plan_upgrade, upgrade_targets
from .loader import Location, Where, load_project_at
from .model import LedgerRow, Phase, Plan, ServiceConfig, ServiceState
from .phases import defer
from .planning import left_out, plan_migrate, read_states, window_holds
from .project import Project
from .settings import load_settings, settings_dir_of
from .urls import mask_url
from .windows import Clock

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
    # applied in the database, but no file on disk holds it (a branch switch): path is ""
    missing: bool = False
    phase: str = "pre"  # "post": runs after the deploy (`migrate --phase post`)


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
    # revisions the database has applied that no file holds; `migrate` and `rollback`
    # refuse the service until the branch that has them is checked out
    unknown: tuple[str, ...] = ()
    # of `pending`, the post-deploy revisions (`migrate --phase post` applies them)
    pending_post: int = 0


def services(
    **where: Unpack[Where],
) -> list[ServiceInfo]:
    """The services found, with masked URLs."""
    at = Location.of(where, "services")
    project = load_project_at(at)
    project.require_readable()
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


def showmigrations(
    services: Sequence[str] = (),
    **where: Unpack[Where],
) -> list[ServiceStatus]:
    """Every revision of the selected services, applied or not, in the order they run,
    and those their databases have applied that no file holds (`missing`).

    What a selected service needs from another service is not shown; a service this
    environment leaves out that its pending revisions need is named in a warning."""
    at = Location.of(where, "showmigrations")
    project = load_project_at(at)
    selected = project.select(services)
    states = read_states(project, [s.name for s in selected])
    # One plan for every selected service (not one per service: with cross-service
    # `requires` each would walk most of the graph again), split per service.
    names = [svc.name for svc in selected]
    targets = upgrade_targets(project.graph, names)
    order = plan_upgrade(project.graph, {}, targets)
    pending = plan_upgrade(project.graph, {n: states[n].applied for n in names}, targets)
    for why in left_out(project, pending).values():
        log.warning("%s", why)
    by_service: dict[str, list[str]] = {name: [] for name in names}
    for step in order.steps:
        if step.service in by_service:
            by_service[step.service].append(step.revision)
    return [_status(project, svc, states[svc.name], by_service[svc.name]) for svc in selected]


def _status(
    project: Project, svc: ServiceConfig, state: ServiceState, order: list[str]
) -> ServiceStatus:
    revisions = project.revisions[svc.name]
    # With a revision applied that no file holds, the version table's heads say nothing
    # about the revisions before it: the ledger still says which of them were applied.
    applied = state.applied | ({r for r, _ in state.checksums} if state.unknown else set())
    statuses = tuple(
        RevisionStatus(
            revision=rev,
            applied=rev in applied,
            path=project.relative_path(revisions[rev].path),
            doc=revisions[rev].doc,
            phase=revisions[rev].phase,
        )
        for rev in order
    ) + tuple(RevisionStatus(rev, applied=True, path="", missing=True) for rev in state.unknown)
    return ServiceStatus(
        name=svc.name,
        backend=svc.backend,
        heads=project.graph.heads(svc.name),
        current=state.heads,
        pending=sum(1 for r in statuses if not r.applied),
        dirty=state.dirty,
        revisions=statuses,
        conflicting_heads=project.graph.conflicting_heads(svc.name),
        unknown=state.unknown,
        pending_post=sum(1 for r in statuses if not r.applied and r.phase == "post"),
    )


def plan(
    services: Sequence[str] = (),
    target: str | None = None,
    *,
    cascade: bool = False,
    changed_since: str | None = None,
    phase: Phase | None = None,
    now: bool = False,
    clock: Clock | None = None,
    **where: Unpack[Where],
) -> Plan:
    """The exact steps `migrate` would run, in order, without changing anything; with
    `changed_since` (a git commit) only for the services changed since it and those that
    depend on them (`changes.select_changed`); in its `deferred`, those it would leave for a
    maintenance window (none with `now`)."""
    at = Location.of(where, "plan")
    project = load_project_at(at)
    if changed_since is not None:
        selection = _changed(project.settings, project.graph, changed_since, at)
        active = [n for n in selection.services if project.service(n).active]
        if not active:
            return Plan(())
        services = [*services, *(n for n in active if n not in services)] if services else active
    steps = plan_migrate(project, services, target, cascade, phase)[0]
    if now:
        return steps
    moment = (clock or windows.system_clock)()
    return defer(steps, project.graph, window_holds(project, steps, moment))


@dataclass(frozen=True)
class VerifyResult:
    service: str
    revision: str
    ok: bool
    error: str | None = None


def verify(
    services: Sequence[str] = (),
    **where: Unpack[Where],
) -> list[VerifyResult]:
    """Re-run the `verify` functions of applied revisions, changing nothing."""
    at = Location.of(where, "verify")
    project = load_project_at(at)
    out = []
    for svc in project.select(services):
        with opened_backend(svc, project.settings.connect) as backend:
            state = backend.read_state(project.revisions[svc.name])
            order = plan_upgrade(project.graph, {}, upgrade_targets(project.graph, [svc.name]))
            for step in order.steps:
                rev = project.revisions[svc.name].get(step.revision)
                if step.service != svc.name or rev is None or step.revision not in state.applied:
                    continue
                if "verify" in rev.defines:
                    error = backend.verify(rev)
                    out.append(VerifyResult(svc.name, rev.revision, error is None, error))
    return out


def sqlmigrate(
    service: str,
    revision: str,
    *,
    backwards: bool = False,
    **where: Unpack[Where],
) -> str:
    """The SQL one revision runs, rendered without a database."""
    at = Location.of(where, "sqlmigrate")
    project = load_project_at(at)
    svc = project.select([service])[0]
    _require_sql(svc, "sqlmigrate")
    rev = project.graph.resolve(svc.name, revision)
    node = project.revisions[svc.name][rev]
    from .backends.sql.backend import SqlBackend
    from .model import Step

    start = (rev,) if backwards else node.down_revisions
    step = Step(svc.name, rev, "down" if backwards else "up")
    return SqlBackend(svc, 1.0, project.settings.ddl).offline_sql(
        [step], project.revisions[svc.name], start
    )


@dataclass(frozen=True)
class SqlScript:
    """The SQL of a plan, and the revisions that could not be rendered without a database."""

    text: str
    unrendered: tuple[str, ...] = ()


def migrate_sql(
    services: Sequence[str] = (),
    target: str | None = None,
    *,
    phase: Phase | None = None,
    **where: Unpack[Where],
) -> SqlScript:
    """The SQL `migrate` would run against the databases' current state, without running it.

    A revision that needs a live database (it reads data, or reflects a table) is left out
    with a comment in its place and named in `unrendered`; the rest is still rendered.
    """
    at = Location.of(where, "migrate_sql")
    project = load_project_at(at)
    for named in project.select(services) if services else ():
        _require_sql(named, "migrate --sql")  # before any database is reached
    steps, states = plan_migrate(project, services, target, cascade=False, phase=phase)
    from .backends.sql.backend import SqlBackend

    applied = {name: set(st.applied) for name, st in states.items()}
    chunks: list[str] = []
    unrendered: list[str] = []
    for seg in segments(steps):
        svc = project.service(seg[0].service)
        _require_sql(svc, "migrate --sql")
        backend = SqlBackend(svc, 1.0, project.settings.ddl)
        chunks.append(f"-- service {svc.name} ({mask_url(svc.database_url)})")
        for step in seg:
            start = project.graph.heads_of(svc.name, frozenset(applied[svc.name]))
            try:
                chunks.append(backend.offline_sql([step], project.revisions[svc.name], start))
            except RevisionFileError:
                raise  # the file cannot be imported: bad input, as for `migrate`
            except NcmError as exc:
                unrendered.append(f"{step.service}:{step.revision}")
                chunks.append(f"-- {step.service}:{step.revision} is not rendered: {exc}\n")
            (applied[svc.name].add if step.direction == "up" else applied[svc.name].discard)(
                step.revision
            )
    if not steps.steps:
        chunks.append("-- Nothing to do: every service is at its target.")
    return SqlScript("\n".join(chunks), tuple(unrendered))


_MAX_ROWS = 2**31 - 1  # the largest LIMIT every database takes


def history(
    services: Sequence[str] = (),
    *,
    limit: int | None = None,
    run: str | None = None,
    **where: Unpack[Where],
) -> list[LedgerRow]:
    """The ledger rows of the selected services, oldest first (also of a service with a
    revision file that cannot be read: the ledger does not need it); with `run`, only that
    run's rows (`BadInput` when there are none)."""
    at = Location.of(where, "history")
    from .validation import load_readable_project

    if limit is not None and limit < 1:
        raise BadInput(f"The history limit must be at least 1, not {limit}.")
    if limit is not None and limit > _MAX_ROWS:
        limit = None  # more rows than any ledger holds: all of them (and no SQL overflow)
    project, unreadable = load_readable_project(at.root, at.env, at.settings_dir)
    for name, why in unreadable.items():
        log.warning("service '%s' has a revision file that cannot be read: %s", name, why)
    rows: list[LedgerRow] = []
    for svc in project.select(services):
        with opened_backend(svc, project.settings.connect) as backend:
            found = backend.history(None if run else limit)
            rows.extend(r for r in found if run is None or r.run_id == run)
    rows.sort(key=lambda r: (r.started_at, str(r.id)))
    if run is not None and not rows:
        raise BadInput(f"No run '{run}' is in the ledgers of "
                       f"{', '.join(s.name for s in project.select(services))}; "
                       "`manage.py history` shows each row's run.")
    return rows[-limit:] if limit else rows


def wait(
    services: Sequence[str] = (),
    *,
    timeout: float | None = None,
    **where: Unpack[Where],
) -> dict[str, float]:
    """Wait until every selected database accepts a real query (default budget:
    `connect.max_wait_s`); the seconds each took. `DatabaseUnreachable` (exit 4) otherwise."""
    at = Location.of(where, "wait")
    if timeout is not None and (math.isnan(timeout) or timeout < 0):
        raise BadInput(f"The wait timeout must be a number of seconds, 0 or more, not {timeout}.")
    project = load_project_at(at)
    budget = project.settings.connect.max_wait_s if timeout is None else timeout
    return health.wait_for_databases(project, project.select(services), budget)


def doctor(
    services: Sequence[str] = (),
    **where: Unpack[Where],
) -> list[health.Diagnosis]:
    """Connectivity, latency, server version, privileges, heads, pending and lock state; a
    service with a revision file that cannot be read is diagnosed too, with that as its error."""
    at = Location.of(where, "doctor")
    from .validation import load_readable_project

    project, unreadable = load_readable_project(at.root, at.env, at.settings_dir)
    return health.diagnose(project, project.select(services), unreadable)


def validate(
    services: Sequence[str] = (),
    *,
    strict: bool = False,
    **where: Unpack[Where],
) -> Report:
    """Graph, files, version tables, applied checksums and lint, as findings (no exception
    for what it finds: `Report.exit_code` says 0, 1 or 2). `services` may name files too
    (as pre-commit passes them): the services holding them are checked."""
    at = Location.of(where, "validate")
    from .validation import validate_settings

    settings = load_settings(at.root, at.env, at.settings_dir)
    named = _named(settings, services, at)
    # a service that holds a file named but has no database here is left out, as `check` does
    names = [n for n in named or () if n in services or settings.service(n).active]
    if named is None or (named and not names):
        return Report.of((), strict)
    chosen = names or [s.name for s in settings.services if s.active]
    return Report.of(validate_settings(settings, names), strict, checked=chosen)


def lint(
    services: Sequence[str] = (),
    *,
    strict: bool = False,
    **where: Unpack[Where],
) -> Report:
    """Dangerous operations in the selected services' `upgrade()`s (no database needed),
    and each revision file that cannot be read (exit 2, as in `validate`). `services` may
    name files too (as pre-commit passes them): the services holding them are linted."""
    at = Location.of(where, "lint")
    from .linting import lint_service
    from .validation import read_inventory

    settings = load_settings(at.root, at.env, at.settings_dir)
    names = _named(settings, services, at)
    if names is None:
        return Report.of((), strict)
    inventory = read_inventory(settings)
    # Every service, with a database in this environment or not: lint reads only files.
    selected = [settings.service(n) for n in names] if names else list(settings.services)
    chosen = {svc.name for svc in selected}
    findings = [f for f in inventory.findings if f.rule == "malformed-revision" and f.service in chosen]
    for svc in selected:
        findings += lint_service(svc, inventory.revisions[svc.name], settings.lint_severity,
                                 settings.root, squawk=settings.lint_squawk,
                                 ddl=settings.ddl, pg_version=settings.squawk_pg_version)
    return Report.of(findings, strict, checked=chosen)


def check(
    services: Sequence[str] = (),
    *,
    strict: bool = False,
    changed_since: str | None = None,
    drift: bool = False,
    roundtrip: bool = False,
    **where: Unpack[Where],
) -> Report:
    """For CI: validate every service, plus pending revisions, dirty marks and models.py
    changes that no revision holds yet (`makemigrations --check`). With `changed_since`
    (a git commit): only the services changed since it and those that depend on them.
    With `drift`, the live schema compared with the applied revisions' (`drift`); with
    `roundtrip`, each revision's downgrade checked on a scratch database; `services`
    narrows those two (default: the services checked)."""
    at = Location.of(where, "check")
    from .validation import graph_findings, models_findings, read_inventory, validate_settings

    if services and not (drift or roundtrip):
        raise BadInput(f"`check {' '.join(services)}`: services narrow --drift and --roundtrip "
                       "only (the other checks cover every service); add one of them.")
    settings = load_settings(at.root, at.env, at.settings_dir)
    for name in services:
        settings.service(name)  # an unknown one is bad input before anything is checked
    names: list[str] = []
    if changed_since is not None:
        inventory = read_inventory(settings)
        graph = graph_findings(settings, inventory.revisions, inventory.unreadable)[1]
        names = [n for n in _changed(settings, graph, changed_since, at).services
                 if settings.service(n).active]
        if not names:
            return Report.of((), strict)
    chosen = names or [s.name for s in settings.services if s.active]
    findings = validate_settings(settings, names, pending=True)
    report = Report.of(findings, strict, checked=chosen)
    if report.exit_code == 2:
        return report  # the graph cannot be built: nothing to compare models with
    project = load_project_at(at)
    findings += models_findings(project, names)
    if drift or roundtrip:
        from .schema_checks import check_roundtrip, find_drift

        schema_services = list(services) or names
        findings += find_drift(project, schema_services) if drift else []
        findings += check_roundtrip(project, schema_services) if roundtrip else []
    return Report.of(findings, strict, checked=chosen)


def drift(
    services: Sequence[str] = (),
    **where: Unpack[Where],
) -> Report:
    """Each difference between the live schema of the selected services (default: all) and
    the schema their applied revisions give, built on a scratch database; the live
    database is only read. Exit code 1 (`Report.exit_code`) when there is drift."""
    at = Location.of(where, "drift")
    from .schema_checks import find_drift

    project = load_project_at(at)
    return Report.of(find_drift(project, services),
                     checked=services or [s.name for s in project.settings.services if s.active])


# -- wiring ------------------------------------------------------------------------


def _changed(settings: Settings, graph: Graph, ref: str, at: Location) -> Selection:
    """The services changed since `ref` and their dependents, logged."""
    selection = select_changed(settings, graph, changed_files(settings.root, ref),
                               settings_dir_of(at.root, at.settings_dir))
    if selection.everything:
        log.warning("%s changed since %s: checking every service", selection.everything, ref)
    else:
        log.warning("changed since %s: %s", ref, ", ".join(selection.services) or "no service")
    return selection


def _named(settings: Settings, args: Sequence[str], at: Location) -> list[str] | None:
    """Services named in `args`, where a file names the service holding it: [] for every
    service, None when only files were given and no service holds any of them."""
    files = [a for a in args if looks_like_path(a) and a not in {s.name for s in settings.services}]
    names = [a for a in args if a not in files]
    if not files:
        return names
    owners = services_of_paths(settings, files, settings_dir_of(at.root, at.settings_dir))
    if owners is None:
        return []
    names += [n for n in owners if n not in names]
    return names or None


def _require_sql(svc: ServiceConfig, what: str) -> None:
    if svc.backend != "sql":
        raise BadInput(f"`{what}` works on SQL services; '{svc.name}' is a {svc.backend} service.")
