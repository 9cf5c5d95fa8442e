"""Backups of one service's database into a folder, and back.

SQLite through its online backup API, PostgreSQL through pg_dump/pg_restore, MySQL and
MariaDB through mariadb-dump (or mysqldump) and the client, MongoDB through
`mongo_backup`. Each folder holds the dump files and a `manifest.json`; with
`backup.encryption_key` the files are Fernet-encrypted. Passwords reach the programs
through their environment or an option file, never their command line.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import BackupFailed, BackupInvalid, SettingsError, ToolMissing
from .ledger import tool_version, utcnow
from .model import ServiceConfig
from .urls import password_of, redact, redact_known, sqlite_file

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = 1
_ENC = ".enc"


@dataclass(frozen=True)
class Manifest:
    """What a backup folder holds."""

    service: str
    backend: str
    dialect: str
    environment: str
    heads: tuple[str, ...]
    time: str
    encrypted: bool
    files: tuple[str, ...]
    tool_version: str
    format: int = FORMAT


def default_dir(base: Path, environment: str, service: str) -> Path:
    """`backup.dir/<env>/<svc>/<timestamp>/`."""
    stamp = utcnow().strftime("%Y%m%dT%H%M%S%fZ")
    return base / environment / service / stamp


def dialect_of(config: ServiceConfig) -> str:
    if config.backend == "mongo":
        return "mongodb"
    from sqlalchemy.engine import make_url

    assert config.database_url is not None
    name = make_url(config.database_url).get_backend_name()
    return "mysql" if name == "mariadb" else name


def backup_database(
    config: ServiceConfig,
    out_dir: Path,
    *,
    environment: str,
    heads: Sequence[str],
    encryption_key: str | None,
) -> Manifest:
    """Dump `config`'s database into `out_dir` (new or empty) and write its manifest."""
    fernet = _fernet(encryption_key) if encryption_key else None
    if out_dir.exists() and any(out_dir.iterdir()):
        raise BackupInvalid(f"Backup folder {out_dir} is not empty; give a new folder with -o.")
    out_dir.mkdir(parents=True, exist_ok=True)
    dialect = dialect_of(config)
    files = _DUMPERS[dialect](config, out_dir)
    if fernet is not None:
        files = [_encrypt(fernet, out_dir, name) for name in files]
    manifest = Manifest(
        service=config.name,
        backend=config.backend,
        dialect=dialect,
        environment=environment,
        heads=tuple(heads),
        time=utcnow().isoformat(timespec="seconds"),
        encrypted=fernet is not None,
        files=tuple(files),
        tool_version=tool_version(),
    )
    (out_dir / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2) + "\n")
    log.info("backed up service '%s' to %s", config.name, out_dir)
    return manifest


def read_manifest(folder: Path) -> Manifest:
    path = folder / MANIFEST
    try:
        data = json.loads(path.read_text())
        data["heads"] = tuple(data["heads"])
        data["files"] = tuple(data["files"])
        return Manifest(**data)
    except FileNotFoundError:
        raise BackupInvalid(f"{folder} is not a backup folder: it has no {MANIFEST}.") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise BackupInvalid(f"{path} is not a valid backup manifest: {exc}.") from None


def restore_database(config: ServiceConfig, folder: Path, *, encryption_key: str | None) -> Manifest:
    """Replace `config`'s database with the backup in `folder`; returns its manifest."""
    manifest = read_manifest(folder)
    dialect = dialect_of(config)
    if manifest.service != config.name:
        raise BackupInvalid(
            f"{folder} is a backup of service '{manifest.service}', not '{config.name}'."
        )
    if manifest.dialect != dialect:
        raise BackupInvalid(
            f"{folder} is a {manifest.dialect} backup; service '{config.name}' is on {dialect} here."
        )
    missing = [name for name in manifest.files if not (folder / name).is_file()]
    if missing:
        raise BackupInvalid(f"Backup {folder} is incomplete: {', '.join(missing)} missing.")
    with _plain_files(manifest, folder, encryption_key) as plain:
        _RESTORERS[dialect](config, plain, [n.removesuffix(_ENC) for n in manifest.files])
    log.info("restored service '%s' from %s", config.name, folder)
    return manifest


# -- encryption -------------------------------------------------------------------------


