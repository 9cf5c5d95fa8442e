"""A loopback TCP proxy in front of a real database server that injects network faults.

`FaultProxy(("127.0.0.1", 5432))` listens on a free loopback port and forwards each
connection to the server. A test points a service's URL at it (`proxy.url(url)`) and
breaks the network at a moment it chooses, deterministically: by a method call, when the
client sends a given byte string (`stall_on(b"...")`, `cut_on(...)`), or after a number of
bytes. Modes:

- `refuse` (or `listening=False`): connections are refused (a server not started yet);
  `forward()` (or `listen()`) starts it; `refused` counts the attempts turned away;
- `black_hole`: a connection is accepted and held, nothing is read, forwarded or answered;
- `stall`: every open connection stops forwarding, both ways, its sockets left open;
- `cut`: every open connection is closed on both sides.

Threads only (no event loop), so a test or a subprocess under test can use it alike.
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import sqlalchemy as sa

FORWARD, REFUSE, BLACK_HOLE, STALL = "forward", "refuse", "black_hole", "stall"


@dataclass
class _Rule:
    action: str  # "stall" or "cut"
    pattern: bytes | None = None
    after_bytes: int | None = None


class _Pipe:
    """One client connection and its upstream connection (none for a black hole)."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, upstream: socket.socket | None) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.closed = False
        self.held: bytes = b""  # the client's chunk that tripped a stall, sent on resume
        self.tail = b""  # the end of the client's last chunk: patterns split across chunks

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for sock in (self.client, self.upstream):
            if sock is None:
                continue
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def run(self) -> None:
        try:
            self._pump()
        except OSError:
            pass
        finally:
            self.proxy._forget(self)

    def _pump(self) -> None:
        assert self.upstream is not None
        sel = selectors.DefaultSelector()
        sel.register(self.client, selectors.EVENT_READ, self.upstream)
        sel.register(self.upstream, selectors.EVENT_READ, self.client)
        try:
            while not self.closed:
                if self.proxy.mode == STALL:
                    self.proxy._wait_change(0.2)
                    continue
                if self.held:
                    self.upstream.sendall(self.held)
                    self.held = b""
                for key, _ in sel.select(0.2):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    dst: socket.socket = key.data
                    data = src.recv(65536)
                    if not data:
                        self.close()
                        return
                    if src is self.client:
                        action = self.proxy._inspect(self, data)
                        if action == "cut":
                            self.proxy.cut()
                            return
                        if action == "stall":
                            self.held = data
                            break
                    dst.sendall(data)
        finally:
            sel.close()


