"""backup and restore on SQLite, PostgreSQL and MariaDB: a destructive change undone, the
manifest, encryption (a wrong key is refused), missing programs, and backups before migrate."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from monorepo import Monorepo, tables

from ncm_migrate.backups import program
from ncm_migrate.errors import ToolMissing

KEY = "GgtVj9ovHkJ_2LGdbQwd3K1RwHjZtVp7mKfEqZ4KxVQ="  # Fernet keys: 32 url-safe base64 bytes
OTHER_KEY = "ZmRZdE9nNUZ4cF9TRnRjYjNqV2xPVlZVRnRNbXFhYTc="


def _snapshot(url: str) -> dict[str, Any]:
    """Every table's columns and rows."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            out: dict[str, Any] = {}
            for name in sorted(inspector.get_table_names()):
                columns = [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(name)]
                table = sa.Table(name, sa.MetaData(), autoload_with=conn)
                rows = sorted(tuple(str(v) for v in r) for r in conn.execute(sa.select(table)))
                if name == "ncm_migrations":  # ids and times differ in spelling only
                    rows = sorted(r[1:5] for r in rows)
                out[name] = (columns, rows)
            return out
    finally:
        engine.dispose()


def _repo(repo: Monorepo, url: str) -> None:
    repo.revision("users", "0001_initial", upgrade="""
        op.create_table('people', sa.Column('id', sa.Integer, primary_key=True),
                        sa.Column('name', sa.String(40), nullable=False))
        op.bulk_insert(sa.table('people', sa.column('id', sa.Integer), sa.column('name', sa.String)),
                       [{'id': 1, 'name': 'ada'}, {'id': 2, 'name': 'grace'}])
    """, downgrade="op.drop_table('people')")
    repo.settings(f'[development]\ndatabase_url = "{url}"\n')


def _wreck(url: str) -> None:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM people WHERE id = 1")
        conn.exec_driver_sql("CREATE TABLE junk (id INTEGER PRIMARY KEY)")
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE people")
    engine.dispose()


def test_backup_destructive_change_restore(repo: Monorepo, db_url: str, tmp_path: Path) -> None:
    _repo(repo, db_url)
    assert repo.cli("migrate").code == 0
    before = _snapshot(db_url)
    assert before["people"][1] == [("1", "ada"), ("2", "grace")]

    folder = tmp_path / "bk"
    result = repo.cli("backup", "users", "-o", str(folder))
    assert result.code == 0, result.output
    manifest = json.loads((folder / "manifest.json").read_text())
    dialect = db_url.split(":")[0].split("+")[0]
    keys = ("service", "backend", "dialect", "environment", "heads", "encrypted")
    assert {k: manifest[k] for k in keys} == {
        "service": "users", "backend": "sql", "dialect": dialect, "environment": "development",
        "heads": ["0001_initial"], "encrypted": False,
    }
    assert manifest["time"] and all((folder / f).is_file() for f in manifest["files"])
    assert manifest["format"] == 2 and set(manifest["sha256"]) == set(manifest["files"])
    assert all(hashlib.sha256((folder / f).read_bytes()).hexdigest() == manifest["sha256"][f]
               for f in manifest["files"])

    _wreck(db_url)
    assert "people" not in tables(db_url) and "junk" in tables(db_url)
    restored = repo.cli("restore", "users", str(folder))
    assert restored.code == 0, restored.output
    assert _snapshot(db_url) == before
    assert repo.cli("check").code == 0

    # A backup folder is never overwritten.
    again = repo.cli("backup", "users", "-o", str(folder))
    assert again.code == 2 and "not empty" in again.stderr


