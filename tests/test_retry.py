"""Connecting is retried (and only connecting): a database that comes up late is
migrated; one that never does is exit 4 within the configured bound."""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from monorepo import Monorepo


class DelayedProxy:
    """A TCP proxy on a free local port that starts listening only after `delay_s`."""

    def __init__(self, target: tuple[str, int], delay_s: float) -> None:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.target = target
        self.delay_s = delay_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        if self.stop.wait(self.delay_s):
            return
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(16)
        server.settimeout(0.2)
        while not self.stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()
        server.close()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def late_pg(pg_url: str) -> Iterator[tuple[str, DelayedProxy]]:
    proxy = DelayedProxy(("127.0.0.1", 5432), delay_s=2.0)
    url = sa.engine.make_url(pg_url).set(port=proxy.port).render_as_string(hide_password=False)
    yield url, proxy
    proxy.stop.set()


def test_database_that_comes_up_during_the_retries_is_migrated(
    repo: Monorepo, late_pg: tuple[str, DelayedProxy]
) -> None:
    url, _proxy = late_pg
    repo.table("users", "0001_a", "users_a")
    repo.urls({"users": url}, extra="[development.connect]\nretries = 20\nmax_wait_s = 30\n")
    t0 = time.monotonic()
    result = repo.cli("migrate")
    assert result.code == 0, result.output
    assert time.monotonic() - t0 >= 1.5
    assert "not reachable" in result.stderr and "retrying" in result.stderr
    assert "applied" in result.stdout


def test_database_that_never_comes_up_is_exit_4_within_the_bound(repo: Monorepo) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    repo.table("users", "0001_a", "users_a")
    repo.urls({"users": f"postgresql+psycopg://postgres:s3cret-pw@127.0.0.1:{port}/x"},
              extra="[development.connect]\nretries = 50\nmax_wait_s = 3\n")
    result = repo.run("migrate", timeout=120)  # a bound for a hang; the budget itself is
    assert result.code == 4, result.output     # checked on a fake clock below
    assert "users" in result.stderr and "unreachable" in result.stderr
    assert "s3cret-pw" not in result.output
    assert result.stderr.count("retrying") >= 2


def test_wait_times_out_with_exit_4(repo: Monorepo) -> None:
    repo.table("users", "0001_a", "users_a")
    repo.urls({"users": "mysql+pymysql://root@127.0.0.1:1/x"})
    result = repo.run("wait", "--timeout", "1.5", timeout=120)  # a bound for a hang only
    assert result.code == 4
    assert "users" in result.stderr and "Traceback" not in result.output


def test_wait_returns_once_the_databases_answer(repo: Monorepo, db_url: str) -> None:
    repo.table("users", "0001_a", "users_a")
    repo.urls({"users": db_url})
    result = repo.cli("wait", "--timeout", "10")
    assert result.code == 0, result.output
    assert "users: up" in result.stdout


def test_wait_on_a_late_database(repo: Monorepo, late_pg: tuple[str, DelayedProxy]) -> None:
    url, _proxy = late_pg
    repo.table("users", "0001_a", "users_a")
    repo.urls({"users": url})
    result = repo.cli("wait", "--timeout", "20")
    assert result.code == 0, result.output


def test_a_refusing_server_is_not_retried(repo: Monorepo, pg_url: str) -> None:
    """A wrong database name (or password) will not get better by waiting."""
    url = sa.engine.make_url(pg_url).set(database="ncm_no_such_db").render_as_string(hide_password=False)
    repo.table("users", "0001_a", "users_a")
    repo.urls({"users": url}, extra="[development.connect]\nretries = 20\nmax_wait_s = 30\n")
    result = repo.cli("migrate")
    assert result.code == 4
    assert "refused the connection" in result.stderr and "not retried" in result.stderr
    assert "retrying" not in result.stderr


