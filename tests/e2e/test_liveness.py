"""Liveness of the uplink under faults, end to end: ``krypton core`` and
``krypton gateway`` as separate processes, real gRPC over the gateway's own
mutual TLS (its pipe), with a black-hole proxy between them or two Cores.

* A silent partition (packets dropped, no FIN/RST: :class:`BlackHoleProxy`) is
  noticed within 5 s (gRPC keepalive, ``gateway.uplink.keepalive``) and a new
  connection is made; a batch of delegated items sent into the partition
  never waits N times the call timeout, and once the link is known down each
  item fails at once; after healing the control path comes back.
* Several Cores: a gateway given two Core addresses (two ``krypton core``
  processes on one PostgreSQL registry) fails over within 3 s when its Core
  is killed, under Create/Get/Destroy load, with no hot-path error.

Figures (detection, batch times, time from healing to the first delegated
success) are printed (``pytest -s``).
"""

from __future__ import annotations

import threading
import time

import pytest
from tests.helpers.cluster import (
    V21,
    Cluster,
    activate_item,
    check_item,
    destroy_item,
    one,
    wait_for,
)
from tests.helpers.fixtures import Clusters
from tests.helpers.load import Background
from tests.helpers.pg import PgServer
from tests.helpers.proxy import BlackHoleProxy
from tests.helpers.servers import free_port

from krypton.client.sync import KmipClient, tls_context
from krypton.kmip import client_messages as cm
from krypton.kmip.messages import ResponseItem
from krypton.ttlv.codec import decode, encode
from krypton.ttlv.enums import BatchErrorContinuationOption, Operation, ResultStatus
from krypton.ttlv.item import Item
from krypton.ttlv.tags import Tag

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

A = "gw-dev"
DETECT_BOUND = 5.0  # a black-holed link is noticed within this
CALL_TIMEOUT = 2.0  # gateway.uplink.timeout (the default)
N = 10  # delegated items in one batch: today's main needs N x 2 s under partition
FAST = 1.0  # a whole batch once the link is known down
SOON = 15.0
FAILOVER_BOUND = 3.0


def activations(uids: list[str]) -> list[Item]:
    """One Activate per key, each with its batch item id."""
    return [cm.batch_item(Operation.ACTIVATE, cm.payload(Item.text(Tag.UNIQUE_IDENTIFIER, u)),
                          n.to_bytes(2, "big")) for n, u in enumerate(uids)]


def batch(client: KmipClient, items: list[Item]) -> tuple[list[ResponseItem], float]:
    """Send one batch (continue on error); its items and how long it took."""
    message = cm.request_message(V21, items, continuation=BatchErrorContinuationOption.CONTINUE)
    start = time.monotonic()
    response = cm.parse_response(decode(client.roundtrip(encode(message))))
    return list(response.items), time.monotonic() - start


def long_client(cluster: Cluster) -> KmipClient:
    """A client that waits long enough to time a slow batch (not the 10 s default)."""
    pki = cluster.layout.pki
    ctx = tls_context(pki / "ca.pem", pki / "client.pem", pki / "client-key.pem")
    return KmipClient("127.0.0.1", cluster.gateways[A].port, ctx, version=V21, timeout=90.0)


def downs(cluster: Cluster) -> int:
    return cluster.running[A].log().count("uplink: DOWN")


