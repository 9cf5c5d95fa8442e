"""The fault proxy itself, in front of a small echo server: each mode and trigger does what
the network tests rely on (bounded by socket timeouts, never by sleeps)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from proxy import BLACK_HOLE, REFUSE, FaultProxy

QUIET_S = 0.5  # how long "nothing arrives" is watched for; a wrong answer fails either way


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    server = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()
    server.close()


@pytest.fixture
def proxy(echo: tuple[str, int]) -> Iterator[FaultProxy]:
    p = FaultProxy(echo)
    yield p
    p.close()


def client(proxy: FaultProxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=10)


def answers(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def silent(sock: socket.socket) -> bool:
    """Nothing arrives, and the connection stays open, for QUIET_S."""
    sock.settimeout(QUIET_S)
    try:
        sock.recv(1)
        return False
    except TimeoutError:
        return True
    finally:
        sock.settimeout(10)


def test_forwards(proxy: FaultProxy) -> None:
    with client(proxy) as sock:
        assert answers(sock, b"hello") == b"hello"


def test_stall_and_resume_on_a_method_call(proxy: FaultProxy) -> None:
    with client(proxy) as sock:
        assert answers(sock, b"one") == b"one"
        proxy.stall()
        sock.sendall(b"two")
        assert silent(sock)
        proxy.forward()
        assert sock.recv(3) == b"two"


def test_stall_on_a_pattern_holds_that_chunk(proxy: FaultProxy) -> None:
    proxy.stall_on(b"MARK")
    with client(proxy) as sock:
        assert answers(sock, b"before") == b"before"
        sock.sendall(b"xxMARKxx")
        assert silent(sock) and proxy.triggered.is_set()


def test_cut_after_some_bytes_closes_both_sides(proxy: FaultProxy) -> None:
    proxy.cut_after(10)
    with client(proxy) as sock:
        assert answers(sock, b"12345") == b"12345"
        sock.sendall(b"67890")
        assert sock.recv(10) == b""  # closed, not answered
    assert proxy.triggered.is_set()


def test_stall_after_some_bytes(proxy: FaultProxy) -> None:
    proxy.stall_after(4)
    with client(proxy) as sock:
        sock.sendall(b"abcd")
        assert silent(sock)


def test_black_hole_accepts_and_never_answers(echo: tuple[str, int]) -> None:
    p = FaultProxy(echo, mode=BLACK_HOLE)
    try:
        with client(p) as sock:
            sock.sendall(b"anyone?")
            assert silent(sock)
        p.wait_for("accepted", 1)
    finally:
        p.close()


def test_refuse_then_start(echo: tuple[str, int]) -> None:
    p = FaultProxy(echo, mode=REFUSE)
    try:
        try:  # the kernel accepts; the proxy resets it at once (even before connect returns)
            with client(p) as sock:
                got = answers(sock, b"x")
        except OSError:
            got = b""
        assert got == b""
        p.wait_for("refused", 1)
        p.forward()
        with client(p) as sock:
            assert answers(sock, b"up") == b"up"
    finally:
        p.close()


def test_not_listening_yet(echo: tuple[str, int]) -> None:
    p = FaultProxy(echo, listening=False)
    try:
        with pytest.raises(ConnectionRefusedError):
            client(p)
        p.listen()
        with client(p) as sock:
            assert answers(sock, b"up") == b"up"
    finally:
        p.close()
