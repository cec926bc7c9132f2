"""Logs of real ``krypton core`` and ``krypton gateway`` processes (issue 14):
JSON lines with pid and worker on every line, the Core's own log (gateway
subscribe / unsubscribe, a tenant refused, an L3 rotation), refused
handshakes and denied operations with peer address and identity, and never
a byte of the keys the run created (at DEBUG)."""

from __future__ import annotations

import base64
import json
import re
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
from tests.helpers.cluster import Cluster, wait_for
from tests.helpers.fixtures import Clusters, DevStacks

from krypton.client.sync import KmipError
from krypton.pki import issue_ca, issue_leaf, write_cert_pem, write_key_pem
from krypton.pki.dev import GATEWAY_NAME, issue_client, policy_rule

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

EU = "gw-eu"  # served only tenant demo by the Core, though its policy names both
JSON_LOGS = {"LOG_FORMAT": "json", "LOG_LEVEL": "debug"}
# What the processes print on stdout for people and scripts (not log records).
READY_LINES = ("KMIP on", "uplink on", "root of trust:")  # start-up lines on stdout
# gRPC's C core writes its own lines to stderr (glog style: "E1206 12:00:00.1 ...").
GRPC_CORE = re.compile(r"^[EWID]\d{4} \d")


def _policy(path: Path) -> Path:
    """demo may do anything; other may only Get (its Create is denied)."""
    path.write_text(policy_rule("demo") + policy_rule("other", '["Get"]'))
    return path


def _records(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        if not line.strip() or any(r in line for r in READY_LINES) or GRPC_CORE.match(line):
            continue
        out.append(json.loads(line))  # every other line is one JSON object
    return out


def _stranger(root: Path) -> tuple[Path, Path, Path]:
    """A client certificate from a CA the gateway does not trust."""
    ca, ca_key = issue_ca("not the Krypton CA")
    cert, key = issue_leaf(ca, ca_key, common_name="stranger",
                           spiffe_id="spiffe://krypton.dev/tenant/demo/workload/stranger")
    paths = root / "stranger-ca.pem", root / "stranger.pem", root / "stranger-key.pem"
    write_cert_pem(paths[0], ca)
    write_cert_pem(paths[1], cert)
    write_key_pem(paths[2], key)
    return paths


def _handshake(cluster: Cluster, cert: Path, key: Path) -> None:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cluster.layout.ca))
    ctx.load_cert_chain(str(cert), str(key))
    port = cluster.gateways[GATEWAY_NAME].port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.recv(1)  # TLS 1.3: a refused client certificate shows up here
        except (ssl.SSLError, OSError):
            pass


@pytest.fixture
def cluster(start_cluster: Clusters, tmp_path: Path) -> Cluster:
    root = tmp_path / "c"
    c = start_cluster(root, gateways=(GATEWAY_NAME, EU), tenants={EU: ("demo",)},
                      core_env={f"KRYPTON_CORE_{k}": v for k, v in JSON_LOGS.items()},
                      gateways_running=False)
    c.gateway_extra.update({f"KRYPTON_GATEWAY_{k}": v for k, v in JSON_LOGS.items()})
    c.gateway_extra["KRYPTON_GATEWAY_POLICY_FILE"] = str(_policy(tmp_path / "policy.toml"))
    c.start_gateways()
    return c


def test_logs_are_json_with_peer_identity_and_no_key_bytes(cluster: Cluster,
                                                          tmp_path: Path) -> None:
    keys: list[bytes] = []
    with cluster.client(GATEWAY_NAME) as c:
        for _ in range(3):
            uid, key = c.create_get()
            keys.append(key)
            assert c.get(uid) == key
    with cluster.client(EU) as c:
        keys.append(c.get(c.create()))
    with cluster.client(GATEWAY_NAME, "other-client") as c, pytest.raises(KmipError):
        c.create()  # denied: other may only Get
    _handshake(cluster, *_stranger(tmp_path)[1:])  # a CA the gateway does not trust
    ghost = issue_client(cluster.layout.root, "ghost", "app")  # no policy rule
    _handshake(cluster, ghost.cert, ghost.key)
    cluster.core_cli("rotate-l3", "--tenant", "demo")
    gw = cluster.running[GATEWAY_NAME]
    wait_for("the gateway logs the new L3", lambda: "L3 demo v2" in gw.log() or None, 15)
    pids = {name: p.proc.pid for name, p in cluster.running.items()}
    core_pid = cluster.core.proc.pid if cluster.core is not None else 0
    cluster.stop()

    gateway = _records(gw.log())
    core = _records(cluster.core.log() if cluster.core is not None else "")
    assert gateway and core
    for rec in gateway + core:
        assert {"time", "level", "logger", "message", "pid", "worker"} <= rec.keys()
        assert rec["worker"] == "0"
    assert {r["pid"] for r in gateway} == {pids[GATEWAY_NAME]}
    assert {r["pid"] for r in core} == {core_pid}

    denied = [r for r in gateway if r.get("event") == "operation_denied"]
    assert denied and denied[0]["identity"].endswith("/tenant/other/workload/client")
    assert denied[0]["operation"] == "CREATE" and denied[0]["peer"].startswith("127.0.0.1:")
    assert denied[0]["level"] == "WARNING"
    tls = [r for r in gateway if r.get("event") == "tls_handshake_refused"]
    assert tls and tls[0]["peer"].startswith("127.0.0.1:")
    refused = [r for r in gateway if r.get("event") == "connection_refused"]
    assert refused and refused[0]["identity"] == ghost.spiffe_id
    assert "not allowed on this gateway" in refused[0]["message"]

    said = [r["message"] for r in core]
    assert any("subscribed" in m and "gw-dev" in m for m in said)
    assert any("unsubscribed" in m for m in said)
    assert any("L3 demo v2 is ACTIVE" in m for m in said)
    assert any("does not serve tenant other" in m and EU in m for m in said)

    everything = b"".join(path.read_bytes() for path in cluster.logs.glob("*.log"))
    master = (cluster.root / "master.key").read_bytes()
    for secret in [*keys, master]:
        for form in (secret, secret.hex().encode(), secret.hex().upper().encode(),
                     base64.b64encode(secret), base64.b64encode(secret).rstrip(b"=")):
            assert form not in everything


def test_each_worker_says_who_it_is(start_dev: DevStacks) -> None:
    """``krypton dev --workers 2``: the supervisor, the Core process and each gateway
    worker stamp their own pid and worker id on their lines."""
    json_env = {f"KRYPTON_{side}_{k}": v for side in ("GATEWAY", "CORE")
                for k, v in {"LOG_FORMAT": "json", "LOG_LEVEL": "info"}.items()}
    dev = start_dev(env=json_env, args=("--workers", "2"))
    wait_for("both workers listening",
             lambda: dev.log().count("KMIP on") >= 2 or None, 20)
    dev.stop()
    # krypton dev also prints how to connect (for people) on stdout: only log records here.
    records = [json.loads(line) for line in dev.log().splitlines() if line.startswith("{")]
    pids: dict[str, set[int]] = {}
    for rec in records:
        pids.setdefault(rec["worker"], set()).add(rec["pid"])
    assert {"supervisor", "core", "0", "1"} <= pids.keys()
    assert all(len(p) == 1 for p in pids.values())  # one process per worker id
    assert len(set().union(*pids.values())) == len(pids)  # and a different one each
