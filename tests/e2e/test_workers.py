"""`--workers N`: several gateway processes on one port, one vault, one ticket key."""

from __future__ import annotations

import ssl
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

from tests.e2e.test_admin import scrape, value
from tests.helpers.cluster import wait_for
from tests.helpers.fixtures import DevStacks

from krypton.client.sync import KmipClient, tls_context
from krypton.kmip.versions import ProtocolVersion


def _children(pid: int) -> list[int]:
    cmd = ["ps", "-o", "pid=", "--ppid", str(pid)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def test_two_workers_share_port_vault_and_sessions(start_dev: DevStacks) -> None:
    srv = start_dev(args=("--workers", "2"))
    assert len(_children(srv.proc.pid)) == 3  # the Core and two gateways
    ctx = tls_context(srv.pki / "ca.pem", srv.pki / "client.pem", srv.pki / "client-key.pem")
    made: dict[str, bytes] = {}
    for _ in range(20):  # new connections land on either worker
        with KmipClient(srv.host, srv.port, ctx, version=ProtocolVersion(1, 4)) as c:
            uid, key = c.create_get(256)
            made[uid] = key
    for uid, key in made.items():  # read each key back on yet another connection
        with KmipClient(srv.host, srv.port, ctx, version=ProtocolVersion(2, 0)) as c:
            assert c.get(uid) == key

    # TLS resumption works whichever worker takes the next connection: the
    # ticket key was made before the fork.
    ctx12 = tls_context(srv.pki / "ca.pem", srv.pki / "client.pem", srv.pki / "client-key.pem")
    ctx12.maximum_version = ssl.TLSVersion.TLSv1_2
    first = KmipClient(srv.host, srv.port, ctx12).connect()
    session = first.sock.session if first.sock is not None else None
    first.create()
    first.close()
    reused = 0
    for _ in range(10):
        c = KmipClient(srv.host, srv.port, ctx12).connect(session=session)
        assert c.sock is not None
        reused += bool(c.sock.session_reused)
        c.create()
        c.close()
    assert reused == 10
    srv.stop()  # SIGTERM: the whole stack shuts down cleanly
    assert srv.proc.returncode == 0


def test_each_key_reaches_the_core_once_not_once_per_worker(start_dev: DevStacks) -> None:
    """Issue 16: the workers share one vault, so one outbox, and each drained all
    of it: a key made while another worker's drain was reading went to the Core
    once per worker (the Core's synced-key count grew up to 2x the keys made).
    One worker at a time owns the drain now; the others nudge it."""
    srv = start_dev(args=("--workers", "2"))
    core = srv.admin_url("/metrics", core=True)
    ctx = tls_context(srv.pki / "ca.pem", srv.pki / "client.pem", srv.pki / "client-key.pem")
    before = value(scrape(core), "krypton_core_synced_keys_total")

    def make(rounds: int) -> int:
        made = 0
        for _ in range(rounds):  # a new connection each round: either worker takes it
            with KmipClient(srv.host, srv.port, ctx, version=ProtocolVersion(1, 4)) as c:
                for _ in range(40):
                    c.create()
                    made += 1
        return made

    with ThreadPoolExecutor(4) as pool:  # keys made through both workers at once
        made = sum(pool.map(make, [10] * 4))
    creates = {dict(k)["worker"]: v for k, v in scrape(srv.admin_url("/metrics"))[
        "krypton_kmip_requests_total"].items() if dict(k)["operation"] == "Create"}
    assert set(creates) == {"0", "1"} and min(creates.values()) > 0, creates

    def synced() -> float:
        return value(scrape(core), "krypton_core_synced_keys_total") - before

    wait_for("every key at the Core", lambda: synced() >= made or None, 30)
    time.sleep(1.5)  # past both drainers' next interval: any second copy has come
    assert synced() == made
