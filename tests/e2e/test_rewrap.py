"""Background re-wrap after an L3 rotation, end to end: a ``krypton core`` and
``krypton gateway`` processes, ``krypton core rotate-l3 / l3 list / l3 rewrap /
revoke-l3`` as processes of their own.

* After ``rotate-l3`` the Core moves every registry key to the new version
  (``l3 list`` shows the progress, the audit names the rotating operator for
  each key), the running gateway moves its vault copies too, and every key
  stays readable through it; the old version then holds 0 keys and
  ``revoke-l3`` takes it without ``--force``. A gateway that was stopped the
  whole time (its copies under the revoked version) takes the Core's
  re-wrapped records when it comes back and serves every key.
* A re-wrap cut off by killing the Core resumes when a Core starts again.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from tests.helpers.cluster import Cluster, wait_for
from tests.helpers.fixtures import Clusters

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

A, B = "gw-dev", "gw-b"
ALICE = "ops:alice"


def listed(cluster: Cluster) -> dict[int, dict[str, Any]]:
    out = cluster.core_cli("l3", "list", "--tenant", "demo", "--json")
    rows = [json.loads(line) for line in out.splitlines() if line.strip()]
    return {r["version"]: r for r in rows}


def rewrap_of(cluster: Cluster, version: int) -> dict[str, Any] | None:
    job: dict[str, Any] | None = listed(cluster)[version].get("rewrap")
    return job


def made(cluster: Cluster, gateway: str, n: int) -> dict[str, bytes]:
    with cluster.client(gateway) as c:
        return dict(c.create_get(256) for _ in range(n))


def test_rotate_rewraps_everywhere_and_the_old_version_goes_without_force(
        start_cluster: Clusters) -> None:
    cluster = start_cluster(gateways=(A, B), core_env={"KRYPTON_CORE_REWRAP_INTERVAL": "0.5"})
    keys = made(cluster, A, 30)
    fetched = dict(list(keys.items())[:10])
    wait_for("every key at the Core", lambda: (
        len(cluster.registry_holds("demo", list(keys))) == len(keys) or None), 20.0, 0.2)
    with cluster.client(B) as c:  # B holds copies of keys made at A
        assert all(c.get(uid) == key for uid, key in fetched.items())
    cluster.running.pop(B).stop()  # B is away for the rotation and the revocation

    out = cluster.core_cli("rotate-l3", "--tenant", "demo", "--operator", ALICE)
    started = time.monotonic()
    assert "re-wrap of older keys to version 2 asked for" in out
    job = wait_for("re-wrap finished", lambda: (
        (j := rewrap_of(cluster, 2)) and j["finished"] and j) or None, 30.0, 0.2)
    took = time.monotonic() - started
    versions = listed(cluster)
    assert versions[1]["keys"] == 0 and versions[2]["keys"] >= len(keys), versions
    assert (job["operator"], job["moved"]) == (ALICE, job["total"])
    assert job["total"] >= len(keys)
    # the running gateway moved its own copies; every key reads through it
    wait_for("A's vault under v2", lambda: all(
        cluster.l3_version(A, uid) == 2 for uid in keys) or None, 20.0, 0.2)
    with cluster.client(A) as c:
        assert all(c.get(uid) == key for uid, key in keys.items())

    out = cluster.core_cli("revoke-l3", "--tenant", "demo", "--version", "1",
                           "--operator", ALICE)  # no --force: v1 wraps nothing
    assert "L3 version 1 is COMPROMISED (0 key(s) were wrapped under it)" in out
    with cluster.client(A) as c:
        assert all(c.get(uid) == key for uid, key in keys.items())
    # B comes back: its copies are under the revoked v1; it takes the Core's
    assert all(cluster.l3_version(B, uid) == 1 for uid in fetched)
    cluster.start_gateways(B)
    with cluster.client(B) as c:
        assert all(c.get(uid) == key for uid, key in fetched.items())
    assert all(cluster.l3_version(B, uid) == 2 for uid in fetched)

    trail = [json.loads(line) for line in cluster.core_cli(
        "audit", "--tenant", "demo", "--limit", "100000").splitlines() if line.strip()]
    moves = [r for r in trail if r["operation"] == "RewrapL3" and r["uid"]]
    assert {r["uid"] for r in moves} >= set(keys)
    assert {r["identity"] for r in moves} == {ALICE}
    print(f"\n[rewrap] {job['total']} key(s) moved to v2 in {took:.2f} s (rotate -> l3 list"
          " shows finished); v1 revoked without --force; the returning gateway serves"
          f" its {len(fetched)} copies")


def test_a_rewrap_cut_off_by_a_core_crash_resumes_after_the_restart(
        start_cluster: Clusters) -> None:
    slow = {"KRYPTON_CORE_REWRAP_BATCH": "5", "KRYPTON_CORE_REWRAP_PAUSE": "0.5",
            "KRYPTON_CORE_REWRAP_INTERVAL": "0.5"}
    cluster = start_cluster(core_env=slow)
    keys = made(cluster, A, 80)
    wait_for("every key at the Core", lambda: (
        len(cluster.registry_holds("demo", list(keys))) == len(keys) or None), 20.0, 0.2)
    cluster.core_cli("l3", "rewrap", "--tenant", "demo")  # nothing under an older version
    cluster.core_cli("rotate-l3", "--tenant", "demo", "--no-rewrap")
    assert rewrap_of(cluster, 2) is None
    cluster.core_cli("l3", "rewrap", "--tenant", "demo", "--operator", "ops:bob")
    job = wait_for("a few batches done", lambda: (
        (j := rewrap_of(cluster, 2)) and j["moved"] >= 10 and j) or None, 30.0, 0.05)
    cluster.kill_core()
    cut = listed(cluster)
    assert cut[2]["rewrap"]["finished"] is None and cut[1]["keys"] > 0, cut
    cluster.start_core(env=slow)
    job = wait_for("re-wrap finished after the restart", lambda: (
        (j := rewrap_of(cluster, 2)) and j["finished"] and j) or None, 60.0, 0.2)
    assert job["operator"] == "ops:bob"
    # the batch the crash cut may have moved keys it did not count
    assert job["total"] - 5 <= job["moved"] <= job["total"], job
    assert listed(cluster)[1]["keys"] == 0
    with cluster.client(A) as c:
        assert all(c.get(uid) == key for uid, key in keys.items())
    print(f"\n[rewrap] cut off at {cut[2]['rewrap']['moved']} of {job['total']} moved;"
          f" finished after the Core restart with {job['moved']} counted")
