"""The admin endpoints of real gateway and Core processes: metrics after real KMIP
traffic (PyKMIP), parsed by Prometheus' own parser; readiness as L3 keys arrive
or not; the workers of ``--workers N`` in one scrape."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from kmip.core import enums
from kmip.pie.client import ProxyKmipClient
from kmip.pie.exceptions import KmipOperationFailure
from prometheus_client.parser import text_string_to_metric_families
from tests.helpers.cluster import wait_for
from tests.helpers.fixtures import Clusters, DevStacks
from tests.helpers.servers import DevServer

from krypton.client.sync import KmipClient, tls_context
from krypton.kmip.versions import ProtocolVersion

pytestmark = pytest.mark.slow

Samples = dict[str, dict[frozenset[tuple[str, str]], float]]


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def scrape(url: str) -> Samples:
    code, body = get(url)
    assert code == 200
    out: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get(name, {}).get(frozenset(labels.items()), 0.0)


def pykmip(srv: DevServer) -> Any:
    return ProxyKmipClient(
        hostname=srv.host, port=srv.port, cert=str(srv.pki / "client.pem"),
        key=str(srv.pki / "client-key.pem"), ca=str(srv.pki / "ca.pem"),
        config_file="/dev/null", kmip_version=enums.KMIPVersion.KMIP_1_4,
    )  # fmt: skip


def test_metrics_of_gateway_and_core_after_real_traffic(start_dev: DevStacks) -> None:
    srv = start_dev()
    made = []
    with pykmip(srv) as c:
        for _ in range(5):
            uid = c.create(enums.CryptographicAlgorithm.AES, 256)
            assert len(c.get(uid).value) == 32
            made.append(uid)
        with pytest.raises(KmipOperationFailure):
            c.get("no-such-key")
        c.activate(made[0])  # delegated: the Core's Execute
        c.revoke(enums.RevocationReasonCode.CESSATION_OF_OPERATION, made[0])
        c.destroy(made[0])

    gw = scrape(srv.admin_url("/metrics"))
    requests = "krypton_kmip_requests_total"
    assert value(gw, requests, operation="Create", result="success") == 5
    assert value(gw, requests, operation="Get", result="success") == 5
    assert value(gw, requests, operation="Get", result="Item Not Found") == 1
    for op in ("Activate", "Revoke", "Destroy"):
        assert value(gw, requests, operation=op, result="success") == 1
    buckets = {dict(k)["le"]: v for k, v in gw["krypton_kmip_request_duration_seconds_bucket"]
               .items() if dict(k)["operation"] == "Get"}
    assert list(buckets) == ["0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01",
                             "+Inf"]
    assert buckets["+Inf"] == 6
    assert value(gw, "krypton_tls_handshakes_total", result="success") >= 1
    assert value(gw, "krypton_tls_handshakes_total", result="failed") == 0
    assert value(gw, "krypton_connections", state="open") == 0  # the client has gone
    assert value(gw, "krypton_uplink_up") == 1
    for tenant in ("demo", "other"):
        assert 86_000 < value(gw, "krypton_l3_lease_remaining_seconds", tenant=tenant) <= 86_400
    for role in ("gateway", "ca"):
        assert value(gw, "krypton_tls_certificate_expiry_timestamp_seconds", role=role) > 1.7e9
    assert value(gw, "krypton_tls_reload_failures_total") == 0
    assert value(gw, "krypton_vault_commit_duration_seconds_count") >= 5
    assert value(gw, "krypton_vault_commit_batch_size_sum") >= 5
    assert "krypton_outbox_keys" in gw and "krypton_outbox_oldest_seconds" in gw

    def synced() -> Samples | None:
        core = scrape(srv.admin_url("/metrics", core=True))
        return core if value(core, "krypton_core_synced_keys_total") >= 5 else None

    core = wait_for("the Core stores the gateway's keys", synced, 20)
    execute = "krypton_core_execute_total"
    for op in ("Activate", "Revoke", "Destroy"):
        assert value(core, execute, operation=op, result="success") == 1
    assert value(core, "krypton_core_execute_duration_seconds_count", operation="Destroy") == 1
    assert value(core, "krypton_core_gateways_connected") == 1
    assert value(core, "krypton_core_audit_writes_total", result="written") >= 3
    assert value(core, "krypton_core_registry_duration_seconds_count", call="put_objects") >= 1
    assert value(core, "krypton_tls_certificate_expiry_timestamp_seconds", role="core") > 1.7e9
    gw = scrape(srv.admin_url("/metrics"))
    assert value(gw, "krypton_outbox_keys") == 0  # every key reached the Core

    for port_core in (False, True):
        assert get(srv.admin_url("/healthz", core=port_core))[0] == 200
        code, body = get(srv.admin_url("/readyz", core=port_core))
        assert code == 200 and json.loads(body)["ready"] is True


def _ready(url: str) -> tuple[int, dict[str, Any]]:
    code, body = get(url)
    return code, json.loads(body)


def test_readiness_waits_for_every_tenants_l3_and_survives_the_uplink(
    start_cluster: Clusters,
) -> None:
    # gw-dev serves both dev tenants; gw-b's policy names both but the Core
    # serves it only "demo".
    c = start_cluster(gateways=("gw-dev", "gw-b"), tenants={"gw-b": ("demo",)},
                      gateways_running=False)
    c.kill_core()  # the gateways start before any L3 can reach them
    c.start_gateways(serving=False)
    urls = {name: f"http://127.0.0.1:{g.admin_port}/readyz" for name, g in c.gateways.items()}
    for url in urls.values():
        assert get(url.replace("/readyz", "/healthz"))[0] == 200
        code, body = _ready(url)
        assert code == 503 and body["ready"] is False
        assert any("'demo' holds no active L3" in m for m in body["missing"]), body
        assert any("'other' holds no active L3" in m for m in body["missing"]), body
        assert body["checks"]["listener"] == [] and body["checks"]["vault"] == []

    c.start_core()  # the L3 keys arrive
    wait_for("gw-dev ready", lambda: _ready(urls["gw-dev"])[0] == 200 or None, 20)
    only_other = ["tenant 'other' holds no active L3 key with a valid lease"]

    def settled() -> tuple[int, dict[str, Any]] | None:
        # demo's L3 arrives while the uplink still says "connecting": wait for READY
        code, body = _ready(urls["gw-b"])
        return (code, body) if body["checks"]["l3"] == only_other else None

    code, body = wait_for("gw-b holds demo's L3, its uplink ready", settled, 20)
    assert code == 503 and body["missing"] == only_other

    c.kill_core()  # the uplink down alone: the hot path goes on, still ready
    metrics = urls["gw-dev"].replace("/readyz", "/metrics")
    wait_for("the uplink seen down",
             lambda: value(scrape(metrics), "krypton_uplink_up") == 0 or None, 20)
    with c.client("gw-dev") as demo:
        demo.create()
    assert _ready(urls["gw-dev"])[0] == 200


def test_one_scrape_shows_every_worker(start_dev: DevStacks) -> None:
    srv = start_dev(args=("--workers", "2"))
    wait_for("both workers answer", lambda: _workers(srv) == {"0", "1"} or None, 20)
    ctx = tls_context(srv.pki / "ca.pem", srv.pki / "client.pem", srv.pki / "client-key.pem")
    made = 0
    for _ in range(30):  # new connections land on either worker
        with KmipClient(srv.host, srv.port, ctx, version=ProtocolVersion(1, 4)) as c:
            c.create()
            made += 1
    for _ in range(4):  # whichever worker takes the scrape answers for both
        m = scrape(srv.admin_url("/metrics"))
        creates = [v for k, v in m["krypton_kmip_requests_total"].items()
                   if dict(k)["operation"] == "Create"]
        assert sum(creates) == made
        assert {dict(k)["worker"] for k in m["krypton_uplink_up"]} == {"0", "1"}
    code, body = _ready(srv.admin_url("/readyz"))
    assert code == 200 and set(body["workers"]) == {"0", "1"}


def _workers(srv: DevServer) -> set[str]:
    return {dict(k)["worker"] for k in scrape(srv.admin_url("/metrics"))["krypton_uplink_up"]}
