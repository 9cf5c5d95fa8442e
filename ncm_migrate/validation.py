"""Everything that can be wrong with a monorepo's migrations, as findings rather than errors.

Files and graph (malformed files, duplicate ids, missing revisions, cycles, forked heads,
missing upgrade/downgrade, modules that cannot be imported), settings (version-table
clashes), each database (applied revisions whose file changed or disappeared, or whose
requirement in another service is not applied there, dirty marks, pending revisions) and lint.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from .backends import opened_backend
from .config import Settings
from .discovery import read_revision, revision_files
from .errors import NcmError, RevisionFileError
from .findings import Finding, first_few, relative_file
from .graph import Graph, build_graph, run_order
from .linting import lint_service
from .loader import load_project
from .model import Revision, RevisionKey, ServiceConfig, ServiceState
from .phases import phase_findings
from .planning import read_state
from .project import Project, select_services
from .pyfiles import load_revision_module, one_line
from .rules import heads_findings, invalid_index_findings, raise_first, state_findings

log = logging.getLogger(__name__)
# `revision = "..."` in a file that cannot be parsed: which applied revision it holds.
_REVISION_LINE = re.compile(r"""^revision\s*(?::[^=\n]*)?=\s*['"]([^'"\n]+)['"]""", re.MULTILINE)


@dataclasses.dataclass
class Inventory:
    """Every revision file that could be read, per service, and the findings on the rest."""

    revisions: dict[str, dict[str, Revision]]
    findings: list[Finding]
    # per service, the revision ids that files which cannot be read seem to hold ("": unknown)
    unreadable: dict[str, set[str]] = dataclasses.field(default_factory=dict)


def read_inventory(settings: Settings) -> Inventory:
    """Read every revision header of every service, turning bad files into findings."""
    revisions: dict[str, dict[str, Revision]] = {}
    findings: list[Finding] = []
    unreadable: dict[str, set[str]] = {}
    for svc in settings.services:
        found: dict[str, Revision] = {}
        for path in revision_files(svc.migrations_dir):
            rel = relative_file(path, settings.root)
            try:
                rev = read_revision(svc.name, path)
            except NcmError as exc:
                held = _revision_in(path)
                unreadable.setdefault(svc.name, set()).add(held)
                findings.append(Finding(svc.name, held, "malformed-revision", "error", str(exc), rel))
                continue
            if rev.revision in found:
                findings.append(Finding(
                    svc.name, rev.revision, "duplicate-revision", "error",
                    f"revision id '{rev.revision}' is also used by "
                    f"{relative_file(found[rev.revision].path, settings.root)}; give one of them a new id",
                    rel, dict(rev.line_of).get("revision"),
                ))
                continue
            found[rev.revision] = rev
        revisions[svc.name] = found
    return Inventory(revisions, findings, unreadable)


def _revision_in(path: Path) -> str:
    """The revision id a file that cannot be parsed seems to hold, or "" when it says none."""
    try:
        match = _REVISION_LINE.search(path.read_bytes().decode("utf-8", errors="replace"))
    except OSError:
        return ""
    return match.group(1) if match else ""


def load_readable_project(
    root: Path | None = None, env: str | None = None, settings_dir: Path | None = None
) -> tuple[Project, dict[str, str]]:
    """For read-only reports (`doctor`, `history`): the project as `load_project` loads it
    or, when some revision files cannot be read, one of every file that can, with why per
    service whose files cannot all be read. Commands that change a database never use this:
    they refuse such a service (`Project.select` raises `RevisionFileError`, exit 2)."""
    project = load_project(root, env, settings_dir)
    if not project.unreadable:
        return project, {}
    settings = project.settings
    inventory = read_inventory(settings)
    unreadable: dict[str, str] = {}
    for f in inventory.findings:
        why = f.message if f.rule == "malformed-revision" else f"{f.file}: {f.message}"
        unreadable.setdefault(f.service, why)
    findings, graph = graph_findings(settings, inventory.revisions, inventory.unreadable)
    raise_first(f for f in findings if f.rule == "cycle")
    return Project(settings, inventory.revisions, graph), unreadable


def graph_findings(
    settings: Settings,
    revisions: Mapping[str, Mapping[str, Revision]],
    unreadable: Mapping[str, set[str]] | None = None,
) -> tuple[list[Finding], Graph]:
    """The graph's findings (`graph.build_graph`: missing revisions and cycles) with forked
    heads and missing functions; and the graph with the dangling edges left out (so the rest
    can still be checked). A revision that may be in a file that cannot be read
    (`Inventory.unreadable`) is not reported missing: that file's own finding says what to fix."""
    root = settings.root
    graph, findings = build_graph(
        {name: list(revs.values()) for name, revs in revisions.items()},
        {svc.name: svc.depends_on for svc in settings.services},
        root=root,
        unreadable=unreadable,
    )
    findings += heads_findings(graph, [svc.name for svc in settings.services], root)
    for rev in graph.nodes.values():
        for fn in ("upgrade", "downgrade"):
            if fn not in rev.defines:
                findings.append(Finding(rev.service, rev.revision, "missing-function", "error",
                                        f"the revision defines no {fn}() function",
                                        relative_file(rev.path, root), None))
    return findings, graph


