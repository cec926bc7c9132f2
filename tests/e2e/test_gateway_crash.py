"""Durability: a gateway killed with SIGKILL right after acknowledging keys loses none.

Several connections create keys concurrently (so group commit batches them);
each acknowledged identifier is recorded the moment its response arrives, and
for Create+Get batches the key material too. The process is then killed with
SIGKILL — no shutdown, no flush — restarted on the same directory, and every
acknowledged key must be served again, with the same material.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from tests.helpers.fixtures import DevStacks
from tests.helpers.servers import DevServer

from krypton.client.sync import KmipClient, tls_context
from krypton.kmip.versions import ProtocolVersion

WRITERS = 6


def _client(srv: DevServer) -> KmipClient:
    ctx = tls_context(srv.pki / "ca.pem", srv.pki / "client.pem", srv.pki / "client-key.pem")
    return KmipClient(srv.host, srv.port, ctx, version=ProtocolVersion(1, 4), timeout=5.0)


def test_sigkill_after_ack_loses_no_key(tmp_path: Path, start_dev: DevStacks) -> None:
    srv = start_dev(tmp_path)
    acked: dict[str, bytes | None] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def writer(n: int) -> None:
        try:
            with _client(srv) as c:
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
            # The kill cuts connections mid-request: only acknowledged keys count.
            return

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while len(acked) < 300 and time.monotonic() < deadline:
        time.sleep(0.01)
    srv.kill()  # SIGKILL while the writers are still sending
    stop.set()
    for t in threads:
        t.join(timeout=10)
    with lock:
        snapshot = dict(acked)
    assert len(snapshot) >= 300, "the writers did not get far enough to test anything"

    restarted = start_dev(tmp_path, port=srv.port)  # the same directory, vault and port
    with _client(restarted) as c:
        for uid, key in snapshot.items():
            material = c.get(uid)
            if key is not None:
                assert material == key, f"key {uid} changed across the crash"
            else:
                assert len(material) == 16
