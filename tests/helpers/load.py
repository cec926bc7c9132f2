"""Load for the multi-process tests.

:class:`Background`: one step function run in a loop on its own KMIP
connection, in a thread, for the length of a ``with`` block.

The step records what it needs (keys made, errors, timings) in its own
object; the block's end stops the loop after the step under way and closes
the connection.

:func:`created_until_killed`: a create load to kill a gateway under, with
every key recorded the moment its Create is acknowledged.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from krypton.client.sync import KmipClient, tls_context
from krypton.kmip.versions import ProtocolVersion
from tests.helpers.servers import DevServer


class Background:
    def __init__(self, client: KmipClient, step: Callable[[KmipClient], None],
                 name: str = "load") -> None:
        self.client = client
        self._step = step
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name)

    def __enter__(self) -> Background:
        self.client.connect()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self.client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._step(self.client)


def client(srv: DevServer) -> KmipClient:
    ctx = tls_context(srv.pki / "ca.pem", srv.pki / "client.pem", srv.pki / "client-key.pem")
    return KmipClient(srv.host, srv.port, ctx, version=ProtocolVersion(1, 4), timeout=5.0)


def created_until_killed(srv: DevServer, writers: int, at_least: int, within: float,
                         kill: Callable[[], None]) -> dict[str, bytes | None]:
    """``writers`` connections create keys (odd ones Create+Get, even ones Create
    of 128 bits) until ``at_least`` are acknowledged (or ``within`` seconds),
    then ``kill()`` runs while they are still sending. The acknowledged keys:
    uid -> material (None for a plain Create)."""
    acked: dict[str, bytes | None] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def writer(n: int) -> None:
        try:
            with client(srv) as c:
                while not stop.is_set():
                    if n % 2:
                        uid, key = c.create_get(256)
                        with lock:
                            acked[uid] = key
                    else:
                        uid = c.create(128)
                        with lock:
                            acked[uid] = None
        except Exception:
            return  # the kill cuts connections mid-request: only acknowledged keys count

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + within
        while len(acked) < at_least and time.monotonic() < deadline:
            time.sleep(0.01)
        kill()
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    with lock:
        snapshot = dict(acked)
    assert len(snapshot) >= at_least, "the writers did not get far enough to test anything"
    return snapshot
