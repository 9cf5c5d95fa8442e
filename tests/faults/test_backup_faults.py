"""Damaged backups and restores that fail half way, on SQLite, PostgreSQL and MariaDB (and
MongoDB): each is refused or undone, and the database's tables, rows and ledger are exactly
as they were before. Backups that fail leave no folder behind."""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from monorepo import CliResult, Monorepo

from ncm_migrate.backups import default_dir
from ncm_migrate.errors import BackupInvalid

KEY = "GgtVj9ovHkJ_2LGdbQwd3K1RwHjZtVp7mKfEqZ4KxVQ="
OTHER_KEY = "ZmRZdE9nNUZ4cF9TRnRjYjNqV2xPVlZVRnRNbXFhYTc="


def snapshot(url: str) -> dict[str, Any]:
    """Every table's columns and every row as stored (the ledger and version table too)."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            out: dict[str, Any] = {}
            for name in sorted(inspector.get_table_names()):
                columns = [(c["name"], str(c["type"])) for c in inspector.get_columns(name)]
                table = sa.Table(name, sa.MetaData(), autoload_with=conn)
                out[name] = (columns, sorted(repr(tuple(r)) for r in conn.execute(sa.select(table))))
            for name in sorted(inspector.get_view_names()):
                rows = conn.exec_driver_sql(f"SELECT * FROM {name}")
                out[f"view {name}"] = sorted(repr(tuple(r)) for r in rows)
            return out
    finally:
        engine.dispose()


def _execute(url: str, *statements: str) -> None:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)
    engine.dispose()


def _prepared(repo: Monorepo, url: str, folder: Path, env: dict[str, str] | None = None,
              before_backup: tuple[str, ...] = ()) -> dict[str, Any]:
    """A migrated service, its backup in `folder`, then changes made after the backup: the
    state that a failed restore must leave as it is (returned)."""
    repo.revision("users", "0001_initial", upgrade="""
        op.create_table('people', sa.Column('id', sa.Integer, primary_key=True),
                        sa.Column('name', sa.String(40), nullable=False))
        op.bulk_insert(sa.table('people', sa.column('id', sa.Integer), sa.column('name', sa.String)),
                       [{'id': 1, 'name': 'ada'}, {'id': 2, 'name': 'grace'}])
    """, downgrade="op.drop_table('people')")
    repo.table("users", "0002_pets", "pets", down="0001_initial")
    repo.settings(f'[development]\ndatabase_url = "{url}"\n')
    assert repo.cli("migrate", "users", "0001_initial").code == 0
    _execute(url, "CREATE VIEW first_people AS SELECT id FROM people WHERE id < 3", *before_backup)
    made = repo.cli("backup", "users", "-o", str(folder), env=env)
    assert made.code == 0, made.output
    assert repo.cli("migrate").code == 0  # after the backup: another revision, table and ledger row
    _execute(url, "INSERT INTO people (id, name) VALUES (3, 'linus')",
             "CREATE TABLE junk (id INTEGER PRIMARY KEY)", "INSERT INTO junk (id) VALUES (7)")
    state = snapshot(url)
    assert {"people", "pets", "junk", "ncm_migrations", "alembic_version_users"} <= set(state)
    assert len(state["ncm_migrations"][1]) == 2
    return state


def _manifest(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "manifest.json").read_text())
    return data


def _dump_file(folder: Path) -> Path:
    return folder / _manifest(folder)["files"][0]


def _rehash(folder: Path) -> None:
    """Record the files' current sha256 in the manifest, as a careful forger would."""
    import hashlib

    data = _manifest(folder)
    data["sha256"] = {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in data["files"]}
    (folder / "manifest.json").write_text(json.dumps(data))


def _truncate(folder: Path) -> None:
    path = _dump_file(folder)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def _truncate_and_rehash(folder: Path) -> None:
    _truncate(folder)
    _rehash(folder)


