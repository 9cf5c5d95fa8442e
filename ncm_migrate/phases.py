"""Splitting a plan for zero-downtime deploys: by phase (expand before the new code is
deployed, contract after it) and by maintenance window. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from .findings import Finding, relative_file
from .graph import Graph
from .model import DeferredStep, Phase, Plan, RevisionKey


def needs_of(graph: Graph, key: RevisionKey) -> tuple[RevisionKey, ...]:
    """What `key` really needs: its history, `depends_on` and `requires` (not the ordering
    edges of a service-level `depends_on`)."""
    return graph.required_parents.get(key, graph.parents.get(key, ()))


def phase_findings(
    graph: Graph, keys: Iterable[RevisionKey], pending: Callable[[RevisionKey], bool],
    root: Path | None = None,
) -> list[Finding]:
    """Pending pre-deploy revisions (of `keys`) that need a pending post-deploy one:
    `migrate --phase pre` would have to contract before the deploy. A post-deploy revision
    already applied (the last deploy's contract step) is no obstacle: the next expand step
    builds on it."""
    findings: list[Finding] = []
    for key in keys:
        rev = graph.nodes[key]
        if rev.phase != "pre" or not pending(key):
            continue
        for need in needs_of(graph, key):
            if need in graph.nodes and graph.nodes[need].phase == "post" and pending(need):
                findings.append(Finding(
                    key.service, key.revision, "phase-order", "error",
                    f"{key} is a pre-deploy revision but needs {need}, a post-deploy one "
                    f"(phase = \"post\"), so it could only run after the deploy; make {key} "
                    f"post-deploy too, or {need} pre-deploy",
                    relative_file(rev.path, root), dict(rev.line_of).get("phase"),
                ))
    return findings


def select_phase(plan: Plan, graph: Graph, phase: Phase | None) -> Plan:
    """The steps of `plan` that `migrate --phase` runs: `pre`, the pre-deploy revisions and
    whatever they need (in any service); `post` and None, all of it (after `--phase pre`,
    what is left is post-deploy). Order and levels are the plan's."""
    if phase != "pre":
        return plan
    in_plan = {s.key for s in plan.steps}
    keep: set[RevisionKey] = set()
    stack = [s.key for s in plan.steps if s.direction == "down" or graph.nodes[s.key].phase == "pre"]
    while stack:
        key = stack.pop()
        if key in keep:
            continue
        keep.add(key)
        stack.extend(k for k in needs_of(graph, key) if k in in_plan)
    return Plan(tuple(s for s in plan.steps if s.key in keep), plan.deferred)


def defer(plan: Plan, graph: Graph, held: Mapping[RevisionKey, str]) -> Plan:
    """`plan` without the steps `held` names (each with why) and every step that comes after
    one of them in the graph; those become the plan's `deferred`."""
    deferred: dict[RevisionKey, DeferredStep] = {}
    steps = []
    for step in plan.steps:
        key = step.key
        blocked = next((p for p in graph.parents.get(key, ()) if p in deferred), None)
        if step.direction == "up" and key in held:
            deferred[key] = DeferredStep(key.service, key.revision, held[key])
        elif step.direction == "up" and blocked is not None:
            deferred[key] = DeferredStep(key.service, key.revision, f"needs {blocked}, deferred")
        else:
            steps.append(step)
    return Plan(tuple(steps), plan.deferred + tuple(deferred.values()))
