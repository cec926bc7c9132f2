"""The trust boundary between gateways and the Core (issue 11), against real
``krypton core`` / ``krypton gateway`` processes, real gRPC over mutual TLS and
the real uplink client, as an attacker holding one gateway's certificate, or
able to run a server somewhere, would try it.

* a gateway served only ``demo`` calls each uplink RPC for ``other``: every
  call is PERMISSION_DENIED and audited, nothing reaches the registry;
* a gateway vouches for a forged client identity: refused and audited; a
  well-formed claim is audited with both the gateway and the client;
* a fake Core presenting a gateway's (or a workload's) certificate: the
  gateway never goes READY and never sends it a call;
* a TLS session resumed after the client certificate (20 s) expired: refused.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from tests.helpers.cluster import (
    V21,
    Cluster,
    locate_item,
    wait_for,
)
from tests.helpers.fixtures import Clusters

from krypton.client.sync import KmipClient, tls_context
from krypton.config import TLSConfig
from krypton.errors import PermissionDenied
from krypton.model.record import KeyRecord
from krypton.pki import issue_leaf, load_cert_pem, load_key_pem, write_cert_pem, write_key_pem
from krypton.pki.dev import GATEWAY_NAME, DevLayout, core_spiffe_id
from krypton.ttlv.codec import encode
from krypton.ttlv.enums import ResultReason, ResultStatus
from krypton.uplink.client import UplinkClient
from krypton.uplink.types import ExecuteRequest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

EU = "gw-eu"  # a gateway the Core serves for tenant demo only
WORKLOAD = "spiffe://krypton.dev/tenant/demo/workload/client"
FORGED = "spiffe://forged/identity"
UPLINK_CALLS = ("Subscribe", "SyncKeys", "Execute", "FetchKey")


@pytest.fixture(scope="module")
def cluster(start_module_cluster: Clusters) -> Cluster:
    """A running Core (no gateway process): gw-dev serves both tenants, gw-eu demo."""
    return start_module_cluster(gateways=(GATEWAY_NAME, EU), tenants={EU: ("demo",)},
                                gateways_running=False)


def uplink(cluster: Cluster, name: str, tenants: tuple[str, ...]) -> UplinkClient:
    g = cluster.gateways[name]
    tls = TLSConfig(cert=g.cert, key=g.key, ca=cluster.layout.ca)
    return UplinkClient(cluster.core_address, tls, name, tenants, 3.0,
                        core_id=core_spiffe_id(), backoff=(0.05, 0.2))


def audit_rows(cluster: Cluster) -> list[dict[str, Any]]:
    out = cluster.core_cli("audit", "--limit", "100000")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def record(uid: str, tenant: str) -> KeyRecord:
    return KeyRecord(uid=uid, tenant=tenant, object_type=2, algorithm=3, length=256, state=1,
                     l3_version=1, wrapped=b"\x01" * 60, attributes=b"", created=1_700_000_000)


def locate(identity: str, tenant: str) -> ExecuteRequest:
    return ExecuteRequest(encode(locate_item(V21)), identity, tenant, (2, 1))


def test_a_gateway_is_served_only_its_tenants(cluster: Cluster) -> None:
    """Finding 1: with gw-eu's certificate, every uplink call for tenant other is refused."""
    eu = cluster.gateways[EU].spiffe_id

    async def attack() -> None:
        async with uplink(cluster, EU, ("other",)) as up:
            assert not await up.wait_ready(1.5)
            assert "does not serve tenant(s) other" in up.last_error
            with pytest.raises(PermissionDenied, match="does not serve tenant"):
                await up.execute(locate(WORKLOAD, "other"))
            with pytest.raises(PermissionDenied, match="does not serve tenant"):
                await up.sync_keys([record("eu-demo-1", "demo"), record("eu-other-1", "other")])
            with pytest.raises(PermissionDenied, match="does not serve tenant"):
                await up.fetch_key("other", "eu-other-1")
        async with uplink(cluster, EU, ("demo",)) as up:  # its own tenant still works
            assert await up.wait_ready(5.0), up.last_error
            assert await up.fetch_key("demo", "no-such-key") is None
            await up.execute(locate(WORKLOAD, "demo"))

    asyncio.run(attack())
    assert cluster.registry_holds("demo", ["eu-demo-1"]) == set()
    assert cluster.registry_holds("other", ["eu-other-1"]) == set()
    rows = [r for r in audit_rows(cluster) if r["gateway"] == eu]
    refused = {(r["operation"], r["tenant"]) for r in rows if r["result"] == "PermissionDenied"}
    assert refused >= {(op, "other") for op in UPLINK_CALLS}
    allowed = {(r["operation"], r["tenant"], r["result"]) for r in rows
               if r["result"] != "PermissionDenied"}
    assert {("Subscribe", "demo", "Success"), ("FetchKey", "demo", "ItemNotFound"),
            ("LOCATE", "demo", "Success")} <= allowed