def _garbage(folder: Path) -> None:
    path = _dump_file(folder)
    path.write_bytes(bytes((i * 7919 + 13) % 256 for i in range(path.stat().st_size)))
    _rehash(folder)


def _wrong_sha(folder: Path) -> None:
    data = _manifest(folder)
    data["sha256"] = {n: "0" * 64 for n in data["files"]}
    (folder / "manifest.json").write_text(json.dumps(data))


def _no_sha(folder: Path) -> None:
    data = _manifest(folder)
    data["sha256"] = {}
    (folder / "manifest.json").write_text(json.dumps(data))


def _missing(folder: Path) -> None:
    _dump_file(folder).unlink()


def _escaping_name(folder: Path) -> None:
    data = _manifest(folder)
    data["files"] = ["../outside.sql"]
    (folder / "manifest.json").write_text(json.dumps(data))


def _unlisted(folder: Path) -> None:
    """The manifest lists (and hashes) another file than the dump."""
    (folder / "notes.txt").write_text("not the dump")
    data = _manifest(folder)
    data["files"] = ["notes.txt"]
    (folder / "manifest.json").write_text(json.dumps(data))
    _rehash(folder)


DAMAGE: dict[str, tuple[Callable[[Path], None], str]] = {
    "dump not listed": (_unlisted, "does not list"),
    "truncated": (_truncate, "does not match the sha256"),
    "wrong sha256": (_wrong_sha, "does not match the sha256"),
    "no sha256": (_no_sha, "has no sha256"),
    "missing file": (_missing, "missing"),
    "file outside the folder": (_escaping_name, "lists the file"),
    "garbage, rehashed": (_garbage, "nothing was restored"),
}


def _refused(result: CliResult, code: int, words: str) -> None:
    assert result.code == code, result.output
    assert words in result.stderr, result.stderr
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_damaged_backups_are_refused_before_anything_is_touched(
    repo: Monorepo, db_url: str, tmp_path: Path
) -> None:
    pristine = tmp_path / "bk"
    before = _prepared(repo, db_url, pristine)
    for case, (damage, words) in DAMAGE.items():
        folder = tmp_path / case.replace(" ", "_").replace(",", "")
        shutil.copytree(pristine, folder)
        damage(folder)
        result = repo.cli("restore", "users", str(folder))
        _refused(result, 2, words)
        assert snapshot(db_url) == before, case
    restored = repo.cli("restore", "users", str(pristine))
    assert restored.code == 0, restored.output
    restored_state = snapshot(db_url)
    assert set(restored_state) == {"people", "ncm_migrations", "alembic_version_users", "view first_people"}
    assert restored_state["view first_people"] == ["(1,)", "(2,)"]


def test_truncated_dump_with_a_matching_sha256_is_refused_or_undone(
    repo: Monorepo, db_url: str, tmp_path: Path
) -> None:
    """A manifest rewritten to match a truncated dump: the dump's own checks (integrity_check,
    the mysqldump trailer) refuse it, or the restore fails and is undone (pg_restore reads a
    custom archive's table of contents from its start)."""
    folder = tmp_path / "bk"
    before = _prepared(repo, db_url, folder)
    _truncate_and_rehash(folder)
    result = repo.cli("restore", "users", str(folder))
    assert result.code in (1, 2) and "Traceback" not in result.output, result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "nothing was restored" in result.stderr or "left as it was" in result.stderr
    assert snapshot(db_url) == before


