"""``krypton dev --vault openbao``: the gateway vault on a real OpenBao server
with Raft storage, started (initialised, unsealed) by the dev stack.

- PyKMIP creates and reads keys, the stack restarts (OpenBao is unsealed again
  from the material beside the dev PKI) and serves them again;
- a gateway SIGKILLed mid-Create-load (and its OpenBao SIGKILLed with it)
  loses no acknowledged key: after a restart, with a cold cache, every one is
  read back through OpenBao with the same material;
- what OpenBao holds, read secret by secret through its KV API, is wrapped
  records only: no plaintext of any key the test was given.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kmip.core import enums
from kmip.pie.client import ProxyKmipClient
from tests.helpers.load import client, created_until_killed
from tests.helpers.servers import DevServer, start_dev_server

from krypton.errors import OpenBaoError
from krypton.openbao import OpenBaoClient

VAULT = ("--vault", "openbao")
START = 120.0  # the first start initialises OpenBao (Raft bootstrap: seconds)
WRITERS = 6

pytestmark = pytest.mark.slow


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Any]:
    started: list[DevServer] = []

    def start(port: int | None = None) -> DevServer:
        server = start_dev_server(tmp_path / "dev", port=port, args=VAULT, timeout=START)
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()


def _pykmip(srv: DevServer) -> Any:
    return ProxyKmipClient(hostname=srv.host, port=srv.port, cert=str(srv.pki / "client.pem"),
                           key=str(srv.pki / "client-key.pem"), ca=str(srv.pki / "ca.pem"),
                           config_file="/dev/null")  # fmt: skip


def _bao(srv: DevServer) -> tuple[OpenBaoClient, str]:
    """A root client of the stack's OpenBao, and the gateway's KV mount/prefix."""
    material = json.loads((srv.pki / "openbao.json").read_text())
    ports = json.loads((srv.layout.root / "openbao" / "ports.json").read_text())
    return OpenBaoClient(f"http://127.0.0.1:{ports['api']}", token=material["root_token"]), (
        "kv/{kind}/krypton/gateway/keys/")


def _stored(srv: DevServer) -> dict[str, Any]:
    """Every key secret, every version still readable, through the KV API."""
    client, place = _bao(srv)
    try:
        uids = client.list(place.format(kind="metadata"))["data"]["keys"]
        found: dict[str, Any] = {}
        for uid in uids:
            versions = client.get(place.format(kind="metadata") + uid)["data"]["versions"]
            for v in versions:
                path = f"{place.format(kind='data')}{uid}?version={v}"
                try:
                    found[f"{uid}@{v}"] = client.get(path)
                except OpenBaoError as exc:  # a destroyed version: 404, nothing left
                    found[f"{uid}@{v}"] = exc.http_status
        return found
    finally:
        client.close()


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_dev_openbao_serves_pykmip_across_a_restart(dev: Any) -> None:
    srv = dev()
    secrets = srv.pki / "openbao.json"
    assert secrets.stat().st_mode & 0o777 == 0o600
    with _pykmip(srv) as client:
        uid = client.create(enums.CryptographicAlgorithm.AES, 256)
        key = client.get(uid).value
        assert len(key) == 32
    assert f"{uid}@1" in _stored(srv)
    srv.stop()
    again = dev(port=srv.port)  # OpenBao is unsealed again with the kept key
    with _pykmip(again) as client:
        assert client.get(uid).value == key
        second = client.create(enums.CryptographicAlgorithm.AES, 128)
        assert len(client.get(second).value) == 16


def test_sigkill_mid_create_load_loses_no_acknowledged_key(dev: Any) -> None:
    srv = dev()

    def kill() -> None:
        bao = _children(srv.proc.pid)
        srv.kill()  # SIGKILL while the writers are still sending ...
        for pid in bao:  # ... and OpenBao too, before it could shut down cleanly
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    snapshot = created_until_killed(srv, WRITERS, 300, 60.0, kill)
    restarted = dev(port=srv.port)  # a new process: its record cache is empty
    with client(restarted) as c:
        for uid, key in snapshot.items():
            material = c.get(uid)  # read through OpenBao
            assert material == key if key is not None else len(material) == 16

    # What OpenBao holds is wrapped records only.
    stored = _stored(restarted)
    assert {uid for uid in snapshot} <= {k.split("@")[0] for k in stored}
    dumped = json.dumps(stored).encode()
    assert all(answer == 404 or isinstance(answer, dict) for answer in stored.values())
    current = [answer["data"]["data"] for answer in stored.values() if answer != 404]
    assert all(len(base64.b64decode(data["wrapped"])) > 32 for data in current)
    assert current[0]["wrapped"].encode() in dumped  # the scan sees the stored blobs
    plaintexts = [key for key in snapshot.values() if key is not None]
    assert plaintexts
    for key in plaintexts:
        for form in (key, key.hex().encode(), base64.b64encode(key)):
            assert form not in dumped
