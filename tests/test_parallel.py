"""--jobs runs independent services side by side, in separate processes."""

from __future__ import annotations

from pathlib import Path

import pytest
from monorepo import Monorepo

from ncm_migrate import commands
from ncm_migrate.errors import MigrationFailed


def barrier_services(root: Path, count: int, parties: int, timeout_s: float) -> Monorepo:
    """`count` services of one revision each, each of which waits until `parties` of them
    have started: it passes only when that many steps run side by side, and fails (not
    hangs) after `timeout_s` otherwise. No clock is compared with another: a loaded machine
    makes it slower, never wrong."""
    repo = Monorepo(root)
    root.mkdir()
    arrived = root / "arrived"
    arrived.mkdir()
    urls = {}
    for i in range(count):
        name = f"svc{i}"
        repo.revision(name, "0001_meet", upgrade=f"""
            import pathlib, time
            folder = pathlib.Path({str(arrived)!r})
            (folder / {name!r}).touch()
            deadline = time.monotonic() + {timeout_s}
            while len(list(folder.iterdir())) < {parties}:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {{len(list(folder.iterdir()))}} of {parties} steps ran at once")
                time.sleep(0.02)
        """)
        urls[name] = f"sqlite:///{root / f'{name}.db'}"
    repo.urls(urls)
    return repo


def test_jobs_4_runs_four_services_side_by_side(tmp_path: Path) -> None:
    repo = barrier_services(tmp_path / "r", 4, parties=4, timeout_s=120)
    result = commands.migrate(root=repo.root, jobs=4)
    assert [r.outcome for r in result.report.results] == ["applied"] * 4


def test_the_side_by_side_check_fails_when_steps_run_one_at_a_time(tmp_path: Path) -> None:
    repo = barrier_services(tmp_path / "r", 2, parties=2, timeout_s=1)
    with pytest.raises(MigrationFailed, match="only 1 of 2 steps ran at once"):
        commands.migrate(root=repo.root, jobs=1)


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


def test_services_sharing_one_sqlite_file_never_write_side_by_side(tmp_path: Path) -> None:
    """Four services in one SQLite file with --jobs 4: SQLite takes one writer per file
    (others fail with "database is locked"), so they run one after the other; each step
    checks that no other is running (an O_EXCL marker file)."""
    repo = Monorepo(tmp_path / "r")
    repo.root.mkdir()
    busy = tmp_path / "busy"
    for s in "abcd":
        for i in range(3):
            repo.revision(s, f"000{i}_{s}", down=f"000{i - 1}_{s}" if i else None, upgrade=f"""
                import os, time
                fd = os.open({str(busy)!r}, os.O_CREAT | os.O_EXCL)  # fails if another step runs
                op.create_table('t_{s}{i}', sa.Column('id', sa.Integer, primary_key=True))
                time.sleep(0.02)
                os.close(fd)
                os.unlink({str(busy)!r})
            """)
    repo.settings(f'[development]\ndatabase_url = "sqlite:///{tmp_path / "shared.db"}"\n')
    run = repo.run("migrate", "--jobs", "4")
    assert run.code == 0, run.output
    assert "Traceback" not in run.output
    status = commands.showmigrations(root=repo.root)
    assert all(r.applied for s in status for r in s.revisions)