def _fernet(key: str) -> Any:
    try:
        from cryptography.fernet import Fernet
    except ImportError:
        raise ToolMissing(
            "backup.encryption_key is set but the 'cryptography' package is not installed; "
            "install it with `pip install 'ncm-migrate[crypto]'`."
        ) from None
    try:
        return Fernet(key.encode() if isinstance(key, str) else key)
    except (ValueError, TypeError):
        raise SettingsError(
            "Setting 'backup.encryption_key' is not a valid Fernet key (32 url-safe base64-encoded "
            "bytes; make one with `python -c 'from cryptography.fernet import Fernet; "
            "print(Fernet.generate_key().decode())'`)."
        ) from None


def _encrypt(fernet: Any, folder: Path, name: str) -> str:
    """Encrypt `folder/name` into `folder/name.enc` (removing the plain file); the new name."""
    plain = folder / name
    (folder / (name + _ENC)).write_bytes(fernet.encrypt(plain.read_bytes()))
    plain.unlink()
    return name + _ENC


@contextmanager
def _plain_files(manifest: Manifest, folder: Path, key: str | None) -> Iterator[Path]:
    """The folder with the backup's files in plain form (decrypted into a temporary one)."""
    if not manifest.encrypted:
        yield folder
        return
    if not key:
        raise BackupInvalid(
            f"Backup {folder} is encrypted; set backup.encryption_key (in settings/.secrets.toml "
            "or NCM_BACKUP__ENCRYPTION_KEY) to the key it was made with."
        )
    from cryptography.fernet import InvalidToken

    fernet = _fernet(key)
    with tempfile.TemporaryDirectory(prefix="ncm-restore-") as tmp:
        for name in manifest.files:
            try:
                plain = fernet.decrypt((folder / name).read_bytes())
            except InvalidToken:
                raise BackupInvalid(
                    f"Backup {folder} cannot be decrypted with this backup.encryption_key: it was "
                    "made with another key (or the file is damaged); nothing was restored."
                ) from None
            target = Path(tmp) / name.removesuffix(_ENC)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(plain)
        yield Path(tmp)


# -- programs -----------------------------------------------------------------------------


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


def _run(args: list[str], config: ServiceConfig, env: dict[str, str] | None = None,
         stdin: Path | None = None) -> None:
    full_env = {**os.environ, **(env or {})}
    secret = password_of(config.database_url)
    try:
        if stdin is not None:
            with stdin.open("rb") as fh:
                proc = subprocess.run(args, stdin=fh, capture_output=True, env=full_env, check=False)
        else:
            proc = subprocess.run(args, capture_output=True, env=full_env, check=False)
    except OSError as exc:
        raise ToolMissing(f"Could not run {args[0]}: {exc}.") from None
    if proc.returncode != 0:
        text = proc.stderr.decode("utf-8", "replace").strip() or proc.stdout.decode("utf-8", "replace")
        text = redact(redact_known(text), [secret])
        raise BackupFailed(
            f"{Path(args[0]).name} failed for service '{config.name}' (exit {proc.returncode}): "
            f"{text.splitlines()[-1] if text else 'no message'}"
        )


def _url(config: ServiceConfig) -> Any:
    from sqlalchemy.engine import make_url

    assert config.database_url is not None
    return make_url(config.database_url)


# -- SQLite -------------------------------------------------------------------------------


def _sqlite_path(config: ServiceConfig) -> Path:
    assert config.database_url is not None
    path = sqlite_file(config.database_url)
    if path is None:
        raise BackupInvalid(f"Service '{config.name}' uses an in-memory SQLite database: nothing to back up.")
    return path


def _dump_sqlite(config: ServiceConfig, out_dir: Path) -> list[str]:
    source = sqlite3.connect(_sqlite_path(config))
    target = sqlite3.connect(out_dir / "db.sqlite")
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()
    return ["db.sqlite"]