def import_findings(settings: Settings, revisions: Mapping[str, Revision]) -> list[Finding]:
    """Revisions whose module cannot be imported, with the line that raised. Importing runs
    a module's top-level code only: no migration runs."""
    findings: list[Finding] = []
    for rev in revisions.values():
        try:
            load_revision_module(rev)
        except RevisionFileError as exc:
            cause = exc.__cause__ or exc
            findings.append(Finding(
                rev.service, rev.revision, "import-error", "error",
                f"the revision cannot be imported: {one_line(cause)}",
                relative_file(rev.path, settings.root), _line_in(cause, rev.path),
            ))
    return findings


def _line_in(exc: BaseException, path: Path) -> int | None:
    """The line of `path` that raised `exc` (the innermost one, when it raised through
    calls), or None."""
    if isinstance(exc, SyntaxError) and exc.filename == str(path):
        return exc.lineno
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == str(path)]
    return frames[-1].lineno if frames else None


def database_findings(
    settings: Settings,
    config: ServiceConfig,
    revisions: Mapping[str, Revision],
    graph: Graph,
    pending: bool,
) -> tuple[ServiceState, list[Finding]]:
    """The service's state, and its findings: drifted or vanished applied revisions,
    revisions only the database knows, a dirty mark, and (with `pending`) revisions not
    applied yet."""
    with opened_backend(config, settings.connect) as backend:
        state = backend.read_state(revisions)
        rows = backend.history()
        invalid = backend.invalid_indexes(revisions)
    # validate reports drift even where migrate is told to allow it
    findings = state_findings(config, state, revisions, settings.root, rows=rows)
    findings += invalid_index_findings(config, invalid, revisions, settings.root)
    if pending:
        todo = [r for r in run_order(graph, config.name) if r not in state.applied]
        findings += pending_findings(settings, config, todo, revisions)
    return state, findings


def pending_findings(
    settings: Settings, config: ServiceConfig, todo: Sequence[str], revisions: Mapping[str, Revision]
) -> list[Finding]:
    """Revisions not applied yet: pre-deploy ones an error (`pending`), post-deploy ones
    apart, a warning (`pending-post`: between a deploy and its contract phase they wait)."""
    where = relative_file(config.migrations_dir, settings.root)
    pre = [r for r in todo if revisions[r].phase != "post"]
    post = [r for r in todo if revisions[r].phase == "post"]
    findings: list[Finding] = []
    if pre:
        count = f"{len(pre)} revision{'s' * (len(pre) != 1)}"
        findings.append(Finding(
            config.name, pre[0], "pending", "error",
            f"{count} not applied yet: {first_few(pre)}; run `manage.py migrate`", where,
        ))
    if post:
        count = f"{len(post)} post-deploy revision{'s' * (len(post) != 1)}"
        findings.append(Finding(
            config.name, post[0], "pending-post", "warning",
            f"{count} not applied yet: {first_few(post)}; after the deploy, run "
            "`manage.py migrate --phase post`", where,
        ))
    return findings


