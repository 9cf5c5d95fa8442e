"""The cross-service revision graph and the plans drawn from it. Pure: no I/O.

Nodes are `RevisionKey(service, revision)`. A node's parents are its `down_revision`s and
Alembic `depends_on` inside its service, the `requires` it names in other services, and,
for a service's base revisions, every revision of each service it `depends_on`.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import UnknownRevision
from .findings import Finding, relative_file
from .model import Direction, Plan, Revision, RevisionKey, Step, StepResult, split_reference

ZERO = ("zero", "base")
HEAD = ("head", "heads")


@dataclass
class Graph:
    """Every revision of every service, with its resolved parents."""

    nodes: dict[RevisionKey, Revision]
    parents: dict[RevisionKey, tuple[RevisionKey, ...]]
    intra_parents: dict[RevisionKey, tuple[RevisionKey, ...]]
    by_service: dict[str, list[str]]
    service_depends: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # parents without the ordering edges of service-level depends_on: what each revision
    # really needs (its own history, its depends_on and its requires)
    required_parents: dict[RevisionKey, tuple[RevisionKey, ...]] = field(default_factory=dict)
    _children: dict[RevisionKey, list[RevisionKey]] | None = None
    _labels: dict[str, dict[str, list[str]]] | None = None
    _heads: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def revisions(self, service: str) -> list[Revision]:
        return [self.nodes[RevisionKey(service, r)] for r in self.by_service.get(service, [])]

    def heads(self, service: str) -> tuple[str, ...]:
        """Revisions that no other revision of the service names as its down_revision."""
        found = self._heads.get(service)
        if found is None:
            revs = self.by_service.get(service, [])
            downs = {d for r in revs for d in self.nodes[RevisionKey(service, r)].down_revisions}
            found = self._heads[service] = tuple(r for r in revs if r not in downs)
        return found

    def children(self, key: RevisionKey) -> list[RevisionKey]:
        if self._children is None:
            kids: dict[RevisionKey, list[RevisionKey]] = {k: [] for k in self.nodes}
            for node, parents in self.parents.items():
                for parent in parents:
                    kids[parent].append(node)
            for lst in kids.values():
                lst.sort()
            self._children = kids
        return self._children[key]

    def ancestors(self, keys: Iterable[RevisionKey], intra_only: bool = True) -> set[RevisionKey]:
        """`keys` and everything they need (inside their service when `intra_only`)."""
        edges = self.intra_parents if intra_only else self.parents
        return _reach(keys, edges.__getitem__)

    def descendants(self, keys: Iterable[RevisionKey]) -> set[RevisionKey]:
        """`keys` and everything that comes after them, in any service (through history,
        depends_on, requires and a service-level depends_on)."""
        return _reach(keys, self.children)

    def heads_of(self, service: str, applied: frozenset[str]) -> tuple[str, ...]:
        """The heads a version table holds for an applied set: applied revisions that no
        applied revision names as its down_revision."""
        downs = {d for r in applied for d in self.nodes[RevisionKey(service, r)].down_revisions}
        return tuple(sorted(r for r in applied if r not in downs))

    def applied_from_heads(self, service: str, heads: Iterable[str]) -> frozenset[str]:
        """The revisions a version table's heads stand for: the heads and their ancestors."""
        keys = [RevisionKey(service, h) for h in heads if RevisionKey(service, h) in self.nodes]
        return frozenset(k.revision for k in self.ancestors(keys))

    def resolve(self, service: str, ident: str) -> str:
        """A revision id from an id, a unique prefix of one, or a branch label."""
        revs = self.by_service.get(service)
        if revs is None:
            raise UnknownRevision(f"Unknown service '{service}' in revision '{service}:{ident}'.")
        if RevisionKey(service, ident) in self.nodes:
            return ident
        labelled = self._labelled(service).get(ident, [])
        if len(labelled) == 1:
            return labelled[0]
        # `revs` is sorted: the ids starting with `ident` sit together from its insertion point.
        start = bisect.bisect_left(revs, ident)
        matches = list(itertools.takewhile(lambda r: r.startswith(ident), revs[start:]))
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise UnknownRevision(
                f"Revision '{ident}' of service '{service}' is ambiguous: it could be "
                f"{', '.join(matches[:5])}; give more characters."
            )
        raise UnknownRevision(
            f"Service '{service}' has no revision '{ident}' (see `showmigrations {service}`)."
        )

    def _labelled(self, service: str) -> dict[str, list[str]]:
        """The service's revisions by branch label (built once: `resolve` runs for every
        `requires` and `depends_on` while the graph is built)."""
        if self._labels is None:
            self._labels = {}
            for svc, revs in self.by_service.items():
                index: dict[str, list[str]] = {}
                for r in revs:
                    for label in self.nodes[RevisionKey(svc, r)].branch_labels:
                        index.setdefault(label, []).append(r)
                self._labels[svc] = index
        return self._labels.get(service, {})

    def conflicting_heads(self, service: str) -> tuple[str, ...]:
        """Heads that fork from a common revision without a branch label of their own."""
        heads = self.heads(service)
        if len(heads) < 2:
            return ()
        lineage = {h: self._lineage(service, h) for h in heads}
        labels = {
            h: {lbl for r in lineage[h] for lbl in self.nodes[RevisionKey(service, r)].branch_labels}
            for h in heads
        }
        bad: set[str] = set()
        for i, a in enumerate(heads):
            for b in heads[i + 1 :]:
                if lineage[a] & lineage[b] and not (labels[a] ^ labels[b]):
                    bad.update((a, b))
        return tuple(sorted(bad))

    def _lineage(self, service: str, head: str) -> set[str]:
        seen: set[str] = set()
        stack = [head]
        while stack:
            rev = stack.pop()
            if rev not in seen:
                seen.add(rev)
                stack.extend(self.nodes[RevisionKey(service, rev)].down_revisions)
        return seen


