"""The gateway seal (krypton.gateway.seal) on a real vault — SQLite, and
OpenBao (the session's ``bao server -dev``) — and a real SoftHSM2 token: what
is stored, restored, dropped and refused, and that the vault holds sealed
copies only. The wall clock is fake."""

from __future__ import annotations

import asyncio
import base64
import json
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from tests.helpers.openbao import BaoServer
from tests.helpers.softhsm import PIN_ENV, SoftHsm

from krypton.config import RootConfig
from krypton.crypto.keyring import KeyRing, L3Grant, L3State
from krypton.crypto.secret import SecretBytes, generate_key
from krypton.errors import KeyUnavailable, UnwrapFailed
from krypton.gateway.seal import L3Seal, seal_context
from krypton.roots import open_root
from krypton.uplink.types import L3Versions
from krypton.vault.openbao import BaoVault
from krypton.vault.port import SealedL3Store, VaultStore
from krypton.vault.sqlite import Vault

GW = "gw-test"


class Wall:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Mono:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(body())  # type: ignore[arg-type]


async def make_seal(hsm: SoftHsm, vault: VaultStore, wall: Wall,
                    max_lease: float | None = None) -> L3Seal:
    cfg = RootConfig(kind="pkcs11", module=hsm.module, token_label="gw", key_label="seal",
                     pin_env=PIN_ENV)
    seal = L3Seal(await open_root(cfg, setting="gateway.seal", create=True), vault.sealed_l3(),
                  GW,
                  max_lease=max_lease, wall=wall)
    seal.start()
    return seal


def grant(material: bytes, version: int = 1, state: L3State = L3State.ACTIVE,
          lease: float = 60.0, tenant: str = "demo") -> L3Grant:
    return L3Grant(tenant, version, SecretBytes(material), state, lease)


def wraps_with(ring: KeyRing, material: bytes, version: int) -> None:
    """The ring's version ``version`` is ``material`` (an L4 wrapped by one opens by the other)."""
    other = KeyRing()
    other.install("demo", version, SecretBytes(material), L3State.ACTIVE, float("inf"))
    with generate_key(256) as l4:
        _, blob = other.wrap("demo", "uid-1", l4)
        assert ring.unwrap("demo", "uid-1", version, blob) == l4


class Backend:
    """One vault backend: the vault, and what a test reads or edits behind it."""

    def __init__(self, kind: str, tmp_path: Path, bao: BaoServer | None) -> None:
        self.kind, self.bao = kind, bao
        self.db = tmp_path / "vault.db"
        self.prefix = bao.unique("seal") if bao is not None else ""
        self.vault: VaultStore = (
            Vault.open(self.db) if bao is None else
            BaoVault.open(bao.address, token=bao.root_token, mount=bao.enable_kv("kv"),
                          prefix=self.prefix))  # fmt: skip

    @property
    def store(self) -> SealedL3Store:
        return self.vault.sealed_l3()

    def lengthen(self, version: int, seconds: float) -> None:
        """Move the stored lease end of demo's ``version`` behind the gateway's back."""
        if self.bao is None:
            db = sqlite3.connect(self.db)
            db.execute("UPDATE sealed_l3 SET lease_end = lease_end + ? WHERE version = ?",
                       (seconds, version))
            db.commit()
            db.close()
            return
        path = f"kv/data/{self.prefix}/sealed_l3/demo~{version}"
        data = self.bao.request("GET", path)["data"]["data"]  # type: ignore[index]
        self.bao.request("POST", path, {"data": {**data, "lease_end": data["lease_end"]
                                                 + seconds}})  # fmt: skip

    def dump(self) -> bytes:
        """Everything the vault holds of its sealed copies: the SQLite files, or
        every version of every sealed secret as the KV API returns it."""
        if self.bao is None:
            return b"".join(p.read_bytes() for p in self.db.parent.glob("vault.db*"))
        found = self.bao.kv_secrets("kv", f"{self.prefix}/sealed_l3")
        return json.dumps({k.rpartition("/")[2]: v for k, v in found.items()}).encode()


