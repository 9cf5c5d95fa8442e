"""Backup and restore of one Redis service's keys: DUMP/RESTORE with their TTLs.

Which keys: those under the service's `key_prefixes` (default: every key of its database),
never ncm-migrate's own under `key_prefix` (other services' ledgers, the lease) except this
service's ledger and markers, which travel with its data as the SQL ledger does. The file
`keys.jsonl` holds one line per key, `{"key", "pttl", "dump"}` (the key and DUMP's payload in
base64; `pttl` -1 for no expiry), written while SCAN walks the database (bounded memory).

Restoring stages every key under a scratch name first (RESTORE checks each payload); only
then, in one MULTI/EXEC, are the service's keys that the backup lacks deleted and the staged
ones renamed into place (RENAME keeps the TTL). A failure while staging deletes the scratch
keys: the database is left as it was.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import redis

from ...config import ConnectSettings
from ...errors import BackupFailed, BackupInvalid
from ...model import ServiceConfig
from ...urls import redact_known
from .backend import connect_redis
from .ledger import Keys

log = logging.getLogger(__name__)

FILE = "keys.jsonl"
_SCAN_COUNT = 1000
_PIPELINE = 500


class Entry(NamedTuple):
    key: bytes
    pttl: int
    dump: bytes


def owns(config: ServiceConfig, key: bytes) -> bool:
    """Whether a backup of `config` holds `key` (and a restore replaces it)."""
    keys = Keys.of(config)
    if key in (keys.ledger.encode(), keys.markers.encode()):
        return True
    if key.startswith(config.key_prefix.encode()):
        return False
    return not config.key_prefixes or any(key.startswith(p.encode()) for p in config.key_prefixes)


def _service_keys(r: redis.Redis, config: ServiceConfig) -> Iterator[bytes]:
    """The keys `owns` says are the service's, each once, found by SCAN (never KEYS)."""
    prefixes = sorted(set(config.key_prefixes))
    disjoint = [p for p in prefixes if not any(p != q and p.startswith(q) for q in prefixes)]
    keys = Keys.of(config)
    own = (keys.ledger.encode(), keys.markers.encode())
    for pattern in [_glob(p) + "*" for p in disjoint] or ["*"]:
        for key in r.scan_iter(match=pattern, count=_SCAN_COUNT):
            if key not in own and owns(config, key):
                yield key
    yield from (key for key in own if r.exists(key))


def _glob(text: str) -> str:
    """`text` with SCAN's glob characters escaped."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def backup_redis(config: ServiceConfig, out_dir: Path, settings: ConnectSettings | None = None) -> list[Path]:
    """Write the service's keys to `out_dir/keys.jsonl`; the files written."""
    r = connect_redis(config, settings or ConnectSettings())
    path = out_dir / FILE
    count = 0
    try:
        with path.open("w") as fh:
            batch: list[bytes] = []
            for key in _service_keys(r, config):
                batch.append(key)
                if len(batch) >= _PIPELINE:
                    count += _write_batch(r, batch, fh)
                    batch = []
            count += _write_batch(r, batch, fh)
    except redis.RedisError as exc:
        raise BackupFailed(f"Backup of service '{config.name}' failed: {redact_known(str(exc))}.") from None
    finally:
        r.close()
    log.info("backed up %d keys of service '%s'", count, config.name)
    return [path]


def _write_batch(r: redis.Redis, batch: list[bytes], fh: object) -> int:
    if not batch:
        return 0
    pipe = r.pipeline(transaction=False)
    for key in batch:
        pipe.pttl(key)
        pipe.dump(key)
    replies = pipe.execute()
    written = 0
    for key, pttl, dump in zip(batch, replies[::2], replies[1::2], strict=True):
        if dump is None:  # expired or deleted since SCAN saw it
            continue
        line = {"key": base64.b64encode(key).decode(), "pttl": int(pttl),
                "dump": base64.b64encode(dump).decode()}
        fh.write(json.dumps(line) + "\n")  # type: ignore[attr-defined]
        written += 1
    return written


def read_key_lines(path: Path) -> Iterator[Entry]:
    """The keys of a backup file, one at a time; `BackupInvalid` at the first damaged line."""
    try:
        with path.open() as fh:
            for number, line in enumerate(fh, 1):
                try:
                    data = json.loads(line)
                    pttl = data["pttl"]
                    if isinstance(pttl, bool) or not isinstance(pttl, int) or (pttl < 1 and pttl != -1):
                        raise ValueError(f"pttl {pttl!r} is not -1 or a positive number")
                    entry = Entry(base64.b64decode(data["key"], validate=True), pttl,
                                  base64.b64decode(data["dump"], validate=True))
                except (ValueError, KeyError, TypeError, binascii.Error) as exc:
                    raise BackupInvalid(f"{path} line {number} is damaged: {exc}.") from None
                yield entry
    except (OSError, UnicodeDecodeError) as exc:
        raise BackupInvalid(f"Cannot read {path}: {exc}.") from None


def check_redis(config: ServiceConfig, folder: Path, files: Sequence[str]) -> None:
    """Read every line of the backup, touching no database; `BackupInvalid` naming the first
    damaged one, or a key that is not the service's."""
    if FILE not in files:
        raise BackupInvalid(f"Backup {folder} does not list {FILE} in its manifest; nothing was restored.")
    for entry in read_key_lines(folder / FILE):
        if not owns(config, entry.key):
            raise BackupInvalid(
                f"{folder / FILE} holds the key {entry.key!r}, which is not service "
                f"'{config.name}''s (services.{config.name}.key_prefixes); nothing was restored."
            )


def restore_redis(config: ServiceConfig, folder: Path, settings: ConnectSettings | None = None) -> None:
    """Replace the service's keys with the backup's (see the module's docstring)."""
    r = connect_redis(config, settings or ConnectSettings())
    scratch = f"{Keys.of(config).lock}:restore:{secrets.token_hex(4)}:"
    staged: list[tuple[bytes, bytes]] = []
    try:
        try:
            for entry in read_key_lines(folder / FILE):
                name = f"{scratch}{len(staged)}".encode()
                r.restore(name, max(entry.pttl, 0), entry.dump, replace=True)
                staged.append((name, entry.key))
        except BaseException:
            _drop([name for name, _ in staged], r)
            raise
        restored = {key for _, key in staged}
        gone = [key for key in _service_keys(r, config) if key not in restored]
        pipe = r.pipeline(transaction=True)
        for key in gone:
            pipe.delete(key)
        for name, key in staged:
            pipe.rename(name, key)
        pipe.execute()
    except redis.RedisError as exc:
        raise BackupFailed(
            f"Restore of service '{config.name}' failed: {redact_known(str(exc))}; "
            "the database was left as it was."
        ) from None
    finally:
        r.close()
    log.info("restored %d keys of service '%s'", len(staged), config.name)


def _drop(names: list[bytes], r: redis.Redis) -> None:
    """Delete staged keys after a failed restore; a failure is logged, not raised over the
    error being handled."""
    try:
        for start in range(0, len(names), _PIPELINE):
            r.delete(*names[start:start + _PIPELINE])
    except redis.RedisError as exc:
        log.error("clean-up after a failed restore failed: %s", exc)
