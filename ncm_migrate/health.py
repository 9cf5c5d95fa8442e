"""Is each database there, and how is it: `wait` and `doctor`.

Both go through the one retry policy (`backends.retry.open_with_retries`): `wait` with its own
time budget, `doctor` with a single attempt so that it answers quickly.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from .backends import closing_backend, make_backend
from .backends.retry import open_with_retries
from .errors import DatabaseUnreachable, LockTimeout, SettingsError
from .graph import plan_upgrade, upgrade_targets
from .model import ServiceConfig
from .project import Project
from .urls import mask_url

log = logging.getLogger(__name__)

WAIT_INTERVAL_S = 2.0
"""`wait` tries at least this often: a database that comes up is seen soon after."""


@dataclass(frozen=True)
class Diagnosis:
    """What `doctor` found for one service."""

    service: str
    backend: str
    url: str
    reachable: bool
    latency_ms: float | None = None
    server_version: str | None = None
    can_create: bool | None = None
    version_table: str | None = None
    heads: tuple[str, ...] = ()
    pending: int | None = None
    lock: str | None = None
    # Indexes its revisions name that a failed concurrent build left INVALID.
    invalid_indexes: tuple[str, ...] = ()
    details: tuple[tuple[str, str], ...] = ()
    error: str | None = None


def wait_for_databases(
    project: Project, services: Sequence[ServiceConfig], timeout_s: float
) -> dict[str, float]:
    """Block until every service's database answers a real query; seconds each took.

    Raises `DatabaseUnreachable` (exit 4) naming the first service still down after
    `timeout_s`, counted from the start for all services together.
    """
    started = time.monotonic()
    took: dict[str, float] = {}
    policy = replace(project.settings.connect, retries=1_000_000)
    for svc in services:
        remaining = max(0.0, timeout_s - (time.monotonic() - started))
        with closing_backend(make_backend(svc, project.settings.connect)) as backend:
            t0 = time.monotonic()
            open_with_retries(backend, policy, max_wait_s=remaining, max_interval_s=WAIT_INTERVAL_S)
            took[svc.name] = time.monotonic() - t0
            log.info("%s: %s is up (%.1fs)", svc.name, mask_url(svc.database_url), took[svc.name])
    return took


def diagnose(
    project: Project, services: Sequence[ServiceConfig], unreadable: Mapping[str, str] | None = None
) -> list[Diagnosis]:
    """One `Diagnosis` per service, never raising for a database that is down. A service in
    `unreadable` (why its revision files cannot all be read) gets that as its error, and no
    heads or pending count (they would be guesses)."""
    policy = replace(project.settings.connect, retries=0)
    out = []
    for svc in services:
        base = Diagnosis(svc.name, svc.backend, mask_url(svc.database_url), reachable=False,
                         version_table=svc.version_table if svc.backend == "sql" else None)
        with closing_backend(make_backend(svc, project.settings.connect)) as backend:
            try:
                open_with_retries(backend, policy)
            except (DatabaseUnreachable, SettingsError) as exc:
                out.append(replace(base, error=str(exc)))
                continue
            try:
                info = backend.server_info()
                try:
                    with backend.lock(0.0):
                        lock = "free"
                except LockTimeout:
                    lock = "held"
                base = replace(base, reachable=True, latency_ms=round(info.latency_ms, 2),
                               server_version=info.server_version, can_create=info.can_create,
                               lock=lock, details=info.extra)
                why = (unreadable or {}).get(svc.name)
                if why is not None:
                    out.append(replace(base, error=f"a revision file cannot be read: {why}"))
                    continue
                state = backend.read_state(project.revisions[svc.name])
                order = plan_upgrade(project.graph, {svc.name: state.applied},
                                     upgrade_targets(project.graph, [svc.name]))
                invalid = backend.invalid_indexes(project.revisions[svc.name])
                out.append(replace(
                    base, heads=state.heads, pending=sum(1 for s in order.steps if s.service == svc.name),
                    invalid_indexes=tuple(f"{i.name} ({svc.name}:{i.revision})" for i in invalid),
                ))
            except DatabaseUnreachable as exc:  # lost after it answered: reported like the others
                out.append(replace(base, reachable=False, error=str(exc)))
    return out