def test_encrypted_backup_needs_its_key(repo: Monorepo, db_url: str, tmp_path: Path) -> None:
    _repo(repo, db_url)
    assert repo.cli("migrate").code == 0
    before = _snapshot(db_url)
    folder = tmp_path / "bk"
    keyed = {"NCM_BACKUP__ENCRYPTION_KEY": KEY}
    assert repo.cli("backup", "users", "-o", str(folder), env=keyed).code == 0
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["encrypted"] is True and all(f.endswith(".enc") for f in manifest["files"])
    assert not any(b"grace" in (folder / f).read_bytes() for f in manifest["files"])

    _wreck(db_url)
    wrecked = _snapshot(db_url)
    wrong = repo.cli("restore", "users", str(folder), env={"NCM_BACKUP__ENCRYPTION_KEY": OTHER_KEY})
    assert wrong.code == 2 and "cannot be decrypted" in wrong.stderr and "Traceback" not in wrong.output
    none = repo.cli("restore", "users", str(folder))
    assert none.code == 2 and "is encrypted" in none.stderr
    assert _snapshot(db_url) == wrecked  # nothing was touched

    assert repo.cli("restore", "users", str(folder), env=keyed).code == 0
    assert _snapshot(db_url) == before


def test_bad_key_and_wrong_service_are_clear_errors(repo: Monorepo, sqlite_url: str, tmp_path: Path) -> None:
    _repo(repo, sqlite_url)
    repo.table("billing", "0001_initial", "invoices")
    assert repo.cli("migrate").code == 0
    bad = repo.cli("backup", "users", "-o", str(tmp_path / "x"), env={"NCM_BACKUP__ENCRYPTION_KEY": "short"})
    assert bad.code == 2 and "backup.encryption_key" in bad.stderr and "short" not in bad.stderr
    assert repo.cli("backup", "users", "-o", str(tmp_path / "u")).code == 0
    other = repo.cli("restore", "billing", str(tmp_path / "u"))
    assert other.code == 2 and "backup of service 'users', not 'billing'" in other.stderr
    empty = repo.cli("restore", "users", str(tmp_path))
    assert empty.code == 2 and "manifest.json" in empty.stderr


