"""Live rotation of TLS material and the operator's signals (issue 14, items 2 and 3),
against real ``krypton core`` / ``krypton gateway`` processes:

* the gateway's certificate rewritten on disk: new handshakes present the new one
  within 5 s, while a connection made before (raw TLS and PyKMIP) keeps working;
* a half-written certificate is not applied (the old one stays) and is logged
  as refused; the finished file is applied;
* the trust bundle replaced: a client of a CA the bundle no longer holds is
  refused, one of the new CA is let in;
* the Core's certificate rotated (its gRPC server's dynamic credentials), and the
  gateway's uplink client presenting its new certificate when it reconnects;
* ``--workers 2``: every worker reloads (files and SIGHUP);
* SIGHUP with a bad policy keeps serving; a good one is applied;
* SIGTERM with a request in flight: the request is answered, the exit status is 0.

The gateway looks at its files every second (``gateway.tls.reload_interval``);
the tests poll with a deadline.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from kmip.core import enums
from kmip.pie.client import ProxyKmipClient
from prometheus_client.parser import text_string_to_metric_families
from tests.helpers.cluster import Cluster, activate_item, one, wait_for
from tests.helpers.fixtures import Clusters, DevStacks
from tests.helpers.workload_api import WorkloadAPI

from krypton.client.sync import KmipClient, tls_context
from krypton.errors import KryptonError
from krypton.pki import issue_ca, issue_leaf, load_cert_pem, load_key_pem
from krypton.pki.certs import Certificate, PrivateKey, cert_pem, write_cert_pem, write_key_pem
from krypton.pki.dev import (
    GATEWAY_NAME,
    LOOPBACK_DNS,
    LOOPBACK_IPS,
    core_spiffe_id,
    gateway_spiffe_id,
    policy_rule,
    workload_spiffe_id,
)
from krypton.ttlv.enums import ResultStatus

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

ROTATED_WITHIN = 5.0


def dev_ca(cluster: Cluster) -> tuple[Certificate, PrivateKey]:
    return load_cert_pem(cluster.layout.ca), load_key_pem(cluster.layout.ca_key)


def rotate(cert_path: Path, key_path: Path, ca: tuple[Certificate, PrivateKey],
           spiffe_id: str) -> int:
    """A new server+client certificate for ``spiffe_id`` written over the files
    (the key first, as a renewal tool would); its serial."""
    cert, key = issue_leaf(ca[0], ca[1], common_name="rotated", spiffe_id=spiffe_id,
                           dns=LOOPBACK_DNS, ips=LOOPBACK_IPS, server=True, client=True)
    write_key_pem(key_path, key)
    write_cert_pem(cert_path, cert)
    return cert.serial_number


def presented_cert(port: int, ctx: ssl.SSLContext) -> x509.Certificate:
    """The certificate a server presents to a new handshake."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def presented(port: int, ctx: ssl.SSLContext) -> int:
    """The serial of the certificate a server presents to a new handshake."""
    return presented_cert(port, ctx).serial_number


def demo_ctx(cluster: Cluster) -> ssl.SSLContext:
    pki = cluster.layout.pki
    return tls_context(pki / "ca.pem", pki / "client.pem", pki / "client-key.pem")


def presents(port: int, ctx: ssl.SSLContext, serial: int) -> bool | None:
    return True if presented(port, ctx) == serial else None


def pykmip(cluster: Cluster) -> ProxyKmipClient:
    pki = cluster.layout.pki
    return ProxyKmipClient(hostname="127.0.0.1", port=cluster.gateways[GATEWAY_NAME].port,
                           cert=str(pki / "client.pem"), key=str(pki / "client-key.pem"),
                           ca=str(pki / "ca.pem"), config_file="/dev/null",
                           kmip_version=enums.KMIPVersion.KMIP_1_2)


def log_has(cluster: Cluster, name: str, text: str, count: int = 1) -> bool | None:
    return True if cluster.running[name].log().count(text) >= count else None


