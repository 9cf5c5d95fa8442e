"""For the drift and round-trip tests: a database's full schema read independently of
ncm-migrate (to show it unchanged), and the scratch databases left on a server."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa


def fingerprint(url: str) -> dict[str, object]:
    """Tables with their columns, indexes, keys and constraints, and the version and ledger
    rows: everything a read-only command must leave as it was."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            insp = sa.inspect(conn)
            shot: dict[str, object] = {}
            for table in sorted(insp.get_table_names()):
                shot[table] = (
                    [(c["name"], str(c["type"]), c["nullable"], c.get("default"))
                     for c in insp.get_columns(table)],
                    sorted(str(sorted(i.items())) for i in insp.get_indexes(table)),
                    sorted(str(sorted(f.items())) for f in insp.get_foreign_keys(table)),
                    sorted(str(sorted(u.items())) for u in insp.get_unique_constraints(table)),
                    conn.execute(sa.text(f"SELECT COUNT(*) FROM {table}")).scalar(),
                )
            if "alembic_version" in shot:
                shot["version"] = sorted(
                    conn.execute(sa.text("SELECT version_num FROM alembic_version")).all())
            return shot
    finally:
        engine.dispose()


def scratch_names(url: str) -> set[str]:
    """Scratch databases on the PostgreSQL or MariaDB server behind `url`."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                rows = conn.execute(sa.text(
                    "SELECT datname FROM pg_database WHERE datname LIKE 'ncm_scratch_%'"))
            else:
                rows = conn.execute(sa.text("SHOW DATABASES LIKE 'ncm\\_scratch\\_%'"))
            return {r[0] for r in rows}
    finally:
        engine.dispose()


def exists(url: str) -> bool:
    """Whether the database at `url` (a SQLite file, or one on a server) is there."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return Path(str(parsed.database)).exists()
    return str(parsed.database) in scratch_names(url)


def servers(url: str) -> set[str]:
    """The scratch databases on `url`'s server (none for SQLite)."""
    return set() if url.startswith("sqlite") else scratch_names(url)


def assert_dropped(made: list[str], live_url: str, before: set[str]) -> None:
    """Every scratch database made is gone, and the server lists no new one."""
    assert made, "no scratch database was built"
    server = sa.engine.make_url(live_url).get_backend_name() != "sqlite"
    after = scratch_names(live_url) if server else set()
    for url in made:
        name = sa.engine.make_url(url).database
        assert name is not None
        if server:
            assert name.startswith("ncm_scratch_") and name not in before and name not in after
        else:
            assert not Path(name).exists() and not Path(name).parent.exists()
