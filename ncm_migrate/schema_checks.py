"""`drift` and `check --roundtrip`: a service's revisions run on a scratch database (never
the user's, always dropped), and the schemas they give compared (`schemas.py`).

Services that share one database are built together, in plan order, as `migrate` builds
them; the live database is only read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from itertools import groupby

from .backends import Backend, open_backend, scratch_copy
from .errors import BadInput, MigrationFailed, NcmError
from .findings import Finding, relative_file
from .graph import plan_upgrade
from .ledger import run_context
from .model import RevisionKey, ServiceConfig, Step, StepResult
from .planning import read_states
from .project import Project
from .schemas import (
    Difference,
    Schema,
    compare_schemas,
    drift_findings,
    new_differences,
    roundtrip_failure,
    roundtrip_findings,
)
from .urls import is_async, sync_equivalent

log = logging.getLogger(__name__)


def find_drift(project: Project, names: Sequence[str] = ()) -> list[Finding]:
    """Each difference between the schema the selected services' applied revisions give
    (built on a scratch database) and their live database, as a `drift` finding."""
    selected = _with_schemas(project, names, "drift")
    findings: list[Finding] = []
    for group in _groups(project, selected):
        findings += _group_drift(project, group, selected)
    return findings


def check_roundtrip(
    project: Project, names: Sequence[str] = (), only: frozenset[str] | None = None
) -> list[Finding]:
    """On a scratch database: every revision up one at a time, then down one at a time to
    the base, then up again, each step's schema compared with the one recorded for that
    point. A `roundtrip` finding for each revision whose downgrade (or the upgrade after
    it) gives another schema, naming the difference, or raises. `only`: check just these
    revisions (`makemigrations --check-roundtrip`: the new ones); the others still run."""
    selected = _with_schemas(project, names, "check --roundtrip")
    findings: list[Finding] = []
    for group in _groups(project, selected):
        steps = _upgrade_steps(project, group, {s: project.graph.heads(s) for s in group})
        checked = [i for i, s in enumerate(steps)
                   if s.service in selected and (only is None or s.revision in only)]
        if checked:
            with _Scratch.of(project, group) as scratch:
                findings += _RoundTrip(scratch, steps, checked[0], selected, only).run()
    return findings


# -- drift -----------------------------------------------------------------------------


def _group_drift(project: Project, group: list[str], selected: list[str]) -> list[Finding]:
    states = read_states(project, group)
    findings: list[Finding] = []
    for name, state in states.items():
        if state.unknown and name in selected:
            findings.append(Finding(
                name, "", "drift", "error",
                f"cannot rebuild the schema of its applied revisions: {', '.join(state.unknown)} "
                "are applied but no file holds them (check out the branch that has them)",
                _file(project, name)))
    if findings:
        return findings
    steps = _upgrade_steps(project, group, {s: states[s].heads for s in group})
    first = _config(project, group[0])
    with _Scratch.of(project, group) as scratch:
        owner: dict[str, str] = {}  # which service's revisions made each table
        shared = len(group) > 1
        for name, run in groupby(steps, key=lambda step: step.service):
            before = scratch.schema().as_dict() if shared else {}
            try:
                scratch.apply(list(run))
            except MigrationFailed as exc:
                raise MigrationFailed(
                    f"Cannot compare service '{name}' with its live database: its applied "
                    f"revisions failed on a scratch database: {exc}", exc.service, exc.revision,
                ) from None
            if shared:
                owner.update({path: name for path, _ in scratch.schema().objects
                              if path.startswith(_TOP) and path not in before})
        expected = scratch.schema()
    backend = open_backend(first, project.settings.connect)
    try:
        actual = backend.read_schema(_version_tables(project))
    finally:
        backend.close()
    default = next(s for s in group if s in selected)
    blame: dict[str, list[Difference]] = {}
    for diff in compare_schemas(expected, actual):
        top = diff.object.split(" / ", 1)[0]
        blame.setdefault(owner.get(top, default), []).append(diff)
    return [f for name, diffs in blame.items() if name in selected
            for f in drift_findings(name, _file(project, name), diffs)]


_TOP = ("table ", "collection ")


# -- round trip ------------------------------------------------------------------------


@dataclass
class _RoundTrip:
    """Up one step at a time recording each schema, down to before `first` comparing with
    the records, and up again."""

    scratch: _Scratch
    steps: list[Step]
    first: int
    selected: list[str]
    only: frozenset[str] | None
    findings: list[Finding] = field(default_factory=list)

    def run(self) -> list[Finding]:
        for step in self.steps[: self.first]:  # never downgraded: no schema to record
            if not self._step(step, "its first upgrade"):
                return self.findings
        records = {self.first: self.scratch.schema()}
        n = len(self.steps)
        for i in range(self.first, n):
            if not self._step(self.steps[i], "its first upgrade"):
                return self.findings
            records[i + 1] = self.scratch.schema()
        for i in reversed(range(self.first, n)):
            down = replace(self.steps[i], direction="down")
            if not self._step(down, "its downgrade", records[i + 1], records[i],
                              "its downgrade does not restore the schema before its upgrade"):
                return self.findings
        for i in range(self.first, n):
            if not self._step(self.steps[i], "upgrading it again", records[i],
                              records[i + 1], "upgrading it again does not give the schema "
                              "its first upgrade gave"):
                return self.findings
        return self.findings

    def _step(self, step: Step, doing: str, before: Schema | None = None,
              after: Schema | None = None, problem: str = "") -> bool:
        """Run `step`; with the schemas expected `before` and `after` it, blame it for each
        difference from `after` that was not there already. False when it raised (what
        follows cannot be compared)."""
        old = compare_schemas(before, self.scratch.schema()) if before is not None else []
        try:
            self.scratch.apply([step])
        except MigrationFailed as exc:
            self.findings.append(roundtrip_failure(
                step.service, step.revision, self.scratch.file(step.service, step.revision), doing, str(exc)))
            return False
        if after is not None and self._checked(step):
            new = new_differences(old, compare_schemas(after, self.scratch.schema()))
            self.findings += roundtrip_findings(step.service, step.revision,
                                                self.scratch.file(step.service, step.revision), new, problem)
        return True

    def _checked(self, step: Step) -> bool:
        return step.service in self.selected and (self.only is None or step.revision in self.only)


# -- the scratch database --------------------------------------------------------------


@dataclass
class _Scratch:
    """A scratch database shared by a group of services, with one open backend each."""

    project: Project
    config: ServiceConfig
    backends: dict[str, Backend]
    stack: ExitStack

    @classmethod
    @contextmanager
    def of(cls, project: Project, group: list[str]) -> Iterator[_Scratch]:
        first = _config(project, group[0])
        # the backends close (ExitStack) before their database is dropped (scratch_copy)
        with scratch_copy(first, project) as config, ExitStack() as stack:
            if config is None:
                raise NcmError(
                    f"Service '{first.name}': its server refused to create a scratch database; "
                    "allow the user CREATE DATABASE (drift and round trips never build on the "
                    "live database)."
                )
            yield cls(project, config, {}, stack)

    def backend(self, service: str) -> Backend:
        if service not in self.backends:
            base = _config(self.project, service)
            config = replace(base, database_url=self.config.database_url,
                             database_name=self.config.database_name)
            backend = open_backend(config, self.project.settings.connect)
            self.stack.callback(backend.close)
            self.backends[service] = backend
        return self.backends[service]

    def apply(self, steps: list[Step]) -> list[StepResult]:
        if not steps:
            return []
        service = steps[0].service
        ctx = run_context(self.project.settings.env)
        return self.backend(service).apply(steps, self.project.revisions[service], ctx, False, _quiet)

    def schema(self) -> Schema:
        return self.backend(next(iter(self.backends), self.config.name)).read_schema(
            _version_tables(self.project))

    def file(self, service: str, revision: str) -> str:
        """Where a finding about `revision` points: its file (so a CI annotation lands on
        it), else the service's migrations folder."""
        rev = self.project.revisions[service].get(revision)
        return relative_file(rev.path, self.project.root) if rev else _file(self.project, service)


