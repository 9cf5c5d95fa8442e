"""Plain Alembic over many script directories in one process: the benchmarks' baseline.

    python benchmarks/alembic_side.py status ROOT   # load every ROOT/alembic/*/ directory,
                                                    # read its current heads, list revisions
    python benchmarks/alembic_side.py upgrade ROOT  # `alembic upgrade head` on each, in turn

`status` does what a script built on Alembic's API does to show where every service is:
`ScriptDirectory.from_config` (which imports every revision module), `get_heads()`,
the database's current heads (`MigrationContext.get_current_heads`), and one line per
revision. `upgrade` calls `alembic.command.upgrade(cfg, "head")` for each directory.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool


def configs(root: Path) -> list[Config]:
    return [Config(str(ini)) for ini in sorted((root / "alembic").glob("*/alembic.ini"))]


def status(root: Path) -> int:
    lines = 0
    out = sys.stdout
    for cfg in configs(root):
        script = ScriptDirectory.from_config(cfg)
        heads = script.get_heads()
        engine = create_engine(str(cfg.get_main_option("sqlalchemy.url")), poolclass=NullPool)
        with engine.connect() as conn:
            current = set(MigrationContext.configure(conn).get_current_heads())
        engine.dispose()
        applied: set[str] = set()
        for rev in script.revision_map.iterate_revisions(tuple(current), "base"):
            applied.add(rev.revision)
        out.write(f"{Path(cfg.config_file_name or '').parent.name} heads={','.join(heads)}\n")
        for rev in reversed(list(script.walk_revisions())):
            out.write(f" [{'X' if rev.revision in applied else ' '}] {rev.revision}\n")
            lines += 1
    return lines


def upgrade(root: Path) -> None:
    for cfg in configs(root):
        command.upgrade(cfg, "head")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["status", "upgrade"])
    parser.add_argument("root", type=Path, help="a monorepo written by benchmarks/generate.py")
    args = parser.parse_args()
    if args.what == "status":
        status(args.root)
    else:
        upgrade(args.root)


if __name__ == "__main__":
    main()
