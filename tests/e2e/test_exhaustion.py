"""Exhaustion (issue 13): no client can take the gateway down by holding its
descriptors, its memory or its shared pools.

Each test starts its own ``krypton dev`` process, floods it from this process
with connections or half-sent messages, and meanwhile checks that a
legitimate client still gets its answers in time. Memory and descriptors are
read from the gateway process itself (``/proc/PID``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator

import pytest
from tests.helpers.fixtures import DevStacks
from tests.helpers.servers import DevServer, recv_message

from krypton.kmip import client_messages as cm
from krypton.kmip.versions import ProtocolVersion
from krypton.ttlv.codec import decode, encode
from krypton.ttlv.enums import Operation, ResultStatus

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

ROUND_TRIP_WITHIN = 3.0


def discover() -> bytes:
    item = cm.batch_item(Operation.DISCOVER_VERSIONS, cm.payload())
    return encode(cm.request_message(ProtocolVersion(1, 4), [item]))


def round_trip(srv: DevServer, who: str = "client") -> float | None:
    """Seconds for a fresh connection's handshake + Discover Versions, or None
    when it failed or took longer than ``ROUND_TRIP_WITHIN``."""
    start = time.monotonic()
    try:
        with srv.connect(who, timeout=ROUND_TRIP_WITHIN) as sock:
            sock.sendall(discover())
            response = cm.parse_response(decode(recv_message(sock)))
    except (OSError, EOFError):
        return None
    took = time.monotonic() - start
    ok = [i.status for i in response.items] == [ResultStatus.SUCCESS]
    return took if ok and took <= ROUND_TRIP_WITHIN else None


@contextlib.contextmanager
def bare_connections(srv: DevServer, n: int) -> Iterator[list[socket.socket]]:
    """``n`` TCP connections that never start TLS (as many as connect)."""
    held: list[socket.socket] = []
    try:
        for _ in range(n):
            with contextlib.suppress(OSError):
                held.append(socket.create_connection((srv.host, srv.port), timeout=1.0))
        yield held
    finally:
        for sock in held:
            sock.close()


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_bare_connections_cannot_exhaust_descriptors(start_dev: DevStacks) -> None:
    """1,100 silent TCP connections against a 1,024-descriptor gateway: legitimate
    clients still connect and are answered, each within 3 s."""
    srv = start_dev(nofile=1024, env={"KRYPTON_GATEWAY_LIMITS_HANDSHAKE_TIMEOUT": "30"})
    assert round_trip(srv) is not None
    with bare_connections(srv, 1100) as held:
        assert len(held) >= 1000
        time.sleep(0.5)  # let the gateway accept (and evict) what it can
        times = [round_trip(srv) for _ in range(10)]
        assert srv.proc.poll() is None
        assert open_descriptors(srv.proc.pid) <= 1024
    done = [t for t in times if t is not None]
    print(f"round trips under 1,100 bare connections: {len(done)}/10, {times}")
    assert len(done) >= 9, times
