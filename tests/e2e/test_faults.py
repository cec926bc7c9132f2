"""Faults from an operator's bad day (issue 12, findings 4, 5, 8 and 9), against
real ``krypton core`` / ``krypton gateway`` processes, real gRPC over mutual
TLS and real SQLite files.

* 4: Destroy while the gateway's vault sits on a full filesystem (a small
  tmpfs, mounted as root): the key is refused at once and stays refused; once
  space frees up the change reaches the vault;
* 5: one undecodable outbox row: the other keys still reach the Core, Locate
  works, and ``krypton gateway --config F outbox`` lists the quarantined row;
* 8: a gateway whose policy names a tenant the Core does not give it: the
  other tenant is served, the Core warns naming the stray tenant;
* 9: a Core on a registry without a key hierarchy (a typo in
  ``core.registry``), or without its master key file, refuses to start and
  says which setting points where; ``krypton core init`` makes one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.helpers.cluster import Cluster, make_cluster, wait_for

from krypton.client.sync import KmipError

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

SOON = 10.0
EU = "gw-eu"  # served demo only by the Core, though its policy names other too


def audit_rows(cluster: Cluster) -> list[dict[str, Any]]:
    out = cluster.core_cli("audit", "--limit", "100000")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


# -- 8: a policy rule for a tenant the Core does not serve ------------------------------
def test_a_stray_tenant_in_the_policy_costs_only_that_tenant(tmp_path: Path) -> None:
    c = make_cluster(tmp_path, gateways=(EU,))
    c.gateways[EU].tenants = ("demo",)
    try:
        c.start_core()
        c.start_gateways(EU, serving=False)
        with c.client(EU) as demo:  # the demo workload: its keys are served
            uid = wait_for("demo served at gw-eu", demo.create, SOON)
            assert len(demo.get(uid)) == 32
        with c.client(EU, "other-client") as other, pytest.raises(KmipError):
            other.create()  # the stray tenant is not
        eu = c.gateways[EU].spiffe_id
        assert c.core is not None
        assert "does not serve tenant other" in c.core.log()
        rows = [r for r in audit_rows(c) if r["gateway"] == eu and r["operation"] == "Subscribe"]
        assert {(r["tenant"], r["result"]) for r in rows} >= {
            ("demo", "Success"), ("other", "PermissionDenied"),
        }
    except BaseException:
        print(c.dump_logs())
        raise
    finally:
        c.stop()