class FakeClock:
    """Time that moves only when the retry policy sleeps or an attempt takes its time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


class DownBackend:
    """A database that never answers: each attempt is refused at once, or (`black_hole`)
    takes the whole timeout it was given. Records when each attempt started and ended."""

    def __init__(self, clock: FakeClock, black_hole: bool = False) -> None:
        from ncm_migrate.model import ServiceConfig

        self.config = ServiceConfig(name="users", root=Path("."), database_url="postgresql://h/db")
        self.clock = clock
        self.black_hole = black_hole
        self.attempts: list[tuple[float, float]] = []

    def open(self, timeout_s: float | None = None) -> None:
        from ncm_migrate.backends import ConnectFailed

        start = self.clock.now
        if self.black_hole:
            assert timeout_s is not None
            self.clock.now += timeout_s
        self.attempts.append((start - 1000.0, self.clock.now - 1000.0))
        raise ConnectFailed("connection refused")


@pytest.mark.parametrize("black_hole", [False, True])
def test_max_wait_s_is_the_bound_that_holds(black_hole: bool) -> None:
    """`connect.max_wait_s = 30` (the default) means trying for 30 s, not ~3: the retries
    are spread over the budget, the last as it runs out, and no attempt ends past it."""
    from ncm_migrate.backends.retry import MIN_ATTEMPT_S, open_with_retries
    from ncm_migrate.config import ConnectSettings
    from ncm_migrate.errors import DatabaseUnreachable

    policy = ConnectSettings()
    assert (policy.retries, policy.max_wait_s) == (5, 30.0)
    clock = FakeClock()
    backend = DownBackend(clock, black_hole)
    with pytest.raises(DatabaseUnreachable, match="stayed unreachable after"):
        open_with_retries(backend, policy, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
    starts = [start for start, _ in backend.attempts]
    assert starts == sorted(starts) and len(starts) <= policy.retries + 1
    assert starts[-1] >= policy.max_wait_s - MIN_ATTEMPT_S - policy.timeout_s  # used to be ~3 s
    assert max(end for _, end in backend.attempts) <= policy.max_wait_s
    if not black_hole:
        assert len(starts) == policy.retries + 1
        assert starts[-1] == pytest.approx(policy.max_wait_s - MIN_ATTEMPT_S)


def test_many_retries_in_a_short_budget_do_not_spin() -> None:
    """`wait --timeout 5` (a retry count without end): attempts at least 50 ms apart, at
    most 2 s apart, and none past the timeout."""
    from ncm_migrate.backends.retry import MIN_INTERVAL_S, open_with_retries
    from ncm_migrate.config import ConnectSettings
    from ncm_migrate.errors import DatabaseUnreachable
    from ncm_migrate.health import WAIT_INTERVAL_S

    clock = FakeClock()
    backend = DownBackend(clock)
    with pytest.raises(DatabaseUnreachable):
        open_with_retries(backend, ConnectSettings(retries=1_000_000), max_wait_s=5.0,  # type: ignore[arg-type]
                          max_interval_s=WAIT_INTERVAL_S, clock=clock, sleep=clock.sleep)
    starts = [start for start, _ in backend.attempts]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps and min(gaps) >= MIN_INTERVAL_S * 0.75 and max(gaps) <= WAIT_INTERVAL_S
    assert max(end for _, end in backend.attempts) <= 5.0


@pytest.mark.parametrize("where", ["a-file/x.db", "a-file/sub/x.db", "read-only/x.db"])
def test_an_sqlite_folder_that_cannot_hold_the_file_is_not_retried(
    repo: Monorepo, tmp_path: Path, where: str
) -> None:
    """No server is starting up there: one sentence, exit 2, no retry (not 30 s of them)."""
    import os

    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "read-only").mkdir()
    (tmp_path / "read-only").chmod(0o555)
    if where.startswith("read-only") and os.access(tmp_path / "read-only", os.W_OK):
        pytest.skip("running as root: every folder is writable")
    repo.table("users", "0001_a", "users_a")
    repo.urls({"users": f"sqlite:///{tmp_path / where}"},
              extra="[development.connect]\nretries = 20\nmax_wait_s = 30\n")
    for command in ("migrate", "showmigrations", "wait"):
        result = repo.cli(command)
        assert result.code == 2, result.output
        assert "retrying" not in result.stderr
        assert f"SQLite file {tmp_path / where} cannot be created" in result.stderr
        assert "Traceback" not in result.output


def test_a_short_budget_still_gets_its_retry() -> None:
    """`retries = 1`, `max_wait_s = 1`: the retry is made within the second, not skipped
    for want of a whole second left."""
    from ncm_migrate.backends.retry import open_with_retries
    from ncm_migrate.config import ConnectSettings
    from ncm_migrate.errors import DatabaseUnreachable

    clock = FakeClock()
    backend = DownBackend(clock)
    with pytest.raises(DatabaseUnreachable):
        open_with_retries(backend, ConnectSettings(retries=1, max_wait_s=1.0),  # type: ignore[arg-type]
                          clock=clock, sleep=clock.sleep)
    assert len(backend.attempts) == 2
    assert max(end for _, end in backend.attempts) <= 1.0