def build_graph(
    revisions: Mapping[str, Sequence[Revision]],
    service_depends: Mapping[str, Sequence[str]] | None = None,
    *,
    root: Path | None = None,
    unreadable: Mapping[str, Collection[str]] | None = None,
) -> tuple[Graph, list[Finding]]:
    """Resolve every edge and look for a cycle: the graph, and what is wrong with it.

    The findings (errors, rule `missing-revision` or `cycle`) name each `down_revision`,
    `depends_on` or `requires` that points nowhere, and a cycle, printed as a path; the
    graph leaves those edges out, so the rest can still be checked. `migrate` raises the
    first (`rules.raise_first`: `GraphError`, exit 2), `validate` lists them all.

    A reference that a file which cannot be read may hold (`unreadable`: per service, the
    ids such files seem to hold, "" for one that says none) is not reported: that file's
    own finding says what to fix. `root` makes the findings' paths relative to the project.
    """
    depends = {k: tuple(v) for k, v in (service_depends or {}).items()}
    nodes = {rev.key: rev for revs in revisions.values() for rev in revs}
    by_service = {svc: sorted(r.revision for r in revs) for svc, revs in revisions.items()}
    graph = Graph(nodes, {}, {}, by_service, depends)
    found = _Findings(root, unreadable or {})
    for revs in revisions.values():
        found.labels(revs)
    for key, rev in nodes.items():
        intra: list[RevisionKey] = []
        for down in rev.down_revisions:
            if RevisionKey(key.service, down) in nodes:
                intra.append(RevisionKey(key.service, down))
            else:
                found.missing(rev, "down_revision", key.service, down,
                              f"has down_revision '{down}', which does not exist in service "
                              f"'{key.service}'")
        if len(intra) < len(rev.down_revisions):
            # left out, so that heads and lineages can still be read (the value of an
            # existing key changes: the loop goes on)
            nodes[key] = replace(rev, down_revisions=tuple(k.revision for k in intra))
        for dep in rev.depends_on:
            svc, ident = split_reference(dep, key.service)
            target = _resolved(graph, svc, ident)
            if target is None:
                found.missing(rev, "depends_on", svc, ident, f"depends_on '{dep}', which does not exist")
            else:
                intra.append(target)
        cross: list[RevisionKey] = []
        for req in rev.requires:
            svc, ident = split_reference(req)
            target = _resolved(graph, svc, ident)
            if target is not None:
                cross.append(target)
            elif not svc or not ident:
                found.missing(rev, "requires", svc, "", f"requires '{req}'; write it as service:revision")
            elif svc not in by_service:
                found.missing(rev, "requires", svc, ident,
                              f"requires '{req}', but there is no service '{svc}'")
            else:
                found.missing(rev, "requires", svc, ident,
                              f"requires '{req}', which does not exist in service '{svc}'")
        graph.intra_parents[key] = _edges(intra)
        graph.parents[key] = _edges(intra + cross) if cross else graph.intra_parents[key]
    graph.required_parents = dict(graph.parents)
    for svc, deps in depends.items():
        if not deps:
            continue
        # After every revision of each service it depends on (not only their heads): a
        # downgrade then reverts this service before any of theirs, even below a head
        # that is not applied yet.
        bases = [k for k in nodes if k.service == svc and not nodes[k].down_revisions]
        before = {RevisionKey(d, r) for d in deps for r in by_service.get(d, [])}
        for base in bases:
            graph.parents[base] = tuple(sorted(set(graph.parents[base]) | before))
    cycle = find_cycle(graph)
    if cycle:
        found.cycle(nodes[cycle[0]], cycle)
    return graph, found.findings