class FaultProxy:
    """A fault-injecting TCP proxy on 127.0.0.1 in front of `target` (host, port)."""

    def __init__(self, target: tuple[str, int], mode: str = FORWARD, listening: bool = True) -> None:
        self.target = target
        self.mode = mode
        self.refused = 0  # connection attempts turned away in `refuse` mode
        self.accepted = 0  # connections accepted (forwarded or black-holed)
        self.triggered = threading.Event()  # set when a stall_on/cut_on rule fired
        self._rules: list[_Rule] = []
        self._sent_up = 0  # bytes from clients, for `after_bytes` rules
        self._cond = threading.Condition()
        self._pipes: list[_Pipe] = []
        self._stopped = False
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._accepting: threading.Thread | None = None
        if listening:
            self.listen()

    # -- pointing a client at it ----------------------------------------------------

    def url(self, database_url: str) -> str:
        """`database_url` with its host and port replaced by the proxy's."""
        parsed = sa.engine.make_url(database_url).set(host="127.0.0.1", port=self.port)
        return parsed.render_as_string(hide_password=False)

    # -- modes (each takes effect at once, for open connections and new ones) --------

    def listen(self) -> None:
        """Start accepting: until now, connections were refused by the kernel."""
        if self._accepting is None:
            self._server.listen(64)
            self._accepting = threading.Thread(target=self._accept_loop, daemon=True)
            self._accepting.start()

    def _set(self, mode: str) -> None:
        with self._cond:
            self.mode = mode
            self._cond.notify_all()

    def forward(self) -> None:
        """Forward new connections and resume stalled ones."""
        self.listen()
        self._set(FORWARD)

    def refuse(self) -> None:
        """Turn new connections away (accepted and reset at once): a server not up."""
        self._set(REFUSE)

    def black_hole(self) -> None:
        """Accept new connections and never answer them."""
        self._set(BLACK_HOLE)

    def stall(self) -> None:
        """Stop forwarding on every connection, both ways, keeping the sockets open."""
        self._set(STALL)
        self.triggered.set()

    def cut(self, refuse_new: bool = False) -> None:
        """Close every open connection on both sides; with `refuse_new`, refuse new ones."""
        with self._cond:
            pipes = list(self._pipes)
            if refuse_new:
                self.mode = REFUSE
            self._cond.notify_all()
        for pipe in pipes:
            pipe.close()
        self.triggered.set()

    # -- deterministic triggers ------------------------------------------------------

    def stall_on(self, pattern: bytes) -> None:
        """Stall as soon as a client sends `pattern` (that chunk is held back)."""
        self._add(_Rule("stall", pattern=pattern))

    def cut_on(self, pattern: bytes) -> None:
        """Cut every connection as soon as a client sends `pattern` (not forwarded)."""
        self._add(_Rule("cut", pattern=pattern))

    def stall_after(self, nbytes: int) -> None:
        """Stall once clients have sent `nbytes` more bytes."""
        self._add(_Rule("stall", after_bytes=self._sent_up + nbytes))

    def cut_after(self, nbytes: int) -> None:
        """Cut once clients have sent `nbytes` more bytes."""
        self._add(_Rule("cut", after_bytes=self._sent_up + nbytes))

    def _add(self, rule: _Rule) -> None:
        with self._cond:
            self._rules.append(rule)

    def _inspect(self, pipe: _Pipe, data: bytes) -> str | None:
        """The action a client's chunk trips, if any (the rule is then spent)."""
        with self._cond:
            self._sent_up += len(data)
            window = pipe.tail + data
            pipe.tail = data[-256:]
            for rule in self._rules:
                hit = (rule.pattern is not None and rule.pattern in window) or (
                    rule.after_bytes is not None and self._sent_up >= rule.after_bytes
                )
                if hit:
                    self._rules.remove(rule)
                    if rule.action == "stall":
                        self.mode = STALL
                        self._cond.notify_all()
                    self.triggered.set()
                    return rule.action
        return None

    def wait_for(self, what: str, count: int = 1, timeout: float = 60.0) -> None:
        """Block until `count` connections were `refused` or `accepted` (AssertionError after
        `timeout`, a bound for a broken test, not a measurement)."""
        with self._cond:
            ok = self._cond.wait_for(lambda: getattr(self, what) >= count, timeout)
        assert ok, f"the proxy saw {getattr(self, what)} {what} connections, expected {count}"

    def _wait_change(self, timeout: float) -> None:
        with self._cond:
            self._cond.wait(timeout)

    # -- plumbing ----------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with self._cond:
                mode = self.mode
                if mode == REFUSE:
                    self.refused += 1
                    self._cond.notify_all()
            if mode == REFUSE:
                # A reset, as from a port nobody listens on.
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                continue
            upstream = None
            if mode != BLACK_HOLE:
                try:
                    upstream = socket.create_connection(self.target, timeout=10)
                    upstream.settimeout(None)
                except OSError:
                    client.close()
                    continue
            pipe = _Pipe(self, client, upstream)
            with self._cond:
                self._pipes.append(pipe)
                self.accepted += 1
                self._cond.notify_all()
            if upstream is not None:
                threading.Thread(target=pipe.run, daemon=True).start()

    def _forget(self, pipe: _Pipe) -> None:
        pipe.close()
        with self._cond:
            if pipe in self._pipes:
                self._pipes.remove(pipe)

    def close(self) -> None:
        self._stopped = True
        self._server.close()
        with self._cond:
            pipes = list(self._pipes)
            self.mode = FORWARD
            self._cond.notify_all()
        for pipe in pipes:
            pipe.close()


@contextmanager
def fault_proxy(database_url: str, mode: str = FORWARD, listening: bool = True) -> Iterator[FaultProxy]:
    """A `FaultProxy` in front of the server of `database_url`, closed afterwards."""
    parsed = sa.engine.make_url(database_url)
    default_port = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306}[parsed.get_backend_name()]
    proxy = FaultProxy((parsed.host or "127.0.0.1", parsed.port or default_port), mode, listening)
    try:
        yield proxy
    finally:
        proxy.close()