def test_a_black_holed_uplink_is_noticed_within_5_s(start_cluster: Clusters) -> None:
    cluster = start_cluster.laid_out()
    with BlackHoleProxy(cluster.core_port) as hole:
        cluster.uplink_address = hole.address
        cluster.start_core()
        cluster.start_gateways()
        with long_client(cluster) as c:
            uids = [c.create() for _ in range(2 * N + 2)]
            got = one(c, activate_item(uids[0]))  # the control path works, keys synced
            assert got.status is ResultStatus.SUCCESS, got.message
            wait_for("the outbox drained", lambda: (
                len(cluster.registry_holds("demo", uids)) == len(uids) or None), SOON, 0.1)
            # A quiet link black-holed: noticed without any call, and a new
            # connection is tried while the partition lasts.
            seen, conns = downs(cluster), hole.accepted
            time.sleep(3.0)  # quiet: only keepalive pings and heartbeats flow now
            hole.partition()
            t0 = time.monotonic()
            quiet = wait_for("the quiet partition noticed", lambda: (
                time.monotonic() if downs(cluster) > seen else None), 30.0, 0.01) - t0
            assert quiet <= DETECT_BOUND, f"noticed after {quiet:.2f} s"
            wait_for("a new connection", lambda: hole.accepted > conns or None, SOON)
            hole.heal()
            t1 = time.monotonic()
            wait_for("the control path back", lambda: (
                one(c, activate_item(uids[-1])).status is ResultStatus.SUCCESS or None),
                SOON, 0.05)
            quiet_healed = time.monotonic() - t1

            # A batch sent into a fresh partition never waits N times the timeout.
            seen = downs(cluster)
            hole.partition()
            t0 = time.monotonic()
            into: list[tuple[list[ResponseItem], float]] = []
            sender = threading.Thread(target=lambda: into.append(
                batch(c, activations(uids[1:N + 1]))))
            sender.start()
            detected = wait_for("the partition noticed", lambda: (
                time.monotonic() if downs(cluster) > seen else None), 30.0, 0.01) - t0
            sender.join(90)
            assert into, "the batch sent into the partition got no answer"
            items, first_batch = into[0]
            assert all(i.status is not ResultStatus.SUCCESS for i in items)
            assert detected <= DETECT_BOUND, f"noticed after {detected:.2f} s"
            assert first_batch <= DETECT_BOUND + CALL_TIMEOUT + 1.0, (
                f"a batch of {N} delegated items took {first_batch:.2f} s")

            # Known down: a whole batch fails at once, saying why.
            items, known_down_batch = batch(c, activations(uids[N + 1:-1]))
            assert known_down_batch < FAST, f"{known_down_batch:.2f} s"
            for item in items:
                assert item.status is ResultStatus.OPERATION_FAILED
                assert "Krypton Core is unreachable" in (item.message or "")
            hole.heal()
            t1 = time.monotonic()
            wait_for("the control path back", lambda: (
                one(c, check_item(uids[1])).status is ResultStatus.SUCCESS or None),
                SOON, 0.05)
            healed = time.monotonic() - t1
        print(f"\n[liveness] quiet black hole noticed after {quiet:.2f} s, control path "
              f"back {quiet_healed:.2f} s after healing; with calls noticed after "
              f"{detected:.2f} s; batch of {N} "
              f"delegated items into it {first_batch:.2f} s; once known down "
              f"{known_down_batch * 1000:.0f} ms; control path back {healed:.2f} s "
              "after healing")


class _Rounds:
    """Create, Get, Destroy steps: hot-path errors, and when each Destroy ended."""

    def __init__(self) -> None:
        self.hot_errors: list[str] = []
        self.destroyed: list[float] = []  # when each Destroy succeeded
        self.refused: list[tuple[float, str]] = []  # when a Destroy failed, and why
        self.rounds = 0

    def __call__(self, c: KmipClient) -> None:
        try:
            uid, key = c.create_get(256)
            if c.get(uid) != key:
                self.hot_errors.append(f"Get of {uid} returned other material")
        except Exception as exc:  # the hot path must never fail
            self.hot_errors.append(repr(exc))
            return
        got = one(c, destroy_item(uid))
        now = time.monotonic()
        if got.status is ResultStatus.SUCCESS:
            self.destroyed.append(now)
            if one(c, cm.get_item(uid)).status is ResultStatus.SUCCESS:
                self.hot_errors.append(f"{uid} served after its Destroy")
        else:
            self.refused.append((now, got.message or ""))
        self.rounds += 1


def test_fails_over_to_a_second_core_on_postgresql(start_cluster: Clusters, pg: PgServer
                                                ) -> None:
    cluster = start_cluster.laid_out(registry=pg.create_database("failover"))
    second = free_port()
    cluster.uplink_address = f"{cluster.core_address}, 127.0.0.1:{second}"
    cluster.start_core()
    cluster.start_core(name="core-b", port=second)
    cluster.start_gateways()
    gateway = cluster.running[A]
    load = _Rounds()
    with Background(long_client(cluster), load):
        wait_for("load running", lambda: len(load.destroyed) >= 20 or None, SOON)
        assert f"READY, in sync with the Krypton Core at {cluster.core_address}" in (
            gateway.log())
        cluster.kill_core()
        killed = time.monotonic()
        wait_for("a Destroy through the second Core", lambda: (
            any(t > killed for t in load.destroyed) or None), SOON, 0.01)
        failover = min(t for t in load.destroyed if t > killed) - killed
        wait_for("more load on the second Core", lambda: (
            sum(t > killed for t in load.destroyed) >= 20 or None), SOON)
    assert f"READY, in sync with the Krypton Core at 127.0.0.1:{second}" in gateway.log()
    assert not load.hot_errors, f"the hot path failed: {load.hot_errors[:3]}"
    assert failover <= FAILOVER_BOUND, f"failed over after {failover:.2f} s"
    failed = [m for t, m in load.refused if t > killed]
    assert all("Krypton Core is unreachable" in m for m in failed), failed[:3]
    print(f"\n[failover] Core killed → first Destroy through the second Core "
          f"{failover:.2f} s; {load.rounds} Create/Get/Destroy rounds, no hot-path "
          f"error, {len(failed)} Destroy(s) refused as unreachable during failover")