class _Findings:
    """What `build_graph` finds, each a sentence naming the revision and its file."""

    def __init__(self, root: Path | None, unreadable: Mapping[str, Collection[str]]) -> None:
        self.root = root
        self.unreadable = unreadable
        self.findings: list[Finding] = []

    def missing(self, rev: Revision, header: str, service: str, ident: str, what: str) -> None:
        held = self.unreadable.get(service, ())
        if ident and ("" in held or any(h.startswith(ident) for h in held)):
            return
        file = relative_file(rev.path, self.root)
        self.findings.append(Finding(rev.service, rev.revision, "missing-revision", "error",
                                     f"Revision {rev.key} ({file}) {what}", file,
                                     dict(rev.line_of).get(header)))

    def labels(self, revs: Sequence[Revision]) -> None:
        """A branch label names one revision of its service, and is no revision's id (as
        Alembic's revision map requires; it failed only once a migration ran)."""
        owner = {r.revision: r for r in revs}
        for rev in revs:
            for label in rev.branch_labels:
                other = owner.setdefault(label, rev)
                if other is rev:
                    continue
                what = "the id of revision" if other.revision == label else "also a branch label of"
                file = relative_file(rev.path, self.root)
                self.findings.append(Finding(
                    rev.service, rev.revision, "duplicate-label", "error",
                    f"Revision {rev.key} ({file}) has branch label '{label}', which is {what} "
                    f"{other.key} ({relative_file(other.path, self.root)}); give it a label of "
                    "its own", file, dict(rev.line_of).get("branch_labels"),
                ))

    def cycle(self, first: Revision, cycle: Sequence[RevisionKey]) -> None:
        self.findings.append(Finding(
            first.service, first.revision, "cycle", "error",
            "Cycle in the migration graph: " + " -> ".join(map(str, cycle))
            + " (each needs the next); break it by removing one requires/depends_on",
            relative_file(first.path, self.root), dict(first.line_of).get("requires"),
        ))


def _resolved(graph: Graph, service: str, ident: str) -> RevisionKey | None:
    """`service`'s revision named `ident` (an id, a unique prefix or a label), or None."""
    if not service or not ident:
        return None
    try:
        return RevisionKey(service, graph.resolve(service, ident))
    except UnknownRevision:
        return None


def _edges(keys: list[RevisionKey]) -> tuple[RevisionKey, ...]:
    """Sorted and without repeats (most revisions have one parent: nothing to sort)."""
    return tuple(keys) if len(keys) < 2 else tuple(sorted(set(keys)))


def find_cycle(graph: Graph) -> list[RevisionKey] | None:
    """A cycle as a path whose first and last node are the same, or None."""
    state: dict[RevisionKey, int] = {}
    for start in sorted(graph.nodes):
        if state.get(start):
            continue
        stack: list[tuple[RevisionKey, int]] = [(start, 0)]
        path: list[RevisionKey] = []
        while stack:
            node, idx = stack.pop()
            if idx == 0:
                state[node] = 1
                path.append(node)
            parents = graph.parents[node]
            if idx < len(parents):
                stack.append((node, idx + 1))
                nxt = parents[idx]
                if state.get(nxt) == 1:
                    return [*path[path.index(nxt) :], nxt]
                if not state.get(nxt):
                    stack.append((nxt, 0))
            else:
                state[node] = 2
                path.pop()
    return None


def plan_upgrade(
    graph: Graph,
    applied: Mapping[str, frozenset[str]],
    targets: Sequence[RevisionKey],
) -> Plan:
    """Steps that bring every target and everything it needs up, in a deterministic order.

    Depth first from each target in turn: before a revision, exactly what it needs from
    its own and other services, and no further.
    """
    order: list[RevisionKey] = []
    done: set[RevisionKey] = set()

    def is_applied(key: RevisionKey) -> bool:
        return key.revision in applied.get(key.service, frozenset())

    for target in targets:
        stack: list[tuple[RevisionKey, int]] = [(target, 0)]
        while stack:
            node, idx = stack.pop()
            if node in done or is_applied(node):
                continue
            parents = graph.parents[node]
            if idx < len(parents):
                stack.append((node, idx + 1))
                stack.append((parents[idx], 0))
            else:
                done.add(node)
                order.append(node)
    return _leveled(graph, order, "up")


def undo_plan(results: Sequence[StepResult]) -> Plan:
    """Steps that undo what a run applied: each applied revision, newest first."""
    done = [r for r in results if r.direction == "up" and r.outcome == "applied"]
    return Plan(
        tuple(Step(r.service, r.revision, "down", level=i) for i, r in enumerate(reversed(done)))
    )


def upgrade_targets(graph: Graph, services: Sequence[str]) -> list[RevisionKey]:
    """The heads of `services`, services in dependency order then by name."""
    return [RevisionKey(s, h) for s in services for h in graph.heads(s)]


