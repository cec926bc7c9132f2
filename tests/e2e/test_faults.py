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

import contextlib
import json
import os
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.helpers.cluster import (
    START_TIMEOUT,
    V21,
    Cluster,
    destroy_item,
    locate_item,
    located,
    make_cluster,
    ok,
    one,
    wait_for,
)

from krypton.client.sync import KmipError
from krypton.kmip import client_messages as cm
from krypton.pki.dev import GATEWAY_NAME
from krypton.ttlv.enums import ResultReason, ResultStatus, State

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
        c.start_core(START_TIMEOUT, env=env)
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


# -- 5: one undecodable outbox row ------------------------------------------------------
def corrupt(vault: Path, uid: str) -> None:
    """What a bad disk or a hand edit leaves: a blob column holding text."""
    conn = sqlite3.connect(vault, timeout=10.0)
    try:
        conn.execute("UPDATE keys SET wrapped = 'not a blob' WHERE uid = ?", (uid,))
        conn.commit()
    finally:
        conn.close()


def test_an_undecodable_outbox_row_is_quarantined_and_the_rest_syncs(tmp_path: Path) -> None:
    c = make_cluster(tmp_path)
    vault = c.gateways[GATEWAY_NAME].vault
    try:
        c.start_core()
        c.start_gateways()
        c.kill_core()  # keys made now wait in the outbox
        with c.client(GATEWAY_NAME) as demo, c.client(GATEWAY_NAME, "other-client") as other:
            bad = demo.create(name="bad")
            corrupt(vault, bad)
            good = [demo.create(name="good"), demo.create(name="good")]
            others = [other.create()]
            c.start_core()
            back = time.monotonic()
            wait_for("the good keys at the Core",
                     lambda: c.registry_holds("demo", good) == set(good) or None, SOON)
            print(f"[bad outbox row] the other keys at the Core {time.monotonic() - back:.2f} s"
                  " after it came back")
            wait_for("tenant other's key at the Core",
                     lambda: c.registry_holds("other", others) == set(others) or None, SOON)
            assert c.registry_holds("demo", [bad]) == set()
            found = located(ok(demo, locate_item(V21, "good")))
            assert sorted(found) == sorted(good)
            assert ok(demo, locate_item(V21)).status is ResultStatus.SUCCESS
        report = c.gateway_cli(GATEWAY_NAME, "outbox")
        assert "0 key(s) waiting for the Core, 1 quarantined row(s)" in report, report
        row = json.loads(report.splitlines()[1])
        assert row["uid"] == bad and "column wrapped" in row["reason"]
        log = c.running[GATEWAY_NAME].log()
        assert f"outbox row of key {bad!r} does not decode" in log
    except BaseException:
        print(c.dump_logs())
        raise
    finally:
        c.stop()


# -- 4: Destroy with the vault's disk full ------------------------------------------------
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs for the gateway's vault (mounted as root; unmounted after)."""
    where = tmp_path / "small-disk"
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (to fill the vault's filesystem)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


class Filler:
    """Keeps a filesystem full: a thread appends to a file whenever any space
    frees up (SQLite gives some back when a write fails), until stopped."""

    def __init__(self, disk: Path) -> None:
        self.path = disk / "filler"
        self._stop = threading.Event()
        self._full = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Filler:
        self._thread.start()
        assert self._full.wait(10.0), "the filesystem did not fill up"
        return self

    def _run(self) -> None:
        with self.path.open("ab", buffering=0) as f:
            while not self._stop.is_set():
                for size in (1 << 16, 1 << 12, 1 << 9, 1):
                    with contextlib.suppress(OSError):
                        while True:
                            f.write(b"\0" * size)
                self._full.set()
                self._stop.wait(0.001)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10.0)
        self.path.unlink()


def vault_row(vault: Path, uid: str) -> tuple[int, int]:
    """(state, length of the wrapped material) of ``uid`` in the vault file."""
    conn = sqlite3.connect(f"file:{vault}?mode=ro", uri=True, timeout=10.0)
    try:
        row = conn.execute("SELECT state, length(wrapped) FROM keys WHERE uid = ?",
                           (uid,)).fetchone()
    finally:
        conn.close()
    return int(row[0]), int(row[1])


def test_a_destroy_the_full_vault_cannot_store_is_held_not_dropped(
    tmp_path: Path, small_disk: Path
) -> None:
    c = make_cluster(tmp_path)
    vault = small_disk / "vault.db"
    c.gateways[GATEWAY_NAME].vault = vault
    try:
        c.start_core()
        c.start_gateways()
        with c.client(GATEWAY_NAME) as demo:
            uid, _ = demo.create_get(256)
            wait_for("the key at the Core",
                     lambda: c.registry_holds("demo", [uid]) == {uid} or None, SOON)
            with Filler(small_disk):
                destroyed = one(demo, destroy_item(uid))
                assert destroyed.status is ResultStatus.SUCCESS, destroyed.message  # the Core did
                for _ in range(20):  # refused from memory, fast path and generic path alike
                    got = one(demo, cm.get_item(uid))
                    assert got.status is ResultStatus.OPERATION_FAILED
                    assert got.reason is ResultReason.OBJECT_DESTROYED
                    time.sleep(0.05)
                assert vault_row(vault, uid)[0] != State.DESTROYED  # the disk really is full
                log = c.running[GATEWAY_NAME].log()
                assert f"a change of {uid} from the Core is not stored" in log
            # Space again: the held change reaches the vault.
            freed = time.monotonic()
            wait_for("the Destroy stored in the vault",
                     lambda: vault_row(vault, uid) == (State.DESTROYED, 0) or None, SOON)
            print(f"[full disk] Destroy stored {time.monotonic() - freed:.2f} s after space"
                  " freed; Get refused throughout")
            assert one(demo, cm.get_item(uid)).reason is ResultReason.OBJECT_DESTROYED
        c.running.pop(GATEWAY_NAME).stop()
        c.start_gateways()  # and after a restart, from the vault
        with c.client(GATEWAY_NAME) as demo:
            assert one(demo, cm.get_item(uid)).reason is ResultReason.OBJECT_DESTROYED
    except BaseException:
        print(c.dump_logs())
        raise
    finally:
        c.stop()