# -- the gateway's own certificate ---------------------------------------------------
def test_new_handshakes_get_the_new_certificate_old_connections_keep_working(
    start_cluster: Clusters,
) -> None:
    cluster = start_cluster()
    g = cluster.gateways[GATEWAY_NAME]
    ctx = demo_ctx(cluster)
    before = presented(g.port, ctx)
    with cluster.client(GATEWAY_NAME) as raw, pykmip(cluster) as py:
        uid = raw.create()
        py_uid = py.create(enums.CryptographicAlgorithm.AES, 256)
        new = rotate(g.cert, g.key, dev_ca(cluster), g.spiffe_id)
        assert new != before
        wait_for("the new certificate presented", lambda: presents(g.port, ctx, new),
                 ROTATED_WITHIN)
        # The connections made with the old certificate go on.
        assert len(raw.get(uid)) == 32
        assert py.get(py_uid).value
        assert py.get(uid).value
    with cluster.client(GATEWAY_NAME) as again:
        assert len(again.get(uid)) == 32


def scrape_metrics(port: int) -> dict[str, float]:
    """``/metrics`` of an admin endpoint: ``name{label=value,...}`` → value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items())
                              if k != "worker")
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def test_a_half_written_certificate_is_not_applied(start_cluster: Clusters) -> None:
    cluster = start_cluster()
    g = cluster.gateways[GATEWAY_NAME]
    ctx = demo_ctx(cluster)
    before = presented(g.port, ctx)
    cert, key = issue_leaf(*dev_ca(cluster), common_name="rotated", spiffe_id=g.spiffe_id,
                           dns=LOOPBACK_DNS, ips=LOOPBACK_IPS, server=True, client=True)
    write_key_pem(g.key, key)
    whole = cert_pem(cert)
    g.cert.write_bytes(whole[: len(whole) // 2])  # a writer that stopped half-way
    wait_for("the refusal logged", lambda: log_has(cluster, GATEWAY_NAME, "material refused"),
             ROTATED_WITHIN + 5)
    assert presented(g.port, ctx) == before  # the old pair stays in use
    metrics = scrape_metrics(g.admin_port)
    assert metrics["krypton_tls_reload_failures_total"] >= 1
    # the expiry shown is the certificate in use, not the half-written file
    assert metrics["krypton_tls_certificate_expiry_timestamp_seconds{role=gateway}"] == (
        presented_cert(g.port, ctx).not_valid_after_utc.timestamp())
    with cluster.client(GATEWAY_NAME) as c:
        c.create()
    g.cert.write_bytes(whole)  # finished
    wait_for("the finished certificate presented",
             lambda: presents(g.port, ctx, cert.serial_number), ROTATED_WITHIN)


def test_a_replaced_bundle_refuses_clients_of_the_old_ca(
    start_cluster: Clusters, tmp_path: Path,
) -> None:
    cluster = start_cluster(gateways_running=False)
    g = cluster.gateways[GATEWAY_NAME]
    bundle = tmp_path / "bundle.pem"
    old_ca = dev_ca(cluster)
    bundle.write_bytes(cert_pem(old_ca[0]))
    cluster.gateway_extra["KRYPTON_GATEWAY_TLS_CA"] = str(bundle)
    cluster.start_gateways()
    new_ca = issue_ca("second CA")
    cert, key = issue_leaf(*new_ca, common_name="new", client=True,
                           spiffe_id=workload_spiffe_id("demo", "new-ca-client"))
    write_cert_pem(tmp_path / "new.pem", cert)
    write_key_pem(tmp_path / "new-key.pem", key)
    old_client = demo_ctx(cluster)
    new_client = tls_context(cluster.layout.ca, tmp_path / "new.pem", tmp_path / "new-key.pem")

    def served(ctx: ssl.SSLContext) -> bool:
        try:
            with KmipClient("127.0.0.1", g.port, ctx, timeout=5) as c:
                c.create()
            return True
        except (OSError, KryptonError):
            return False

    assert served(old_client) and not served(new_client)
    bundle.write_bytes(cert_pem(old_ca[0]) + cert_pem(new_ca[0]))  # both CAs
    wait_for("the second CA trusted", lambda: served(new_client) or None, ROTATED_WITHIN)
    assert served(old_client)
    bundle.write_bytes(cert_pem(new_ca[0]))  # the old CA dropped
    wait_for("the old CA's client refused", lambda: (not served(old_client)) or None,
             ROTATED_WITHIN)
    assert served(new_client)


# -- the uplink, both ends -------------------------------------------------------------
def test_the_core_and_the_uplink_client_rotate(start_cluster: Clusters, tmp_path: Path) -> None:
    deny = tmp_path / "deny.txt"
    deny.write_text("")
    settings = {"KRYPTON_CORE_TLS_DENY_LIST": str(deny)}
    cluster = start_cluster(core_env=settings)
    cluster.core_settings.update(settings)  # kept when the Core is started again
    g = cluster.gateways[GATEWAY_NAME]
    layout = cluster.layout
    # The Core's certificate: new gRPC handshakes get the new one; the gateway's
    # uplink made before goes on (a delegated Activate).
    gw_ctx = tls_context(layout.ca, g.cert, g.key)
    gw_ctx.check_hostname = False
    gw_ctx.set_alpn_protocols(["h2"])
    new_core = rotate(layout.core, layout.core_key, dev_ca(cluster), core_spiffe_id())
    wait_for("the Core's new certificate", lambda: presents(cluster.core_port, gw_ctx, new_core),
             ROTATED_WITHIN)
    # SIGHUP makes the Core look at once (it used to kill it): it goes on serving.
    assert cluster.core is not None
    cluster.core.proc.send_signal(signal.SIGHUP)
    with cluster.client(GATEWAY_NAME) as c:
        uid = c.create()
        assert one(c, activate_item(uid)).status is ResultStatus.SUCCESS
    assert cluster.core.alive
    # The gateway's certificate: once the old one is denied at the Core, only a
    # gateway that uses its new certificate for its next uplink connection is served.
    old_gateway = load_cert_pem(g.cert).serial_number
    new_gateway = rotate(g.cert, g.key, dev_ca(cluster), g.spiffe_id)
    wait_for("the gateway's new certificate",
             lambda: presents(g.port, demo_ctx(cluster), new_gateway), ROTATED_WITHIN)
    deny.write_text(f"{old_gateway:x}\n")
    cluster.kill_core()  # the uplink must reconnect: a new TLS handshake
    cluster.start_core()
    with cluster.client(GATEWAY_NAME) as c:
        uid = c.create()
        wait_for("a delegated Activate served over the new uplink",
                 lambda: one(c, activate_item(uid)).status is ResultStatus.SUCCESS or None,
                 20.0, step=0.2)
    assert cluster.core is not None
    assert "certificate is on the deny list" not in cluster.core.log()


# -- several workers ----------------------------------------------------------------
def test_every_worker_reloads(start_cluster: Clusters) -> None:
    cluster = start_cluster(gateways_running=False)
    cluster.gateway_extra["KRYPTON_GATEWAY_WORKERS"] = "2"
    cluster.start_gateways()
    g = cluster.gateways[GATEWAY_NAME]
    ctx = demo_ctx(cluster)
    new = rotate(g.cert, g.key, dev_ca(cluster), g.spiffe_id)

    def all_new() -> bool | None:  # SO_REUSEPORT spreads these over both workers
        return True if all(presented(g.port, ctx) == new for _ in range(12)) else None

    # Each worker watches the files on its own; 5 s is held by the single-process
    # tests above, here the two workers share a loaded 2-core CI machine.
    wait_for("every worker presents the new certificate", all_new, 2 * ROTATED_WITHIN)
    policy = cluster.layout.policy
    good = policy.read_text()
    policy.write_text("[[rule]\nbroken")
    cluster.running[GATEWAY_NAME].proc.send_signal(signal.SIGHUP)
    wait_for("both workers keep their policy",
             lambda: log_has(cluster, GATEWAY_NAME, "not reloaded", 2), 10.0)
    policy.write_text(good)
    with cluster.client(GATEWAY_NAME) as c:
        c.create()
    assert cluster.running[GATEWAY_NAME].alive
    assert cluster.running.pop(GATEWAY_NAME).stop() == 0


# -- signals ---------------------------------------------------------------------------
def test_sighup_with_a_bad_policy_keeps_serving(start_cluster: Clusters) -> None:
    cluster = start_cluster()
    gw = cluster.running[GATEWAY_NAME]
    policy = cluster.layout.policy
    policy.write_text("[[rule]]\nidentity = 'x'\n")  # no tenant, no operations
    gw.proc.send_signal(signal.SIGHUP)
    wait_for("the bad policy logged", lambda: log_has(cluster, GATEWAY_NAME, "not reloaded"), 10.0)
    assert gw.alive
    with cluster.client(GATEWAY_NAME) as c:
        c.create()
    # A good policy is applied: without the demo rule, demo's workloads are refused.
    policy.write_text(policy_rule("other"))
    gw.proc.send_signal(signal.SIGHUP)
    wait_for("the new policy", lambda: log_has(cluster, GATEWAY_NAME, "reloaded: 1 rule"), 10.0)
    with pytest.raises((KryptonError, OSError)), cluster.client(GATEWAY_NAME) as c:
        c.create()
    with cluster.client(GATEWAY_NAME, "other-client") as c:
        c.create()
    assert gw.alive


def test_sigterm_answers_the_request_in_flight_then_exits_0(start_cluster: Clusters) -> None:
    cluster = start_cluster(gateways_running=False)
    # The delegated call below waits for a stopped Core: give it time (and do not
    # let keepalive cut the link meanwhile).
    cluster.gateway_extra.update(KRYPTON_GATEWAY_UPLINK_TIMEOUT="20",
                                 KRYPTON_GATEWAY_UPLINK_KEEPALIVE="20",
                                 KRYPTON_GATEWAY_UPLINK_KEEPALIVE_TIMEOUT="20")
    cluster.start_gateways()
    gw = cluster.running[GATEWAY_NAME]
    core = cluster.core
    assert core is not None
    g = cluster.gateways[GATEWAY_NAME]
    answers: list[ResultStatus] = []
    with cluster.client(GATEWAY_NAME) as c:
        uid = c.create()
        wait_for("the key at the Core",
                 lambda: uid in cluster.registry_holds("demo", [uid]) or None, 10.0)
        os.kill(core.proc.pid, signal.SIGSTOP)
        try:
            t = threading.Thread(target=lambda: answers.append(one(c, activate_item(uid)).status))
            t.start()
            time.sleep(0.5)  # the Activate reaches the gateway, which waits for the Core
            gw.proc.send_signal(signal.SIGTERM)

            def refused() -> bool | None:
                try:
                    socket.create_connection(("127.0.0.1", g.port), timeout=1).close()
                except ConnectionRefusedError:
                    return True
                return None

            wait_for("the gateway stops accepting", refused, 5.0)
            assert gw.alive and not answers  # still waiting to answer
        finally:
            os.kill(core.proc.pid, signal.SIGCONT)
        t.join(20)
    assert answers == [ResultStatus.SUCCESS]
    assert gw.proc.wait(20) == 0
    cluster.running.pop(GATEWAY_NAME)
    codes = cluster.stop()
    assert codes["core"] == 0


def test_sigterm_to_a_core_its_gateways_are_subscribed_to_exits_at_once(
    start_cluster: Clusters,
) -> None:
    """A Core stopped while gateways hold their Subscribe streams ends those streams
    and exits 0 at once, not after its whole drain timeout (before: the ended
    streams were cancelled, not finished, and gRPC waited the 60 s for them); the
    gateway keeps serving Create and Get meanwhile."""
    cluster = start_cluster(core_env={"KRYPTON_CORE_DRAIN_TIMEOUT": "60"})
    core = cluster.core
    assert core is not None
    core.proc.send_signal(signal.SIGTERM)
    assert core.proc.wait(15) == 0
    assert "stream(s) ended" in core.log_path.read_text()
    with cluster.client(GATEWAY_NAME) as c:
        uid = c.create()
        assert c.get(uid)


def test_sigterm_stops_the_dev_stack_with_its_gateway_subscribed(start_dev: DevStacks) -> None:
    """``krypton dev`` (Core and gateway in one process) exits 0 on SIGTERM well
    within its drain timeout (before: killed after waiting for its own gateway's stream)."""
    srv = start_dev(env={"KRYPTON_CORE_DRAIN_TIMEOUT": "60",
                         "KRYPTON_GATEWAY_LOG_LEVEL": "info"})
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(15) == 0
    log = srv.log()
    assert "drained" in log  # the Core drained, ...
    assert "uplink: DOWN" not in log  # ... after its gateway closed: no warning at Ctrl-C


# -- SPIFFE ----------------------------------------------------------------------------
def test_svids_from_the_workload_api_rotate(start_cluster: Clusters, tmp_path: Path) -> None:
    """``gateway.tls.source = "spiffe"`` against the stand-in Workload API server
    (tests/helpers/workload_api.py): the SVID serves the KMIP listener and the uplink,
    a rotated SVID is presented within 5 s while open connections go on, and a
    Workload API connection that py-spiffe gave up on is made again."""
    cluster = start_cluster(gateways_running=False)
    api = WorkloadAPI(tmp_path / "agent.sock", dev_ca(cluster), gateway_spiffe_id(GATEWAY_NAME),
                      lifetime=600)
    with api:
        cluster.gateway_extra.update(KRYPTON_GATEWAY_TLS_SOURCE="spiffe",
                                     KRYPTON_GATEWAY_TLS_SPIFFE_SOCKET=api.address)
        cluster.start_gateways()  # serving: the uplink works with the SVID too
        g = cluster.gateways[GATEWAY_NAME]
        ctx = demo_ctx(cluster)
        assert presented(g.port, ctx) == api.serial
        with cluster.client(GATEWAY_NAME) as c:
            uid = c.create()
            new = api.rotate()
            wait_for("the rotated SVID presented", lambda: presents(g.port, ctx, new),
                     ROTATED_WITHIN)
            assert len(c.get(uid)) == 32
            api.fail_streams()
            wait_for("the source closed", lambda: log_has(cluster, GATEWAY_NAME, "source closed"),
                     10.0)
            api.heal()
            after = api.rotate()
            wait_for("the SVID after the source was made again",
                     lambda: presents(g.port, ctx, after), 15.0)
            assert len(c.get(uid)) == 32
        with cluster.client(GATEWAY_NAME) as c:  # delegated: the uplink presents the SVID
            assert one(c, activate_item(uid)).status is ResultStatus.SUCCESS


def test_every_worker_takes_the_rotated_svid(start_cluster: Clusters, tmp_path: Path) -> None:
    """``--workers 2`` with ``source = "spiffe"``: each worker holds its own Workload API
    stream (none crosses the fork) and each presents the rotated SVID."""
    cluster = start_cluster(gateways_running=False)
    api = WorkloadAPI(tmp_path / "agent.sock", dev_ca(cluster), gateway_spiffe_id(GATEWAY_NAME))
    with api:
        cluster.gateway_extra.update(KRYPTON_GATEWAY_TLS_SOURCE="spiffe",
                                     KRYPTON_GATEWAY_TLS_SPIFFE_SOCKET=api.address,
                                     KRYPTON_GATEWAY_WORKERS="2")
        cluster.start_gateways()
        wait_for("both workers on the Workload API", lambda: api.streams >= 2 or None, 10.0)
        g = cluster.gateways[GATEWAY_NAME]
        ctx = demo_ctx(cluster)
        new = api.rotate()

        def all_new() -> bool | None:
            return True if all(presented(g.port, ctx) == new for _ in range(12)) else None

        wait_for("every worker presents the rotated SVID", all_new, ROTATED_WITHIN)
        assert cluster.running.pop(GATEWAY_NAME).stop() == 0
