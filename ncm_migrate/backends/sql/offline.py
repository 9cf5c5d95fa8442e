"""The SQL a run would send, rendered without a database (Alembic's offline mode) for
`sqlmigrate`, `migrate --sql` and squawk: each step's `SET` of its timeouts first
(`ddl_timeouts.offline_statements`), as the step runs them online."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from io import StringIO
from typing import TYPE_CHECKING, Any

from ...config import DdlSettings
from ...errors import NcmError, RevisionFileError
from ...model import Revision, Step
from ...pyfiles import load_revision_module, stopped_error
from . import alembic_bridge
from .ddl_timeouts import offline_statements, step_timeouts
from .engine import short_reason
from .metadata import target_metadata

if TYPE_CHECKING:
    from alembic.runtime.migration import MigrationContext

    from .backend import SqlBackend


def _with_timeouts(fn: Callable[..., Any], statements: Sequence[str]) -> Callable[..., Any]:
    """`fn`, written after the `SET` statements of its step's timeouts."""

    def call(*args: Any, **kwargs: Any) -> Any:
        from alembic import op

        for statement in statements:
            op.execute(statement)
        return fn(*args, **kwargs)

    return call


def render_offline_sql(
    backend: SqlBackend, steps: Sequence[Step], revisions: Mapping[str, Revision],
    start_heads: Sequence[str], ddl: DdlSettings,
) -> str:
    """The SQL `steps` would run, rendered without a database (Alembic's offline mode),
    each step starting with the `SET` of its timeouts (`ddl`, its revision's header)."""
    dialect = backend.dialect
    from alembic.config import Config
    from alembic.runtime.environment import EnvironmentContext
    from alembic.script import ScriptDirectory

    rmap = alembic_bridge.revision_map(revisions)
    buffer = StringIO()

    current: list[str] = []

    def steps_fn(_heads: Any, _mctx: MigrationContext) -> Iterator[alembic_bridge.AlembicStep]:
        for step in steps:
            rev = revisions[step.revision]
            current[:] = [step.revision]
            module = load_revision_module(rev)
            up = step.direction == "up"
            fn = getattr(module, "upgrade" if up else "downgrade")
            sets = offline_statements(dialect, step_timeouts(ddl, rev))
            yield alembic_bridge.revision_step(rmap, step.revision, up, _with_timeouts(fn, sets),
                                               rev.doc)

    cfg = backend.config
    config = Config()
    script = ScriptDirectory(str(cfg.migrations_dir))
    alembic_bridge.use_revision_map(script, rmap)
    env = EnvironmentContext(
        config, script, fn=steps_fn, as_sql=True,
        starting_rev=",".join(start_heads) or None, output_buffer=buffer,
    )
    with env:
        assert cfg.database_url is not None
        env.configure(
            url=cfg.database_url,
            literal_binds=True,
            version_table=cfg.version_table,
            transaction_per_migration=True,
            target_metadata=target_metadata(cfg),
            render_as_batch=cfg.database_url.startswith("sqlite"),
        )
        try:
            env.run_migrations()
        except RevisionFileError:
            raise  # the file cannot be imported: it says so, naming the file
        except (SystemExit, KeyboardInterrupt) as exc:
            if current:
                stopped = stopped_error(
                    exc, cfg.name, current[0], "while it was rendered as SQL", [],
                    dirty=False, recorded_as_failed=False,
                )
                assert stopped is not None
                raise stopped from None
            raise
        except Exception as exc:
            # The cause's first sentence only: Alembic's explanations run to a paragraph.
            cause = short_reason(exc).split(". ", 1)[0].rstrip(".")
            raise NcmError(
                f"Revision {cfg.name}:{current[0] if current else '?'} cannot be rendered as "
                f"SQL without a database, as it reads data or reflects tables "
                f"({type(exc).__name__}: {cause}); `migrate -v` shows its SQL as it runs."
            ) from None
    return buffer.getvalue()