def test_a_forged_client_identity_is_refused_and_audited(cluster: Cluster) -> None:
    """Finding 2: the client identity is the gateway's claim; the Core checks and audits it."""
    gw = cluster.gateways[GATEWAY_NAME].spiffe_id

    async def claim() -> None:
        async with uplink(cluster, GATEWAY_NAME, ("demo", "other")) as up:
            for forged in (FORGED, "spiffe://krypton.dev/tenant/demo/../other/x", ""):
                with pytest.raises(PermissionDenied):
                    await up.execute(locate(forged, "demo"))
            await up.execute(locate(WORKLOAD, "demo"))

    asyncio.run(claim())
    rows = [r for r in audit_rows(cluster) if r["gateway"] == gw and r["operation"] in
            ("Execute", "LOCATE")]
    assert {(r["identity"], r["result"]) for r in rows} >= {
        (FORGED, "PermissionDenied"),
        ("spiffe://krypton.dev/tenant/demo/../other/x", "PermissionDenied"),
        (WORKLOAD, "Success"),
    }
    assert all(r["result"] == "PermissionDenied" for r in rows if r["identity"] == FORGED)


@pytest.mark.parametrize("impostor", ["gateway", "client"])
def test_a_fake_core_is_refused_by_the_gateway(
    start_cluster: Clusters, tmp_path: Path, impostor: str
) -> None:
    """Finding 3: a server with a gateway's or a workload's certificate from the same CA
    is not the Core; the gateway never goes READY, never subscribes, never relays."""
    pki = DevLayout(tmp_path).pki  # the PKI the cluster in tmp_path gets
    cluster = start_cluster(
        tmp_path,
        core_env={"KRYPTON_CORE_TLS_CERT": str(pki / f"{impostor}.pem"),
                  "KRYPTON_CORE_TLS_KEY": str(pki / f"{impostor}-key.pem")},
        serving=False,
    )
    gateway = cluster.running[GATEWAY_NAME]
    if impostor == "gateway":
        wait_for("the refusal in the gateway's log",
                 lambda: "is not the Core" in gateway.log() or None, 10.0)
    with cluster.client(GATEWAY_NAME) as c:
        response = c.call([locate_item(V21)])  # delegated: must not reach the fake
        assert response.items[0].status is ResultStatus.OPERATION_FAILED
    assert "READY, in sync" not in gateway.log()
    assert [r for r in audit_rows(cluster) if r["operation"] in ("Subscribe", "LOCATE")] == []


def test_resumed_session_after_the_certificate_expired_is_refused(
    start_cluster: Clusters,
) -> None:
    """Finding 7: a session resumed after the client certificate expired (it lives 6 s)."""
    cluster = start_cluster()
    pki = cluster.layout.pki
    cert, key = issue_leaf(load_cert_pem(pki / "ca.pem"), load_key_pem(pki / "ca-key.pem"),
                           common_name="short", spiffe_id=WORKLOAD.replace("client", "short"),
                           seconds=6)
    write_cert_pem(pki / "short.pem", cert)
    write_key_pem(pki / "short-key.pem", key)
    ctx = tls_context(pki / "ca.pem", pki / "short.pem", pki / "short-key.pem")
    port = cluster.gateways[GATEWAY_NAME].port
    with KmipClient("127.0.0.1", port, ctx, version=V21).connect() as first:
        first.create()
        assert first.sock is not None
        session = first.sock.session
    assert session is not None and session.has_ticket
    time.sleep(max(0.0, cert.not_valid_after_utc.timestamp() + 1 - time.time()))
    with KmipClient("127.0.0.1", port, ctx, version=V21).connect(session) as again:
        assert again.sock is not None and again.sock.session_reused
        item = again.call([locate_item(V21)]).items[0]
        assert item.status is ResultStatus.OPERATION_FAILED
        assert item.reason is ResultReason.PERMISSION_DENIED
        assert "expired" in (item.message or "")


def test_an_uplink_client_closed_with_its_loop_leaves_no_call_open_at_the_core(
    start_cluster: Clusters,
) -> None:
    """An uplink client subscribed, then closed just before its event loop ends: the
    Core sees the connection go (before: the pipe's TLS close to the Core was left
    half done, the Subscribe call stayed open, and a SIGTERM to the Core waited its
    whole drain timeout, 60 s here, for it)."""
    cluster = start_cluster(gateways_running=False,
                            core_env={"KRYPTON_CORE_DRAIN_TIMEOUT": "60"})

    async def subscribe_then_close() -> None:
        async with uplink(cluster, GATEWAY_NAME, ("demo", "other")) as up:
            assert await up.wait_ready(10.0)

    asyncio.run(subscribe_then_close())
    core = cluster.core
    assert core is not None
    wait_for("the Core sees the gateway go",
             lambda: "gw-dev unsubscribed" in core.log_path.read_text() or None, 10.0)
    core.proc.send_signal(signal.SIGTERM)
    assert core.proc.wait(15) == 0
