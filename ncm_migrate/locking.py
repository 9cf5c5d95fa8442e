"""Mutual exclusion between runners: the contract and the pieces every backend shares.

A runner takes its service's lock before it reads the ledger or the version table, and
holds it while it applies. Each backend supplies the mechanism (advisory lock, GET_LOCK,
a file lock, a lease document); this module supplies names, keys and waiting.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import LockTimeout

log = logging.getLogger(__name__)
POLL_S = 0.05
BLOCKING_CHUNK_S = 5.0


def lock_name(*parts: str) -> str:
    """A readable lock name of at most 64 characters (MySQL's limit)."""
    name = "ncm:" + ":".join(parts)
    if len(name) <= 64:
        return name
    return name[:47] + ":" + hashlib.sha256(name.encode()).hexdigest()[:16]


def lock_key(name: str) -> int:
    """A signed 64-bit key for PostgreSQL's advisory locks."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def wait_for(try_acquire: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Call `try_acquire` until it returns True; raise `LockTimeout` after `timeout_s`.
    For locks that cannot be waited on (see `wait_blocking` for those that can)."""
    deadline = time.monotonic() + timeout_s
    delay = POLL_S
    logged = False
    while not try_acquire():
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout_s)
        if not logged:
            log.info("waiting for the migration lock of %s", what)
            logged = True
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.5)


def wait_blocking(acquire_within: Callable[[float], bool], timeout_s: float, what: str,
                  chunk_s: float = BLOCKING_CHUNK_S) -> None:
    """Take a lock that the database itself can wait for: `acquire_within(s)` waits up to
    `s` seconds (0: only tries) and says whether it got it. The server wakes a waiter the
    moment the holder lets go, where polling would sleep on; the wait goes in chunks of at
    most `chunk_s`, so that no single statement outlives a read timeout. `LockTimeout`
    after `timeout_s`."""
    if acquire_within(0.0):
        return
    log.info("waiting for the migration lock of %s", what)
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _timed_out(what, timeout_s)
        if acquire_within(min(left, chunk_s)):
            return


def _timed_out(what: str, timeout_s: float) -> LockTimeout:
    return LockTimeout(
        f"Another runner held the migration lock of {what} for more than "
        f"{timeout_s:g}s (lock.timeout_s); try again when it has finished."
    )


@contextmanager
def file_lock(path: Path, timeout_s: float, what: str) -> Iterator[None]:
    """An exclusive lock between processes on `path` (SQLite)."""
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=timeout_s, poll_interval=POLL_S)
    except Timeout:
        raise _timed_out(what, timeout_s) from None
    try:
        yield
    finally:
        lock.release()
