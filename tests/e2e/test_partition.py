"""Consistency under partitions and Core restarts (issue 12, findings 1-3): separate
Core and gateway processes, real gRPC over mutual TLS, gateway B's uplink through
a black-hole proxy (tests/helpers/proxy.py) that drops bytes without closing
anything, as a real partition does.

Each scenario reports the time from healing the partition to the correct answer
(printed, and in the module's figures file).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from functools import partial

import pytest
from tests.helpers.cluster import (
    Cluster,
    activate_item,
    destroy_item,
    one,
    wait_for,
)
from tests.helpers.fixtures import Clusters
from tests.helpers.proxy import BlackHoleProxy

from krypton.client.sync import KmipClient
from krypton.kmip import client_messages as cm
from krypton.kmip.messages import ResponseItem
from krypton.ttlv.enums import Operation, ResultReason, ResultStatus
from krypton.ttlv.item import Item
from krypton.ttlv.tags import Tag

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

A, B = "gw-dev", "gw-b"
SOON = 10.0
# Without gRPC keepalive (finding 7, not fixed here) a gateway notices a silent
# partition only when its stream has been quiet for 15 s, then reconnects.
HEAL_BOUND = 45.0
FIGURES: list[str] = []


def figure(test: str, text: str) -> None:
    line = f"[{test}] {text}"
    print(line)
    FIGURES.append(line)


@pytest.fixture(scope="module", autouse=True)
def _figures(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    yield
    if FIGURES:
        path = tmp_path_factory.getbasetemp() / "partition-figures.txt"
        path.write_text("\n".join(FIGURES) + "\n")
        print("\n== partition figures ==\n" + "\n".join(FIGURES))


@contextlib.contextmanager
def partitionable(start_cluster: Clusters, **core_env: str
                  ) -> Iterator[tuple[Cluster, BlackHoleProxy]]:
    """A Core, gateway A (direct) and gateway B whose uplink runs through a proxy
    (the processes stop, their logs printed, when the test ends)."""
    cluster = start_cluster.laid_out(gateways=(A, B))
    with BlackHoleProxy(cluster.core_port) as proxy:
        cluster.gateway_settings[B] = {"KRYPTON_GATEWAY_UPLINK_CORE_ADDRESS": proxy.address}
        cluster.core_settings.update(core_env)
        cluster.start_core()
        cluster.start_gateways()
        yield cluster, proxy


def refused(client: KmipClient, uid: str) -> ResponseItem | None:
    got = one(client, cm.get_item(uid))
    return None if got.status is ResultStatus.SUCCESS else got


def destroy(client: KmipClient, uid: str) -> None:
    """Destroy through a gateway (retried while its uplink is coming back)."""
    wait_for(f"Destroy {uid}", lambda: one(client, destroy_item(uid)).status
             is ResultStatus.SUCCESS or None, SOON * 2, 0.05)


def heal(proxy: BlackHoleProxy) -> float:
    """End a long partition: the connections it held are gone (TCP gave up on
    them, or the restarted Core's host reset them), so nothing the Core sent
    into them arrives; new ones get through."""
    proxy.reset()
    proxy.heal()
    return time.monotonic()


def heal_and_wait_refusal(proxy: BlackHoleProxy, b: KmipClient, uid: str) -> float:
    healed = heal(proxy)
    gone = wait_for("B refusing the key", partial(refused, b, uid), HEAL_BOUND, 0.05)
    assert gone.reason is ResultReason.OBJECT_DESTROYED, gone
    return time.monotonic() - healed


def test_a_destroy_missed_across_a_core_restart_is_applied_after_healing(
    start_cluster: Clusters,
) -> None:
    test = "missed-destroy/core-restart"
    with partitionable(start_cluster) as (cluster, proxy), cluster.client(A) as a, \
            cluster.client(B) as b:
        uid, key = a.create_get(256)
        assert wait_for("the key at B", partial(b.get, uid), SOON) == key
        proxy.partition()
        destroy(a, uid)
        cluster.kill_core()
        cluster.start_core()
        destroy_check = one(a, cm.get_item(uid))
        assert destroy_check.status is ResultStatus.OPERATION_FAILED
        assert b.get(uid) == key  # B, cut off, still serves it (nothing told it)
        took = heal_and_wait_refusal(proxy, b, uid)
    figure(test, f"B refused the key destroyed while it was cut off {took:.2f} s after healing")


def test_a_destroy_missed_behind_more_changes_than_memory_held(start_cluster: Clusters) -> None:
    """1,001 changes after the destroy, twice what the registry's feed keeps (500;
    the feed replaced the last 10,000 changes the Core once kept in memory): B
    must reconcile."""
    test = "missed-destroy/1001-changes"
    changes = 1_001
    with partitionable(start_cluster, KRYPTON_CORE_FEED_RETENTION="500") as (cluster, proxy), \
            cluster.client(A) as a, cluster.client(B) as b:
        uid, key = a.create_get(256)
        assert wait_for("the key at B", partial(b.get, uid), SOON) == key
        others = [a.create(256) for _ in range(changes)]
        # Creates reach the Core through A's outbox; Activate syncs any left first.
        proxy.partition()
        destroy(a, uid)
        started = time.monotonic()
        _activate_all(cluster, others)
        made = time.monotonic() - started
        assert b.get(uid) == key
        took = heal_and_wait_refusal(proxy, b, uid)
        # Reconciling took the Core's state of every key B holds.
        other = wait_for("B serving A's other keys", partial(b.get, others[-1]), SOON)
        assert len(other) == 32
    figure(test, f"{changes} Activates through A in {made:.1f} s; B refused the key destroyed"
                 f" before them {took:.2f} s after healing")


def _activate_all(cluster: Cluster, uids: list[str], *, threads: int = 4, batch: int = 50
                  ) -> None:
    errors: list[str] = []
    parts = [uids[i::threads] for i in range(threads)]

    def run(part: list[str]) -> None:
        with cluster.client(A) as c:
            for start in range(0, len(part), batch):
                items = [
                    cm.batch_item(Operation.ACTIVATE,
                                  cm.payload(Item.text(Tag.UNIQUE_IDENTIFIER, u)),
                                  n.to_bytes(4, "big"))
                    for n, u in enumerate(part[start:start + batch])
                ]
                for item in c.call(items).items:
                    if item.status is not ResultStatus.SUCCESS:
                        errors.append(f"{item.reason}: {item.message}")

    workers = [threading.Thread(target=run, args=(p,)) for p in parts]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors[:5]


def test_an_l3_version_revoked_during_a_partition_is_dropped_after_healing(
    start_cluster: Clusters,
) -> None:
    test = "l3-revoked/partition"
    with partitionable(start_cluster) as (cluster, proxy), cluster.client(A) as a, \
            cluster.client(B) as b:
        uid, key = a.create_get(256)
        assert wait_for("the key at B", partial(b.get, uid), SOON) == key
        proxy.partition()
        assert "L3 version 2 is now active" in cluster.core_cli(
            "rotate-l3", "--tenant", "demo", "--no-rewrap")  # the key stays on v1
        out = cluster.core_cli("revoke-l3", "--tenant", "demo", "--version", "1", "--force")
        assert "L3 version 1 is COMPROMISED" in out
        wait_for("A dropping L3 v1", partial(refused, a, uid), SOON)
        assert b.get(uid) == key  # cut off, B still holds v1
        healed = heal(proxy)
        gone = wait_for("B dropping L3 v1", partial(refused, b, uid), HEAL_BOUND, 0.05)
        took = time.monotonic() - healed
        assert gone.reason is ResultReason.CRYPTOGRAPHIC_FAILURE, gone
        assert "service key (L3)" in (gone.message or "")
        new_uid = b.create(256)
        assert cluster.l3_version(B, new_uid) == 2
    figure(test, f"B dropped the L3 version revoked while it was cut off {took:.2f} s"
                 " after healing")


def test_leases_renew_while_control_traffic_flows(start_cluster: Clusters) -> None:
    """A 5 s lease, an Activate every 1.5 s for 16 s (three leases), Create+Get at
    both gateways all along: not one hot-path failure."""
    test = "lease/control-traffic"
    lease, run_for, every = 5, 16.0, 1.5
    with partitionable(start_cluster, KRYPTON_CORE_L3_LEASE_SECONDS=str(lease)) as (cluster, _), \
            cluster.client(A) as a, cluster.client(B) as b, cluster.client(A) as ctl:
        pending = [a.create(256) for _ in range(int(run_for / every) + 2)]
        failures: list[str] = []
        served = 0
        started = time.monotonic()
        next_activate = started
        while (now := time.monotonic()) - started < run_for:
            if now >= next_activate:
                answer = one(ctl, activate_item(pending.pop()))
                assert answer.status is ResultStatus.SUCCESS, answer
                next_activate += every
            for client in (a, b):
                got = one(client, cm.create_item(client.version, cm.aes_attributes(256)))
                if got.status is not ResultStatus.SUCCESS:
                    failures.append(f"{time.monotonic() - started:.1f}s: {got.message}")
                    continue
                served += 1
            time.sleep(0.05)
    assert not failures, failures[:5]
    figure(test, f"{served} hot-path Creates over {run_for:.0f} s with a {lease} s lease and an"
                 f" Activate every {every:.0f} s: 0 failures")
