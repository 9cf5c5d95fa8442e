"""--jobs runs independent services side by side, in separate processes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from monorepo import Monorepo

from ncm_migrate import commands
from ncm_migrate.errors import MigrationFailed


def slow_services(root: Path, count: int, seconds: float) -> Monorepo:
    repo = Monorepo(root)
    root.mkdir()
    urls = {}
    for i in range(count):
        name = f"svc{i}"
        repo.revision(name, "0001_slow", upgrade=f"import time\ntime.sleep({seconds})")
        urls[name] = f"sqlite:///{root / f'{name}.db'}"
    repo.urls(urls)
    return repo


@pytest.mark.slow
def test_jobs_4_finishes_well_under_the_serial_time(tmp_path: Path) -> None:
    serial_repo = slow_services(tmp_path / "serial", 4, 1.0)
    parallel_repo = slow_services(tmp_path / "parallel", 4, 1.0)

    t0 = time.monotonic()
    serial = commands.migrate(root=serial_repo.root, jobs=1)
    serial_s = time.monotonic() - t0
    t0 = time.monotonic()
    parallel = commands.migrate(root=parallel_repo.root, jobs=4)
    parallel_s = time.monotonic() - t0

    assert serial.ok and parallel.ok
    assert [r.outcome for r in parallel.report.results] == ["applied"] * 4
    assert serial_s >= 4.0
    assert parallel_s < 0.6 * serial_s, (serial_s, parallel_s)


def test_a_failure_stops_new_work_and_reports_every_service(tmp_path: Path) -> None:
    """
        a: 0001 (fails)      b: 0001 -> 0002      c: 0001 (requires a:0001)
    """
    repo = Monorepo(tmp_path / "r")
    repo.root.mkdir()
    repo.revision("a", "0001_boom", upgrade="raise RuntimeError('boom')")
    repo.revision("b", "0001_x", upgrade="import time\ntime.sleep(0.3)")
    repo.revision("b", "0002_y", down="0001_x")
    repo.revision("c", "0001_x", requires=["a:0001"])
    repo.urls({s: f"sqlite:///{tmp_path / (s + '.db')}" for s in "abc"})
    with pytest.raises(MigrationFailed) as failed:
        commands.migrate(root=repo.root, jobs=3)
    outcomes = {(r.service, r.revision): r.outcome for r in failed.value.results}
    assert outcomes[("a", "0001_boom")] == "failed"
    assert outcomes[("c", "0001_x")] == "not-run"
    # b ran beside a and was let finish; what it applied stays applied
    assert outcomes[("b", "0001_x")] == "applied"
    status = {s.name: s for s in commands.showmigrations(root=repo.root)}
    assert status["b"].revisions[0].applied
    assert not status["c"].revisions[0].applied
