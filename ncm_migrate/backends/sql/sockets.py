"""Deadlines and TCP keepalives for the SQL drivers' connections (`connect.*` settings).

A server that accepts TCP and never answers, or a network that stalls mid-statement, must
not hang a runner: every wait on a server here has a bound. `Deadline` shuts a socket down
when a wait outlasts it, so that the blocked driver returns at once with an error, in any
driver; `keepalive` makes the kernel notice a peer that is gone without limiting how long
a statement may run.
"""

from __future__ import annotations

import functools
import math
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class Deadline:
    """Shuts a socket down when the wait it guards outlasts `limit_s` (one thread, started
    on first use, armed and disarmed around each wait)."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.fired = False
        self._cond = threading.Condition()
        self._armed: tuple[float, int] | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    @contextmanager
    def guard(self, fileno: int) -> Iterator[None]:
        """Arm for the socket `fileno` while the block runs."""
        with self._cond:
            self._armed = (time.monotonic() + self.limit_s, fileno)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="ncm-deadline", daemon=True)
                self._thread.start()
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._armed = None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _watch(self) -> None:
        with self._cond:
            while not self._closed:
                if self._armed is None:
                    self._cond.wait()
                    continue
                until, fileno = self._armed
                left = until - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                self._armed = None
                self.fired = True
                shut_down(fileno)


def shut_down(fileno: int) -> None:
    """Shut the socket behind `fileno` down both ways (the descriptor stays its owner's): a
    read blocked on it returns at once, as if the server had closed the connection."""
    try:
        sock = socket.socket(fileno=os.dup(fileno))
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


def keepalive_params(keepalive_s: float) -> dict[str, int]:
    """libpq's keepalive parameters for `connect.keepalive_s` (none for 0): probes after
    that much silence, three of them a third of it apart, and the same bound (twice the
    setting, in milliseconds) on data the server does not acknowledge."""
    if keepalive_s <= 0:
        return {}
    idle = max(1, math.ceil(keepalive_s))
    return {
        "keepalives": 1,
        "keepalives_idle": idle,
        "keepalives_interval": max(1, math.ceil(idle / 3)),
        "keepalives_count": 3,
        "tcp_user_timeout": 2 * idle * 1000,
    }


def set_keepalive(sock: socket.socket, keepalive_s: float) -> None:
    """The same as `keepalive_params` on a socket of our own (PyMySQL has no such option)."""
    params = keepalive_params(keepalive_s)
    if not params:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    options = [("TCP_KEEPIDLE", params["keepalives_idle"]), ("TCP_KEEPINTVL", params["keepalives_interval"]),
               ("TCP_KEEPCNT", params["keepalives_count"]), ("TCP_USER_TIMEOUT", params["tcp_user_timeout"])]
    for name, value in options:
        if hasattr(socket, name):  # Linux has all four; other systems some
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def pymysql_connect(cparams: dict[str, Any], connect_timeout_s: float, keepalive_s: float) -> Any:
    """A PyMySQL connection whose handshake has a deadline, over a socket with keepalives.

    PyMySQL bounds only the TCP connect by `connect_timeout`; the server's greeting and the
    authentication are read without a bound unless a `read_timeout` is set (which would
    bound every query too). So the socket is made here, handed to `Connection.connect(sock)`
    (public API), and shut down if the handshake outlasts `connect_timeout_s`.
    """
    import pymysql  # type: ignore[import-untyped]

    conn = pymysql.connect(**cparams, defer_connect=True)
    if cparams.get("unix_socket"):
        conn.connect()
        return conn
    host, port = conn.host, conn.port
    try:
        sock = socket.create_connection((host, port), connect_timeout_s)
    except OSError as exc:
        raise pymysql.err.OperationalError(
            2003, f"Can't connect to MySQL server on {host!r} ({exc})"
        ) from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    set_keepalive(sock, keepalive_s)
    deadline = Deadline(connect_timeout_s)
    try:
        with deadline.guard(sock.fileno()):
            conn.connect(sock)
    except pymysql.err.OperationalError as exc:
        if deadline.fired:
            raise pymysql.err.OperationalError(
                2013, f"MySQL server at {host}:{port} accepted the connection but did not answer "
                f"within {round(connect_timeout_s, 1):g}s (connect.timeout_s)"
            ) from exc
        raise
    finally:
        deadline.close()
    return conn


def psycopg_connect(cargs: Any, cparams: dict[str, Any], deadline: Deadline) -> Any:
    """A psycopg 3 connection whose every wait on the server is bounded by `deadline`
    (`connect.read_timeout_s`): psycopg has no client-side read timeout of its own."""
    conn = _timed_psycopg_class().connect(*cargs, **cparams)
    conn.deadline = deadline
    return conn


@functools.cache
def _timed_psycopg_class() -> type[Any]:
    import psycopg

    class TimedConnection(psycopg.Connection[Any]):
        """`Connection.wait` is the one method that all of psycopg's blocking calls (execute,
        fetch, commit, rollback) go through; it is not documented API, and this is the only
        place that overrides it. The public alternative for a peer that is gone is libpq's
        keepalives and `tcp_user_timeout` (`connect.keepalive_s`), set on every connection;
        they cannot see a stall that a middlebox keeps alive at the TCP level."""

        deadline: Deadline | None = None

        def wait(self, gen: Any, *args: Any, **kwargs: Any) -> Any:
            if self.deadline is None:
                return super().wait(gen, *args, **kwargs)
            with self.deadline.guard(self.pgconn.socket):
                return super().wait(gen, *args, **kwargs)

    return TimedConnection
