"""A run planned against the databases' state: which services a plan reaches, their
state, and the plan forwards or backwards with the cross-service rule applied.

Reads databases (through the backends) but changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from .backends import opened_backend
from .config import ConnectSettings
from .errors import BadInput, RevisionFileError, RollbackRefused, ServiceNotConfigured
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
from .ledger import applied_by_run, last_run
from .linting import DESTRUCTIVE, lint_revision
from .model import LedgerRow, Phase, Plan, Revision, RevisionKey, ServiceConfig, ServiceState
from .phases import phase_findings, select_phase
from .project import Project
from .rules import check_known, check_state, heads_findings, raise_first
from .windows import is_open, next_opening


def read_states(project: Project, names: Sequence[str]) -> dict[str, ServiceState]:
    """Each named service's state, read from its database (connecting with retries), up to
    `read_jobs` at once: reading is mostly waiting on connections. A failure is the first
    failing service's in `names` order, as when read one after another."""

    def read(name: str) -> ServiceState:
        return read_state(project.service(name), project.settings.connect, project.revisions[name])

    workers = min(project.settings.read_jobs, len(names))
    if workers <= 1:
        return {name: read(name) for name in names}
    pool = ThreadPoolExecutor(workers, thread_name_prefix="ncm-read")
    try:
        futures = {name: pool.submit(read, name) for name in names}
        return {name: future.result() for name, future in futures.items()}
    finally:
        # On a failure (or Ctrl-C), reads not begun are dropped; those under way end
        # within their connect and read timeouts, in threads nobody waits for.
        pool.shutdown(wait=False, cancel_futures=True)


def read_state(
    config: ServiceConfig, connect: ConnectSettings, revisions: Mapping[str, Revision]
) -> ServiceState:
    """One service's state, read from its database (connecting with retries)."""
    with opened_backend(config, connect) as backend:
        return backend.read_state(revisions)


def states_for(project: Project, names: Sequence[str]) -> dict[str, ServiceState]:
    """States of `names` and of every active service a plan over them may reach: what
    they need (forwards) and what needs them (backwards, for the cross-service rule)."""
    graph = project.graph
    keys = [k for k in graph.nodes if k.service in names]
    reach = graph.ancestors(keys, intra_only=False) | graph.descendants(keys)
    involved = set(names) | {k.service for k in reach}
    active = {s.name for s in project.settings.services if s.active}
    return read_states(project, sorted(involved & active | set(names)))


def plan_migrate(
    project: Project,
    names: Sequence[str],
    target: str | None,
    cascade: bool,
    phase: Phase | None = None,
) -> tuple[Plan, dict[str, ServiceState]]:
    """The plan of `migrate [SVC [TARGET]] [--phase P]` and the states it was drawn from.

    Refuses forked heads (exit 1), a plan that needs a service this environment cannot
    reach (exit 2), a pre-deploy revision that needs a post-deploy one (exit 2), and, when
    a selected service has nothing to do, a dirty or drifted one.
    """
    if target is not None and len(names) != 1:
        raise BadInput("A TARGET needs exactly one service: `migrate SVC TARGET`.")
    selected = project.select(names)
    if not (target and target not in HEAD):
        raise_first(heads_findings(project.graph, [s.name for s in selected], project.root))
    states = states_for(project, [s.name for s in selected])
    applied = {name: st.applied for name, st in states.items()}
    if target is not None and target not in HEAD:
        svc = selected[0]
        check_known(svc, states[svc.name], project.revisions[svc.name], project.root)
        keep = keep_for_target(project.graph, svc.name, target)
        remove = removal_set(project.graph, applied, svc.name, keep)
        if target in ZERO or remove:
            return plan_removal(project, states, remove, cascade), states
        rev = project.graph.resolve(svc.name, target)
        targets = [RevisionKey(svc.name, rev)]
    else:
        targets = upgrade_targets(project.graph, [s.name for s in selected])
    steps = plan_upgrade(project.graph, applied, targets)
    if phase == "pre":
        todo = {s.key for s in steps.steps}  # every pending revision the plan needs
        raise_first(phase_findings(project.graph, todo, todo.__contains__, project.root))
    steps = select_phase(steps, project.graph, phase)
    missing = left_out(project, steps)
    if missing:
        raise ServiceNotConfigured(next(iter(missing.values())))
    for name in steps.services():
        check_known(project.service(name), states[name], project.revisions[name], project.root)
    busy = set(steps.services())
    for svc in selected:
        # With nothing to do a service is still refused when dirty or drifted: its database
        # needs `repair`. (With steps, the executor checks under the lock: read here, a
        # `running` row may be another live runner's.)
        if svc.name not in busy:
            check_state(svc, states[svc.name], project.revisions[svc.name],
                        project.settings.allow_checksum_drift, project.root)
    return steps, states