def plan_downgrade(
    graph: Graph,
    remove: Iterable[RevisionKey],
    first: Iterable[RevisionKey] = (),
    newest_first: Sequence[RevisionKey] = (),
) -> Plan:
    """Steps that revert `remove`, children before parents, in a deterministic order;
    what is in `first` (other services' dependents, for a cascade) as early as it can, then
    what is in `newest_first` (a run's revisions, newest first) in that order where the
    graph allows it."""
    removing = set(remove)
    leading = sorted(set(first) & removing, reverse=True)
    given = [k for k in dict.fromkeys(newest_first) if k in removing and k not in set(leading)]
    order: list[RevisionKey] = []
    done: set[RevisionKey] = set()
    for start in leading + given + sorted(removing - set(leading) - set(given), reverse=True):
        stack: list[tuple[RevisionKey, int]] = [(start, 0)]
        while stack:
            node, idx = stack.pop()
            if node in done:
                continue
            kids = [k for k in graph.children(node) if k in removing]
            if idx < len(kids):
                stack.append((node, idx + 1))
                stack.append((kids[idx], 0))
            else:
                done.add(node)
                order.append(node)
    return _leveled(graph, order, "down")


def removal_set(
    graph: Graph, applied: Mapping[str, frozenset[str]], service: str, keep: frozenset[str]
) -> set[RevisionKey]:
    """The applied revisions of `service` outside `keep`."""
    return {
        RevisionKey(service, r) for r in applied.get(service, frozenset()) if r not in keep
    } & set(graph.nodes)


def dependents_outside(
    graph: Graph, applied: Mapping[str, frozenset[str]], removing: set[RevisionKey]
) -> set[RevisionKey]:
    """Applied revisions not in `removing` that need something in it: through their
    history, depends_on or requires, or, for a service that `depends_on` another, any of
    that service's revisions (its base revisions come after the other's heads)."""
    out: set[RevisionKey] = set()
    for key in graph.descendants(removing) - removing:
        if key.revision in applied.get(key.service, frozenset()):
            out.add(key)
    return out


def keep_for_target(graph: Graph, service: str, target: str) -> frozenset[str]:
    """What may stay applied when `service` is moved back to `target` (`zero` keeps nothing).

    As Django and Alembic do: everything except what builds on `target`, so revisions on
    other branches of the service stay where they are.
    """
    if target in ZERO:
        return frozenset()
    key = RevisionKey(service, graph.resolve(service, target))
    later = {k.revision for k in graph.descendants([key]) if k.service == service and k != key}
    return frozenset(r for r in graph.by_service.get(service, []) if r not in later)


def last_applied(
    graph: Graph, applied: Mapping[str, frozenset[str]], service: str, steps: int
) -> set[RevisionKey]:
    """The `steps` most recently applied revisions of `service` (a suffix of its order)."""
    mine = applied.get(service, frozenset())
    order = [RevisionKey(service, r) for r in run_order(graph, service) if r in mine]
    return set(order[len(order) - steps :]) if steps > 0 else set()


def run_order(graph: Graph, service: str) -> list[str]:
    """`service`'s revisions in the order they are applied (deterministic, whatever their
    ids: hash ids sort in no useful order)."""
    keys = [RevisionKey(service, h) for h in graph.heads(service)]
    return [s.revision for s in plan_upgrade(_intra_only(graph), {}, keys).steps]


def _intra_only(graph: Graph) -> Graph:
    return Graph(graph.nodes, graph.intra_parents, graph.intra_parents, graph.by_service)


def _leveled(graph: Graph, order: list[RevisionKey], direction: Direction) -> Plan:
    """Steps in `order`, each with a level: one past the highest level of anything it
    must wait for (its parents going up, its children going down)."""
    level: dict[RevisionKey, int] = {}
    last_of_service: dict[str, int] = {}
    out: list[Step] = []
    for key in order:
        waits = graph.children(key) if direction == "down" else graph.parents[key]
        lvl = last_of_service.get(key.service, -1) + 1
        for other in waits:
            if other in level:
                lvl = max(lvl, level[other] + 1)
        level[key] = lvl
        last_of_service[key.service] = lvl
        out.append(Step(key.service, key.revision, direction, lvl))
    return Plan(tuple(out))


def _reach(keys: Iterable[RevisionKey],
           edges: Callable[[RevisionKey], Iterable[RevisionKey]]) -> set[RevisionKey]:
    """`keys` and every key reachable from them along `edges`."""
    seen: set[RevisionKey] = set()
    stack = list(keys)
    while stack:
        key = stack.pop()
        if key in seen:
            continue
        seen.add(key)
        stack.extend(edges(key))
    return seen