def test_rekeyed_backups_are_refused(repo: Monorepo, db_url: str, tmp_path: Path) -> None:
    from cryptography.fernet import Fernet

    folder = tmp_path / "bk"
    keyed = {"NCM_BACKUP__ENCRYPTION_KEY": KEY}
    before = _prepared(repo, db_url, folder, env=keyed)
    wrong = repo.cli("restore", "users", str(folder), env={"NCM_BACKUP__ENCRYPTION_KEY": OTHER_KEY})
    _refused(wrong, 2, "cannot be decrypted")
    assert snapshot(db_url) == before

    # The files re-encrypted with another key and the manifest's sha256 made to match.
    rekeyed = tmp_path / "rekeyed"
    shutil.copytree(folder, rekeyed)
    for name in _manifest(rekeyed)["files"]:
        path = rekeyed / name
        path.write_bytes(Fernet(OTHER_KEY).encrypt(Fernet(KEY).decrypt(path.read_bytes())))
    _rehash(rekeyed)
    _refused(repo.cli("restore", "users", str(rekeyed), env=keyed), 2, "cannot be decrypted")
    # One flipped byte in an encrypted file, sha256 made to match.
    tampered = tmp_path / "tampered"
    shutil.copytree(folder, tampered)
    path = _dump_file(tampered)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    _rehash(tampered)
    _refused(repo.cli("restore", "users", str(tampered), env=keyed), 2, "cannot be decrypted")
    assert snapshot(db_url) == before


