"""Any number of concurrent `migrate` runs apply each revision exactly once: eight real
`python manage.py migrate` processes started together against each database."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import pytest
from monorepo import Monorepo, ledger, tables, version_heads

pytestmark = pytest.mark.slow
RUNNERS = 8
SLOW = (
    "import time\ntime.sleep(0.2)\n"
    "op.create_table({table!r}, sa.Column('id', sa.Integer, primary_key=True))"
)


def slow_history(repo: Monorepo, url: str) -> list[tuple[str, str]]:
    """users: 0001 -> 0002 -> 0003; billing: 0001 -> 0002 (requires users:0002); each
    revision sleeps 0.2 s so that the runners really overlap."""
    revisions = [
        ("users", "0001_a", None, ()), ("users", "0002_b", "0001_a", ()),
        ("users", "0003_c", "0002_b", ()),
        ("billing", "0001_a", None, ()), ("billing", "0002_b", "0001_a", ("users:0002",)),
    ]
    for service, revision, down, requires in revisions:
        table = f"{service}_{revision}"
        repo.revision(service, revision, down=down, requires=requires,
                      upgrade=SLOW.format(table=table), downgrade=f"op.drop_table({table!r})")
    repo.settings(f'[development]\ndatabase_url = "{url}"\n')
    return [(service, revision) for service, revision, _, _ in revisions]


def test_eight_runners_apply_each_revision_once(repo: Monorepo, db_url: str) -> None:
    expected = slow_history(repo, db_url)
    repo.run("services")  # writes manage.py
    env = {k: v for k, v in os.environ.items() if not k.startswith("NCM_") or k.startswith("NCM_TEST_")}
    env["NCM_LOCK__TIMEOUT_S"] = "120"
    procs = [
        subprocess.Popen(
            [sys.executable, "manage.py", "migrate"], cwd=repo.root, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(RUNNERS)
    ]
    outputs = [p.communicate(timeout=180) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out + err

    rows = ledger(db_url)
    applied = Counter((str(r["service"]), str(r["revision"])) for r in rows if r["status"] == "applied")
    assert applied == Counter(expected), rows
    assert {r["status"] for r in rows} == {"applied"}
    assert {f"{s}_{r}" for s, r in expected} <= tables(db_url)
    assert version_heads(db_url, "alembic_version_users") == {"0003_c"}
    assert version_heads(db_url, "alembic_version_billing") == {"0002_b"}
    # Every runner finished; those that came late found the work done (or left to do).
    assert sum(out.count(" applied ") for out, _ in outputs) >= len(expected)
