"""Dumps of SQL databases, their checks, and their restores that fail without harm.

SQLite through its online backup API, PostgreSQL through pg_dump, pg_restore and psql,
MySQL and MariaDB through mariadb-dump (or mysqldump) and the client. Each `check_*` reads a
dump without touching the database; each `restore_*` leaves the database as it was when it
fails. Passwords reach the programs through their environment or an option file, never
their command line.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ...errors import BackupFailed, BackupInvalid, NcmError, ToolMissing
from ...model import ServiceConfig
from ...urls import password_of, redact, redact_known, sqlite_file

SQLITE_FILE = "db.sqlite"
PG_FILE = "db.pgdump"
MYSQL_FILE = "db.sql"
MYSQL_TRAILER = b"-- Dump completed"
CHECK_TIMEOUT_S = 600.0  # reading a dump's table of contents or its last bytes, never its data
CLIENT_CONNECT_TIMEOUT_S = 10
"""The database programs' connect deadline (PGCONNECT_TIMEOUT; the mariadb client's
connect-timeout), the server's greeting included."""


def program(*names: str) -> str:
    """The first of `names` found on PATH; `ToolMissing` naming them all otherwise."""
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise ToolMissing(
        f"The program {' or '.join(repr(n) for n in names)} is needed for this backup or restore "
        "but was not found on PATH; install the database's client tools."
    )


def _last_line(config: ServiceConfig, raw: bytes) -> str:
    """The last error line a program wrote (else its last line), with every password hidden."""
    text = redact(redact_known(raw.decode("utf-8", "replace").strip()), [password_of(config.database_url)])
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "ERROR" in line or "error:" in line]
    return (errors or lines or ["no message"])[-1]


