"""A monorepo for one environment: its settings, every service's revisions, the graph.

Reading it from its settings (`loader.load_project` loads those) reads only disk: no
database is touched, and no revision module is imported but one whose header is computed.
A service whose revision files cannot all be read is left out of the graph, with the
services that need it; a command raises that error only when it works on one of them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .config import Settings
from .discovery import HeaderCache, read_revisions
from .errors import BadInput, RevisionFileError, ServiceNotConfigured
from .graph import Graph, build_graph
from .model import Revision, ServiceConfig, split_reference
from .rules import raise_first

log = logging.getLogger(__name__)
# Parsed revision headers, keyed on each file's content hash (see `discovery.HeaderCache`).
HEADER_CACHE = Path("var", "cache", "ncm-headers.json")


@dataclass
class Project:
    settings: Settings
    revisions: dict[str, dict[str, Revision]]
    graph: Graph
    # services left out of `revisions` and `graph`: a revision file of theirs, or of a
    # service they need, cannot be read (that file's error)
    unreadable: dict[str, RevisionFileError] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.settings.root

    def service(self, name: str) -> ServiceConfig:
        return self.settings.service(name)

    def relative_path(self, path: Path) -> str:
        """`path` as text relative to the project's root (whole, if outside it); by string,
        as listing does it for thousands of files."""
        text, prefix = str(path), str(self.root) + os.sep
        return text[len(prefix):] if text.startswith(prefix) else text

    def require_readable(self, names: Iterable[str] | None = None) -> None:
        """Raise the `RevisionFileError` (exit 2) of the first of `names` (default: every
        service) whose revisions, or those of a service it needs, cannot all be read."""
        for name in sorted(self.unreadable if names is None else names):
            if name in self.unreadable:
                raise self.unreadable[name]

    def select(self, names: Sequence[str] = ()) -> list[ServiceConfig]:
        """The services a command works on (`select_services`), each of them with every
        revision file readable (`require_readable`)."""
        chosen = select_services(self.settings, names)
        self.require_readable(s.name for s in chosen)
        return chosen


def select_services(settings: Settings, names: Sequence[str] = ()) -> list[ServiceConfig]:
    """The services a command works on: those named (each must be configured), or every
    active one, logging one line for each service left out and why."""
    if names:
        chosen = []
        for name in names:
            svc = settings.service(name)
            if not svc.active:
                raise ServiceNotConfigured(
                    f"Service '{name}' cannot be used in environment "
                    f"'{settings.env}': {svc.skip_reason}."
                )
            chosen.append(svc)
        return chosen
    if not settings.services:
        raise BadInput(
            f"No services found in {settings.root / settings.services_dir} (a service is a "
            "folder with a migrations/ folder); run this inside a monorepo, or scaffold "
            "one with `ncm-migrate init`."
        )
    active = [s for s in settings.services if s.active]
    if not active:
        raise ServiceNotConfigured(
            f"No service can be used in environment '{settings.env}': "
            + "; ".join(f"{s.name}: {s.skip_reason}" for s in settings.services)
            + "."
        )
    for svc in settings.services:
        if not svc.active:
            log.warning("skipping service '%s': %s", svc.name, svc.skip_reason)
    return active


def read_project(settings: Settings) -> Project:
    """Every service's revision headers, and the checked graph (its first error raised:
    `GraphError`, exit 2)."""
    cache = HeaderCache(settings.root / HEADER_CACHE)
    revisions: dict[str, dict[str, Revision]] = {}
    unreadable: dict[str, RevisionFileError] = {}
    for svc in settings.services:
        try:
            revisions[svc.name] = {
                r.revision: r for r in read_revisions(svc.name, svc.migrations_dir, cache)
            }
        except RevisionFileError as exc:
            unreadable[svc.name] = exc
    cache.save(svc.migrations_dir for svc in settings.services if svc.name in revisions)
    unreadable = _needing(settings, revisions, unreadable)
    readable = {name: revs for name, revs in revisions.items() if name not in unreadable}
    graph, problems = build_graph(
        {name: list(revs.values()) for name, revs in readable.items()},
        {svc.name: svc.depends_on for svc in settings.services if svc.name in readable},
        root=settings.root,
    )
    raise_first(problems)
    return Project(settings, readable, graph, unreadable)


def _needing(
    settings: Settings,
    revisions: Mapping[str, Mapping[str, Revision]],
    unreadable: Mapping[str, RevisionFileError],
) -> dict[str, RevisionFileError]:
    """`unreadable`, and every service that needs one of them (through its settings'
    `depends_on`, or a revision's `requires` or `depends_on` naming that service), with the
    error of the service it needs."""
    if not unreadable:
        return {}
    needs = {svc.name: set(svc.depends_on) for svc in settings.services}
    for name, revs in revisions.items():
        for rev in revs.values():
            needs[name].update(split_reference(r)[0] for r in (*rev.requires, *rev.depends_on))
    out = dict(unreadable)
    grew = True
    while grew:
        grew = False
        for name in sorted(needs.keys() - out.keys()):
            needed = sorted(needs[name] & out.keys())
            if needed:
                out[name] = RevisionFileError(
                    f"Service '{name}' needs service '{needed[0]}', whose revision files "
                    f"cannot all be read: {_root_cause(out[needed[0]])}"
                )
                out[name].__cause__ = out[needed[0]]
                grew = True
    return out


def _root_cause(exc: BaseException) -> BaseException:
    while isinstance(exc.__cause__, RevisionFileError):
        exc = exc.__cause__
    return exc
