"""Issue 15, items 1 and 2, end to end: a Core on each root of trust (a key
file, a real SoftHSM2 token, a real OpenBao's Transit) serving the lifecycle
through a gateway to PyKMIP; start-up refused when the root cannot serve;
``rewrap-root`` file → pkcs11 → openbao; and a gateway with a seal killed and
restarted while the Core is down, serving every key it had until the lease
ends — on the SQLite vault, and on the OpenBao vault (its sealed L3 copies
are KV secrets beside the records). Core and gateways are processes
(``start_cluster``)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from kmip.core import enums
from kmip.pie.client import ProxyKmipClient
from prometheus_client.parser import text_string_to_metric_families
from tests.helpers.cluster import START_TIMEOUT, Cluster, make_cluster, wait_for
from tests.helpers.fixtures import Clusters
from tests.helpers.openbao import BaoServer, openbao_server
from tests.helpers.softhsm import SoftHsm

from krypton.core.keystore import CoreKeyStore, load_master_key
from krypton.registry import open_registry
from krypton.roots import kind_of

pytestmark = pytest.mark.slow
BAO_ENV = "TEST_BAO_TOKEN"


def core_root(kind: str, hsm: SoftHsm, bao: BaoServer, **over: str) -> dict[str, str]:
    """KRYPTON_CORE_ROOT_* settings (and the secrets' variables) for a root of ``kind``."""
    if kind == "file":
        return {"KRYPTON_CORE_ROOT_KIND": "file"}
    if kind == "pkcs11":
        table = {**hsm.root_settings("core"), **over}
        return {**{f"KRYPTON_CORE_ROOT_{k.upper()}": v for k, v in table.items()}, **hsm.env}
    token = over.pop("token", bao.root_token)  # the secret goes in BAO_ENV, not a setting
    table = {"kind": "openbao", "address": bao.address, "token_env": BAO_ENV, **over}
    return {**{f"KRYPTON_CORE_ROOT_{k.upper()}": v for k, v in table.items()}, BAO_ENV: token}


def gateway_seal(kind: str, hsm: SoftHsm, bao: BaoServer) -> dict[str, str]:
    if kind == "pkcs11":
        table = {**hsm.root_settings("gateway", key="seal")}
        return {**{f"KRYPTON_GATEWAY_SEAL_{k.upper()}": v for k, v in table.items()}, **hsm.env}
    return {"KRYPTON_GATEWAY_SEAL_KIND": "openbao", "KRYPTON_GATEWAY_SEAL_ADDRESS": bao.address,
            "KRYPTON_GATEWAY_SEAL_TRANSIT_KEY": bao.transit_key(),
            "KRYPTON_GATEWAY_SEAL_TOKEN_ENV": BAO_ENV, BAO_ENV: bao.root_token}


def new_cluster(clusters: Clusters, core: dict[str, str], *, init: bool = True,
                start: bool = True) -> Cluster:
    cluster = make_cluster(clusters.root / f"cluster-{len(clusters.started)}", init=False)
    clusters.started.append(cluster)
    cluster.core_settings.update(core)
    if init:
        cluster.core_cli("init")
    if start:
        cluster.start_core(START_TIMEOUT)
    return cluster


def core_fails(cluster: Cluster, *args: str) -> str:
    """Run ``krypton core --config F <args>`` (the server itself when no args): it
    must fail; its error output."""
    cmd = [sys.executable, "-m", "krypton.cli.main", "core", "--config",
           str(cluster.layout.core_config), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=cluster.core_env(),
                          timeout=60, check=False)
    assert done.returncode != 0, done.stdout
    return done.stderr


def pykmip(cluster: Cluster, gateway: str = "gw-dev") -> ProxyKmipClient:
    pki = cluster.layout.pki
    return ProxyKmipClient(
        hostname="127.0.0.1", port=cluster.gateways[gateway].port,
        cert=str(pki / "client.pem"), key=str(pki / "client-key.pem"), ca=str(pki / "ca.pem"),
        config_file="/dev/null",
    )


def mk_rows(cluster: Cluster) -> list[bytes | None]:
    async def read() -> list[bytes | None]:
        registry = await open_registry(cluster.registry_url)
        try:
            return [k.sealed for k in await registry.keys("", "MK")]
        finally:
            await registry.close()

    return asyncio.run(read())


@pytest.fixture
def bao(openbao: BaoServer) -> BaoServer:
    openbao.enable_transit()
    return openbao


# -- item 1: the Core's root of trust --------------------------------------------------
@pytest.mark.parametrize("kind", ["file", "pkcs11", "openbao"])
def test_a_core_on_each_root_serves_the_lifecycle(
    kind: str, start_cluster: Clusters, hsm: SoftHsm, bao: BaoServer
) -> None:
    over = {"transit_key": bao.transit_key()} if kind == "openbao" else {}
    if kind == "pkcs11":
        hsm.init_token("core")
    cluster = new_cluster(start_cluster, core_root(kind, hsm, bao, **over))
    assert {kind_of(b) for b in mk_rows(cluster)} == {kind}
    cluster.start_gateways()
    assert f"root of trust: {kind} root" in cluster.core.log()  # type: ignore[union-attr]
    with pykmip(cluster) as client:
        uid = client.create(enums.CryptographicAlgorithm.AES, 256)
        assert len(client.get(uid).value) == 32
        client.activate(uid)
        client.revoke(enums.RevocationReasonCode.CESSATION_OF_OPERATION, uid)
        client.destroy(uid)
        with pytest.raises(Exception, match=r"(?i)destroyed|not found|wrong key lifecycle"):
            client.get(uid)


def readyz(cluster: Cluster) -> tuple[int, str]:
    url = f"http://127.0.0.1:{cluster.core_admin_ports['core']}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def root_up(cluster: Cluster, kind: str) -> float | None:
    url = f"http://127.0.0.1:{cluster.core_admin_ports['core']}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "krypton_core_root_up" and sample.labels.get("kind") == kind:
                return sample.value
    return None


def test_readiness_and_metrics_follow_the_root_of_trust(
    start_cluster: Clusters, tmp_path: Path,
) -> None:
    """An OpenBao root that goes away after start-up: the Core keeps its opened
    L2s (and serves), but /readyz says the root does not answer and
    krypton_core_root_up drops to 0."""
    with openbao_server(tmp_path / "bao") as own:
        cluster = new_cluster(start_cluster, core_root("openbao", None, own,  # type: ignore[arg-type]
                                                       transit_key=own.transit_key()))
        assert readyz(cluster)[0] == 200
        assert root_up(cluster, "openbao") == 1.0
        own.stop()
        _, body = wait_for("the root's absence seen", lambda: (
            (r := readyz(cluster))[0] == 503 and r) or None, 30.0, 0.5)
        assert "root of trust (openbao" in body
        assert root_up(cluster, "openbao") == 0.0


def test_start_up_refused_when_the_root_cannot_serve(
    start_cluster: Clusters, hsm: SoftHsm, bao: BaoServer
) -> None:
    hsm.init_token("core")
    # a missing token: init makes nothing, not even the registry file
    missing = new_cluster(start_cluster, core_root("pkcs11", hsm, bao, token_label="nope"),
                          init=False, start=False)
    err = core_fails(missing, "init")
    assert "no PKCS#11 token labelled 'nope'" in err
    assert not (missing.root / "core.db").exists()
    # a refusing Transit key (a token whose policy allows no encrypt): nothing made
    key = bao.transit_key()
    token = bao.token([bao.policy([(f"transit/keys/{key}", ["read"])])])
    refusing = new_cluster(start_cluster, core_root("openbao", hsm, bao, transit_key=key,
                                                    token=token), init=False, start=False)
    assert "403" in core_fails(refusing, "init")
    assert not (refusing.root / "core.db").exists()
    # a missing Transit key
    gone = new_cluster(start_cluster, core_root("openbao", hsm, bao, transit_key="gone"),
                       init=False, start=False)
    assert "has no Transit key transit/keys/gone" in core_fails(gone, "init")
    # a hierarchy made, then the root key missing at start-up: the Core refuses
    made = new_cluster(start_cluster, core_root("pkcs11", hsm, bao), start=False)
    before = mk_rows(made)
    made.core_settings["KRYPTON_CORE_ROOT_KEY_LABEL"] = "another"
    assert "holds no AES key labelled 'another'" in core_fails(made)
    made.core_settings["KRYPTON_CORE_ROOT_KIND"] = "file"
    made.core_settings["KRYPTON_CORE_MASTER_KEY"] = os.urandom(32).hex()
    assert "sealed by a pkcs11 root" in core_fails(made)
    assert mk_rows(made) == before


def test_rewrap_root_file_to_pkcs11_to_openbao(
    start_cluster: Clusters, hsm: SoftHsm, bao: BaoServer
) -> None:
    hsm.init_token("core")
    cluster = new_cluster(start_cluster, core_root("file", hsm, bao))
    cluster.start_gateways()
    with pykmip(cluster) as client:
        uids = [client.create(enums.CryptographicAlgorithm.AES, 256) for _ in range(4)]
        keys = {uid: client.get(uid).value for uid in uids}
    cluster.core_cli("rotate-l3", "--tenant", "demo")
    transit = bao.transit_key()
    steps = {
        "pkcs11": core_root("pkcs11", hsm, bao),
        "openbao": core_root("openbao", hsm, bao, transit_key=transit),
    }
    for kind, settings in steps.items():
        cluster.stop()
        inline = ",".join(f"{k.removeprefix('KRYPTON_CORE_ROOT_').lower()}={v}"
                          for k, v in settings.items() if k.startswith("KRYPTON_CORE_ROOT_"))
        cluster.core_settings.update({k: v for k, v in settings.items()
                                      if not k.startswith("KRYPTON_CORE_ROOT_")})
        out = cluster.core_cli("rewrap-root", "--to", inline)
        assert "5 row(s) moved" in out and "L3 and L4 unchanged" in out
        assert {kind_of(b) for b in mk_rows(cluster)} == {kind}
        cluster.core_settings.update(settings)
        cluster.start_core(START_TIMEOUT)
        # a fresh vault: the gateway needs every L3 again, opened through the new root
        for spec in cluster.gateways.values():
            spec.vault.unlink()
        cluster.start_gateways()
        with pykmip(cluster) as client:
            assert {uid: client.get(uid).value for uid in uids} == keys
            assert client.create(enums.CryptographicAlgorithm.AES, 128)


# -- item 2: the gateway seal ----------------------------------------------------------
def l3_materials(cluster: Cluster) -> list[bytes]:
    """Every L3 version's bytes, read from the registry with the Core's key file."""
    async def read() -> list[bytes]:
        registry = await open_registry(cluster.registry_url)
        master = load_master_key(cluster.layout.core_config.parent / "master.key", environ={})
        store = await CoreKeyStore.open(registry, master)
        try:
            return [g.material.reveal() for g in await store.grants(["demo", "other"], 1)]
        finally:
            await store.close()
            await registry.close()

    return asyncio.run(read())


def sealed_versions(cluster: Cluster) -> set[tuple[str, int]]:
    db = sqlite3.connect(f"file:{cluster.gateways['gw-dev'].vault}?mode=ro", uri=True)
    try:
        return {(t, int(v)) for t, v in db.execute("SELECT tenant, version FROM sealed_l3")}
    finally:
        db.close()


class GatewayVault:
    """The gw-dev gateway's vault (``backend`` sqlite or openbao), read behind its back."""

    def __init__(self, backend: str, cluster: Cluster, bao: BaoServer) -> None:
        self.backend, self.cluster, self.bao = backend, cluster, bao
        self.prefix = bao.unique("gateway")
        if backend == "openbao":
            cluster.gateway_extra.update({
                "KRYPTON_GATEWAY_VAULT_BACKEND": "openbao",
                "KRYPTON_GATEWAY_VAULT_ADDRESS": bao.address,
                "KRYPTON_GATEWAY_VAULT_MOUNT": bao.enable_kv("kv"),
                "KRYPTON_GATEWAY_VAULT_PREFIX": self.prefix,
                "BAO_TOKEN": bao.root_token,
            })  # fmt: skip

    def sealed_versions(self) -> set[tuple[str, int]]:
        if self.backend == "openbao":
            found = self.bao.kv_secrets("kv", f"{self.prefix}/sealed_l3")
            names = (k.rpartition("/")[2].partition("@")[0] for k in found)
            return {(t, int(v)) for t, _, v in (n.rpartition("~") for n in names)}
        return sealed_versions(self.cluster)

    def dump(self) -> bytes:
        """All it holds: its files, or every version of every secret under its prefix."""
        if self.backend == "openbao":
            return json.dumps(self.bao.kv_secrets("kv", self.prefix)).encode()
        vault = self.cluster.gateways["gw-dev"].vault
        return b"".join(p.read_bytes() for p in vault.parent.glob(vault.name + "*"))


@pytest.mark.parametrize(("kind", "backend"), [("pkcs11", "sqlite"), ("openbao", "sqlite"),
                                               ("openbao", "openbao")])  # fmt: skip
def test_a_sealed_gateway_restarted_during_a_partition_serves_until_the_lease_ends(
    kind: str, backend: str, start_cluster: Clusters, hsm: SoftHsm, bao: BaoServer
) -> None:
    if kind == "pkcs11":
        hsm.init_token("gateway")
    lease = 12
    cluster = new_cluster(start_cluster, {"KRYPTON_CORE_L3_LEASE_SECONDS": str(lease)})
    cluster.gateway_extra.update(gateway_seal(kind, hsm, bao))
    vault = GatewayVault(backend, cluster, bao)
    cluster.start_gateways()
    with pykmip(cluster) as client:
        uids = [client.create(enums.CryptographicAlgorithm.AES, 256) for _ in range(3)]
    cluster.core_cli("rotate-l3", "--tenant", "demo")  # keys under two versions
    with pykmip(cluster) as client:
        wait_for("the new L3 at the gateway", lambda: (vault.sealed_versions() >= {
            ("demo", 1), ("demo", 2), ("other", 1)}) or None, 10)
        uids += [client.create(enums.CryptographicAlgorithm.AES, 128) for _ in range(3)]
        keys = {uid: client.get(uid).value for uid in uids}
    # the vault holds sealed L3 only: no L3's bytes (nor any key's) anywhere in it
    held = vault.dump()
    materials = l3_materials(cluster)
    assert len(materials) == 3
    assert b"sealed_l3" in held or backend == "sqlite"  # the scan sees the sealed copies
    for m in [*materials, *keys.values()]:
        assert not any(form in held for form in (m, m.hex().encode(), base64.b64encode(m)))

    # the outbox report reads either backend, while the gateway runs
    wait_for("every key at the Core", lambda: (
        ": 0 key(s) waiting for the Core, 0 quarantined row(s)"
        in cluster.gateway_cli("gw-dev", "outbox")) or None, 10)

    cluster.kill_core()
    killed_at = time.time()
    cluster.running.pop("gw-dev").kill()  # SIGKILL, Core down
    cluster.start_gateways(serving=False)
    log = cluster.running["gw-dev"].log()
    assert "restored from the vault" in log
    with pykmip(cluster) as client:
        assert {uid: client.get(uid).value for uid in uids} == keys  # every key it had
        fresh = client.create(enums.CryptographicAlgorithm.AES, 256)
        assert len(client.get(fresh).value) == 32
    assert ": 1 key(s) waiting for the Core" in cluster.gateway_cli("gw-dev", "outbox")
    # ... until the lease (renewed at most lease/2 before the Core went) ends
    time.sleep(max(0.0, killed_at + lease + 1 - time.time()))
    with pykmip(cluster) as client:
        for uid in uids:
            with pytest.raises(Exception, match=r"(?i)lease|not available"):
                client.get(uid)
    # and a restart cannot extend it
    cluster.running.pop("gw-dev").kill()
    cluster.start_gateways(serving=False)
    with pykmip(cluster) as client, pytest.raises(Exception, match=r"(?i)lease|not available"):
        client.get(uids[0])
    assert "its lease ended; dropped" in cluster.running["gw-dev"].log()
    assert vault.sealed_versions() == set()


def test_without_a_seal_a_restart_during_a_partition_serves_nothing(
    start_cluster: Clusters,
) -> None:
    cluster = start_cluster()
    with pykmip(cluster) as client:
        uid = client.create(enums.CryptographicAlgorithm.AES, 256)
    assert "gateway seal: none" in cluster.running["gw-dev"].log()
    cluster.kill_core()
    cluster.running.pop("gw-dev").kill()
    cluster.start_gateways(serving=False)
    with pykmip(cluster) as client, pytest.raises(Exception, match=r"(?i)not available"):
        client.get(uid)
    assert sealed_versions(cluster) == set()  # nothing of L3 on disk, sealed or not
