"""Peak memory of `redis_ops.batched_scan_update` over many keys, against KEYS then write.

    python benchmarks/redis_batched_update.py [--keys 1000000] [--count 1000] [--db 15]
    python benchmarks/redis_batched_update.py --keys 1000000 --results benchmarks/RESULTS.md

Fills database `--db` of the server at `--url` with `--keys` string keys (under a prefix of
its own, deleted at the end) holding "0", then increments every one two ways, each in a
fresh process: `batched_scan_update` (SCAN batches of about `--count`, one MULTI/EXEC each
with its cursor), and the naive way (`KEYS prefix*`, then pipelined INCRs `--count` at a
time). Each process reports its peak RSS (`getrusage`'s `ru_maxrss`, less that of a process
that only imported and connected) and its Python heap's peak (tracemalloc); afterwards every
key is checked to have been incremented exactly once by each. `--results FILE` also writes
the numbers as a section of FILE (replacing its previous one; `run.py` keeps it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ncm_migrate import redis_ops

HEADING = "## Redis: batched_scan_update"
MARK = "<!-- written by benchmarks/redis_batched_update.py --results; run.py keeps this section -->"
WAYS = ("idle", "batched", "naive")


@dataclass(frozen=True)
class Measure:
    way: str
    keys: int
    seconds: float
    rss_kib: int  # the process's peak resident set
    heap_bytes: int  # tracemalloc's peak while it worked


def work(r: Any, way: str, prefix: str, count: int) -> int:
    """Increment every key under `prefix` once, `way`'s way; the count of keys."""
    if way == "idle":
        r.ping()
        return 0
    if way == "batched":
        store = redis_ops.KeyCursorStore(f"{prefix}ncm:")
        return redis_ops.batched_scan_update(r, f"{prefix}k:*", lambda pipe, key: pipe.incr(key),
                                             count=count, name="bench", store=store)
    names = r.keys(f"{prefix}k:*")  # the naive way: every name at once
    pipe = r.pipeline(transaction=False)
    for start in range(0, len(names), count):
        for key in names[start:start + count]:
            pipe.incr(key)
        pipe.execute()
    return len(names)