def window_holds(project: Project, plan: Plan, moment: datetime) -> dict[RevisionKey, str]:
    """The upgrades of `plan` that must wait for a maintenance window at `moment`, with why:
    none where the environment sets no `windows` or one is open; else those declaring
    `window = True` and those lint finds destructive (silenced or not) unless they declare
    `window = False`."""
    windows = project.settings.windows
    if not windows or is_open(windows, moment):
        return {}
    held: dict[RevisionKey, str] = {}
    for step in plan.steps:
        rev = project.revisions[step.service][step.revision]
        if step.direction != "up" or rev.window is False:
            continue
        if rev.window:
            held[step.key] = "declares window = True"
            continue
        found = lint_revision(project.service(step.service), rev, "error", project.root,
                              include_allowed=True)
        rules = sorted({f.rule for f in found if f.rule in DESTRUCTIVE})
        if rules:
            held[step.key] = f"destructive: {', '.join(rules)}"
    return held


def now_reasons(held: Mapping[RevisionKey, str]) -> dict[str, list[str]]:
    """Per service, what `--now` runs outside a window: confirmed where protected."""
    reasons: dict[str, list[str]] = {}
    for key, why in held.items():
        reasons.setdefault(key.service, []).append(
            f"applies {key.revision} outside a maintenance window (--now; {why})")
    return reasons


def deferred_note(project: Project, plan: Plan, moment: datetime) -> str:
    """One sentence naming `plan`'s deferred steps, the next window and what to run."""
    opens = next_opening(project.settings.windows, moment)
    when = f" (the next opens {opens:%a %Y-%m-%d %H:%M %Z})" if opens else ""
    shown = ", ".join(f"{d.service}:{d.revision} ({d.reason})" for d in plan.deferred)
    return (f"Deferred to a maintenance window{when}: {shown}; run `manage.py migrate` inside "
            "a window, or pass --now to run them anyway (--allow-deferred makes this exit 0).")


def plan_rollback(
    project: Project, service: str, target: str | None, steps: int | None, cascade: bool
) -> Plan:
    """The steps that move `service` back to `target`, or by `steps` revisions (default 1).

    Refused (exit 2) while its database has a revision applied that no file holds."""
    svc = project.select([service])[0]
    if target is not None and steps is not None:
        raise BadInput("Give rollback either a TARGET or --steps, not both.")
    states = states_for(project, [svc.name])
    check_known(svc, states[svc.name], project.revisions[svc.name], project.root)
    applied = {name: st.applied for name, st in states.items()}
    if target is None:
        remove = last_applied(project.graph, applied, svc.name, steps or 1)
    else:
        keep = keep_for_target(project.graph, svc.name, target)
        if target not in ZERO:
            wanted = project.graph.resolve(svc.name, target)
            if wanted not in applied.get(svc.name, frozenset()):
                raise BadInput(
                    f"Revision {svc.name}:{wanted} is not applied, so rollback cannot go back to "
                    f"it (rollback only moves backwards; to apply it: migrate {svc.name} {wanted})."
                )
        remove = removal_set(project.graph, applied, svc.name, keep)
    return plan_removal(project, states, remove, cascade)