def _restore_sqlite(config: ServiceConfig, folder: Path, files: list[str]) -> None:
    path = _sqlite_path(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    source = sqlite3.connect(folder / "db.sqlite")
    target = sqlite3.connect(path)
    try:
        source.backup(target)
    finally:
        target.close()
        source.close()


# -- PostgreSQL ---------------------------------------------------------------------------


def _pg_conninfo(config: ServiceConfig) -> tuple[str, dict[str, str]]:
    """A libpq connection string without the password, and the environment carrying it."""
    url = _url(config)
    parts = {"host": url.host, "port": url.port, "user": url.username, "dbname": url.database}
    parts.update({k: v for k, v in url.query.items() if isinstance(v, str)})

    def quote(value: object) -> str:
        return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"

    conninfo = " ".join(f"{k}={quote(v)}" for k, v in parts.items() if v not in (None, ""))
    env = {"PGPASSWORD": url.password} if url.password else {}
    return conninfo, env


def _dump_postgres(config: ServiceConfig, out_dir: Path) -> list[str]:
    conninfo, env = _pg_conninfo(config)
    _run([program("pg_dump"), "--format=custom", "--no-owner", "--no-privileges",
          "--file", str(out_dir / "db.pgdump"), "--dbname", conninfo], config, env)
    return ["db.pgdump"]


def _restore_postgres(config: ServiceConfig, folder: Path, files: list[str]) -> None:
    pg_restore = program("pg_restore")
    _wipe_postgres(config)
    conninfo, env = _pg_conninfo(config)
    _run([pg_restore, "--no-owner", "--no-privileges", "--clean", "--if-exists", "--exit-on-error",
          "--single-transaction", "--dbname", conninfo, str(folder / "db.pgdump")], config, env)


def _wipe_postgres(config: ServiceConfig) -> None:
    """Drop every user schema, so tables made after the backup go too."""
    import sqlalchemy as sa

    from .backends.sql import create_engine

    assert config.database_url is not None
    engine = create_engine(config.database_url, 10.0)
    try:
        with engine.begin() as conn:
            schemas = conn.execute(sa.text(
                "SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' "
                "AND nspname <> 'information_schema'"
            )).scalars().all()
            for schema in schemas:
                conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
            conn.exec_driver_sql("CREATE SCHEMA public")
    finally:
        engine.dispose()


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
    fd, name = tempfile.mkstemp(prefix="ncm-my-", suffix=".cnf")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        os.chmod(name, 0o600)
        yield [f"--defaults-extra-file={name}"]
    finally:
        os.unlink(name)


def _dump_mysql(config: ServiceConfig, out_dir: Path) -> list[str]:
    dump = program("mariadb-dump", "mysqldump")
    with _mysql_options(config) as opts:
        _run([dump, *opts, "--single-transaction", "--routines", "--triggers", "--hex-blob",
              f"--result-file={out_dir / 'db.sql'}", str(_url(config).database)], config)
    return ["db.sql"]


def _restore_mysql(config: ServiceConfig, folder: Path, files: list[str]) -> None:
    client = program("mariadb", "mysql")
    _wipe_mysql(config)
    with _mysql_options(config) as opts:
        _run([client, *opts, str(_url(config).database)], config, stdin=folder / "db.sql")


def _wipe_mysql(config: ServiceConfig) -> None:
    """Drop every table and view, so tables made after the backup go too."""
    import sqlalchemy as sa

    from .backends.sql import create_engine

    assert config.database_url is not None
    engine = create_engine(config.database_url, 10.0)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT table_name, table_type FROM information_schema.tables "
                "WHERE table_schema = DATABASE()"
            )).all()
            conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 0")
            for name, kind in rows:
                what = "VIEW" if kind == "VIEW" else "TABLE"
                conn.exec_driver_sql(f"DROP {what} IF EXISTS `{name}`")
            conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 1")
            conn.commit()
    finally:
        engine.dispose()


# -- MongoDB ------------------------------------------------------------------------------


def _dump_mongo(config: ServiceConfig, out_dir: Path) -> list[str]:
    from .mongo_backup import backup_mongo

    return [str(p.relative_to(out_dir)) for p in backup_mongo(config, out_dir)]


def _restore_mongo(config: ServiceConfig, folder: Path, files: list[str]) -> None:
    from .mongo_backup import restore_mongo

    restore_mongo(config, folder)


_DUMPERS = {
    "sqlite": _dump_sqlite,
    "postgresql": _dump_postgres,
    "mysql": _dump_mysql,
    "mongodb": _dump_mongo,
}
_RESTORERS = {
    "sqlite": _restore_sqlite,
    "postgresql": _restore_postgres,
    "mysql": _restore_mysql,
    "mongodb": _restore_mongo,
}