def _wrapper(tmp_path: Path, name: str, body: str) -> Path:
    """A folder holding a program `name` (Python) that stands in for the real one."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    script = folder / name
    script.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    script.chmod(0o755)
    return folder


def test_restore_failing_half_way_leaves_mariadb_as_it_was(
    repo: Monorepo, mysql_url: str, tmp_path: Path
) -> None:
    """A complete dump with a bad statement after its first tables: the client stops there,
    after dropping and creating tables, and the database is put back."""
    folder = tmp_path / "bk"
    _prepared(repo, mysql_url, folder)
    _execute(mysql_url, "CREATE VIEW people_names AS SELECT name FROM people")
    before = snapshot(mysql_url)
    assert "view people_names" in before
    path = folder / "db.sql"
    lines = path.read_text().splitlines(keepends=True)
    at = max(i for i, line in enumerate(lines) if line.startswith("INSERT INTO"))
    lines.insert(at + 1, "THIS IS NOT SQL;\n")
    path.write_text("".join(lines))
    _rehash(folder)
    result = repo.cli("restore", "users", str(folder))
    assert result.code == 1 and "put back as it was" in result.stderr, result.output
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1
    assert snapshot(mysql_url) == before


def _large_objects(url: str) -> list[Any]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        found = list(conn.exec_driver_sql(
            "SELECT m.oid, pg_catalog.lo_get(m.oid) FROM pg_catalog.pg_largeobject_metadata m"))
    engine.dispose()
    return found


@pytest.mark.parametrize("fault", ["bad statement", "bad statement after large objects", "pg_restore fails"])
def test_restore_failing_half_way_leaves_postgresql_as_it_was(
    repo: Monorepo, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    """pg_restore's script with a bad statement after the tables were made, or after the
    large objects (whose part of a script commits on its own unless pg_restore writes one
    transaction), or pg_restore exiting with an error after writing its whole script (psql
    would commit at the end of its input): the database is as it was."""
    folder = tmp_path / "bk"
    _prepared(repo, pg_url, folder, before_backup=("SELECT pg_catalog.lo_from_bytea(0, 'hello')",))
    _execute(pg_url, "CREATE VIEW people_names AS SELECT name FROM people")
    before = snapshot(pg_url), _large_objects(pg_url)
    assert "view people_names" in before[0] and len(before[1]) == 1
    real = shutil.which("pg_restore")
    exit_code = 1 if fault == "pg_restore fails" else 0
    bad = "" if exit_code else "SELECT ncm_no_such_function();\\n"
    mark = "\\nALTER TABLE ONLY " if "after large objects" in fault else "\\nCOPY "
    bin_dir = _wrapper(tmp_path, "pg_restore", f"""
        import subprocess, sys
        proc = subprocess.run([{real!r}, *sys.argv[1:]], capture_output=True, timeout=60)
        out = proc.stdout
        script = "--file=-" in sys.argv
        if script:
            at = out.index(b"{mark}") + 1
            out = out[:at] + b"{bad}" + out[at:]
        sys.stdout.buffer.write(out)
        if script and {exit_code}:
            sys.exit("pg_restore: error: stand-in failure")
        sys.exit(proc.returncode)
    """)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    result = repo.cli("restore", "users", str(folder))
    assert result.code == 1 and "left as it was" in result.stderr, result.output
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1
    assert (snapshot(pg_url), _large_objects(pg_url)) == before
    assert ("ncm_no_such_function" if bad else "stand-in failure") in result.stderr
    monkeypatch.setenv("PATH", os.environ["PATH"].split(os.pathsep, 1)[1])  # the real pg_restore
    restored = repo.cli("restore", "users", str(folder))
    assert restored.code == 0, restored.output
    assert [bytes(lo[1]) for lo in _large_objects(pg_url)] == [b"hello"]


def test_restore_failing_in_sqlite_leaves_the_database_as_it_was(
    repo: Monorepo, sqlite_url: str, tmp_path: Path
) -> None:
    """SQLite refuses to copy pages into a WAL database of another page size: the failure
    comes after every check passed, and the database is as it was."""
    folder = tmp_path / "bk"
    _prepared(repo, sqlite_url, folder)
    path = Path(sqlite_url.removeprefix("sqlite:///"))
    path.unlink()
    _execute(sqlite_url, "PRAGMA page_size = 16384", "VACUUM")
    _execute(sqlite_url, "PRAGMA journal_mode = wal", "CREATE TABLE keep (id INTEGER PRIMARY KEY)",
             "INSERT INTO keep (id) VALUES (1)")
    before = snapshot(sqlite_url)
    result = repo.cli("restore", "users", str(folder))
    assert result.code == 1 and "left as it was" in result.stderr, result.output
    assert snapshot(sqlite_url) == before


def test_restore_does_not_wait_forever_for_a_locked_table(
    repo: Monorepo, db_url: str, tmp_path: Path
) -> None:
    """Another session holds a table for longer than lock.timeout_s: the restore fails, and
    the database is as it was."""
    import sqlite3

    folder = tmp_path / "bk"
    before = _prepared(repo, db_url, folder)
    engine = sa.create_engine(db_url, poolclass=sa.pool.NullPool)
    sqlite_file = db_url.removeprefix("sqlite:///") if db_url.startswith("sqlite") else ":memory:"
    raw = sqlite3.connect(sqlite_file, isolation_level=None, check_same_thread=False)
    release = threading.Timer(30.0, raw.rollback)  # bounds the test if the restore waits regardless
    try:
        with engine.connect() as holder:
            if db_url.startswith("sqlite"):
                raw.execute("BEGIN IMMEDIATE")
                release.start()
            elif db_url.startswith("postgresql"):
                holder.exec_driver_sql("SET idle_in_transaction_session_timeout = '30s'")
                holder.exec_driver_sql("LOCK TABLE pets IN ACCESS SHARE MODE")
            else:
                holder.exec_driver_sql("SET SESSION wait_timeout = 30")
                holder.exec_driver_sql("SELECT * FROM pets")  # its metadata lock lasts the transaction
            result = repo.cli("restore", "users", str(folder), env={"NCM_LOCK__TIMEOUT_S": "1"})
    finally:
        release.cancel()
        raw.close()
        engine.dispose()
    assert result.code == 1 and "Traceback" not in result.output, result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "nothing was restored" in result.stderr or "left as it was" in result.stderr
    assert snapshot(db_url) == before


# -- MongoDB --------------------------------------------------------------------------------


def _mongo_state(url: str) -> dict[str, Any]:
    from ncm_migrate.backends.mongo import backend as mongo

    db = mongo.client_factory(url, 5.0)[mongo.url_database(url)]
    return {name: sorted(repr(d) for d in db[name].find()) for name in db.list_collection_names()}


def test_mongodb_damaged_or_failing_restores_leave_it_as_it_was(
    repo: Monorepo, mongo_url: str, tmp_path: Path
) -> None:
    import bson

    from ncm_migrate.backends.mongo import backend as mongo

    repo.mongo_revision("orders", "0001_initial",
                        upgrade="db.people.insert_many([{'_id': 1, 'name': 'ada'}, {'_id': 2, 'name': 'b'}])",
                        downgrade="db.people.drop()")
    repo.urls({"orders": mongo_url})
    assert repo.cli("migrate").code == 0
    pristine = tmp_path / "bk"
    assert repo.cli("backup", "orders", "-o", str(pristine)).code == 0
    db = mongo.client_factory(mongo_url, 5.0)[mongo.url_database(mongo_url)]
    db.people.insert_one({"_id": 3, "name": "later"})
    db.stray.insert_one({"_id": 9})
    before = _mongo_state(mongo_url)
    bson_name = next(n for n in _manifest(pristine)["files"] if n.endswith("people.bson"))

    def duplicate_id(folder: Path) -> None:  # passes every check; the server refuses it
        path = folder / bson_name
        path.write_bytes(path.read_bytes() + bson.encode({"_id": 1, "name": "again"}))
        _rehash(folder)

    def escaping_name(folder: Path) -> None:
        path = folder / bson_name.replace(".bson", ".metadata.json")
        path.write_text(path.read_text().replace('"people"', '"../../people"'))
        _rehash(folder)

    cases: dict[str, tuple[Callable[[Path], None], int, str]] = {
        "collection outside the folder": (escaping_name, 2, "leads outside the backup"),
        "truncated": (_truncate, 2, "does not match the sha256"),
        "truncated, rehashed": (_truncate_and_rehash, 2, "truncated or not a BSON file"),
        "wrong sha256": (_wrong_sha, 2, "does not match the sha256"),
        "duplicate _id": (duplicate_id, 1, "left as it was"),
    }
    for case, (damage, code, words) in cases.items():
        folder = tmp_path / case.replace(" ", "_").replace(",", "")
        shutil.copytree(pristine, folder)
        damage(folder)
        _refused(repo.cli("restore", "orders", str(folder)), code, words)
        assert _mongo_state(mongo_url) == before, case
    assert repo.cli("restore", "orders", str(pristine)).code == 0
    after = _mongo_state(mongo_url)
    assert "stray" not in after and len(after["people"]) == 2


# -- backups that fail, and where they go ---------------------------------------------------------


def test_failed_backup_leaves_no_folder(
    repo: Monorepo, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo.table("users", "0001_initial", "people")
    repo.settings(f'[development]\ndatabase_url = "{pg_url}"\n')
    assert repo.cli("migrate").code == 0
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    given = repo.cli("backup", "users", "-o", str(tmp_path / "a" / "b" / "bk"))
    assert given.code == 1 and "'pg_dump'" in given.stderr
    assert not (tmp_path / "a").exists()
    default = repo.cli("backup", "users")
    assert default.code == 1 and not (repo.root / "var" / "backups").exists()
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    assert repo.cli("backup", "users", "-o", str(empty)).code == 1
    assert empty.is_dir() and not any(empty.iterdir())  # the user's own folder stays, empty

    # A dump program that writes half a file and fails: the half file goes too.
    bin_dir = _wrapper(tmp_path, "pg_dump", """
        import sys
        out = next(a for a in sys.argv if a.startswith("/") and a.endswith(".pgdump"))
        open(out, "wb").write(b"PGDMP half")
        sys.exit("pg_dump: error: connection lost")
    """)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    half = repo.cli("backup", "users", "-o", str(tmp_path / "half"))
    assert half.code == 1 and "connection lost" in half.stderr, half.output
    assert not (tmp_path / "half").exists()


def test_backup_does_not_wait_forever_for_a_locked_table(repo: Monorepo, pg_url: str, tmp_path: Path) -> None:
    """A table locked against readers for longer than lock.timeout_s fails the backup, which
    leaves no folder. (SQLite's readers are never blocked in WAL mode.)"""
    repo.table("users", "0001_initial", "people")
    repo.settings(f'[development]\ndatabase_url = "{pg_url}"\n')
    assert repo.cli("migrate").code == 0
    engine = sa.create_engine(pg_url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as holder:
            holder.exec_driver_sql("SET idle_in_transaction_session_timeout = '30s'")  # bounds the test
            holder.exec_driver_sql("LOCK TABLE people IN ACCESS EXCLUSIVE MODE")
            result = repo.cli("backup", "users", "-o", str(tmp_path / "bk"),
                              env={"NCM_LOCK__TIMEOUT_S": "1"})
    finally:
        engine.dispose()
    assert result.code == 1 and "Traceback" not in result.output, result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "bk").exists()


def test_unwritable_backup_folder_is_one_sentence(repo: Monorepo, sqlite_url: str, tmp_path: Path) -> None:
    repo.table("users", "0001_initial", "people")
    repo.settings(f'[development]\ndatabase_url = "{sqlite_url}"\n')
    assert repo.cli("migrate").code == 0
    (tmp_path / "a_file").write_text("")
    under_file = repo.cli("backup", "users", "-o", str(tmp_path / "a_file" / "bk"))
    _refused(under_file, 2, "Cannot create backup folder")
    is_file = repo.cli("backup", "users", "-o", str(tmp_path / "a_file"))
    _refused(is_file, 2, "is a file")


def test_backup_of_a_newer_format_is_refused(repo: Monorepo, sqlite_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "bk"
    before = _prepared(repo, sqlite_url, folder)
    data = _manifest(folder)
    data["format"] = 99
    (folder / "manifest.json").write_text(json.dumps(data))
    _refused(repo.cli("restore", "users", str(folder)), 2, "newer ncm-migrate")
    assert snapshot(sqlite_url) == before


@pytest.mark.parametrize("env", ["../../x", "..", "a/b", "/abs", ""])
def test_environment_name_cannot_leave_backup_dir(tmp_path: Path, env: str) -> None:
    with pytest.raises(BackupInvalid, match=r"cannot name a folder under backup\.dir"):
        default_dir(tmp_path / "backups", env, "users")
    made = default_dir(tmp_path / "backups", "prod.eu-1", "users")
    assert made.parent == tmp_path / "backups/prod.eu-1/users"


def test_password_never_shown_by_backup_or_restore(repo: Monorepo, pg_url: str, tmp_path: Path) -> None:
    """PostgreSQL trusts loopback here, so a URL with a password still connects."""
    secret = "s3cr3t-Pw-ncm"
    url = sa.engine.make_url(pg_url).set(password=secret).render_as_string(hide_password=False)
    repo.table("users", "0001_initial", "people")
    repo.write("settings/.secrets.toml", f'[development]\ndatabase_url = "{url}"\n')
    assert repo.cli("migrate").code == 0
    folder = tmp_path / "bk"
    outputs = [repo.cli("backup", "users", "-o", str(folder))]
    assert outputs[0].code == 0, outputs[0].output
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    _garbage(bad)
    outputs.append(repo.cli("restore", "users", str(bad)))
    outputs.append(repo.cli("restore", "users", str(folder)))
    assert [o.code for o in outputs] == [0, 2, 0]
    assert not any(secret in o.output for o in outputs)
    assert secret.encode() not in b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


def test_environment_escaping_backup_dir_is_refused_by_the_command(
    repo: Monorepo, sqlite_url: str, tmp_path: Path
) -> None:
    repo.table("users", "0001_initial", "people")
    repo.settings(f'[development]\ndatabase_url = "{sqlite_url}"\n'
                  f'["../../x"]\ndatabase_url = "{sqlite_url}"\n')
    result = repo.cli("--env", "../../x", "backup", "users")
    # Refused by the environment-name rule before any settings are used; backups.py keeps
    # its own check for callers of the Python API that build a Settings by hand.
    _refused(result, 2, "is not a valid name")
    assert not (repo.root / "x").exists()  # backup.dir is var/backups: ../../x is the repo's x
    assert not (repo.root / "var" / "backups").exists()
