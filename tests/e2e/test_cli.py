"""Commands for people (issue 14), against real processes: ``krypton --version``,
``krypton kmip`` against a dev stack, ``krypton pki issue`` whose certificates a
running gateway and Core accept by role, and clean start-up errors that name
the setting (a port in use, a missing vault folder) instead of a traceback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.helpers.cluster import Cluster, activate_item, wait_for
from tests.helpers.fixtures import Clusters, DevStacks
from tests.helpers.servers import DevServer, free_port

from krypton.cli.main import main
from krypton.client.sync import KmipClient, tls_context
from krypton.pki.dev import GATEWAY_NAME, core_spiffe_id, gateway_spiffe_id, init_dev_dir
from krypton.ttlv.enums import ResultStatus

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def krypton(*args: str, env: dict[str, str] | None = None,
            timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("KRYPTON_")}
    # Never the default admin ports (9696, 9697): another stack may hold them.
    full["KRYPTON_GATEWAY_ADMIN_LISTEN"] = f"127.0.0.1:{free_port()}"
    full["KRYPTON_CORE_ADMIN_LISTEN"] = f"127.0.0.1:{free_port()}"
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "krypton.cli.main", *args], env=full,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def dev(start_module_dev: DevStacks) -> DevServer:
    return start_module_dev()


class Kmip:
    """``krypton kmip`` run in this process (main()), its stdout read back."""

    def __init__(self, server: DevServer, capsys: pytest.CaptureFixture[str]) -> None:
        self.base = ["kmip", "--pki", str(server.pki), "--port", str(server.port)]
        self.capsys = capsys

    def __call__(self, *args: str, json_out: bool = True) -> Any:
        self.capsys.readouterr()
        code = main([*self.base, *(["--json"] if json_out else []), *args])
        out = self.capsys.readouterr().out
        assert code == 0, out
        return json.loads(out) if json_out else out


@pytest.fixture
def kmip(dev: DevServer, capsys: pytest.CaptureFixture[str]) -> Kmip:
    return Kmip(dev, capsys)


def test_version() -> None:
    done = krypton("--version")
    assert done.returncode == 0 and done.stdout.startswith("krypton 0.")


def test_kmip_lifecycle_of_a_key(kmip: Kmip, dev: DevServer) -> None:
    uid = kmip("create", "--name", "cli-key", "--length", "128")["uid"]
    got = kmip("get", uid)
    with KmipClient("127.0.0.1", dev.port, dev.client_context()) as c:
        assert bytes.fromhex(got["key"]) == c.get(uid)  # what another client reads
    assert got["algorithm"] == "AES" and got["length"] == "128" and len(got["key"]) == 32
    assert [r["uid"] for r in kmip("locate", "--name", "cli-key")] == [uid]
    state = kmip("attributes", uid, "State")
    assert state == [{"name": "State", "index": "0", "value": "PreActive"}]
    assert kmip("activate", uid) == {"uid": uid}
    assert uid in [r["uid"] for r in kmip("locate", "--state", "active")]
    kmip("revoke", uid, "--reason", "superseded", "--message", "rolled")
    names = {r["name"]: r["value"] for r in kmip("attributes", uid)}
    assert names["State"] == "Deactivated" and "Superseded" in names["Revocation Reason"]
    kmip("destroy", uid)
    table = kmip("--kmip-version", "2.1", "attributes", uid, "State", json_out=False)
    assert table.splitlines()[0].split() == ["NAME", "INDEX", "VALUE"]
    assert "Destroyed" in table
    assert main([*kmip.base, "get", uid]) == 1
    assert "has been destroyed" in kmip.capsys.readouterr().err


def test_kmip_query_and_a_clean_failure(kmip: Kmip, dev: DevServer) -> None:
    rows = kmip("query")
    assert {"kind": "operation", "value": "Create"} in rows
    assert {"kind": "object type", "value": "SymmetricKey"} in rows
    done = krypton("kmip", "--pki", str(dev.pki), "--port", str(dev.port), "get", "no-such")
    assert done.returncode == 1 and "ITEM_NOT_FOUND" in done.stderr
    assert "Traceback" not in done.stderr
    done = krypton("kmip", "--pki", str(dev.pki.parent / "nowhere"), "query")
    assert done.returncode == 2 and "--pki" in done.stderr and "Traceback" not in done.stderr


def test_an_issued_workload_certificate_is_let_in(dev: DevServer,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    spiffe = "spiffe://krypton.dev/tenant/demo/workload/billing"
    assert main(["pki", "issue", "--dir", str(dev.layout.root), "--spiffe-id", spiffe,
                 "--role", "workload"]) == 0
    assert "workload-billing.pem" in capsys.readouterr().out
    pki = dev.pki
    ctx = tls_context(pki / "ca.pem", pki / "workload-billing.pem",
                      pki / "workload-billing-key.pem")
    with KmipClient("127.0.0.1", dev.port, ctx) as c:
        uid, key = c.create_get()
        assert c.get(uid) == key
    # The same file name again is refused (no silent overwrite).
    assert main(["pki", "issue", "--dir", str(dev.layout.root), "--spiffe-id", spiffe,
                 "--role", "workload"]) == 2


def test_issued_gateway_and_core_certificates_are_accepted(start_cluster: Clusters,
                                                           tmp_path: Path) -> None:
    root = tmp_path / "c"
    init_dev_dir(root)
    for spiffe, role, name in ((gateway_spiffe_id("gw-b"), "gateway", "gw-b-issued"),
                               (core_spiffe_id(), "core", "core-issued")):
        done = krypton("pki", "issue", "--dir", str(root), "--spiffe-id", spiffe,
                       "--role", role, "--name", name)
        assert done.returncode == 0, done.stderr
    pki = root / "pki"
    c: Cluster = start_cluster(root, gateways=(GATEWAY_NAME, "gw-b"), gateways_running=False)
    c.gateways["gw-b"].cert, c.gateways["gw-b"].key = pki / "gw-b-issued.pem", pki / (
        "gw-b-issued-key.pem")
    c.start_gateways("gw-b")  # the Core served it its L3 keys: Create works
    c.kill_core()
    c.start_core(env={"KRYPTON_CORE_TLS_CERT": str(pki / "core-issued.pem"),
                      "KRYPTON_CORE_TLS_KEY": str(pki / "core-issued-key.pem")})
    with c.client("gw-b") as client:
        uid = client.create()

        def activated() -> bool | None:
            item = client.call([activate_item(uid)]).items[0]
            return True if item.status is ResultStatus.SUCCESS else None

        # The gateway took the new Core certificate: a delegated operation goes through.
        wait_for("Activate through the Core with the issued certificate", activated, 30)


def _busy_port() -> tuple[socket.socket, int]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s, int(s.getsockname()[1])


@pytest.mark.parametrize("which", ["gateway", "core"])
def test_a_port_in_use_is_a_clean_error_naming_the_setting(tmp_path: Path, which: str) -> None:
    init_dev_dir(tmp_path)
    sock, port = _busy_port()
    with sock:
        ports = {"gateway": str(free_port()), "core": str(free_port()), which: str(port)}
        done = krypton("dev", "--dir", str(tmp_path), env={
            "KRYPTON_GATEWAY_LISTEN_PORT": ports["gateway"],
            "KRYPTON_CORE_LISTEN_PORT": ports["core"]})
    assert done.returncode == 2
    assert f"{which}.listen_port: cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_a_missing_vault_folder_is_a_clean_error_naming_the_setting(tmp_path: Path) -> None:
    init_dev_dir(tmp_path)
    missing = tmp_path / "no" / "such" / "gateway.db"
    done = krypton("dev", "--dir", str(tmp_path), env={
        "KRYPTON_GATEWAY_LISTEN_PORT": str(free_port()),
        "KRYPTON_CORE_LISTEN_PORT": str(free_port()),
        "KRYPTON_GATEWAY_VAULT_PATH": str(missing)})
    assert done.returncode == 2
    assert f"gateway.vault_path: the folder {missing.parent} does not exist" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not missing.parent.exists()