def test_missing_program_is_named(repo: Monorepo, pg_url: str, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _repo(repo, pg_url)
    assert repo.cli("migrate").code == 0
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    result = repo.cli("backup", "users", "-o", str(tmp_path / "bk"))
    assert result.code == 1 and "'pg_dump'" in result.stderr and "not found on PATH" in result.stderr
    assert not (tmp_path / "bk").exists()  # nothing is left behind
    with pytest.raises(ToolMissing, match="'mariadb-dump' or 'mysqldump'"):
        program("mariadb-dump", "mysqldump")


def test_backup_before_migrate(repo: Monorepo, db_url: str) -> None:
    _repo(repo, db_url)
    repo.write("settings/settings.local.toml", "[development.backup]\nbefore_migrate = true\n")
    assert repo.cli("migrate").code == 0
    repo.table("users", "0002_more", "more_t", down="0001_initial")
    result = repo.cli("migrate")
    assert result.code == 0, result.output
    folders = sorted((repo.root / "var/backups/development/users").iterdir())
    assert len(folders) == 2
    heads = [json.loads((f / "manifest.json").read_text())["heads"] for f in folders]
    assert heads == [[], ["0001_initial"]]
    assert str(folders[-1]) in result.stderr
    entries = [json.loads(line) for line in (repo.root / "var/audit.jsonl").read_text().splitlines()]
    assert [(e["command"], e["outcome"], e["revision"]) for e in entries[-2:]] == [
        ("migrate", "backed-up", None), ("migrate", "applied", "0002_more"),
    ]
    assert str(folders[-1]) in entries[-2]["detail"]
    # Nothing to do: no backup.
    assert repo.cli("migrate").code == 0
    assert len(list((repo.root / "var/backups/development/users").iterdir())) == 2


@pytest.mark.parametrize("command", ["backup", "restore"])
def test_help(command: str) -> None:
    result = Monorepo(Path.cwd()).cli(command, "--help")
    assert result.code == 0 and "Example:" in result.stdout


def test_mongodb_backup_and_encrypted_restore(repo: Monorepo, mongo_url: str, tmp_path: Path) -> None:
    from ncm_migrate.backends import mongo

    repo.mongo_revision("orders", "0001_initial",
                        upgrade="db.people.insert_many([{'_id': 1, 'name': 'ada'}, {'_id': 2, 'name': 'b'}])",
                        downgrade="db.people.drop()")
    repo.urls({"orders": mongo_url})
    keyed = {"NCM_BACKUP__ENCRYPTION_KEY": KEY}
    assert repo.cli("migrate").code == 0
    folder = tmp_path / "bk"
    result = repo.cli("backup", "orders", "-o", str(folder), env=keyed)
    assert result.code == 0, result.output
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (manifest["dialect"], manifest["heads"]) == ("mongodb", ["0001_initial"])
    assert manifest["encrypted"] is True

    db = mongo.client_factory(mongo_url, 5.0)[mongo.url_database(mongo_url)]
    db.people.delete_many({})
    db.stray.insert_one({"_id": 9})
    wrong = repo.cli("restore", "orders", str(folder), env={"NCM_BACKUP__ENCRYPTION_KEY": OTHER_KEY})
    assert wrong.code == 2 and "cannot be decrypted" in wrong.stderr
    assert repo.cli("restore", "orders", str(folder), env=keyed).code == 0
    assert sorted(d["name"] for d in db.people.find()) == ["ada", "b"]
    assert "stray" not in db.list_collection_names()


def test_backup_made_before_checksums_still_restores(repo: Monorepo, sqlite_url: str, tmp_path: Path) -> None:
    """A manifest of format 1 has no sha256: its files are checked as dumps only, with a warning."""
    _repo(repo, sqlite_url)
    assert repo.cli("migrate").code == 0
    before = _snapshot(sqlite_url)
    folder = tmp_path / "bk"
    assert repo.cli("backup", "users", "-o", str(folder)).code == 0
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["sha256"]
    manifest["format"] = 1
    (folder / "manifest.json").write_text(json.dumps(manifest))
    _wreck(sqlite_url)
    result = repo.cli("restore", "users", str(folder))
    assert result.code == 0, result.output
    assert "not verified" in result.stderr
    assert _snapshot(sqlite_url) == before


def test_backup_without_the_dump_program_leaves_nothing_on_mariadb(
    repo: Monorepo, mysql_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No mariadb-dump/mysqldump on PATH: exit 1 naming them, no folder left (neither -o's
    nor the default one), the database untouched."""
    repo.table("users", "0001_initial", "people")
    repo.settings(f'[development]\ndatabase_url = "{mysql_url}"\n')
    assert repo.cli("migrate").code == 0
    before = tables(mysql_url)
    monkeypatch.setenv("PATH", str(tmp_path / "no_programs_here"))
    given = repo.cli("backup", "users", "-o", str(tmp_path / "a" / "bk"))
    assert given.code == 1, given.output
    assert "mysqldump" in given.stderr and "Traceback" not in given.output
    assert len(given.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "a").exists()
    default = repo.cli("backup", "users")
    assert default.code == 1 and not (repo.root / "var" / "backups").exists()
    assert tables(mysql_url) == before


def test_backup_into_a_read_only_folder_is_one_sentence(
    repo: Monorepo, sqlite_url: str, tmp_path: Path
) -> None:
    from monorepo import read_only

    repo.table("users", "0001_initial", "people")
    repo.settings(f'[development]\ndatabase_url = "{sqlite_url}"\n')
    assert repo.cli("migrate").code == 0
    locked = tmp_path / "locked"
    locked.mkdir()
    with read_only(locked):
        result = repo.cli("backup", "users", "-o", str(locked / "bk"))
    assert result.code == 2, result.output
    assert "Cannot create backup folder" in result.stderr and "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (locked / "bk").exists()
