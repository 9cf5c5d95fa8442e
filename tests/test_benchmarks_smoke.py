"""The benchmarks keep working: generated monorepos are valid for both tools, and a tiny run
of the whole runner completes with its own checks (heads reached, each revision in the
ledger exactly once). Nothing here is timed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import fakeredis
import pytest
import redis
from alembic.config import Config
from alembic.script import ScriptDirectory

from ncm_migrate.graph import upgrade_targets
from ncm_migrate.loader import load_project

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
import redis_batched_update as redis_bench
import run
from generate import generate, history


def test_history_forks_merges_and_builds_on_its_ancestors() -> None:
    """0001 create t0001 - 0002 add column - 0003 index it - ... - 0009 index
          -< 0010 create t0010, 0011 create t0011 >- 0012 merge - 0013 add column to t0010"""
    nodes = history(14, branch_every=10, prefix="t")
    assert [n.revision for n in nodes][:3] == ["0001_create_table", "0002_add_column", "0003_create_index"]
    merge = next(n for n in nodes if n.migration_type == "merge")
    assert merge.revision == "0012_merge"
    assert merge.down == ("0010_create_table", "0011_create_table")
    assert {n.down for n in nodes if n.number in (10, 11)} == {("0009_create_index",)}
    assert "op.add_column('t0010'" in next(n for n in nodes if n.number == 13).upgrade


def test_generated_monorepo_is_valid_for_ncm_and_for_plain_alembic(tmp_path: Path) -> None:
    gen = generate(tmp_path / "repo", 3, 14, branch_every=5, requires_every=4)
    project = load_project(gen.root)
    assert sorted(project.revisions) == list(gen.services)
    for svc in gen.services:
        assert len(project.revisions[svc]) == 14
        assert project.graph.heads(svc) == (gen.head,)
        script = ScriptDirectory.from_config(Config(str(gen.alembic_ini(svc))))
        assert script.get_heads() == [gen.head]
        assert len(list(script.walk_revisions())) == 14
    requires = project.revisions["svc_01"]["0004_create_table"].requires
    assert requires == ("svc_00:0004",)
    assert upgrade_targets(project.graph, list(gen.services))


@pytest.mark.slow
def test_a_tiny_full_run_completes_and_writes_the_report(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--smoke", "--no-postgres", "--repeat", "1",
         "--work", str(tmp_path / "work"), "--results", str(results)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = results.read_text()
    for heading in ("## Targets", "## Listing", "## No-op migrate", "## Applying",
                    "## Parallel", "## Contention", "## One small service", "## Scale",
                    "## Exact commands"):
        assert heading in report, heading
    assert "plain Alembic: load" in report and "alembic upgrade head" in report
    assert "vs Alembic" in report and "Python " in report and "nproc " in report
    assert "(sqlite, a fresh checkout)" in report and "(sqlite, warm caches)" in report
    assert "plain Alembic, cold" in report and "reference: only importing" in report
    assert "ncm migrate (nothing to do) against alembic upgrade head (nothing to do)" in report
    assert "scale: at most 4.5x the listing's time" in report


# -- redis_batched_update.py ---------------------------------------------------------------


def test_redis_batched_update_smoke_on_fakeredis() -> None:
    r = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    results = redis_bench.in_process(r, 2000, 200)  # raises if a key was not incremented once
    assert [(m.way, m.keys) for m in results] == [("batched", 2000), ("naive", 2000)]
    assert all(m.heap_bytes > 0 for m in results)
    assert list(r.scan_iter()) == []  # its keys and cursor are gone


def test_redis_batched_update_smoke_on_the_server_writes_its_section(tmp_path: Path) -> None:
    """Each way in a process of its own on the real server; the section it writes into a
    results file replaces its previous one, and run.py's rewrite of the file keeps it."""
    url = os.environ.get("NCM_TEST_REDIS_URL", "redis://127.0.0.1:6379")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        if os.environ.get("NCM_TEST_REQUIRE_SERVERS") == "1":
            pytest.fail(f"Redis at {url} is not reachable: {exc} (NCM_TEST_REQUIRE_SERVERS=1)")
        pytest.skip(f"Redis at {url} is not reachable: {exc}")
    results_file = tmp_path / "RESULTS.md"
    results_file.write_text("# Benchmarks\n\n## Targets\n\nkept\n")
    for _ in range(2):
        redis_bench.main(["--keys", "2000", "--count", "200", "--db", "15", "--url", url,
                          "--results", str(results_file)])
    text = results_file.read_text()
    assert text.startswith("# Benchmarks\n\n## Targets\n\nkept\n")
    assert text.count(redis_bench.HEADING) == 1 and "over 2,000 keys" in text
    assert "| `batched_scan_update`" in text and "| naive: `KEYS prefix*`" in text
    kept = run.kept_sections(results_file)
    assert kept.startswith(f"\n{redis_bench.HEADING} over 2,000 keys") and "## Targets" not in kept
