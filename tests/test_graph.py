"""The cross-service graph and its plans, built in memory: no files, no database."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from ncm_migrate.errors import GraphError, UnknownRevision
from ncm_migrate.findings import Finding
from ncm_migrate.graph import (
    Graph,
    build_graph,
    dependents_outside,
    keep_for_target,
    last_applied,
    plan_downgrade,
    plan_upgrade,
    removal_set,
    upgrade_targets,
)
from ncm_migrate.model import Revision, RevisionKey, split_reference
from ncm_migrate.rules import raise_first


def rev(
    key: str,
    down: str | Sequence[str] | None = None,
    requires: Sequence[str] = (),
    labels: Sequence[str] = (),
    depends_on: Sequence[str] = (),
) -> Revision:
    service, revision = key.split(":")
    downs = (down,) if isinstance(down, str) else tuple(down or ())
    return Revision(
        service=service, revision=revision, down_revisions=downs,
        path=Path(f"services/{service}/migrations/{revision}.py"), checksum="0" * 64,
        branch_labels=tuple(labels), depends_on=tuple(depends_on), requires=tuple(requires),
    )


def graph(*revs: Revision, depends: dict[str, Sequence[str]] | None = None) -> Graph:
    """The graph of `revs`, refused as `migrate` refuses it: with its first finding."""
    g, found = graph_and_findings(*revs, depends=depends)
    raise_first(found)
    return g


def graph_and_findings(
    *revs: Revision, depends: dict[str, Sequence[str]] | None = None
) -> tuple[Graph, list[Finding]]:
    by_service: dict[str, list[Revision]] = {}
    for r in revs:
        by_service.setdefault(r.service, []).append(r)
    return build_graph(by_service, depends)


def keys(*names: str) -> set[RevisionKey]:
    return {RevisionKey(*n.split(":")) for n in names}


def order(g: Graph, applied: dict[str, frozenset[str]] | None = None,
          services: Sequence[str] | None = None) -> list[str]:
    targets = upgrade_targets(g, list(services or sorted(g.by_service)))
    return [str(s.key) for s in plan_upgrade(g, applied or {}, targets).steps]


def test_linear_history() -> None:
    """
    users: 0001 -> 0002 -> 0003
    """
    g = graph(rev("users:0001"), rev("users:0002", "0001"), rev("users:0003", "0002"))
    assert g.heads("users") == ("0003",)
    assert order(g) == ["users:0001", "users:0002", "users:0003"]
    assert order(g, {"users": frozenset({"0001"})}) == ["users:0002", "users:0003"]
    assert order(g, {"users": frozenset({"0001", "0002", "0003"})}) == []


def test_requires_orders_across_services() -> None:
    """
    users:    0001 -> 0002 -> 0003
                       ^
                       | requires
    billing:  0001 -> 0002
    """
    g = graph(
        rev("users:0001"), rev("users:0002", "0001"), rev("users:0003", "0002"),
        rev("billing:0001"), rev("billing:0002", "0001", requires=["users:0002"]),
    )
    # billing sorts first, yet its 0002 waits for users:0002 and nothing more of users.
    assert order(g) == [
        "billing:0001", "users:0001", "users:0002", "billing:0002", "users:0003",
    ]
    # Migrating billing alone brings exactly what it needs from users.
    assert order(g, services=["billing"]) == [
        "billing:0001", "users:0001", "users:0002", "billing:0002",
    ]


def test_requires_accepts_a_unique_prefix() -> None:
    """
    users:   0001_initial <- billing: 0001 (requires users:0001)
    """
    g = graph(rev("users:0001_initial"), rev("billing:0001", requires=["users:0001"]))
    assert g.parents[RevisionKey("billing", "0001")] == (RevisionKey("users", "0001_initial"),)


def test_service_depends_on_puts_its_base_after_the_other_heads() -> None:
    """
    users:   0001 -> 0002
                       \\ (depends_on = ["users"] in settings)
    billing:            0001 -> 0002
    """
    g = graph(
        rev("users:0001"), rev("users:0002", "0001"),
        rev("billing:0001"), rev("billing:0002", "0001"),
        depends={"billing": ["users"]},
    )
    assert order(g) == ["users:0001", "users:0002", "billing:0001", "billing:0002"]


def test_levels_let_independent_services_run_side_by_side() -> None:
    """
    users:   0001 -> 0002
    catalog: 0001
    billing: 0001 (requires users:0002)
    """
    g = graph(
        rev("users:0001"), rev("users:0002", "0001"), rev("catalog:0001"),
        rev("billing:0001", requires=["users:0002"]),
    )
    steps = plan_upgrade(g, {}, upgrade_targets(g, ["users", "catalog", "billing"])).steps
    levels = {str(s.key): s.level for s in steps}
    assert levels == {"users:0001": 0, "users:0002": 1, "catalog:0001": 0, "billing:0001": 2}


def test_branches_and_merge() -> None:
    """
          0001
         /    \\
      0002a   0002b
         \\    /
          0003 (merge)
    """
    g = graph(
        rev("shop:0001"), rev("shop:0002a", "0001"), rev("shop:0002b", "0001"),
        rev("shop:0003", ["0002a", "0002b"]),
    )
    assert g.heads("shop") == ("0003",)
    assert g.conflicting_heads("shop") == ()
    assert order(g) == ["shop:0001", "shop:0002a", "shop:0002b", "shop:0003"]
    assert g.heads_of("shop", frozenset({"0001", "0002a", "0002b"})) == ("0002a", "0002b")
    assert g.applied_from_heads("shop", ["0003"]) == {"0001", "0002a", "0002b", "0003"}


def test_unlabelled_fork_is_a_conflict() -> None:
    """
          0001
         /    \\
      0002a   0002b     (two heads, no merge, no branch labels)
    """
    g = graph(rev("shop:0001"), rev("shop:0002a", "0001"), rev("shop:0002b", "0001"))
    assert g.heads("shop") == ("0002a", "0002b")
    assert g.conflicting_heads("shop") == ("0002a", "0002b")


def test_labelled_branches_and_separate_bases_are_not_conflicts() -> None:
    """
          0001                     n001 [networking]  (a base of its own)
         /    \\                     |
    0002a      0002b [feature]     n002 (depends_on 0002a)
    """
    g = graph(
        rev("shop:0001"), rev("shop:0002a", "0001"), rev("shop:0002b", "0001", labels=["feature"]),
        rev("shop:n001", labels=["networking"]), rev("shop:n002", "n001", depends_on=["0002a"]),
    )
    # As Alembic's `heads`: a revision only depended on (not revised) is still a head.
    assert set(g.heads("shop")) == {"0002a", "0002b", "n002"}
    assert g.conflicting_heads("shop") == ()
    steps = order(g)
    assert steps.index("shop:0002a") < steps.index("shop:n002")
    assert g.resolve("shop", "networking") == "n001"
    assert g.resolve("shop", "feature") == "0002b"


def test_a_branch_label_names_one_revision_and_no_id() -> None:
    """
    0001 -> 0002 [0001]          a label that is another revision's id
    0001 -> 0002 [x] -> 0003 [x] a label on two revisions
    Alembic refuses both only once a migration runs; here they are bad input up front.
    """
    _, found = graph_and_findings(rev("shop:0001"), rev("shop:0002", "0001", labels=["0001"]))
    assert [(f.rule, f.revision) for f in found] == [("duplicate-label", "0002")]
    assert "branch label '0001', which is the id of revision shop:0001" in found[0].message
    with pytest.raises(GraphError, match="also a branch label of shop:0002"):
        graph(rev("shop:0001"), rev("shop:0002", "0001", labels=["x"]),
              rev("shop:0003", "0002", labels=["x"]))
    # One revision may repeat its own label, and labels of different services never clash.
    graph(rev("shop:0001", labels=["x", "x"]), rev("billing:0001", labels=["x"]))


def test_resolve_prefixes() -> None:
    """
    shop: 1975ea83b712 -> 1a2b3c4d5e6f
    """
    g = graph(rev("shop:1975ea83b712"), rev("shop:1a2b3c4d5e6f", "1975ea83b712"))
    assert g.resolve("shop", "197") == "1975ea83b712"
    assert g.resolve("shop", "1a2b3c4d5e6f") == "1a2b3c4d5e6f"
    with pytest.raises(UnknownRevision, match="ambiguous"):
        g.resolve("shop", "1")
    with pytest.raises(UnknownRevision, match="has no revision 'ff'"):
        g.resolve("shop", "ff")
    with pytest.raises(UnknownRevision):
        g.resolve("nobody", "0001")


def test_missing_down_revision_and_requires() -> None:
    """
    users: 0001 -> 0002 -> (0009 missing)
    """
    with pytest.raises(GraphError, match="down_revision '0009'"):
        graph(rev("users:0001"), rev("users:0002", "0009"))
    with pytest.raises(GraphError, match="requires 'billing:0001'"):
        graph(rev("users:0001", requires=["billing:0001"]))
    with pytest.raises(GraphError, match="depends_on 'x'"):
        graph(rev("users:0001", depends_on=["x"]))


def test_every_missing_reference_is_a_finding_and_the_first_is_raised() -> None:
    """
    users:   0001 -> 0002 -> (0009 missing)
             0003 --requires--> billing:0001 (missing), --depends_on--> x (missing)
    users:0002 depends_on ':0001' (no service named: `split_reference` gives "")
    """
    revs = (
        rev("users:0001"), rev("users:0002", "0009", depends_on=[":0001"]),
        rev("users:0003", "0002", requires=["billing:0001"], depends_on=["x"]),
    )
    g, found = graph_and_findings(*revs)
    assert [(f.revision, f.rule, f.severity) for f in found] == [
        ("0002", "missing-revision", "error"), ("0002", "missing-revision", "error"),
        ("0003", "missing-revision", "error"), ("0003", "missing-revision", "error"),
    ]
    named = ("down_revision '0009'", "depends_on ':0001'", "depends_on 'x'", "requires 'billing:0001'")
    for finding, what in zip(found, named, strict=True):
        assert what in finding.message
    # the graph leaves the dangling edges out: the rest can still be read
    assert g.heads("users") == ("0001", "0003")
    assert g.parents[RevisionKey("users", "0003")] == (RevisionKey("users", "0002"),)
    with pytest.raises(GraphError) as info:
        graph(*revs)
    assert str(info.value) == found[0].message + "."


def test_a_reference_splits_at_its_first_colon() -> None:
    assert split_reference("billing:0001") == ("billing", "0001")
    assert split_reference("0001", "users") == ("users", "0001")
    assert split_reference(":0001", "users") == ("", "0001")
    assert split_reference("a:b:c") == ("a", "b:c")
    assert split_reference("0001") == ("", "0001")


def test_cycle_is_reported_as_a_path() -> None:
    """
    users:   0001 -> 0002 --requires--> billing:0002
                      ^                      |
                      +------requires--------+ (billing:0001 requires users:0002)
    billing: 0001 -> 0002
    """
    with pytest.raises(GraphError) as info:
        graph(
            rev("users:0001"), rev("users:0002", "0001", requires=["billing:0002"]),
            rev("billing:0001", requires=["users:0002"]), rev("billing:0002", "0001"),
        )
    message = str(info.value)
    assert message.startswith("Cycle in the migration graph: ")
    path = message.split(": ", 1)[1].split(" (")[0].split(" -> ")
    assert path[0] == path[-1]
    assert set(path) == {"users:0002", "billing:0001", "billing:0002"}


def test_downgrade_children_first_across_services() -> None:
    """
    users:   0001 -> 0002
                      ^ requires
    billing: 0001 ----+
    """
    g = graph(rev("users:0001"), rev("users:0002", "0001"), rev("billing:0001", requires=["users:0002"]))
    applied = {"users": frozenset({"0001", "0002"}), "billing": frozenset({"0001"})}
    remove = removal_set(g, applied, "users", keep_for_target(g, "users", "zero"))
    assert remove == keys("users:0001", "users:0002")
    assert dependents_outside(g, applied, remove) == keys("billing:0001")
    steps = plan_downgrade(g, remove | keys("billing:0001")).steps
    assert [str(s.key) for s in steps] == ["billing:0001", "users:0002", "users:0001"]
    assert all(s.direction == "down" for s in steps)
    # Nothing else needs users:0001's children once billing is gone.
    assert dependents_outside(g, {"users": applied["users"]}, remove) == set()


def test_target_keeps_other_branches() -> None:
    """
          0001
         /    \\
      0002a   0002b        n001 [networking]
        |
      0003a
    """
    g = graph(
        rev("shop:0001"), rev("shop:0002a", "0001"), rev("shop:0003a", "0002a"),
        rev("shop:0002b", "0001", labels=["b"]), rev("shop:n001", labels=["networking"]),
    )
    everything = frozenset(g.by_service["shop"])
    applied = {"shop": everything}
    # Back to 0002a: only what builds on it goes (Django's and Alembic's meaning).
    assert removal_set(g, applied, "shop", keep_for_target(g, "shop", "0002a")) == keys("shop:0003a")
    # Back to 0001: both branches above it go; the separate base stays.
    assert removal_set(g, applied, "shop", keep_for_target(g, "shop", "0001")) == keys(
        "shop:0002a", "shop:0003a", "shop:0002b"
    )
    assert removal_set(g, applied, "shop", keep_for_target(g, "shop", "zero")) == {
        RevisionKey("shop", r) for r in everything
    }
    # A target not applied yet removes nothing (migrate then goes forwards to it).
    partial = {"shop": frozenset({"0001", "0002a"})}
    assert removal_set(g, partial, "shop", keep_for_target(g, "shop", "0002b")) == set()


def test_last_applied_is_a_suffix_of_the_order() -> None:
    """
    users: 0001 -> 0002 -> 0003 -> 0004   (0001..0003 applied)
    """
    g = graph(rev("users:0001"), rev("users:0002", "0001"), rev("users:0003", "0002"),
              rev("users:0004", "0003"))
    applied = {"users": frozenset({"0001", "0002", "0003"})}
    assert last_applied(g, applied, "users", 1) == keys("users:0003")
    assert last_applied(g, applied, "users", 2) == keys("users:0002", "users:0003")
    assert last_applied(g, applied, "users", 9) == keys("users:0001", "users:0002", "users:0003")
    assert last_applied(g, applied, "users", 0) == set()


def test_a_service_that_depends_on_another_blocks_its_rollback() -> None:
    """
    users:   0001 -> 0002 -> 0003        (0003 not applied yet)
                                |  service level: billing depends_on users
    billing: 0001 -> 0002  <----+        catalog depends_on billing
    catalog: 0001  <--- billing's heads
    """
    g = graph(
        rev("users:0001"), rev("users:0002", "0001"), rev("users:0003", "0002"),
        rev("billing:0001"), rev("billing:0002", "0001"), rev("catalog:0001"),
        depends={"billing": ["users"], "catalog": ["billing"]},
    )
    applied = {
        "users": frozenset({"0001", "0002"}),
        "billing": frozenset({"0001", "0002"}),
        "catalog": frozenset({"0001"}),
    }
    # Any applied revision of users, even one below its head: all of billing needs users,
    # and catalog needs billing.
    assert dependents_outside(g, applied, keys("users:0002")) == keys(
        "billing:0001", "billing:0002", "catalog:0001"
    )
    remove = keys("users:0002") | dependents_outside(g, applied, keys("users:0002"))
    steps = [str(s.key) for s in plan_downgrade(g, remove).steps]
    assert steps.index("catalog:0001") < steps.index("billing:0001") < steps.index("users:0002")
    assert steps.index("billing:0002") < steps.index("billing:0001")
    # A dependent service with nothing applied blocks nothing.
    assert dependents_outside(g, {"users": applied["users"]}, keys("users:0001", "users:0002")) == set()
    # Rolling back billing's head leaves users alone, and catalog still blocks it.
    assert dependents_outside(g, applied, keys("billing:0002")) == keys("catalog:0001")