def requirement_findings(
    settings: Settings,
    graph: Graph,
    states: Mapping[str, ServiceState],
    state_of: Callable[[str], ServiceState | None],
) -> list[Finding]:
    """Applied revisions whose requirement in another service (`requires`, or a
    `depends_on` naming another service) is not applied in that service's database: a
    database restored from an old backup, or a URL pointing at the wrong one. `state_of`
    reads a service not in `states` (None: it cannot be used in this environment)."""
    findings: list[Finding] = []
    for name, state in states.items():
        for rev_id in sorted(state.applied):
            key = RevisionKey(name, rev_id)
            for need in graph.required_parents.get(key, ()):
                if need.service == name:
                    continue
                other = states.get(need.service) or state_of(need.service)
                if other is None or need.revision in other.applied:
                    continue
                rev = graph.nodes[key]
                findings.append(Finding(
                    name, rev_id, "requirement-missing", "error",
                    f"{key} is applied but {need}, which it requires, is not applied in "
                    f"{need.service}'s database; run `manage.py migrate {need.service}`, or "
                    f"check that services.{need.service}.database_url is the right database",
                    relative_file(rev.path, settings.root),
                ))
    return findings


def validate_settings(
    settings: Settings,
    names: Sequence[str] = (),
    *,
    database: bool = True,
    pending: bool = False,
    lint_rules: bool = True,
) -> list[Finding]:
    """Every finding for the selected services (graph findings for all of them)."""
    selected = select_services(settings, names)
    chosen = {s.name for s in selected}
    inventory = read_inventory(settings)
    graph_found, graph = graph_findings(settings, inventory.revisions, inventory.unreadable)
    findings = [f for f in inventory.findings + graph_found if f.service in chosen or f.rule == "cycle"]
    for svc in selected:
        findings += import_findings(settings, inventory.revisions[svc.name])
    if lint_rules:
        for svc in selected:
            findings += lint_service(svc, inventory.revisions[svc.name], settings.lint_severity,
                                     settings.root, squawk=settings.lint_squawk,
                                     ddl=settings.ddl, pg_version=settings.squawk_pg_version)
    if database:
        states: dict[str, ServiceState] = {}
        for svc in selected:
            states[svc.name], found = database_findings(
                settings, svc, inventory.revisions[svc.name], graph, pending
            )
            findings += [f for f in found if not _in_unreadable_file(f, inventory.unreadable)]
        others: dict[str, ServiceState | None] = {}

        def state_of(name: str) -> ServiceState | None:
            if name not in others:
                svc = settings.service(name)
                others[name] = None
                if svc.active:
                    others[name] = read_state(svc, settings.connect, inventory.revisions[name])
            return others[name]

        findings += requirement_findings(settings, graph, states, state_of)

        def not_applied(key: RevisionKey) -> bool:
            state = states.get(key.service) or state_of(key.service)
            return state is None or key.revision not in state.applied

        mine = [k for k in graph.nodes if k.service in chosen]
        findings += phase_findings(graph, mine, not_applied, root=settings.root)
    return findings


def _in_unreadable_file(finding: Finding, unreadable: Mapping[str, set[str]]) -> bool:
    """An applied revision without a readable file that may be in a file that cannot be
    read: not gone, and that file's own finding says what to fix."""
    held = unreadable.get(finding.service, set())
    return finding.rule == "missing-file" and (finding.revision in held or "" in held)


def models_findings(project: Project, names: Sequence[str] = ()) -> list[Finding]:
    """Services whose models.py has changes no revision holds yet (`makemigrations --check`),
    among the active ones (named, so that the services left out are not logged again), or
    among `names` when given."""
    from .making_migrations import changed_services

    active = [s.name for s in project.settings.services if s.active and (not names or s.name in names)]
    findings: list[Finding] = []
    for name, changes in sorted((changed_services(project, active) if active else {}).items()):
        svc = project.service(name)
        findings.append(Finding(
            name, "", "models-changed", "error",
            f"models.py has changes that no revision holds yet ({first_few(changes)}); run "
            f"`manage.py makemigrations {name}`",
            relative_file(svc.root / "models.py", project.root),
        ))
    return findings
