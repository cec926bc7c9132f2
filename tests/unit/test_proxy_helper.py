"""The black-hole proxy of the test helpers behaves as a partition does: silence
without a reset, nothing lost once healed, and a reset only when asked."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from tests.helpers.proxy import black_hole_proxy


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=_echo, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def _echo(conn: socket.socket) -> None:
    with conn:
        while data := conn.recv(4096):
            conn.sendall(data)


def _recv(sock: socket.socket, timeout: float) -> bytes | None:
    sock.settimeout(timeout)
    try:
        return sock.recv(4096)
    except TimeoutError:
        return None


def test_partition_is_silent_heal_loses_nothing_reset_closes(echo_port: int) -> None:
    with black_hole_proxy(echo_port) as proxy, \
            socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(b"one")
        assert _recv(sock, 5.0) == b"one"
        proxy.partition()
        sock.sendall(b"two")
        assert _recv(sock, 0.3) is None  # silence, and the connection stays open
        late = socket.create_connection(("127.0.0.1", proxy.port))  # accepted, held
        late.sendall(b"three")
        assert _recv(late, 0.3) is None
        proxy.heal()
        assert _recv(sock, 5.0) == b"two"
        assert _recv(late, 5.0) == b"three"
        proxy.reset()
        assert _recv(sock, 5.0) == b""
        late.close()