def _run(args: list[str], config: ServiceConfig, env: dict[str, str] | None = None,
         stdin: Path | None = None, timeout_s: float | None = None) -> None:
    """Run a database program; `BackupFailed` with its last line of output when it fails."""
    full_env = {**os.environ, **(env or {})}
    try:
        if stdin is not None:
            with stdin.open("rb") as fh:
                proc = subprocess.run(args, stdin=fh, capture_output=True, env=full_env, check=False,
                                      timeout=timeout_s)
        else:
            proc = subprocess.run(args, capture_output=True, env=full_env, check=False, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise BackupFailed(f"{Path(args[0]).name} did not finish within {timeout_s:g} s "
                           f"for service '{config.name}'.") from None
    except OSError as exc:
        raise ToolMissing(f"Could not run {args[0]}: {exc.strerror}.") from None
    if proc.returncode != 0:
        raise BackupFailed(
            f"{Path(args[0]).name} failed for service '{config.name}' (exit {proc.returncode}): "
            f"{_last_line(config, proc.stderr or proc.stdout)}"
        )


def _url(config: ServiceConfig) -> Any:
    from sqlalchemy.engine import make_url

    assert config.database_url is not None
    return make_url(config.database_url)


def _engine(config: ServiceConfig) -> Any:
    from .backend import create_engine

    assert config.database_url is not None
    return create_engine(config.database_url, 10.0)


# -- SQLite -------------------------------------------------------------------------------


def _sqlite_path(config: ServiceConfig) -> Path:
    assert config.database_url is not None
    path = sqlite_file(config.database_url)
    if path is None:
        raise BackupInvalid(f"Service '{config.name}' uses an in-memory SQLite database: nothing to back up.")
    return path


def _open_dump(path: Path) -> sqlite3.Connection:
    """A dump opened read-only and as immutable: reading it writes nothing next to it."""
    return sqlite3.connect(path.resolve().as_uri() + "?immutable=1", uri=True)


def _give_up_when_busy(lock_timeout_s: float) -> Callable[[int, int, int], None]:
    """A progress callback for `Connection.backup`: Python retries a busy database forever,
    after the busy timeout (`lock_timeout_s`) has already waited once."""

    def progress(status: int, _remaining: int, _total: int) -> None:
        if status in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            raise sqlite3.OperationalError(f"the database stayed locked for {lock_timeout_s:g} s")

    return progress


def dump_sqlite(config: ServiceConfig, out_dir: Path, lock_timeout_s: float) -> list[str]:
    source = sqlite3.connect(_sqlite_path(config), timeout=lock_timeout_s)
    target = sqlite3.connect(out_dir / SQLITE_FILE)
    try:
        source.backup(target, progress=_give_up_when_busy(lock_timeout_s))
    except sqlite3.Error as exc:
        raise BackupFailed(f"Backup of service '{config.name}' failed: {exc}.") from None
    finally:
        target.close()
        source.close()
    return [SQLITE_FILE]


def check_sqlite(config: ServiceConfig, folder: Path) -> None:
    """The dump is an SQLite database that passes `PRAGMA integrity_check`."""
    path = folder / SQLITE_FILE
    try:
        conn = _open_dump(path)
        try:
            result = [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise BackupInvalid(
            f"{path} is not a usable SQLite database ({exc}); nothing was restored."
        ) from None
    if result != ["ok"]:
        raise BackupInvalid(f"{path} is damaged ({result[0]}); nothing was restored.")


def restore_sqlite(config: ServiceConfig, folder: Path, lock_timeout_s: float) -> None:
    """Copy the dump into the database with SQLite's online backup API.

    All pages are copied in one step, which is one write transaction on the database: a
    failure rolls back through SQLite's own journal and leaves the database as it was. This
    is the atomic replace for SQLite: renaming a file over the database instead would pair
    the new file with the old one's -wal/-shm files and leave open connections on the old one.
    """
    path = _sqlite_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    source = _open_dump(folder / SQLITE_FILE)
    target = sqlite3.connect(path, timeout=lock_timeout_s)
    try:
        source.backup(target, pages=-1, progress=_give_up_when_busy(lock_timeout_s))
    except sqlite3.Error as exc:
        raise BackupFailed(
            f"Restore of service '{config.name}' into {path} failed ({exc}); the database was left as it was."
        ) from None
    finally:
        target.close()
        source.close()


# -- PostgreSQL ---------------------------------------------------------------------------


def _pg_conninfo(config: ServiceConfig) -> tuple[str, dict[str, str]]:
    """A libpq connection string without the password, and the environment carrying it."""
    url = _url(config)
    parts = {"host": url.host, "port": url.port, "user": url.username, "dbname": url.database}
    parts.update({k: v for k, v in url.query.items() if isinstance(v, str) and k != "password"})

    def quote(value: object) -> str:
        return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"

    conninfo = " ".join(f"{k}={quote(v)}" for k, v in parts.items() if v not in (None, ""))
    password = url.password or url.query.get("password")
    env = {"PGPASSWORD": str(password)} if isinstance(password, str) and password else {}
    if "connect_timeout" not in parts and "PGCONNECT_TIMEOUT" not in os.environ:
        env["PGCONNECT_TIMEOUT"] = str(CLIENT_CONNECT_TIMEOUT_S)
    return conninfo, env


def dump_postgres(config: ServiceConfig, out_dir: Path, lock_timeout_s: float) -> list[str]:
    conninfo, env = _pg_conninfo(config)
    _run([program("pg_dump"), "--format=custom", "--no-owner", "--no-privileges",
          f"--lock-wait-timeout={max(1, round(lock_timeout_s * 1000))}",
          "--file", str(out_dir / PG_FILE), "--dbname", conninfo], config, env)
    return [PG_FILE]


def check_postgres(config: ServiceConfig, folder: Path) -> None:
    """pg_restore reads the dump's table of contents (`pg_restore --list`)."""
    path = folder / PG_FILE
    try:
        _run([program("pg_restore"), "--list", str(path)], config, timeout_s=CHECK_TIMEOUT_S)
    except BackupFailed as exc:
        reason = str(exc).split(": ", 1)[-1]
        raise BackupInvalid(
            f"{path} is not a readable pg_dump archive ({reason}); nothing was restored."
        ) from None


# Every schema and large object goes, so what was made after the backup goes too; in the
# same transaction as the restore, so nothing goes unless the restore is complete.
_PG_WIPE = b"""\
BEGIN;
DO $ncm$ DECLARE s name; BEGIN
  FOR s IN SELECT nspname FROM pg_namespace
           WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema' LOOP
    EXECUTE format('DROP SCHEMA %I CASCADE', s);
  END LOOP;
  PERFORM pg_catalog.lo_unlink(oid) FROM pg_catalog.pg_largeobject_metadata;
END $ncm$;
CREATE SCHEMA public;
"""


def restore_postgres(config: ServiceConfig, folder: Path, lock_timeout_s: float) -> None:
    """Replace the database in one transaction: the wipe, then pg_restore's script.

    pg_restore turns the archive into one transaction's SQL (--single-transaction: without
    it, the large objects' part commits on its own), streamed into psql (ON_ERROR_STOP)
    after a BEGIN and the wipe. The script's last bytes, which hold its COMMIT, are held back
    until pg_restore has exited without error; otherwise psql's input ends inside the
    transaction and PostgreSQL rolls all of it back (its DDL is transactional). No scratch
    database is needed, so neither CREATEDB nor renaming a database other sessions use.
    """
    conninfo, env = _pg_conninfo(config)
    options = f"{os.environ.get('PGOPTIONS', '')} -c lock_timeout={max(1, round(lock_timeout_s * 1000))}"
    full_env = {**os.environ, **env, "PGOPTIONS": options.strip()}
    reader_args = [program("pg_restore"), "--no-owner", "--no-privileges", "--single-transaction",
                   "--file=-", str(folder / PG_FILE)]
    writer_args = [program("psql"), "--no-psqlrc", "--quiet", "--set=ON_ERROR_STOP=1", "--dbname", conninfo]
    with tempfile.TemporaryFile() as reader_err, tempfile.TemporaryFile() as writer_err:
        reader = subprocess.Popen(reader_args, stdout=subprocess.PIPE, stderr=reader_err, env=full_env)
        writer = subprocess.Popen(writer_args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                  stderr=writer_err, env=full_env)
        try:
            assert reader.stdout is not None and writer.stdin is not None
            _pump(reader.stdout, writer.stdin, reader)
            _close(writer.stdin)
            writer.wait()
        finally:
            for proc in (reader, writer):
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
        if writer.returncode != 0:  # psql stopped at an error (and pg_restore was stopped)
            writer_err.seek(0)
            raise BackupFailed(
                f"Restore of service '{config.name}' failed (psql exit {writer.returncode}): "
                f"{_last_line(config, writer_err.read())}; the database was left as it was."
            )
        if reader.returncode != 0:
            reader_err.seek(0)
            raise BackupFailed(
                f"pg_restore failed for service '{config.name}' (exit {reader.returncode}): "
                f"{_last_line(config, reader_err.read())}; the database was left as it was."
            )


_HELD_BACK = 1 << 16  # far more than what follows a pg_restore script's COMMIT


def _pump(source: IO[bytes], sink: IO[bytes], reader: subprocess.Popen[bytes]) -> None:
    """Stream the wipe and then `source` into `sink`, holding its last bytes back until the
    reader exited without error; a sink that stops reading (psql at an error) stops it."""
    if not _write(sink, _PG_WIPE):
        return
    held = b""
    while chunk := source.read(_HELD_BACK):
        held += chunk
        if len(held) > _HELD_BACK:
            if not _write(sink, held[:-_HELD_BACK]):
                return
            held = held[-_HELD_BACK:]
    if reader.wait() == 0:
        _write(sink, held)


def _write(sink: IO[bytes], data: bytes) -> bool:
    try:
        sink.write(data)
        return True
    except BrokenPipeError:
        return False


def _close(sink: IO[bytes]) -> None:
    try:
        sink.close()
    except BrokenPipeError:
        return


# -- MySQL / MariaDB ----------------------------------------------------------------------


@contextmanager
def _mysql_options(config: ServiceConfig) -> Iterator[list[str]]:
    """Client options in a private option file (so the password is on no command line)."""
    url = _url(config)
    lines = ["[client]"]
    if url.host:
        lines.append(f"host={url.host}")
    if url.port:
        lines.append(f"port={url.port}")
    if url.username:
        lines.append(f"user={url.username}")
    if url.password:
        escaped = str(url.password).replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'password="{escaped}"')
    socket = url.query.get("unix_socket")
    if isinstance(socket, str):
        lines.append(f"socket={socket}")
    else:
        lines.append("protocol=TCP")
    # The client (`[mysql]` group: mariadb-dump does not read it, nor take the option) gives
    # up on a server that accepts TCP and never answers; the dump program has no such bound,
    # but runs right after this service's own connection answered within connect.timeout_s.
    lines += ["[mysql]", f"connect-timeout={CLIENT_CONNECT_TIMEOUT_S}"]
    fd, name = tempfile.mkstemp(prefix="ncm-my-", suffix=".cnf")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        os.chmod(name, 0o600)
        yield [f"--defaults-extra-file={name}"]
    finally:
        os.unlink(name)


def _mysqldump(config: ServiceConfig, target: Path) -> None:
    dump = program("mariadb-dump", "mysqldump")
    with _mysql_options(config) as opts:
        _run([dump, *opts, "--single-transaction", "--routines", "--triggers", "--hex-blob",
              f"--result-file={target}", str(_url(config).database)], config)


def dump_mysql(config: ServiceConfig, out_dir: Path, _lock_timeout_s: float) -> list[str]:
    _mysqldump(config, out_dir / MYSQL_FILE)
    return [MYSQL_FILE]


def check_mysql(config: ServiceConfig, folder: Path) -> None:
    """The dump ends with the trailer mysqldump and mariadb-dump write last."""
    _check_trailer(folder / MYSQL_FILE)


def _check_trailer(path: Path) -> None:
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - 4096))
            tail = fh.read()
    except OSError as exc:
        raise BackupInvalid(f"Cannot read {path}: {exc.strerror}; nothing was restored.") from None
    if MYSQL_TRAILER not in tail:
        raise BackupInvalid(
            f"{path} is not a complete mysqldump file (it does not end with "
            f"'{MYSQL_TRAILER.decode()}'; truncated or not a dump); nothing was restored."
        )