@pytest.fixture(params=["sqlite", "openbao"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    bao = request.getfixturevalue("openbao") if request.param == "openbao" else None
    b = Backend(request.param, tmp_path, bao)
    yield b
    b.vault.close()


def open_anywhere(material: bytes, dump: bytes) -> bool:
    return any(form in dump for form in (material, material.hex().encode(),
                                         base64.b64encode(material)))


def test_stored_sealed_restored_with_what_is_left_of_the_lease(hsm: SoftHsm, backend: Backend
                                                                ) -> None:
    hsm.init_token("gw")
    wall = Wall()
    m1, m2 = generate_key(256).reveal(), generate_key(256).reveal()
    vault, store = backend.vault, backend.store

    async def body() -> None:
        seal = await make_seal(hsm, vault, wall, max_lease=50.0)
        seal.heard(grant(m1, 1, L3State.DEACTIVATED, lease=30.0))
        seal.heard(grant(m2, 2, L3State.ACTIVE, lease=3600.0))  # cut to max_lease
        seal.heard(grant(m2, 2, L3State.ACTIVE, lease=3600.0))  # renewed: stored again
        await seal.flush()
        rows = await store.rows()
        assert [(r.version, r.state, r.lease_end - wall.now, r.kind) for r in rows] == [
            (1, L3State.DEACTIVATED, 30.0, "pkcs11"), (2, L3State.ACTIVE, 50.0, "pkcs11")]
        assert all(m1 not in r.sealed and m2 not in r.sealed for r in rows)
        # the vault holds sealed copies only (every version still stored)
        dump = backend.dump()
        assert all(r.sealed in dump or base64.b64encode(r.sealed) in dump for r in rows)
        assert not open_anywhere(m1, dump) and not open_anywhere(m2, dump)
        if backend.kind == "openbao":  # the replaced copy of v2 is destroyed, not kept
            assert json.loads(dump)["demo~2@1"] == 404
        await seal.close()

        wall.now += 20.0  # a restart 20 s later
        mono = Mono()
        ring = KeyRing(clock=mono)
        seal = await make_seal(hsm, vault, wall)
        assert await seal.restore(ring) == 2
        assert ring.versions("demo") == {1: L3State.DEACTIVATED, 2: L3State.ACTIVE}
        assert ring.lease_expires_at("demo", 1) == mono.now + 10.0  # never extended
        assert ring.lease_expires_at("demo", 2) == mono.now + 30.0
        wraps_with(ring, m2, 2)
        mono.now += 10.0
        with pytest.raises(KeyUnavailable, match="lease"):
            wraps_with(ring, m1, 1)
        await seal.close()

        wall.now += 30.0  # every lease has ended
        seal = await make_seal(hsm, vault, wall)
        assert await seal.restore(KeyRing()) == 0
        assert await store.rows() == []  # and the rows are gone
        await seal.close()

    run(body)


def test_revoked_destroyed_and_unlisted_versions_lose_their_copies(
    hsm: SoftHsm, backend: Backend
) -> None:
    hsm.init_token("gw")
    wall = Wall()
    materials = [generate_key(256).reveal() for _ in range(4)]

    async def body() -> None:
        seal = await make_seal(hsm, backend.vault, wall)
        for v, material in enumerate(materials, 1):
            seal.heard(grant(material, v))
        seal.heard(grant(generate_key(256).reveal(), 1, tenant="other"))
        await seal.flush()
        seal.heard(grant(bytes(32), 1, L3State.COMPROMISED))
        seal.heard(grant(bytes(32), 2, L3State.DESTROYED))
        seal.listed(L3Versions("demo", frozenset({4})))
        await seal.flush()
        assert [(r.tenant, r.version) for r in await backend.store.rows()] == [
            ("demo", 4), ("other", 1)]  # another tenant's copies are not touched
        await seal.close()

    run(body)
    if backend.kind == "openbao":  # dropped: every version of the secret is gone
        assert set(json.loads(backend.dump())) == {"demo~4@1", "other~1@1"}


def test_a_clock_set_back_or_an_edited_row_is_refused(hsm: SoftHsm, backend: Backend) -> None:
    hsm.init_token("gw")
    wall = Wall()

    async def body() -> None:
        seal = await make_seal(hsm, backend.vault, wall)
        seal.heard(grant(generate_key(256).reveal(), 1, lease=60.0))
        seal.heard(grant(generate_key(256).reveal(), 2, lease=60.0))
        await seal.flush()
        row = (await backend.store.rows())[0]
        with pytest.raises(UnwrapFailed):  # the blob alone, without the seal, does not open
            await seal.root.unseal(seal_context("another-gateway", row), row.sealed)
        await seal.close()
        backend.lengthen(2, 86400)
        wall.now -= 3600.0  # the clock went back an hour
        seal = await make_seal(hsm, backend.vault, wall)
        assert await seal.restore(KeyRing()) == 0
        wall.now += 3600.0 + 5.0
        ring = KeyRing()
        assert await seal.restore(ring) == 1  # v1; v2's lengthened lease does not open
        assert ring.versions("demo") == {1: L3State.ACTIVE}
        await seal.close()

    run(body)
