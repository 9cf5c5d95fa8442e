"""Every use of Alembic's internals, in one module: the SQL backend reaches them only here.

ncm-migrate runs Alembic's own steps, so the version table (and `alembic current`) always
agrees with Alembic, but builds them from revision headers read without importing a module,
and on PostgreSQL and SQLite runs them in its own loop. Each function says which public API
would do its job and why that was not enough; when Alembic changes one of these, this is
the module to read (CI runs the oldest and newest Alembic that pyproject.toml allows).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeAlias

import sqlalchemy as sa

from ..model import Revision

if TYPE_CHECKING:
    from alembic.operations import Operations
    from alembic.runtime.migration import MigrationContext, RevisionStep
    from alembic.script import ScriptDirectory
    from alembic.script.revision import Revision as AlembicRevision
    from alembic.script.revision import RevisionMap

AlembicStep: TypeAlias = "RevisionStep"
"""One step of Alembic's upgrade or downgrade loop."""


def revision_map(revisions: Mapping[str, Revision]) -> RevisionMap:
    """Alembic's revision map built from our headers, with no module imported.

    Public alternative: `ScriptDirectory.revision_map`. It imports every revision file of
    the folder to build the map, so one broken file would stop every command of the
    service and listing or planning would run migration code; ours reads headers only.
    """
    from alembic.script.revision import Revision as AlembicRevision
    from alembic.script.revision import RevisionMap

    def load() -> list[AlembicRevision]:
        return [
            AlembicRevision(
                rev.revision,
                _down(rev),
                dependencies=rev.depends_on or None,
                branch_labels=rev.branch_labels or None,
            )
            for rev in revisions.values()
        ]

    return RevisionMap(load)


def use_revision_map(script: ScriptDirectory, rmap: RevisionMap) -> None:
    """Give `script` our map (for rendering SQL offline), replacing the one it would load.

    Public alternative: none; a `ScriptDirectory` always builds its map by importing every
    file (see `revision_map`). `revision_map` is a memoized attribute, so assigning it works.
    """
    script.revision_map = rmap


def revision_step(
    rmap: RevisionMap, revision: str, is_upgrade: bool, fn: Callable[..., Any], doc: str
) -> AlembicStep:
    """Alembic's step for `revision`, running `fn` (the module's upgrade or downgrade, which
    we imported, or a no-op for `--fake`).

    Public alternative: `alembic.command.upgrade(config, target)` (or an env.py's
    `context.run_migrations()` with Alembic's own steps). It runs everything up to a target
    and imports every module first; a plan is an exact sequence of steps (ordered across
    services, each module imported when its step runs), so the steps are built here.
    `RevisionStep.__init__` reads the function off an imported module, so it is not called.
    """
    return _step_class()(rmap, rmap.get_revision(revision), is_upgrade, fn, doc)


@functools.cache
def _step_class() -> Callable[[RevisionMap, AlembicRevision | None, bool, Any, str], AlembicStep]:
    """The step class, made on first use so that importing this module imports no Alembic."""
    from alembic.runtime.migration import RevisionStep

    class Step(RevisionStep):
        def __init__(
            self, rmap: RevisionMap, rev: AlembicRevision, is_upgrade: bool, fn: Any, doc: str
        ) -> None:
            self.revision_map = rmap
            self.revision = rev  # type: ignore[assignment]
            self.is_upgrade = is_upgrade
            self.migration_fn = fn
            self._doc = doc

        @property
        def doc(self) -> str:
            return self._doc

    return Step  # type: ignore[return-value]


def is_plain_move(step: AlembicStep, heads: set[str]) -> bool:
    """Whether `step` moves one row of the version table from one revision to another (no
    branch to insert, delete, merge or split): the case `move_statement` writes itself.

    Public alternative: let Alembic's own loop (`MigrationContext.run_migrations`, through
    its `HeadMaintainer`) write every version change. It renders each UPDATE with the ids
    as literals, a statement SQLAlchemy compiles anew for every step, and it cannot add the
    ledger row to the same statement; `benchmarks/` measures the difference.
    """
    return not (
        step.should_delete_branch(heads)
        or step.should_create_branch(heads)
        or step.should_merge_branches(heads)
        or step.should_unmerge_branches(heads)
    )


def version_move(step: AlembicStep, heads: set[str]) -> tuple[str, str]:
    """The (old, new) revision of a plain move (see `is_plain_move`), as Alembic computes it.

    Public alternative: none; `RevisionStep.update_version_num` is what Alembic's own
    `HeadMaintainer` asks.
    """
    old, new = step.update_version_num(heads)
    return old, new


def move_statement(version_table: str, ledger_row: sa.Table | None) -> sa.Update:
    """A plain move's UPDATE of the version table (parameters old_version, new_version),
    written by hand and compiled once; with `ledger_row` (PostgreSQL), that table's row is
    inserted by the same statement, in a data-modifying CTE (parameters: its columns but
    `id`): one round trip for both.

    Public alternative: Alembic's own UPDATE (see `is_plain_move`). The version table's
    shape (one `version_num` column of 32 characters) is Alembic's, documented as such.
    """
    version = sa.Table(
        version_table, sa.MetaData(), sa.Column("version_num", sa.String(32), nullable=False)
    )
    update = (
        sa.update(version)
        .where(version.c.version_num == sa.bindparam("old_version"))
        .values(version_num=sa.bindparam("new_version"))
    )
    if ledger_row is None:
        return update
    insert = ledger_row.insert().values(
        {c.name: sa.bindparam(c.name, type_=c.type) for c in ledger_row.c if c.name != "id"}
    ).cte("ncm_ledger_row")
    return update.add_cte(insert)


def move_heads(mctx: MigrationContext, heads: set[str], step: AlembicStep) -> set[str]:
    """Any other version change (a branch inserted, deleted, merged or split), written by
    Alembic's own `HeadMaintainer`; the heads after it.

    Public alternative: Alembic's own loop (see `is_plain_move`), which does exactly this
    for every step.
    """
    from alembic.runtime.migration import HeadMaintainer

    maintainer = HeadMaintainer(mctx, heads)
    maintainer.update_to_step(step)
    return set(maintainer.heads)


def add_version_callback(mctx: MigrationContext, callback: Callable[..., None]) -> None:
    """Have Alembic's own loop call `callback` after each step's version change, in the
    step's transaction.

    Public alternative: `EnvironmentContext.configure(on_version_apply=...)`. A service's
    own env.py calls `configure` itself, without our callback, so it is added to the
    context that configure made.
    """
    if callback not in mctx.on_version_apply_callbacks:
        mctx.on_version_apply_callbacks = (*mctx.on_version_apply_callbacks, callback)


def operations(mctx: MigrationContext) -> AbstractContextManager[Operations]:
    """`alembic.op` bound to `mctx` while a function runs outside Alembic's own loop (our
    loop's steps, a revision's verify()).

    Public alternative: `MigrationContext.run_migrations`, which installs `op` only around
    the steps of its own loop.
    """
    from alembic.operations import Operations

    return Operations.context(mctx)


def _down(rev: Revision) -> str | tuple[str, ...] | None:
    if not rev.down_revisions:
        return None
    if len(rev.down_revisions) == 1:
        return rev.down_revisions[0]
    return rev.down_revisions


__all__ = [
    "AlembicStep", "add_version_callback", "is_plain_move", "move_heads", "move_statement",
    "operations", "revision_map", "revision_step", "use_revision_map", "version_move",
]