def _quiet(_step: Step, _phase: str, _result: StepResult | None) -> None:
    return None


# -- wiring ----------------------------------------------------------------------------


def _with_schemas(project: Project, names: Sequence[str], what: str) -> list[str]:
    """The selected SQL and MongoDB services (Redis keeps no schema): one named by the
    user that is neither is bad input."""
    chosen = project.select(names)
    for svc in chosen:
        if names and svc.backend not in _SCHEMA_BACKENDS:
            raise BadInput(f"`{what}` compares schemas; '{svc.name}' is a {svc.backend} "
                           "service, which has none.")
    return [s.name for s in chosen if s.backend in _SCHEMA_BACKENDS]


_SCHEMA_BACKENDS = ("sql", "mongo")


def _groups(project: Project, selected: list[str]) -> list[list[str]]:
    """The active services sharing a database with a selected one, a list per database,
    in the order the selected services come."""
    groups: dict[tuple[str, str | None, str | None], list[str]] = {}
    for name in selected:
        config = project.service(name)
        key = (config.backend, config.database_url, config.database_name)
        if key not in groups:
            groups[key] = [s.name for s in project.settings.services
                           if s.active and (s.backend, s.database_url, s.database_name) == key]
    return list(groups.values())


def _upgrade_steps(project: Project, group: list[str], heads: dict[str, Sequence[str]]) -> list[Step]:
    """The steps that build `heads` of the group's services, in plan order (other
    services' revisions they require live in other databases: left out)."""
    targets = [RevisionKey(s, h) for s in group for h in heads[s]]
    return [s for s in plan_upgrade(project.graph, {}, targets).steps if s.service in group]


def _config(project: Project, name: str) -> ServiceConfig:
    """A service's settings; an async driver's URL as its sync sibling (the schema is the
    same, and the work here is synchronous)."""
    config = project.service(name)
    if config.database_url and is_async(config.database_url):
        config = replace(config, database_url=sync_equivalent(config.database_url))
    return config


def _version_tables(project: Project) -> frozenset[str]:
    return frozenset(s.version_table for s in project.settings.services)


def _file(project: Project, name: str) -> str:
    return relative_file(project.service(name).migrations_dir, project.root)

