"""Operations for Redis revision files, each with its inverse where one exists.

Every helper walks the keys with SCAN (never KEYS), a batch at a time, writes each batch in
one MULTI/EXEC together with its cursor (so an interrupted run resumes where it stopped),
and keeps TTLs; keys under the cursor store's prefix (the ledger's, `ncm:`) are left alone.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import ResponseError, WatchError
from redis.typing import EncodableT, FieldT

log = logging.getLogger(__name__)

Key = str | bytes
# How a batch's keys are read before writing: the keys in, one value per key out.
Reader = Callable[[Redis, list[Key]], list[Any]]
# Queues a batch's writes on a MULTI pipeline, given the keys and what `Reader` returned.
Writer = Callable[[Pipeline, list[Key], list[Any]], None]
WATCH_ATTEMPTS = 5


class KeyConflict(Exception):
    """A helper would overwrite a key that already exists (nothing in that batch written)."""


class PartlyWritten(ResponseError):
    """A command of a batch failed at EXEC (Redis does not roll the others back): the rest
    of the batch and its cursor were written, so running again goes on after that batch."""


@dataclass(frozen=True)
class ScanPosition:
    """Where a walk over `pattern` stands: SCAN's next cursor and the keys done so far.
    A cursor of 0 with a position stored means the walk finished."""

    pattern: str
    cursor: int
    done: int


@dataclass(frozen=True)
class ScanProgress:
    """How far a walk has got (passed to `progress` after each batch)."""

    name: str
    done: int
    batches: int
    cursor: int
    elapsed_s: float


class CursorStore(Protocol):
    """Where walks keep their cursor. `save` queues on the batch's MULTI pipeline, so a
    batch and its cursor are written together or not at all. Keys under `prefix` are the
    store's (and the ledger's) and no helper visits them."""

    @property
    def prefix(self) -> str: ...

    def load(self, r: Redis, name: str) -> ScanPosition | None: ...

    def save(self, pipe: Pipeline, name: str, position: ScanPosition) -> None: ...

    def clear(self, r: Redis, name: str) -> None: ...


@dataclass(frozen=True)
class KeyCursorStore:
    """A cursor per walk in a hash at `<prefix>cursor:<name>` (the ledger's prefix)."""

    prefix: str = "ncm:"

    def key(self, name: str) -> str:
        return f"{self.prefix}cursor:{name}"

    def load(self, r: Redis, name: str) -> ScanPosition | None:
        raw = r.hgetall(self.key(name))
        if not raw:
            return None
        got = {_text(k): _text(v) for k, v in raw.items()}
        return ScanPosition(got["pattern"], int(got["cursor"]), int(got["done"]))

    def save(self, pipe: Pipeline, name: str, position: ScanPosition) -> None:
        fields: dict[FieldT, EncodableT] = {
            "pattern": position.pattern, "cursor": position.cursor, "done": position.done,
        }
        pipe.hset(self.key(name), mapping=fields)

    def clear(self, r: Redis, name: str) -> None:
        r.delete(self.key(name))


_DEFAULT_STORE = KeyCursorStore()
_store: ContextVar[CursorStore | None] = ContextVar("redis_ops_cursor_store", default=None)


@contextmanager
def using_cursor_store(store: CursorStore) -> Iterator[CursorStore]:
    """Make `store` the default of every helper in this context (the backend points it at
    the service's ledger prefix while a revision runs)."""
    token = _store.set(store)
    try:
        yield store
    finally:
        _store.reset(token)


def cursor_store() -> CursorStore:
    """The cursor store helpers use when given none."""
    return _store.get() or _DEFAULT_STORE


def batched_scan_update(
    r: Redis,
    pattern: str,
    fn: Callable[[Pipeline, Key], None],
    *,
    count: int = 1000,
    key_type: str | None = None,
    name: str | None = None,
    store: CursorStore | None = None,
    progress: Callable[[ScanProgress], None] | None = None,
) -> int:
    """Call `fn(pipe, key)` for every key matching `pattern` (of `key_type`, e.g. "hash"); `fn`
    queues its writes on `pipe`, sent as one MULTI/EXEC per SCAN batch of about `count` keys.

    Memory stays bounded by one batch. The cursor is saved with each batch under `name`
    (default: the pattern) in `store`; a run that stops part way (an error, a kill) resumes
    after the last batch written when called again, and the cursor is cleared at the end.
    `fn` may read through `r` (not through `pipe`, whose commands only run at EXEC). SCAN may
    return a key twice if the keyspace grows a lot meanwhile: keep `fn`'s writes idempotent
    where that matters. Returns the count of keys visited.
    """

    def write(pipe: Pipeline, keys: list[Key], _values: list[Any]) -> None:
        for key in keys:
            fn(pipe, key)

    return _walk(r, pattern, write, count=count, key_type=key_type, name=name or pattern, store=store,
                 progress=progress)


def rename_keys(
    r: Redis,
    pattern: str,
    to: str | Callable[[str], str],
    *,
    overwrite: bool = False,
    count: int = 1000,
    name: str | None = None,
    store: CursorStore | None = None,
) -> int:
    """Rename every key matching `pattern` to `to`: a template whose `*`s take what the
    pattern's wildcards matched, in order (`rename_keys(r, "sess:*", "session:*")`), or a
    function of the old name. TTLs stay (RENAME keeps them). Its inverse is
    `rename_keys(r, "session:*", "sess:*")`. An existing target raises `KeyConflict` unless
    `overwrite`. Returns the count of keys visited.
    """
    target = key_template(pattern, to)
    source = glob_regex(pattern)

    def new_names(keys: list[Key]) -> list[Key]:
        names = [_like(k, target(_text(k))) for k in keys]
        for old, new in zip(keys, names, strict=True):
            if source.match(_text(new)):
                raise ValueError(f"renaming {_text(old)!r} to {_text(new)!r}: the new name matches "
                                 f"{pattern!r} too, so the walk would rename it again")
        return names

    def read(client: Redis, keys: list[Key]) -> list[Any]:
        names = new_names(keys)
        reader = client.pipeline(transaction=False)
        for key, new in zip(keys, names, strict=True):
            reader.exists(key)
            reader.exists(new)
        flags = reader.execute()
        taken = [_text(n) for n, there in zip(names, flags[1::2], strict=True) if there]
        if taken and not overwrite:
            raise KeyConflict(f"{len(taken)} key(s) to rename to exist already, e.g. {taken[0]!r}; "
                              "move them away first, or pass overwrite=True")
        return [new if there else None for new, there in zip(names, flags[0::2], strict=True)]

    def write(pipe: Pipeline, keys: list[Key], names: list[Any]) -> None:
        for key, new in zip(keys, names, strict=True):
            if new is not None:  # gone since SCAN saw it (expired)
                pipe.rename(key, new)

    return _walk(r, pattern, write, read=read, watch=lambda keys: [*keys, *new_names(keys)],
                 count=count, name=name or f"rename_keys:{pattern}", store=store)


def re_encode(
    r: Redis,
    pattern: str,
    decode: Callable[[bytes], Any],
    encode: Callable[[Any], bytes | str],
    *,
    count: int = 1000,
    name: str | None = None,
    store: CursorStore | None = None,
) -> int:
    """Rewrite every string key matching `pattern` as `encode(decode(value))`, keeping its
    TTL (SET ... KEEPTTL). Values reach `decode` as bytes whatever the client decodes.
    Inverse: swap the codecs, `re_encode(r, pattern, new_decode, old_encode)`. Returns the
    count of keys visited."""

    def read(client: Redis, keys: list[Key]) -> list[Any]:
        reader = client.pipeline(transaction=False)
        for key in keys:
            # The value as bytes even on a client made with decode_responses=True (as
            # redis-py's own `dump` reads): an encoded value need not be text.
            reader.execute_command("GET", key, NEVER_DECODE=True)  # type: ignore[no-untyped-call]
        return reader.execute()

    def write(pipe: Pipeline, keys: list[Key], values: list[Any]) -> None:
        for key, raw in zip(keys, values, strict=True):
            if raw is not None:
                pipe.set(key, encode(decode(raw)), keepttl=True)

    return _walk(r, pattern, write, read=read, watch=list, count=count, key_type="string",
                 name=name or f"re_encode:{pattern}", store=store)


def expire_prefix(
    r: Redis,
    prefix: str,
    seconds: int,
    *,
    count: int = 1000,
    name: str | None = None,
    store: CursorStore | None = None,
) -> int:
    """Give every key under `prefix` a TTL of `seconds`. Inverse: `persist_prefix` (which
    removes every TTL there: TTLs the keys had before are not brought back; take a backup
    first if they matter). Returns the count of keys visited."""
    if seconds < 1:
        raise ValueError("seconds must be at least 1 (a TTL of 0 deletes the keys)")

    def write(pipe: Pipeline, keys: list[Key], _values: list[Any]) -> None:
        for key in keys:
            pipe.expire(key, seconds)

    return _walk(r, glob_escape(prefix) + "*", write, count=count,
                 name=name or f"expire_prefix:{prefix}", store=store)


def persist_prefix(
    r: Redis, prefix: str, *, count: int = 1000, name: str | None = None, store: CursorStore | None = None,
) -> int:
    """Remove the TTL of every key under `prefix` (the inverse of `expire_prefix`)."""

    def write(pipe: Pipeline, keys: list[Key], _values: list[Any]) -> None:
        for key in keys:
            pipe.persist(key)

    return _walk(r, glob_escape(prefix) + "*", write, count=count,
                 name=name or f"persist_prefix:{prefix}", store=store)


def copy_hash_fields(
    r: Redis,
    pattern: str,
    fields: Sequence[str] | Mapping[str, str],
    to: str | Callable[[str], str],
    *,
    count: int = 1000,
    name: str | None = None,
    store: CursorStore | None = None,
) -> int:
    """Copy `fields` of every hash matching `pattern` into the hash `to` names (a template
    as in `rename_keys`, e.g. `copy_hash_fields(r, "user:*", ["email"], "contact:*")`);
    a mapping renames the fields on the way. A target the copy creates gets its source's
    TTL. Inverse: `delete_hash_fields(r, "contact:*", ["email"])`. Returns the count of
    hashes copied from."""
    names = dict(fields) if isinstance(fields, Mapping) else {f: f for f in fields}
    if not names:
        raise ValueError("no fields to copy")
    target = key_template(pattern, to)

    def read(client: Redis, keys: list[Key]) -> list[Any]:
        reader = client.pipeline(transaction=False)
        for key in keys:
            reader.hmget(key, list(names))
            reader.exists(_like(key, target(_text(key))))
            reader.pttl(key)
        got = reader.execute()
        return [tuple(got[i:i + 3]) for i in range(0, len(got), 3)]

    def write(pipe: Pipeline, keys: list[Key], values: list[Any]) -> None:
        for key, (found, exists, ttl_ms) in zip(keys, values, strict=True):
            copied: dict[FieldT, EncodableT] = {
                new: v for new, v in zip(names.values(), found, strict=True) if v is not None}
            if not copied:
                continue
            dest = _like(key, target(_text(key)))
            pipe.hset(dest, mapping=copied)
            if not exists and ttl_ms > 0:
                pipe.pexpire(dest, ttl_ms)

    return _walk(r, pattern, write, read=read, count=count, key_type="hash",
                 watch=lambda keys: [*keys, *(_like(k, target(_text(k))) for k in keys)],
                 name=name or f"copy_hash_fields:{pattern}", store=store)


def delete_hash_fields(
    r: Redis, pattern: str, fields: Sequence[str], *, count: int = 1000, name: str | None = None,
    store: CursorStore | None = None,
) -> int:
    """Delete `fields` from every hash matching `pattern` (the inverse of
    `copy_hash_fields`; a hash left empty is gone, as Redis does). Returns hashes visited."""
    if not fields:
        raise ValueError("no fields to delete")

    def write(pipe: Pipeline, keys: list[Key], _values: list[Any]) -> None:
        for key in keys:
            pipe.hdel(key, *fields)

    return _walk(r, pattern, write, count=count, key_type="hash",
                 name=name or f"delete_hash_fields:{pattern}", store=store)


# -- patterns --------------------------------------------------------------------------------


def glob_escape(text: str) -> str:
    """`text` as a Redis MATCH pattern that matches only itself."""
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A regular expression matching what Redis's glob `pattern` matches, one group per
    wildcard (`*`, `?`, `[...]`), shortest first."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if c == "[" and "]" in pattern[i + 1:]:
            end = pattern.index("]", i + 1)
            out.append("(" + _char_class(pattern[i + 1:end]) + ")")
            i = end + 1
            continue
        out.append("(.*?)" if c == "*" else "(.)" if c == "?" else re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def _char_class(body: str) -> str:
    """A glob's `[...]` (`^` negates, `a-z` ranges, `\\` escapes) as a regex class."""
    out = ["[^" if body.startswith("^") else "["]
    i = 1 if body.startswith("^") else 0
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            i += 1
            c = body[i]
        elif c == "-" and 0 < i < len(body) - 1:
            out.append("-")
            i += 1
            continue
        out.append(re.escape(c))
        i += 1
    return "".join(out) + "]"


def key_template(pattern: str, to: str | Callable[[str], str]) -> Callable[[str], str]:
    """A function from a key matching `pattern` to its new name: `to` itself, or the
    template `to` with each `*` filled by the pattern's wildcards' matches in order."""
    if callable(to):
        return to
    regex = glob_regex(pattern)
    pieces = to.split("*")
    if len(pieces) - 1 != regex.groups:
        raise ValueError(f"{to!r} has {len(pieces) - 1} '*' but {pattern!r} has {regex.groups} "
                         "wildcard(s): give one '*' for each")

    def rename(key: str) -> str:
        match = regex.match(key)
        if match is None:
            raise ValueError(f"key {key!r} does not match {pattern!r}")
        out = [pieces[0]]
        for group, piece in zip(match.groups(), pieces[1:], strict=True):
            out += [group, piece]
        return "".join(out)

    return rename


# -- the walk --------------------------------------------------------------------------------


def _walk(
    r: Redis,
    pattern: str,
    write: Writer,
    *,
    read: Reader | None = None,
    watch: Callable[[list[Key]], list[Key]] | None = None,
    count: int,
    name: str,
    store: CursorStore | None,
    key_type: str | None = None,
    progress: Callable[[ScanProgress], None] | None = None,
) -> int:
    """SCAN `pattern` from the stored cursor, a batch at a time: WATCH what `watch` names,
    `read`, then `write` with the new cursor in one MULTI/EXEC (read again if a watched key
    changed meanwhile)."""
    if count < 1:
        raise ValueError("count must be at least 1")
    store = store or cursor_store()
    started = time.monotonic()
    position = store.load(r, name)
    if position is not None and position.pattern != pattern:
        raise ValueError(f"the stored cursor {name!r} belongs to a walk over {position.pattern!r}, "
                         f"not {pattern!r}: pass another name")
    if position is not None and position.cursor == 0:  # finished; only the clearing was lost
        store.clear(r, name)
        return position.done
    cursor, done, batches = (position.cursor, position.done, 0) if position else (0, 0, 0)
    if position is not None:
        log.info("%s: resuming after %d keys (cursor %d)", name, done, cursor)
    while True:
        cursor, found = r.scan(cursor, match=pattern, count=count, _type=key_type)
        keys = [k for k in dict.fromkeys(found) if not _text(k).startswith(store.prefix)]
        if keys:
            done += len(keys)
            batch = _Batch(keys, read, write, watch(keys) if watch is not None else [])
            batch.run(r, store, name, ScanPosition(pattern, cursor, done))
            batches += 1
            state = ScanProgress(name, done, batches, cursor, time.monotonic() - started)
            log.info("%s: %d keys done in %d batches (%.1fs)", name, done, batches, state.elapsed_s)
            if progress is not None:
                progress(state)
        if cursor == 0:
            break
    store.clear(r, name)
    return done


@dataclass(frozen=True)
class _Batch:
    """One SCAN batch's keys and how they are read and written."""

    keys: list[Key]
    read: Reader | None
    write: Writer
    watched: list[Key]

    def run(self, r: Redis, store: CursorStore, name: str, position: ScanPosition) -> None:
        """Write the batch and save `position` in one MULTI/EXEC; if a watched key changed
        since it was read, read and write again (a few times)."""
        with r.pipeline() as pipe:
            for _attempt in range(WATCH_ATTEMPTS):
                try:
                    if self.watched:
                        pipe.watch(*self.watched)  # type: ignore[no-untyped-call]
                    values = self.read(r, self.keys) if self.read else [None] * len(self.keys)
                    pipe.multi()
                    self.write(pipe, self.keys, values)
                    store.save(pipe, name, position)
                    pipe.execute()
                    return
                except ResponseError as exc:
                    raise PartlyWritten(
                        f"{name}: {exc}; the rest of that batch and the walk's cursor were written "
                        "(Redis does not roll a transaction back), so running it again goes on after "
                        "that batch: put that key right by hand") from exc
                except WatchError:
                    pipe.reset()
        raise WatchError(f"keys kept changing while being rewritten ({WATCH_ATTEMPTS} tries), e.g. "
                         f"{_text(self.keys[0])!r}; run it again when writes are quieter")


def _text(key: Any) -> str:
    """A key (or value) as text; bytes that are not UTF-8 survive the round trip."""
    return key.decode("utf-8", "surrogateescape") if isinstance(key, bytes) else str(key)


def _like(key: Key, name: str) -> Key:
    """`name` in the type of `key` (bytes for a client that does not decode)."""
    return name.encode("utf-8", "surrogateescape") if isinstance(key, bytes) else name
