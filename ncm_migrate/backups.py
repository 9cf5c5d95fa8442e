"""Backups of one service's database into a folder, and back.

Each folder holds the dump files and a `manifest.json` with a sha256 per file; with
`backup.encryption_key` the files are Fernet-encrypted. `restore` checks every file (its
sha256, its key, the dump itself) before it touches the database, and a restore that fails
leaves the database as it was. The dumps themselves are `backends/sql/backup.py`'s,
`backends/mongo/backup.py`'s and `backends/redis/backup.py`'s.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .backends.sql import backup as sql_backup
from .backends.sql.backup import program as program
from .errors import BackupFailed, BackupInvalid, SettingsError, ToolMissing
from .ledger import tool_version, utcnow
from .model import ServiceConfig
from .urls import dialect_of

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = 2  # 2: `sha256` per file
_ENC = ".enc"
_FOLDER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")


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
    sha256: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Format:
    """How one dialect dumps, checks a dump without touching the database, and restores."""

    dump: Callable[[ServiceConfig, Path, float], list[str]]
    check: Callable[[ServiceConfig, Path, Sequence[str]], None]
    restore: Callable[[ServiceConfig, Path, Sequence[str], float], None]


def default_dir(base: Path, environment: str, service: str) -> Path:
    """`backup.dir/<env>/<svc>/<timestamp>/`; an environment or service name that would
    leave `base` (`../x`, `a/b`) is refused."""
    for what, name in (("Environment", environment), ("Service", service)):
        if not _FOLDER_NAME.fullmatch(name) or ".." in name:
            raise BackupInvalid(
                f"{what} name '{name}' cannot name a folder under backup.dir; use letters, "
                "digits, '_', '-' and '.' only."
            )
    stamp = utcnow().strftime("%Y%m%dT%H%M%S%fZ")
    folder = Path(base) / environment / service / stamp
    if not folder.resolve().is_relative_to(Path(base).resolve()):
        raise BackupInvalid(f"The backup folder {folder} would lie outside backup.dir {base}.")
    return folder


def backup_database(
    config: ServiceConfig,
    out_dir: Path,
    *,
    environment: str,
    heads: Sequence[str],
    encryption_key: str | None,
    lock_timeout_s: float = 30.0,
) -> Manifest:
    """Dump `config`'s database into `out_dir` (new or empty) and write its manifest.

    A backup that fails leaves nothing behind: the folders it made are removed. A table that
    another session keeps locked for `lock_timeout_s` fails the backup (not a hang).
    """
    out_dir = Path(out_dir)
    fernet = _fernet(encryption_key) if encryption_key else None
    dialect = dialect_of(config.database_url or "")
    made = _make_folder(out_dir)
    try:
        files = _dump(config, dialect, out_dir, lock_timeout_s)
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
            sha256={name: _sha256(out_dir / name) for name in files},
        )
        (out_dir / MANIFEST).write_text(json.dumps(asdict(manifest), indent=2) + "\n")
    except OSError as exc:
        _remove_partial(out_dir, made)
        raise BackupFailed(
            f"Backup of service '{config.name}' could not be written to {out_dir}: {exc.strerror}."
        ) from None
    except BaseException:
        _remove_partial(out_dir, made)
        raise
    log.info("backed up service '%s' to %s", config.name, out_dir)
    return manifest


def check_target(out_dir: Path, encryption_key: str | None) -> None:
    """Refuse (exit 2) the folder or key that `backup_database` would refuse, before the
    database is touched: a file, a folder that is not empty, a path under a file, a key
    that is not a Fernet key."""
    if encryption_key:
        _fernet(encryption_key)
    if _check_folder(Path(out_dir)):
        return
    ancestor = Path(out_dir).parent
    try:
        while not ancestor.exists() and ancestor.parent != ancestor:
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise BackupInvalid(f"Cannot create backup folder {out_dir}: {ancestor} is a file.")
    except OSError as exc:
        raise BackupInvalid(f"Cannot create backup folder {out_dir}: {exc.strerror}.") from None


def _check_folder(out_dir: Path) -> bool:
    """Whether `out_dir` exists (then it is an empty folder, else `BackupInvalid`)."""
    try:
        exists = out_dir.exists()
        is_file = exists and not out_dir.is_dir()
        empty = not exists or is_file or not any(out_dir.iterdir())
    except OSError as exc:
        raise BackupInvalid(f"Cannot use backup folder {out_dir}: {exc.strerror}.") from None
    if exists:
        if is_file:
            raise BackupInvalid(f"Backup folder {out_dir} is a file; give a new folder with -o.")
        if not empty:
            raise BackupInvalid(f"Backup folder {out_dir} is not empty; give a new folder with -o.")
    return exists


def _make_folder(out_dir: Path) -> Path | None:
    """Create `out_dir` (or check that it is empty); the topmost folder created, if any."""
    if _check_folder(out_dir):
        return None
    top = out_dir
    try:
        while not top.parent.exists() and top.parent != top:
            top = top.parent
        out_dir.mkdir(parents=True)
    except OSError as exc:
        raise BackupInvalid(f"Cannot create backup folder {out_dir}: {exc.strerror}.") from None
    return top


def _remove_partial(out_dir: Path, made: Path | None) -> None:
    """Remove what a failed backup wrote: the folders it made, or the files in `out_dir`."""
    if made is not None:
        shutil.rmtree(made, ignore_errors=True)
        return
    for child in out_dir.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def read_manifest(folder: Path) -> Manifest:
    """The manifest of a backup folder; `BackupInvalid` when it is missing or malformed."""
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text())
        data["heads"] = tuple(data["heads"])
        data["files"] = tuple(data["files"])
        manifest = Manifest(**data)
    except FileNotFoundError:
        raise BackupInvalid(f"{folder} is not a backup folder: it has no {MANIFEST}.") from None
    except OSError as exc:
        raise BackupInvalid(f"Cannot read {path}: {exc.strerror}.") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise BackupInvalid(f"{path} is not a valid backup manifest: {exc}.") from None
    if not isinstance(manifest.format, int) or not all(isinstance(n, str) for n in manifest.files):
        raise BackupInvalid(f"{path} is not a valid backup manifest: 'format' or 'files' is malformed.")
    for name in manifest.files:
        parts = PurePosixPath(name).parts
        if not parts or name.startswith("/") or ".." in parts or "\\" in name or name == MANIFEST:
            raise BackupInvalid(f"{path} is not a valid backup manifest: it lists the file {name!r}.")
    if manifest.format > FORMAT:
        raise BackupInvalid(f"{path} was written by a newer ncm-migrate (backup format {manifest.format}); "
                            "restore it with that version.")
    if manifest.format >= 2 and not isinstance(manifest.sha256, dict):
        raise BackupInvalid(f"{path} is not a valid backup manifest: 'sha256' is not a table.")
    return manifest


def verify_files(manifest: Manifest, folder: Path) -> None:
    """Every file the manifest lists is there and has its sha256 (manifests before format 2
    have none: only their presence is checked)."""
    missing = [name for name in manifest.files if not (folder / name).is_file()]
    if missing:
        raise BackupInvalid(
            f"Backup {folder} is incomplete: {', '.join(missing)} missing; nothing was restored."
        )
    if manifest.format < 2:
        log.warning("backup %s was made before backups recorded checksums: its files are not verified",
                    folder)
        return
    for name in manifest.files:
        expected = manifest.sha256.get(name)
        if not isinstance(expected, str) or not _SHA256.fullmatch(expected):
            raise BackupInvalid(f"Backup {folder} is damaged: its manifest has no sha256 for {name}; "
                                "nothing was restored.")
        try:
            actual = _sha256(folder / name)
        except OSError as exc:
            raise BackupInvalid(
                f"Cannot read {folder / name}: {exc.strerror}; nothing was restored."
            ) from None
        if actual != expected:
            raise BackupInvalid(
                f"Backup {folder} is damaged: {name} does not match the sha256 in its manifest "
                "(changed or truncated); nothing was restored."
            )


def check_manifest(config: ServiceConfig, folder: Path, manifest: Manifest) -> str:
    """Refuse (exit 2) a backup of another service or database, before anything is
    touched; the service's dialect."""
    dialect = dialect_of(config.database_url or "")
    if manifest.service != config.name:
        raise BackupInvalid(
            f"{folder} is a backup of service '{manifest.service}', not '{config.name}'."
        )
    if manifest.dialect != dialect or dialect not in _FORMATS:
        raise BackupInvalid(
            f"{folder} is a {manifest.dialect} backup; service '{config.name}' is on {dialect} here."
        )
    return dialect


