"""The gateway seal (krypton.gateway.seal) on a real vault and a real SoftHSM2
token: what is stored, restored, dropped and refused. The wall clock is fake."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from tests.helpers.softhsm import PIN_ENV, SoftHsm

from krypton.config import RootConfig
from krypton.crypto.keyring import KeyRing, L3Grant, L3State
from krypton.crypto.secret import SecretBytes, generate_key
from krypton.errors import KeyUnavailable, UnwrapFailed
from krypton.gateway.seal import L3Seal, seal_context
from krypton.roots import open_root
from krypton.uplink.types import L3Versions
from krypton.vault import sealed_l3
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


async def make_seal(hsm: SoftHsm, vault: Vault, wall: Wall, max_lease: float | None = None
                    ) -> L3Seal:
    cfg = RootConfig(kind="pkcs11", module=hsm.module, token_label="gw", key_label="seal",
                     pin_env=PIN_ENV)
    seal = L3Seal(await open_root(cfg, setting="gateway.seal", create=True), vault, GW,
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


@pytest.fixture
def vault(tmp_path: Path) -> Vault:
    return Vault.open(tmp_path / "vault.db")


def test_stored_sealed_restored_with_what_is_left_of_the_lease(hsm: SoftHsm, vault: Vault
                                                                ) -> None:
    hsm.init_token("gw")
    wall = Wall()
    m1, m2 = generate_key(256).reveal(), generate_key(256).reveal()

    async def body() -> None:
        seal = await make_seal(hsm, vault, wall, max_lease=50.0)
        seal.heard(grant(m1, 1, L3State.DEACTIVATED, lease=30.0))
        seal.heard(grant(m2, 2, L3State.ACTIVE, lease=3600.0))  # cut to max_lease
        await seal.flush()
        rows = sealed_l3.rows(vault)
        assert [(r.version, r.state, r.lease_end - wall.now, r.kind) for r in rows] == [
            (1, L3State.DEACTIVATED, 30.0, "pkcs11"), (2, L3State.ACTIVE, 50.0, "pkcs11")]
        assert all(m1 not in r.sealed and m2 not in r.sealed for r in rows)
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
        assert sealed_l3.rows(vault) == []  # and the rows are gone
        await seal.close()

    run(body)
    vault.close()


def test_revoked_destroyed_and_unlisted_versions_lose_their_copies(
    hsm: SoftHsm, vault: Vault
) -> None:
    hsm.init_token("gw")
    wall = Wall()

    async def body() -> None:
        seal = await make_seal(hsm, vault, wall)
        for v in (1, 2, 3, 4):
            seal.heard(grant(generate_key(256).reveal(), v))
        await seal.flush()
        seal.heard(grant(bytes(32), 1, L3State.COMPROMISED))
        seal.heard(grant(bytes(32), 2, L3State.DESTROYED))
        seal.listed(L3Versions("demo", frozenset({4})))
        await seal.flush()
        assert [r.version for r in sealed_l3.rows(vault)] == [4]
        await seal.close()

    run(body)
    vault.close()


def test_a_clock_set_back_or_an_edited_row_is_refused(hsm: SoftHsm, vault: Vault,
                                                       tmp_path: Path) -> None:
    hsm.init_token("gw")
    wall = Wall()

    async def body() -> None:
        seal = await make_seal(hsm, vault, wall)
        seal.heard(grant(generate_key(256).reveal(), 1, lease=60.0))
        seal.heard(grant(generate_key(256).reveal(), 2, lease=60.0))
        await seal.flush()
        row = sealed_l3.rows(vault)[0]
        with pytest.raises(UnwrapFailed):  # the blob alone, without the seal, does not open
            await seal.root.unseal(seal_context("another-gateway", row), row.sealed)
        await seal.close()
        db = sqlite3.connect(tmp_path / "vault.db")
        db.execute("UPDATE sealed_l3 SET lease_end = lease_end + 86400 WHERE version = 2")
        db.commit()
        db.close()
        wall.now -= 3600.0  # the clock went back an hour
        seal = await make_seal(hsm, vault, wall)
        assert await seal.restore(KeyRing()) == 0
        wall.now += 3600.0 + 5.0
        ring = KeyRing()
        assert await seal.restore(ring) == 1  # v1; v2's lengthened lease does not open
        assert ring.versions("demo") == {1: L3State.ACTIVE}
        await seal.close()

    run(body)
    vault.close()
