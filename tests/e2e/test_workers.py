"""`--workers N`: several gateway processes on one port, one vault, one ticket key."""

from __future__ import annotations

import ssl
import subprocess

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