def plan_run_rollback(
    project: Project, names: Sequence[str], run_id: str | None, cascade: bool
) -> tuple[str, Plan]:
    """The run to undo (`run_id`, or the newest that applied something in this environment)
    and the steps that revert what it applied and no later row reverted, across the
    selected services, newest first and under the cross-service rule (`plan_removal`).

    Refused (exit 2) when no selected service's ledger knows the run."""
    selected = [s.name for s in project.select(names)]
    ledgers = read_ledgers(project, selected)
    rows = [r for service_rows in ledgers.values() for r in service_rows]
    env = project.settings.env
    if run_id is None:
        run_id = last_run(rows, env)
        if run_id is None:
            raise BadInput(f"No run has applied a revision in environment '{env}' "
                           f"(ledgers of {', '.join(selected)}), so there is no last run to roll back.")
    elif not any(r.run_id == run_id for r in rows):
        raise BadInput(f"No run '{run_id}' is in the ledgers of {', '.join(selected)} in environment "
                       f"'{env}'; `manage.py history` shows each row's run.")
    undo = {name: applied_by_run(service_rows, run_id) for name, service_rows in ledgers.items()}
    touched = [name for name, revisions in undo.items() if revisions]
    if not touched:
        return run_id, Plan(())
    states = states_for(project, touched)
    for name in touched:
        check_known(project.service(name), states[name], project.revisions[name], project.root)
    remove = {RevisionKey(name, rev) for name in touched for rev in undo[name]
              if rev in states[name].applied}
    applied_at = sorted(((r.started_at, str(r.id)), RevisionKey(r.service, r.revision)) for r in rows
                        if r.run_id == run_id and r.direction == "up" and r.status == "applied")
    newest_first = [key for _when, key in reversed(applied_at)]
    return run_id, plan_removal(project, states, remove, cascade, newest_first)


def read_ledgers(project: Project, names: Sequence[str]) -> dict[str, list[LedgerRow]]:
    """Each named service's ledger rows, oldest first."""
    out: dict[str, list[LedgerRow]] = {}
    for name in names:
        with opened_backend(project.service(name), project.settings.connect) as backend:
            out[name] = sorted(backend.history(None), key=lambda r: (r.started_at, str(r.id)))
    return out


def plan_removal(
    project: Project,
    states: Mapping[str, ServiceState],
    remove: set[RevisionKey],
    cascade: bool,
    newest_first: Sequence[RevisionKey] = (),
) -> Plan:
    """Steps that revert `remove` under the cross-service rule: refused (exit 1) while
    applied revisions of other services need it (by `requires`, or because their service
    `depends_on` this one), unless `cascade` reverts those first. (`graph.plan_downgrade`
    only orders the steps, `newest_first` where the graph allows.)"""
    if project.unreadable:
        name, exc = min(project.unreadable.items())
        raise RevisionFileError(
            f"Refusing to move back while service '{name}' cannot be read (whether it requires "
            f"what would be removed is unknown): {exc}"
        ) from exc
    applied = {name: st.applied for name, st in states.items()}
    blockers = dependents_outside(project.graph, applied, remove)
    if blockers and not cascade:
        # A run's revisions may have later ones of the same service (a later run's) on top.
        same = {b.service for b in blockers} & {k.service for k in remove}
        raise RollbackRefused(
            f"Refusing to roll back: applied revisions {'it leaves' if same else 'of other services'} "
            "still need it: "
            + ", ".join(str(b) for b in sorted(blockers))
            + _depends_note(project, blockers, remove)
            + "; roll those back first, or use --cascade."
        )
    for name in {k.service for k in blockers}:
        check_known(project.service(name), states[name], project.revisions[name], project.root)
    return plan_downgrade(project.graph, remove | blockers, first=blockers, newest_first=newest_first)


def _depends_note(project: Project, blockers: set[RevisionKey], remove: set[RevisionKey]) -> str:
    """Which blocking services depend (service-level `depends_on`) on a service being
    rolled back, as ` (billing depends_on users)`, or ''."""
    removing = {k.service for k in remove}
    pairs = sorted(
        f"{name} depends_on {dep}"
        for name in {k.service for k in blockers}
        for dep in project.graph.service_depends.get(name, ())
        if dep in removing
    )
    return f" ({'; '.join(pairs)})" if pairs else ""


def left_out(project: Project, plan: Plan) -> dict[str, str]:
    """Each service with steps in `plan` that this environment leaves out (no database),
    with one sentence naming what needs it and why it is left out."""
    graph, env = project.graph, project.settings.env
    inactive = {s.name: s for s in project.settings.services if not s.active}
    out: dict[str, str] = {}
    for step in plan.steps:
        config = inactive.get(step.service)
        if config is None or step.service in out:
            continue
        mine = [s.key for s in plan.steps if s.service == step.service]
        need = next(
            ((other.key, key) for other in plan.steps if other.service != step.service
             for key in mine if key in graph.parents[other.key]),
            None,
        )
        what = f"{need[0]} needs {need[1]}" if need else f"{step.key} must be applied first"
        out[step.service] = (
            f"{what}, but service '{step.service}' cannot be used in environment '{env}': "
            f"{config.skip_reason}."
        )
    return out
