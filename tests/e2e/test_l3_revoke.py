"""Revoking the active L3 version under load, end to end: ``krypton core`` and
``krypton gateway`` processes, Creates streaming through the gateway while
``krypton core revoke-l3`` runs as its own process.

The promise: ``revoke-l3`` of a version that still wraps keys is refused
without ``--force`` (and changes nothing); with it, the active version is
rotated first, and no Create acknowledged after the revocation committed is
wrapped under the revoked version — every such key stays readable. ``l3
list`` shows the versions, their states and the keys under each; the audit
trail names the operator for the rotation and the revocation.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from tests.helpers.cluster import Cluster, wait_for
from tests.helpers.fixtures import Clusters
from tests.helpers.load import Background
from tests.helpers.proxy import BlackHoleProxy

from krypton.client.sync import KmipClient

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

A, B = "gw-dev", "gw-b"
OPERATOR = "ops:alice"


class _Creates:
    """Create+Get steps; each key with the wall-clock time it was acknowledged."""

    def __init__(self) -> None:
        self.made: list[tuple[float, str, bytes]] = []
        self.errors: list[str] = []

    def __call__(self, c: KmipClient) -> None:
        try:
            uid, key = c.create_get(256)
        except Exception as exc:  # the hot path must not fail
            self.errors.append(repr(exc))
            return
        self.made.append((time.time(), uid, key))


def versions(cluster: Cluster) -> dict[int, tuple[str, int]]:
    out = cluster.core_cli("l3", "list", "--tenant", "demo", "--json")
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    return {r["version"]: (r["state"], r["keys"]) for r in rows}


def audit(cluster: Cluster) -> list[dict[str, Any]]:
    out = cluster.core_cli("audit", "--tenant", "demo", "--limit", "100000")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def test_revoking_the_active_version_under_load(start_cluster: Clusters) -> None:
    cluster = start_cluster()
    load = _Creates()
    with Background(cluster.client(A), load):
        wait_for("keys synced under v1", lambda: (
            versions(cluster)[1][1] >= 20 or None), 20.0, 0.2)
        assert versions(cluster)[1][0] == "ACTIVE"
        # v1 wraps keys: refused without --force, and nothing changes.
        with pytest.raises(AssertionError, match=r"still wraps \d+ key"):
            cluster.core_cli("revoke-l3", "--tenant", "demo", "--version", "1",
                             "--operator", OPERATOR)
        assert list(versions(cluster)) == [1]

        out = cluster.core_cli("revoke-l3", "--tenant", "demo", "--version", "1",
                               "--force", "--operator", OPERATOR)
        assert "L3 version 2 is now active" in out
        assert "L3 version 1 is COMPROMISED" in out
        done = time.time()
        wait_for("more keys after the revocation", lambda: (
            sum(t > done for t, _, _ in load.made) >= 30 or None), 20.0)
    assert not load.errors, f"Create failed: {load.errors[:3]}"

    trail = audit(cluster)
    ops = [r for r in trail if r["operation"] in ("RotateL3", "RevokeL3")]
    assert [(r["operation"], r["result"], r["identity"]) for r in ops] == [
        ("RevokeL3", "WRONG_KEY_LIFECYCLE_STATE", OPERATOR),
        ("RotateL3", "Success", OPERATOR),
        ("RevokeL3", "Success", OPERATOR),
    ]
    committed = ops[-1]["time"]  # written right after the revocation committed
    after = [(uid, key) for t, uid, key in load.made if t > committed]
    assert len(after) >= 30
    unreadable = []
    with cluster.client(A) as c:
        for uid, key in after:
            if cluster.l3_version(A, uid) != 2 or c.get(uid) != key:
                unreadable.append(uid)
    assert not unreadable, (
        f"{len(unreadable)} keys acknowledged after the revocation committed are "
        f"unreadable: {unreadable[:5]}")
    listed = versions(cluster)
    assert listed[1][0] == "COMPROMISED" and listed[2][0] == "ACTIVE"
    assert listed[2][1] > 0
    lost = sum(1 for t, _, _ in load.made if t <= committed)
    print(f"\n[revoke] {len(after)} keys acknowledged after the revocation, all under "
          f"v2 and readable; {lost} made before it (under v1 or v2); l3 list: {listed}")


def test_creates_acknowledged_under_a_version_revoked_while_cut_off_are_quarantined(
        start_cluster: Clusters) -> None:
    """Gateway B is cut off (a black hole) for the whole revocation grace and keeps
    acknowledging Creates under the version being revoked until it hears of it.
    When it comes back those records can reach no one: each is quarantined once
    (logged with its uid, listed by ``krypton gateway outbox``), never offered in
    a loop, and B's other keys sync as usual."""
    cluster = start_cluster.laid_out(gateways=(A, B))
    with BlackHoleProxy(cluster.core_port) as proxy:
        cluster.gateway_settings[B] = {"KRYPTON_GATEWAY_UPLINK_CORE_ADDRESS": proxy.address}
        cluster.start_core()
        cluster.start_gateways()
        wait_for("B's first key at the Core", lambda: cluster.gateway_cli(B, "outbox")
                 .count(": 0 key(s) waiting") or None, 20.0, 0.1)
        with cluster.client(B) as b:
            proxy.partition()
            stranded = [b.create(256) for _ in range(5)]  # under v1, in B's outbox
            assert {cluster.l3_version(B, uid) for uid in stranded} == {1}
            cluster.core_cli("revoke-l3", "--tenant", "demo", "--version", "1", "--force",
                             "--grace", "0.5", "--operator", OPERATOR)
            proxy.reset()
            proxy.heal()
            healed = time.monotonic()
            report = wait_for("B quarantining them", lambda: (
                (r := cluster.gateway_cli(B, "outbox")) and
                f"{len(stranded)} quarantined row(s)" in r and r) or None, 30.0, 0.1)
            took = time.monotonic() - healed
            after = wait_for("B creating under v2", lambda: _made(b), 20.0, 0.1)
            assert cluster.l3_version(B, after) == 2
            wait_for("B's new key at the Core", lambda: (
                cluster.registry_holds("demo", [after]) or None), 20.0, 0.1)
        log = cluster.running[B].log()
    rows = [json.loads(line) for line in report.splitlines()[1:] if line.strip()]
    assert sorted(r["uid"] for r in rows) == sorted(stranded)
    assert all("L3 version 1" in r["reason"] for r in rows), rows
    assert ": 0 key(s) waiting for the Core" in report, report
    assert cluster.registry_holds("demo", stranded) == set()
    for uid in stranded:  # once each: not re-offered in a loop
        assert log.count(f"key {uid!r}") == 1, uid
    print(f"\n[revoke/cut off] {len(stranded)} Creates B acknowledged under the revoked"
          f" version quarantined {took:.2f} s after healing")

def _made(client: KmipClient) -> str | None:
    try:
        return client.create(256)
    except Exception:
        return None