def restore_mysql(config: ServiceConfig, folder: Path, lock_timeout_s: float) -> None:
    """Replace the database with the dump; put the database back when that fails.

    MySQL's DDL commits on its own, so no transaction can hold a restore. A safety dump of
    the database is taken first and loaded back automatically on any failure after the
    database was touched. This beats a scratch database swapped in with RENAME TABLE: that
    cannot move views, tables with triggers, routines or events across databases, and needs
    CREATE on the server, which a service's account often lacks. If putting back fails too,
    the safety dump is kept and the error names it.
    """
    client = program("mariadb", "mysql")
    safety_dir = Path(tempfile.mkdtemp(prefix="ncm-before-restore-"))
    safety = safety_dir / MYSQL_FILE
    try:
        _mysqldump(config, safety)
        _check_trailer(safety)
    except NcmError as exc:
        shutil.rmtree(safety_dir, ignore_errors=True)
        raise BackupFailed(f"Could not take a safety dump before the restore ({exc}); "
                           "nothing was restored.") from None
    except BaseException:
        shutil.rmtree(safety_dir, ignore_errors=True)
        raise
    progress = _Touched()
    try:
        _load_mysql(config, client, folder / MYSQL_FILE, lock_timeout_s, progress)
    except BaseException as exc:
        if progress.touched:
            _put_back(config, client, safety, exc, lock_timeout_s)
        shutil.rmtree(safety_dir, ignore_errors=True)
        if isinstance(exc, NcmError):
            raise BackupFailed(f"{exc}; nothing was restored.") from None
        raise
    shutil.rmtree(safety_dir, ignore_errors=True)