def measure(r: Any, way: str, prefix: str, count: int) -> Measure:
    """`work` under tracemalloc, with this process's peak RSS after it."""
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        keys = work(r, way, prefix, count)
        seconds = time.perf_counter() - t0
        heap = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return Measure(way, keys, seconds, rss if sys.platform != "darwin" else rss // 1024, heap)


def client(url: str, db: int) -> redis.Redis:
    """A client on database `db` of `url`'s server (a database in the URL would win over
    `from_url(db=...)`)."""
    return redis.Redis.from_url(urlunsplit(urlsplit(url)._replace(path=f"/{db}")))


def fill(r: Any, prefix: str, keys: int, chunk: int = 10_000) -> None:
    for start in range(0, keys, chunk):
        r.mset({f"{prefix}k:{n}": 0 for n in range(start, min(keys, start + chunk))})


def check(r: Any, prefix: str, keys: int, expected: int, chunk: int = 10_000) -> None:
    """Every key holds `expected` (each way incremented each key exactly once)."""
    wrong = 0
    for start in range(0, keys, chunk):
        values = r.mget([f"{prefix}k:{n}" for n in range(start, min(keys, start + chunk))])
        wrong += sum(1 for v in values if v is None or int(v) != expected)
    if wrong:
        raise AssertionError(f"{wrong} of {keys} keys were not incremented exactly once")


def clean(r: Any, prefix: str) -> None:
    pipe = r.pipeline(transaction=False)
    for n, key in enumerate(r.scan_iter(match=f"{prefix}*", count=10_000), 1):
        pipe.unlink(key)
        if n % 10_000 == 0:
            pipe.execute()
    pipe.execute()


def in_process(r: Any, keys: int, count: int) -> list[Measure]:
    """The whole comparison in this process, on client `r` (fakeredis, for the smoke test):
    heap peaks are meaningful, RSS peaks are not (one process for every way)."""
    prefix = f"ncm_bench_{uuid.uuid4().hex[:8]}:"
    fill(r, prefix, keys)
    try:
        out = []
        for expected, way in enumerate(("batched", "naive"), 1):
            out.append(measure(r, way, prefix, count))
            check(r, prefix, keys, expected)
        return out
    finally:
        clean(r, prefix)


def in_subprocesses(url: str, db: int, keys: int, count: int, say: Callable[[str], None]) -> list[Measure]:
    """Each way in a fresh process of its own, so that each RSS peak is that way's."""
    r = client(url, db)
    prefix = f"ncm_bench_{uuid.uuid4().hex[:8]}:"
    say(f"filling db {db} with {keys} keys under {prefix}")
    fill(r, prefix, keys)
    try:
        out = []
        for expected, way in enumerate(WAYS):
            say(f"{way} ...")
            proc = subprocess.run(
                [sys.executable, __file__, "--worker", way, "--prefix", prefix, "--url", url,
                 "--db", str(db), "--count", str(count)],
                capture_output=True, text=True, check=False,
            )
            if proc.returncode != 0:
                raise RuntimeError(f"the {way} worker failed:\n{proc.stderr[-3000:]}")
            out.append(Measure(**json.loads(proc.stdout.strip().splitlines()[-1])))
            if way != "idle":
                check(r, prefix, keys, expected)
        return out
    finally:
        clean(r, prefix)
        r.close()


def lines(results: list[Measure], keys: int, count: int, where: str) -> list[str]:
    idle = next((m.rss_kib for m in results if m.way == "idle"), 0)
    out = [f"{keys:,} string keys, SCAN/pipeline batches of {count}, on {where}",
           "| way | keys | wall | peak RSS above an idle process | peak Python heap (tracemalloc) |",
           "| --- | --- | --- | --- | --- |"]
    label = {"batched": "`batched_scan_update` (SCAN, MULTI/EXEC per batch with its cursor)",
             "naive": "naive: `KEYS prefix*`, then pipelined INCRs"}
    for m in results:
        if m.way in label:
            out.append(f"| {label[m.way]} | {m.keys} | {m.seconds:.1f} s | "
                       f"{(m.rss_kib - idle) / 1024:.1f} MiB | {m.heap_bytes / 2**20:.2f} MiB |")
    return out


def write_section(path: Path, keys: int, table: list[str], argv: list[str]) -> None:
    """Replace this benchmark's section of `path` (or add it at the end), keep the rest."""
    old = path.read_text() if path.exists() else ""
    kept = [s for s in split_sections(old) if not s.startswith(HEADING)]
    section = "\n".join([
        f"{HEADING} over {keys:,} keys", "", MARK, "",
        f"Run on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; Python {platform.python_version()}, "
        f"redis-py {redis.__version__}, nproc {os.cpu_count()}. {table[0]}; each way in a fresh "
        "process, every key checked to be incremented exactly once by each. Wall times are under "
        "tracemalloc (which slows Python several times over) on a shared machine: they say "
        "little about speed.", "", *table[1:], "",
        "```", f"cd $REPO && .venv/bin/python benchmarks/redis_batched_update.py {' '.join(argv)}",
        "```", ""])
    path.write_text("".join(kept).rstrip("\n") + "\n\n" + section)


def split_sections(text: str) -> list[str]:
    """`text` cut before each `## ` heading (the first piece is what comes before any)."""
    pieces: list[str] = []
    for line in text.splitlines(keepends=True):
        if line.startswith("## ") or not pieces:
            pieces.append("")
        pieces[-1] += line
    return pieces


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--url", default=os.environ.get("NCM_TEST_REDIS_URL", "redis://127.0.0.1:6379"))
    parser.add_argument("--db", type=int, default=15, help="the database number to work in")
    parser.add_argument("--results", type=Path, default=None, help="write a section of this file")
    parser.add_argument("--worker", choices=WAYS, help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        r = client(args.url, args.db)
        print(json.dumps(asdict(measure(r, args.worker, args.prefix, args.count))))
        return

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    results = in_subprocesses(args.url, args.db, args.keys, args.count, say)
    with redis.Redis.from_url(args.url) as r:
        where = f"Redis {r.info()['redis_version']}"
    table = lines(results, args.keys, args.count, where)
    print("\n".join(table))
    if args.results is not None:
        write_section(args.results, args.keys, table, list(argv if argv is not None else sys.argv[1:]))


if __name__ == "__main__":
    main()