def restore_database(
    config: ServiceConfig, folder: Path, *, encryption_key: str | None, lock_timeout_s: float = 30.0
) -> Manifest:
    """Replace `config`'s database with the backup in `folder`; returns its manifest.

    Every file is checked first (sha256, decryption, the dump itself); nothing is touched
    unless all pass, and a restore that fails later leaves the database as it was. A table
    that another session keeps locked for `lock_timeout_s` fails the restore (not a hang).
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    dialect = check_manifest(config, folder, manifest)
    verify_files(manifest, folder)
    fmt = _FORMATS[dialect]
    names = [n.removesuffix(_ENC) if manifest.encrypted else n for n in manifest.files]
    with _plain_files(manifest, folder, encryption_key) as plain:
        fmt.check(config, plain, names)
        fmt.restore(config, plain, names, lock_timeout_s)
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
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(plain)
            except OSError as exc:
                raise BackupFailed(f"Cannot decrypt backup {folder} into {tmp}: {exc.strerror}; "
                                   "nothing was restored.") from None
        yield Path(tmp)


# -- dialects -----------------------------------------------------------------------------


def _dump(config: ServiceConfig, dialect: str, out_dir: Path, lock_timeout_s: float) -> list[str]:
    if dialect not in _FORMATS:
        raise BackupInvalid(f"Service '{config.name}' is on {dialect}, which backup does not support.")
    return _FORMATS[dialect].dump(config, out_dir, lock_timeout_s)


def _dump_mongo(config: ServiceConfig, out_dir: Path, _lock_timeout_s: float) -> list[str]:
    from .backends.mongo.backup import backup_mongo

    return [p.relative_to(out_dir).as_posix() for p in backup_mongo(config, out_dir)]


def _check_mongo(config: ServiceConfig, folder: Path, files: Sequence[str]) -> None:
    from .backends.mongo.backup import check_mongo

    check_mongo(config, folder, files)


def _restore_mongo(config: ServiceConfig, folder: Path, files: Sequence[str], _lock_timeout_s: float) -> None:
    from .backends.mongo.backup import restore_mongo

    restore_mongo(config, folder, files=files)


def _dump_redis(config: ServiceConfig, out_dir: Path, _lock_timeout_s: float) -> list[str]:
    from .backends.redis.backup import backup_redis

    return [p.relative_to(out_dir).as_posix() for p in backup_redis(config, out_dir)]


def _check_redis(config: ServiceConfig, folder: Path, files: Sequence[str]) -> None:
    from .backends.redis.backup import check_redis

    check_redis(config, folder, files)


def _restore_redis(config: ServiceConfig, folder: Path, _files: Sequence[str],
                   _lock_timeout_s: float) -> None:
    from .backends.redis.backup import restore_redis

    restore_redis(config, folder)


def _sql(
    file: str,
    dump: Callable[[ServiceConfig, Path, float], list[str]],
    check: Callable[[ServiceConfig, Path], None],
    restore: Callable[[ServiceConfig, Path, float], None],
) -> _Format:
    """An SQL dialect's format: one dump file, which the manifest must list (and so verify)."""

    def listed_and_checked(config: ServiceConfig, folder: Path, names: Sequence[str]) -> None:
        if file not in names:
            raise BackupInvalid(
                f"Backup {folder} does not list {file} in its manifest; nothing was restored."
            )
        check(config, folder)

    return _Format(dump, listed_and_checked, lambda c, f, _names, wait_s: restore(c, f, wait_s))


_FORMATS = {
    "sqlite": _sql(sql_backup.SQLITE_FILE, sql_backup.dump_sqlite, sql_backup.check_sqlite,
                   sql_backup.restore_sqlite),
    "postgresql": _sql(sql_backup.PG_FILE, sql_backup.dump_postgres, sql_backup.check_postgres,
                       sql_backup.restore_postgres),
    "mysql": _sql(sql_backup.MYSQL_FILE, sql_backup.dump_mysql, sql_backup.check_mysql,
                  sql_backup.restore_mysql),
    "mongodb": _Format(_dump_mongo, _check_mongo, _restore_mongo),
    "redis": _Format(_dump_redis, _check_redis, _restore_redis),
}
