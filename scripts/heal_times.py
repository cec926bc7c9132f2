#!/usr/bin/env python3
"""Time from healing (or failover) to the correct answer, per fault scenario (issue 12).

    PYTHONPATH=src .venv/bin/python scripts/heal_times.py [--only NAME ...] [--runs N]

Each scenario runs ``krypton core`` and ``krypton gateway`` as separate
processes (the test helpers' :class:`~tests.helpers.cluster.Cluster`), with
a black-hole proxy (packets held, no FIN/RST) between gateway B and the Core
where a partition is needed, and prints one line per run:

* ``missed-destroy``: a key read at A and B; B cut off; Destroy through A; the
  Core restarted; heal. Time from healing to B refusing the key.
* ``l3-destroyed``: B cut off; ``rotate-l3`` then ``revoke-l3 --destroy`` of
  version 1. Time from healing to B refusing a key under version 1.
* ``black-hole``: a quiet uplink black-holed. Time from the drop to the
  gateway noticing (uplink DOWN) and, after healing, to the first delegated
  Activate that succeeds.
* ``failover``: two Cores on one PostgreSQL (started here), the gateway given
  both; the first killed. Time to the first delegated Activate through the
  second.
* ``rewrap``: 200 keys, ``rotate-l3``. Time until ``l3 list`` shows the
  re-wrap finished, and until the gateway's vault holds them all under the
  new version.

Figures are as quiet as the machine is; they are not asserted anywhere.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers.cluster import (
    Cluster,
    activate_item,
    destroy_item,
    make_cluster,
    one,
    wait_for,
)
from tests.helpers.pg import postgres_server
from tests.helpers.proxy import BlackHoleProxy
from tests.helpers.servers import free_port

from krypton.client.sync import KmipClient
from krypton.kmip import client_messages as cm
from krypton.ttlv.enums import ResultStatus

A, B = "gw-dev", "gw-b"
BOUND = 60.0


def refused(client: KmipClient, uid: str) -> bool | None:
    return one(client, cm.get_item(uid)).status is not ResultStatus.SUCCESS or None


def succeeds(client: KmipClient, uid: str) -> bool | None:
    return one(client, activate_item(uid)).status is ResultStatus.SUCCESS or None


@contextlib.contextmanager
def partitionable(root: Path) -> Iterator[tuple[Cluster, BlackHoleProxy]]:
    """A Core, gateway A direct and gateway B through a black hole."""
    cluster = make_cluster(root, gateways=(A, B))
    hole = BlackHoleProxy(cluster.core_port).start()
    cluster.gateway_settings[B] = {"KRYPTON_GATEWAY_UPLINK_CORE_ADDRESS": hole.address}
    try:
        cluster.start_core()
        cluster.start_gateways()
        yield cluster, hole
    finally:
        cluster.stop()
        hole.close()


def heal(hole: BlackHoleProxy) -> float:
    hole.reset()
    hole.heal()
    return time.monotonic()


def missed_destroy(root: Path) -> dict[str, float]:
    with partitionable(root) as (cluster, hole), cluster.client(A) as a, \
            cluster.client(B) as b:
        uid, key = a.create_get(256)
        wait_for("the key at B", partial(b.get, uid), 10.0)
        hole.partition()
        wait_for("Destroy at A", lambda: one(a, destroy_item(uid)).status
                 is ResultStatus.SUCCESS or None, 20.0, 0.05)
        cluster.kill_core()
        cluster.start_core()
        assert b.get(uid) == key
        healed = heal(hole)
        wait_for("B refusing it", partial(refused, b, uid), BOUND, 0.02)
        return {"heal->refused": time.monotonic() - healed}


def l3_destroyed(root: Path) -> dict[str, float]:
    with partitionable(root) as (cluster, hole), cluster.client(A) as a, \
            cluster.client(B) as b:
        uid, key = a.create_get(256)
        wait_for("the key at B", partial(b.get, uid), 10.0)
        hole.partition()
        cluster.core_cli("rotate-l3", "--tenant", "demo", "--no-rewrap")
        cluster.core_cli("revoke-l3", "--tenant", "demo", "--version", "1", "--destroy",
                         "--force")
        assert b.get(uid) == key
        healed = heal(hole)
        wait_for("B dropping v1", partial(refused, b, uid), BOUND, 0.02)
        return {"heal->refused": time.monotonic() - healed}


def black_hole(root: Path) -> dict[str, float]:
    cluster = make_cluster(root)
    with BlackHoleProxy(cluster.core_port) as hole:
        cluster.uplink_address = hole.address
        try:
            cluster.start_core()
            cluster.start_gateways()
            with cluster.client(A) as c:
                uid = c.create()
                wait_for("control path", partial(succeeds, c, uid), 10.0, 0.05)
                downs = cluster.running[A].log().count("uplink: DOWN")
                time.sleep(2.0)
                hole.partition()
                t0 = time.monotonic()
                wait_for("noticed", lambda: cluster.running[A].log().count("uplink: DOWN")
                         > downs or None, BOUND, 0.01)
                noticed = time.monotonic() - t0
                other = c.create()
                healed = heal(hole)
                wait_for("control path back", partial(succeeds, c, other), BOUND, 0.02)
                return {"drop->noticed": noticed, "heal->delegated ok": time.monotonic() - healed}
        finally:
            cluster.stop()


def failover(root: Path) -> dict[str, float]:
    with postgres_server() as pg:
        cluster = make_cluster(root, registry=pg.create_database("heal"))
        second = free_port()
        cluster.uplink_address = f"{cluster.core_address}, 127.0.0.1:{second}"
        try:
            cluster.start_core()
            cluster.start_core(name="core-b", port=second)
            cluster.start_gateways()
            with cluster.client(A) as c:
                uids = [c.create() for _ in range(200)]
                wait_for("control path", partial(succeeds, c, uids[0]), 10.0, 0.05)
                cluster.kill_core()
                killed = time.monotonic()
                left = iter(uids[1:])
                wait_for("a delegated Activate through core-b",
                         lambda: succeeds(c, next(left)), BOUND, 0.01)
                return {"kill->delegated ok": time.monotonic() - killed}
        finally:
            cluster.stop()


def rewrap(root: Path) -> dict[str, float]:
    cluster = make_cluster(root)
    cluster.core_settings["KRYPTON_CORE_REWRAP_INTERVAL"] = "0.5"
    try:
        cluster.start_core()
        cluster.start_gateways()
        with cluster.client(A) as c:
            uids = [c.create() for _ in range(200)]
        wait_for("keys at the Core", lambda: len(cluster.registry_holds("demo", uids))
                 == len(uids) or None, 30.0, 0.2)
        t0 = time.monotonic()
        cluster.core_cli("rotate-l3", "--tenant", "demo")

        def finished() -> bool | None:
            out = cluster.core_cli("l3", "list", "--tenant", "demo", "--json")
            rows = [json.loads(line) for line in out.splitlines() if line.strip()]
            job = next((r.get("rewrap") for r in rows if r.get("rewrap")), None)
            return bool(job and job["finished"]) or None

        wait_for("the Core's re-wrap", finished, BOUND, 0.1)
        core = time.monotonic() - t0
        vault = cluster.gateways[A].vault

        def moved() -> bool | None:
            conn = sqlite3.connect(f"file:{vault}?mode=ro", uri=True, timeout=5.0)
            try:
                row = conn.execute("SELECT count(*) FROM keys WHERE l3_version = 1"
                                   " AND length(wrapped) > 0").fetchone()
            finally:
                conn.close()
            return row[0] == 0 or None

        wait_for("the gateway's re-wrap", moved, BOUND, 0.05)
        return {"rotate->core done": core, "rotate->gateway done": time.monotonic() - t0}
    finally:
        cluster.stop()


SCENARIOS: dict[str, Callable[[Path], dict[str, float]]] = {
    "missed-destroy": missed_destroy,
    "l3-destroyed": l3_destroyed,
    "black-hole": black_hole,
    "failover": failover,
    "rewrap": rewrap,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", choices=sorted(SCENARIOS), default=None)
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    names = args.only or list(SCENARIOS)
    results: dict[str, dict[str, list[float]]] = {}
    for name in names:
        for run in range(args.runs):
            with tempfile.TemporaryDirectory(prefix=f"heal-{name}-") as where:
                got = SCENARIOS[name](Path(where))
            for what, seconds in got.items():
                results.setdefault(name, {}).setdefault(what, []).append(seconds)
            print(f"{name} run {run + 1}: " + ", ".join(
                f"{what} {seconds:.2f} s" for what, seconds in got.items()), flush=True)
    print("\nscenario         measure                 median    max   (runs)")
    for name, measures in results.items():
        for what, times in measures.items():
            print(f"{name:<16} {what:<22} {statistics.median(times):6.2f} s"
                  f" {max(times):6.2f} s  ({len(times)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
