"""Peak memory of `mongo_ops.batched_update` over a large collection, measured with tracemalloc.

    python benchmarks/mongo_batched_update.py [--docs 100000] [--batch 1000]

Fills a collection with `--docs` documents (fields `a`, `b`, `c` already there, so that
updating them does not grow the stored documents), then updates every one three ways: with
`batched_update` and a static update (one `update_many` per `_id` range), with
`batched_update` and a function per document (`bulk_write` of `UpdateOne`s), and the naive
way (read every document, then write). Prints each one's peak memory above what was in use
before it started, and checks that every document was updated.

The database is NCM_TEST_MONGO_URL's server when that is set. Without one, `--server
memory` (the default) is a small in-process stand-in that answers `_id` range queries from
its sorted `_id`s, as MongoDB's `_id` index does, and allocates only what it returns; its
documents exist before measuring starts, so the peaks are the updater's own. `--server
mongomock` uses the test suite's mongomock server instead, which scans every document for
every query: fine for a few thousand documents, far too slow for 100,000.
"""

from __future__ import annotations

import argparse
import bisect
import os
import sys
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymongo import UpdateOne

from ncm_migrate import mongo_ops


@dataclass(frozen=True)
class Measure:
    what: str
    peak_bytes: int
    seconds: float
    batches: int


class MemoryCollection:
    """Just what this benchmark asks of a collection, with `_id` range queries answered from
    sorted `_id`s (documents' `_id`s here are ints, inserted in order)."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.docs: dict[int, dict[str, Any]] = {}

    def insert_many(self, docs: list[dict[str, Any]]) -> None:
        for doc in docs:
            self.ids.append(doc["_id"])
            self.docs[doc["_id"]] = doc

    def _range(self, query: dict[str, Any]) -> tuple[int, int]:
        """The positions in `ids` of the documents `query` matches: [lo, hi)."""
        if not query:
            return 0, len(self.ids)
        if set(query) != {"_id"}:
            raise NotImplementedError(f"the stand-in server cannot answer {query}")
        cond = query["_id"]
        lo = bisect.bisect_right(self.ids, cond["$gt"]) if "$gt" in cond else (
            bisect.bisect_left(self.ids, cond["$gte"]) if "$gte" in cond else 0)
        hi = bisect.bisect_right(self.ids, cond["$lte"]) if "$lte" in cond else len(self.ids)
        return lo, hi

    def find(self, query: dict[str, Any], fields: dict[str, Any] | None = None) -> MemoryCursor:
        return MemoryCursor(self, query, fields)

    def update_many(self, query: dict[str, Any], update: dict[str, Any]) -> Any:
        lo, hi = self._range(query)
        for pos in range(lo, hi):
            self.docs[self.ids[pos]].update(update["$set"])
        return Done(modified_count=hi - lo)

    def bulk_write(self, ops: list[UpdateOne], ordered: bool = True) -> Any:
        for op in ops:
            self.docs[op._filter["_id"]].update(op._doc["$set"])
        return Done(modified_count=len(ops))

    def count_documents(self, query: dict[str, Any]) -> int:
        ((field, value),) = query.items()
        return sum(1 for d in self.docs.values() if d.get(field) == value)


class MemoryCursor:
    def __init__(self, coll: MemoryCollection, query: dict[str, Any], fields: Any) -> None:
        self.coll, self.query, self.fields, self.n = coll, query, fields, 0

    def sort(self, key: str, direction: int) -> MemoryCursor:
        return self  # `_id`s are kept sorted

    def limit(self, n: int) -> MemoryCursor:
        self.n = n
        return self

    def __iter__(self) -> Iterator[dict[str, Any]]:
        lo, hi = self.coll._range(self.query)
        for pos in range(lo, min(hi, lo + self.n) if self.n else hi):
            doc = self.coll.docs[self.coll.ids[pos]]
            if not self.fields:
                yield dict(doc)
            else:  # a projection keeps `_id`, as MongoDB's does
                yield {k: doc[k] for k in ("_id", *self.fields) if k in doc}


@dataclass
class Done:
    modified_count: int


class MemoryDatabase(dict[str, MemoryCollection]):
    def __missing__(self, name: str) -> MemoryCollection:
        self[name] = MemoryCollection()
        return self[name]


@contextmanager
def database(url: str | None, server: str) -> Iterator[Any]:
    """A throw-away database on `url`'s server, or in this process."""
    name = f"ncm_bench_{uuid.uuid4().hex[:8]}"
    if not url and server == "memory":
        yield MemoryDatabase()
        return
    if url:
        from pymongo import MongoClient

        client: Any = MongoClient(url, serverSelectionTimeoutMS=5000)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from mongo_fake import FakeServer

        client = FakeServer().client(f"mongodb://localhost/{name}")
    try:
        yield client[name]
    finally:
        client.drop_database(name)
        client.close()


def fill(db: Any, docs: int, chunk: int = 10_000) -> None:
    coll = db["events"]
    for start in range(0, docs, chunk):
        coll.insert_many(
            [{"_id": n, "n": n, "kind": "click" if n % 3 else "view", "payload": "x" * 100,
              "a": 0, "b": None, "c": None}
             for n in range(start, min(docs, start + chunk))]
        )


def traced(what: str, work: Callable[[], int]) -> Measure:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        t0 = time.perf_counter()
        batches = work()
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    return Measure(what, peak, seconds, batches)


def run(db: Any, docs: int, batch: int) -> list[Measure]:
    """Fill `db.events` with `docs` documents and measure the three ways of updating them."""
    fill(db, docs)
    coll = db["events"]
    counts: list[int] = []

    def static() -> int:
        mongo_ops.batched_update(db, "events", {"$set": {"a": 1}}, batch_size=batch,
                                 progress=lambda p: counts.append(p.batches))
        return counts[-1]

    def per_doc() -> int:
        counts.clear()
        mongo_ops.batched_update(db, "events", lambda d: {"$set": {"b": d["kind"] == "click"}},
                                 projection={"kind": 1}, batch_size=batch,
                                 progress=lambda p: counts.append(p.batches))
        return counts[-1]

    def naive() -> int:
        everything = list(coll.find({}))
        coll.bulk_write([UpdateOne({"_id": d["_id"]}, {"$set": {"c": d["kind"] == "view"}})
                         for d in everything])
        return 1

    results = [traced("batched_update, static update", static),
               traced("batched_update, per document", per_doc),
               traced("naive: read all, then write", naive)]
    for field, before in (("a", 0), ("b", None), ("c", None)):
        missing = coll.count_documents({field: before})
        if missing:
            raise AssertionError(f"{missing} documents were not updated ({field})")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--server", choices=["memory", "mongomock"], default="memory",
                        help="without NCM_TEST_MONGO_URL: the stand-in, or mongomock")
    args = parser.parse_args(argv)
    url = os.environ.get("NCM_TEST_MONGO_URL")
    with database(url, args.server) as db:
        results = run(db, args.docs, args.batch)
    out = sys.stdout
    where = "MongoDB" if url else args.server
    out.write(f"{args.docs} documents of ~150 bytes, batches of {args.batch}, on {where}\n")
    for m in results:
        out.write(f"  {m.what:<32} peak {m.peak_bytes / 2**20:8.2f} MiB  {m.seconds:6.2f}s  "
                  f"{m.batches} batch(es)\n")


if __name__ == "__main__":
    main()