@dataclass
class _Touched:
    """Whether a restore has changed the database yet (it had all its tables locked)."""

    touched: bool = False


def _put_back(config: ServiceConfig, client: str, safety: Path, failure: BaseException,
              lock_timeout_s: float) -> None:
    """Load the safety dump (waiting longer for locks than the restore did); raises the
    restore's failure, saying whether that worked."""
    try:
        _load_mysql(config, client, safety, max(60.0, 10 * lock_timeout_s), _Touched())
    except BaseException as again:
        raise BackupFailed(
            f"Restore of service '{config.name}' failed ({failure}) and putting the database back "
            f"failed too ({again}); the database as it was is saved in {safety}: load it with "
            f"`mariadb {_url(config).database} < {safety}`."
        ) from None
    shutil.rmtree(safety.parent, ignore_errors=True)
    if isinstance(failure, NcmError):
        raise BackupFailed(f"{failure}; the database was put back as it was before the restore.") from None


def _load_mysql(config: ServiceConfig, client: str, dump: Path, lock_timeout_s: float,
                progress: _Touched) -> None:
    """Empty the database and load `dump`; a table that another session keeps locked for
    `lock_timeout_s` fails it."""
    wait = f"SET SESSION lock_wait_timeout = {max(1, round(lock_timeout_s))}"
    _wipe_mysql(config, wait, progress)
    with _mysql_options(config) as opts:
        _run([client, *opts, f"--init-command={wait}", str(_url(config).database)], config, stdin=dump)


def _wipe_mysql(config: ServiceConfig, wait: str, progress: _Touched) -> None:
    """Drop every table and view, so tables made after the backup go too. All of them are
    locked first: a table another session holds fails the restore before anything is dropped."""
    import sqlalchemy as sa

    engine = _engine(config)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT table_name, table_type FROM information_schema.tables "
                "WHERE table_schema = DATABASE()"
            )).all()
            tables = [name for name, kind in rows if kind != "VIEW"]
            views = [name for name, kind in rows if kind == "VIEW"]
            conn.exec_driver_sql(wait)
            conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 0")
            if tables:  # views need no lock, and cannot be dropped under LOCK TABLES
                conn.exec_driver_sql("LOCK TABLES " + ", ".join(f"`{name}` WRITE" for name in tables))
            progress.touched = True
            for name in tables:
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS `{name}`")
            conn.exec_driver_sql("UNLOCK TABLES")
            for name in views:
                conn.exec_driver_sql(f"DROP VIEW IF EXISTS `{name}`")
            conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 1")
            conn.commit()
    except sa.exc.SQLAlchemyError as exc:
        reason = _last_line(config, str(getattr(exc, "orig", None) or exc).encode())
        raise BackupFailed(f"Emptying the database of service '{config.name}' failed: {reason}") from None
    finally:
        engine.dispose()
