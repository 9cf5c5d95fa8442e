"""Build throw-away monorepos for tests, and run the CLI against them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from ncm_migrate import cli
from ncm_migrate.urls import password_of

REPO = Path(__file__).resolve().parents[1]


def revision_file(
    revision: str,
    down: str | Sequence[str] | None = None,
    upgrade: str = "pass",
    downgrade: str = "pass",
    requires: Sequence[str] = (),
    doc: str = "",
    extra: str = "",
    branch_labels: Sequence[str] | None = None,
    depends_on: Sequence[str] | None = None,
    migration_type: str = "schema",
) -> str:
    """The text of an Alembic revision file with ncm-migrate's header."""
    down_repr = repr(tuple(down) if isinstance(down, list | tuple) else down)
    return (
        f'"""{doc or revision}"""\n\n'
        f"revision = {revision!r}\n"
        f"down_revision = {down_repr}\n"
        f"branch_labels = {tuple(branch_labels) if branch_labels else None!r}\n"
        f"depends_on = {tuple(depends_on) if depends_on else None!r}\n"
        f"requires = {list(requires)!r}\n"
        f"migration_type = {migration_type!r}\n\n"
        "import sqlalchemy as sa\nfrom alembic import op\n\n"
        f"{textwrap.dedent(extra)}\n\n"
        f"def upgrade() -> None:\n{textwrap.indent(textwrap.dedent(upgrade).strip(), '    ')}\n\n\n"
        f"def downgrade() -> None:\n{textwrap.indent(textwrap.dedent(downgrade).strip(), '    ')}\n"
    )


def mongo_revision_file(
    revision: str,
    down: str | Sequence[str] | None = None,
    upgrade: str = "pass",
    downgrade: str = "pass",
    requires: Sequence[str] = (),
    extra: str = "",
    transactional: bool = False,
) -> str:
    """The text of a MongoDB service's revision file: the same header, functions of `db`."""
    down_repr = repr(tuple(down) if isinstance(down, list | tuple) else down)

    def body(code: str) -> str:
        return textwrap.indent(textwrap.dedent(code).strip(), "    ")

    return (
        f'"""{revision}"""\n\n'
        f"revision = {revision!r}\n"
        f"down_revision = {down_repr}\n"
        "branch_labels = None\ndepends_on = None\n"
        f"requires = {list(requires)!r}\n"
        "migration_type = 'schema'\n"
        f"transactional = {transactional!r}\n\n"
        "from pymongo.database import Database\n\n"
        f"{textwrap.dedent(extra)}\n\n"
        f"def upgrade(db: Database) -> None:\n{body(upgrade)}\n\n\n"
        f"def downgrade(db: Database) -> None:\n{body(downgrade)}\n"
    )


def redis_revision_file(
    revision: str,
    down: str | Sequence[str] | None = None,
    upgrade: str = "pass",
    downgrade: str = "pass",
    requires: Sequence[str] = (),
    extra: str = "",
    verify: str | None = None,
) -> str:
    """The text of a Redis service's revision file: the same header, functions of `r`."""
    down_repr = repr(tuple(down) if isinstance(down, list | tuple) else down)

    def body(code: str) -> str:
        return textwrap.indent(textwrap.dedent(code).strip(), "    ")

    check = f"\n\ndef verify(r: redis.Redis) -> None:\n{body(verify)}\n" if verify else ""
    return (
        f'"""{revision}"""\n\n'
        f"revision = {revision!r}\n"
        f"down_revision = {down_repr}\n"
        "branch_labels = None\ndepends_on = None\n"
        f"requires = {list(requires)!r}\n"
        "migration_type = 'data'\n\n"
        "import redis\n\n"
        f"{textwrap.dedent(extra)}\n\n"
        f"def upgrade(r: redis.Redis) -> None:\n{body(upgrade)}\n\n\n"
        f"def downgrade(r: redis.Redis) -> None:\n{body(downgrade)}\n{check}"
    )


def create_table(table: str) -> tuple[str, str]:
    """upgrade/downgrade bodies that create and drop a small table."""
    return (
        f"op.create_table({table!r}, sa.Column('id', sa.Integer, primary_key=True))",
        f"op.drop_table({table!r})",
    )


@contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """`folder` cannot be written to, even by root (these tests often run as root, whom
    permissions do not stop: then the immutable attribute, `chattr +i`)."""
    import pytest

    if os.geteuid() != 0:
        mode = folder.stat().st_mode
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(mode)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(folder)], capture_output=True).returncode:
        pytest.skip("running as root without chattr +i: cannot make a folder read-only")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(folder)], check=True)


@dataclass
class Monorepo:
    root: Path

    def write(self, relpath: str, text: str) -> Path:
        path = self.root / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def service(self, name: str) -> Path:
        path = self.root / "services" / name / "migrations"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def revision(self, service: str, revision: str, **kw: object) -> Path:
        folder = self.service(service)
        return self.write(
            str((folder / f"{revision}.py").relative_to(self.root)),
            revision_file(revision, **kw),  # type: ignore[arg-type]
        )

    def mongo_revision(self, service: str, revision: str, **kw: object) -> Path:
        folder = self.service(service)
        return self.write(
            str((folder / f"{revision}.py").relative_to(self.root)),
            mongo_revision_file(revision, **kw),  # type: ignore[arg-type]
        )

    def redis_revision(self, service: str, revision: str, **kw: object) -> Path:
        folder = self.service(service)
        return self.write(
            str((folder / f"{revision}.py").relative_to(self.root)),
            redis_revision_file(revision, **kw),  # type: ignore[arg-type]
        )

    def table(self, service: str, revision: str, table: str, **kw: object) -> Path:
        up, down = create_table(table)
        return self.revision(service, revision, upgrade=up, downgrade=down, **kw)

    def settings(self, text: str) -> Path:
        return self.write("settings/settings.toml", textwrap.dedent(text))

    def urls(self, urls: Mapping[str, str], env: str = "development", extra: str = "") -> Path:
        """settings.toml giving each service its URL in `env`; a URL with a password goes to
        settings/.secrets.toml instead, as a committed settings file must not hold one."""
        parts = [f"[{env}]\n{textwrap.dedent(extra)}"]
        secret = []
        for svc, url in urls.items():
            section = f'[{env}.services.{svc}]\ndatabase_url = "{url}"\n'
            (secret if password_of(url) else parts).append(section)
        if secret or (self.root / "settings/.secrets.toml").exists():
            self.write("settings/.secrets.toml", "\n".join(secret))
        return self.settings("\n".join(parts))

    def cli(self, *args: str, env: Mapping[str, str] | None = None) -> CliResult:
        """Run the CLI in-process (typer's CliRunner)."""
        runner = CliRunner()
        result = runner.invoke(
            cli.app, cli.hoist_global_options(list(args)), env=dict(env or {}),
            catch_exceptions=False, obj=self.root,  # the root main() passes as manage.py's folder
        )
        return CliResult(result.exit_code, result.stdout, result.stderr)

    def run(self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 120) -> CliResult:
        """Run `python manage.py ...` in a real subprocess."""
        manage = self.root / "manage.py"
        if not manage.exists():
            manage.write_text(
                "from pathlib import Path\nfrom ncm_migrate.cli import main\n"
                "main(root=Path(__file__).resolve().parent)\n"
            )
        full_env = {
            k: v for k, v in os.environ.items() if not k.startswith("NCM_") or k.startswith("NCM_TEST_")
        }
        full_env.update(env or {})
        proc = subprocess.run(
            [sys.executable, str(manage), *args],
            cwd=self.root, env=full_env, capture_output=True, text=True, timeout=timeout,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def tables(url: str) -> set[str]:
    """The table names in the database at `url`."""
    import sqlalchemy as sa

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def ledger(url: str, service: str | None = None) -> list[dict[str, object]]:
    """The `ncm_migrations` rows at `url` (of one service), oldest first."""
    import sqlalchemy as sa

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("ncm_migrations"):
                return []
            where = " WHERE service = :s" if service else ""
            rows = conn.execute(sa.text(f"SELECT * FROM ncm_migrations{where} ORDER BY id"), {"s": service})
            return [dict(r._mapping) for r in rows]
    finally:
        engine.dispose()


def version_heads(url: str, version_table: str = "alembic_version") -> set[str]:
    """What plain Alembic (`alembic current`) reads from the version table at `url`."""
    import sqlalchemy as sa
    from alembic.runtime.migration import MigrationContext

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"version_table": version_table})
            return set(ctx.get_current_heads())
    finally:
        engine.dispose()
