"""The public verbs, for Python callers and the CLI alike.

Each verb loads the project for an environment, wires discovery, graph, backends and the
executor, and returns plain values; none prints. Errors are `NcmError`s with exit codes.
The verbs that change databases live here, with their async twins; those that only read
are in `inspection`, those that write files in `authoring`, and are re-exported here.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, Unpack

from . import windows
from .audit import AuditLog
from .authoring import init, makemigrations, startservice
from .backends import opened_backend
from .backups import Manifest
from .errors import BadInput, RevisionsDeferred
from .events import Reporter
from .inspection import (
    RevisionStatus,
    ServiceInfo,
    ServiceStatus,
    SqlScript,
    VerifyResult,
    check,
    doctor,
    drift,
    history,
    lint,
    migrate_sql,
    plan,
    services,
    showmigrations,
    sqlmigrate,
    validate,
    verify,
    wait,
)
from .loader import Location, PathArg, Where, as_path, load_project_at
from .model import Phase, Plan
from .phases import defer
from .planning import (
    deferred_note,
    now_reasons,
    plan_migrate,
    plan_rollback,
    plan_run_rollback,
    window_holds,
)
from .questioner import NonInteractiveQuestioner, Questioner
from .repairs import RepairAction
from .running import MigrateResult, confirm_protected, run_plan, take_backup
from .windows import Clock

__all__ = [
    "RevisionStatus",
    "ServiceInfo",
    "ServiceStatus",
    "SqlScript",
    "VerifyResult",
    "abackup",
    "amigrate",
    "arepair",
    "arestore",
    "arollback",
    "backup",
    "check",
    "doctor",
    "drift",
    "history",
    "init",
    "lint",
    "makemigrations",
    "migrate",
    "migrate_sql",
    "plan",
    "repair",
    "restore",
    "rollback",
    "services",
    "showmigrations",
    "sqlmigrate",
    "startservice",
    "validate",
    "verify",
    "wait",
]


def migrate(
    services: Sequence[str] = (),
    target: str | None = None,
    *,
    fake: bool = False,
    jobs: int | None = None,
    cascade: bool = False,
    report: Reporter | None = None,
    confirm: Callable[[Plan], None] | None = None,
    questioner: Questioner | None = None,
    rollback_on_failure: bool | None = None,
    phase: Phase | None = None,
    now: bool = False,
    allow_deferred: bool = False,
    clock: Clock | None = None,
    **where: Unpack[Where],
) -> MigrateResult:
    """Bring services to head (or one service to `target`, forwards or backwards).

    Raises the error that stopped the run (`MigrationFailed`, `DirtyService`, ...) with
    every step's outcome in its `results`; with `rollback_on_failure` (default: the
    setting), first rolls back every revision this run applied, in reverse order.

    `phase` "pre" applies only pre-deploy revisions (and what they need), "post" the rest.
    Outside the environment's maintenance `windows` (the time from `clock`, default the
    system's: a function returning an aware `datetime`), destructive
    revisions and what comes after them are deferred: the rest runs, then
    `RevisionsDeferred` (exit 1) names them, unless `allow_deferred`; `now` runs them anyway.

    In a protected environment `questioner` (default: refuse) confirms downgrades,
    destructive revisions, `fake` and `now` outside a window; `confirm` then sees the plan
    before anything runs and may raise to refuse it.
    """
    at = Location.of(where, "migrate")
    _refuse_inside_event_loop("migrate")
    project = load_project_at(at)
    steps, _states = plan_migrate(project, services, target, cascade, phase)
    moment = (clock or windows.system_clock)()
    held = window_holds(project, steps, moment)
    steps = steps if now else defer(steps, project.graph, held)
    confirm_protected(project, steps, fake, questioner, now_reasons(held) if now else None)
    if confirm is not None:
        confirm(steps)
    result = run_plan(project, steps, fake, jobs, report, rollback_on_failure).raise_for_error()
    if steps.deferred and not allow_deferred:
        error = RevisionsDeferred(deferred_note(project, steps, moment), steps.deferred)
        error.results, error.run_id = result.results, result.run_id
        raise error
    return result


def rollback(
    service: str | None = None,
    target: str | None = None,
    *,
    steps: int | None = None,
    run: str | None = None,
    last_run: bool = False,
    cascade: bool = False,
    fake: bool = False,
    report: Reporter | None = None,
    confirm: Callable[[Plan], None] | None = None,
    questioner: Questioner | None = None,
    **where: Unpack[Where],
) -> MigrateResult:
    """Move `service` backwards to `target`, or by `steps` revisions (default 1); in a
    protected environment only once `questioner` (default: refuse) confirms it.

    With `run` (a run id) or `last_run` (the newest run that applied something here):
    revert what that run applied and nothing since reverted, across the services (only
    `service`'s with one), newest first; `BadInput` for a run no ledger knows."""
    at = Location.of(where, "rollback")
    _refuse_inside_event_loop("rollback")
    undid: str | None = None
    if run is not None or last_run:
        if run is not None and last_run:
            raise BadInput("Give rollback either --run ID or --last-run, not both.")
        if target is not None or steps is not None:
            raise BadInput("Rolling back a run takes no TARGET or --steps: it reverts what the run applied.")
        project = load_project_at(at)
        undid, downgrade = plan_run_rollback(project, [service] if service else [], run, cascade)
    elif service is None:
        raise BadInput("Name the service to roll back, or give --run ID or --last-run.")
    else:
        project = load_project_at(at)
        downgrade = plan_rollback(project, service, target, steps, cascade)
    confirm_protected(project, downgrade, fake, questioner)
    if confirm is not None:
        confirm(downgrade)
    result = run_plan(project, downgrade, fake, 1, report, rollback_on_failure=False, command="rollback")
    result.undid_run = undid
    return result.raise_for_error()


def repair(
    service: str,
    *,
    questioner: Questioner | None = None,
    **where: Unpack[Where],
) -> list[RepairAction]:
    """Clear `service`'s dirty mark and re-record edited revisions' checksums, in the ledger
    and the audit log."""
    at = Location.of(where, "repair")
    from .repairs import repair_service

    _refuse_inside_event_loop("repair")
    project = load_project_at(at)
    svc = project.select([service])[0]
    settings = project.settings
    if settings.protected:
        (questioner or NonInteractiveQuestioner()).confirm(
            settings.env, svc.name, ["rewrites its ledger (repair)"]
        )
    audit = AuditLog.open(settings.audit_log_path, settings.root, "repair", settings.env)
    with opened_backend(svc, settings.connect) as backend:
        actions = repair_service(backend, project.revisions[svc.name], audit.ctx, settings.lock.timeout_s)
    for action in actions:
        audit.record(svc.name, action.status, revision=action.revision, direction=action.direction,
                     detail=action.reason)
    return actions


def backup(
    service: str,
    out: PathArg | None = None,
    **where: Unpack[Where],
) -> tuple[Path, Manifest]:
    """Back up one service's database into `out` (default `backup.dir/<env>/<svc>/<time>/`)."""
    at = Location.of(where, "backup")
    _refuse_inside_event_loop("backup")
    project = load_project_at(at)
    svc = project.select([service])[0]
    audit = AuditLog.open(project.settings.audit_log_path, project.root, "backup", project.settings.env)
    return take_backup(project, svc, as_path(out), audit)


def restore(
    service: str,
    folder: PathArg,
    *,
    questioner: Questioner | None = None,
    **where: Unpack[Where],
) -> Manifest:
    """Replace one service's database with a backup (confirmed first where protected)."""
    at = Location.of(where, "restore")
    from .backups import check_manifest, read_manifest, restore_database

    _refuse_inside_event_loop("restore")
    folder = Path(folder)
    project = load_project_at(at)
    svc = project.select([service])[0]
    settings = project.settings
    manifest = read_manifest(folder)
    check_manifest(svc, folder, manifest)  # before the lock: a wrong folder touches nothing
    if settings.protected:
        (questioner or NonInteractiveQuestioner()).confirm(
            settings.env, svc.name, [f"replaces its whole database with the backup in {folder}"]
        )
    audit = AuditLog.open(settings.audit_log_path, settings.root, "restore", settings.env)
    with opened_backend(svc, settings.connect) as backend, backend.lock(settings.lock.timeout_s):
        manifest = restore_database(svc, folder, encryption_key=settings.backup.encryption_key,
                                    lock_timeout_s=settings.lock.timeout_s)
    audit.record(svc.name, "restored", detail=f"from {folder} (heads {', '.join(manifest.heads) or 'none'})")
    return manifest


# -- async twins ---------------------------------------------------------------------
# Each verb that changes a database has one, for asyncio applications (a FastAPI or
# Starlette lifespan): the same work, results and errors, in a worker thread, so the event
# loop keeps running. The sync verb, called while a loop runs in its thread, refuses and
# names its twin (`_refuse_inside_event_loop`).

P = ParamSpec("P")
R = TypeVar("R")


def _async_twin(verb: Callable[P, R]) -> Callable[P, Coroutine[Any, Any, R]]:
    async def twin(*args: P.args, **kwargs: P.kwargs) -> R:
        return await asyncio.to_thread(verb, *args, **kwargs)

    functools.update_wrapper(twin, verb)  # help() and inspect.signature show verb's arguments
    twin.__name__ = twin.__qualname__ = f"a{verb.__name__}"
    twin.__doc__ = (
        f"`{verb.__name__}` without blocking the event loop: the same arguments, work, "
        "results and errors, in a worker thread."
    )
    return twin


amigrate = _async_twin(migrate)
arollback = _async_twin(rollback)
arepair = _async_twin(repair)
abackup = _async_twin(backup)
arestore = _async_twin(restore)


def _refuse_inside_event_loop(verb: str) -> None:
    """Refuse (exit 2) to run a verb that blocks for as long as a migration takes inside
    a running event loop: its async twin does the same work without blocking it."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise BadInput(
        f"`ncm_migrate.{verb}()` was called inside a running event loop, which it would block "
        f"until it finishes; use `await ncm_migrate.a{verb}(...)` there instead."
    )
