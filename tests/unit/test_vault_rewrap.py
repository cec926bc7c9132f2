"""A gateway vault after an L3 rotation (krypton.gateway.rewrap, Vault.rewrap and
Vault.adopt) on a real SQLite vault: its records move to the active version
with a fresh MAC, a record changed meanwhile is left alone, and a record whose
version went away takes the Core's re-wrapped copy whole."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from krypton.crypto.keyring import KeyRing, L3State
from krypton.crypto.secret import SecretBytes
from krypton.errors import KeyUnavailable
from krypton.gateway.rewrap import VaultRewrapper
from krypton.model.record import KeyRecord, authenticated_bytes
from krypton.vault.sqlite import Vault, quarantined

Body = Callable[[Vault, KeyRing, Path], Awaitable[None]]


def _install(ring: KeyRing, version: int, state: L3State) -> None:
    ring.install("demo", version, SecretBytes(bytes([version]) * 32), state,
                 ring.lease_deadline(3600))


def _record(ring: KeyRing, uid: str, key: bytes, *, synced: bool = False) -> KeyRecord:
    version, blob = ring.wrap("demo", uid, SecretBytes(key))
    return KeyRecord(uid, "demo", 2, 3, 256, 2, version, blob, synced=synced)


def with_vault(tmp_path: Path, body: Body) -> None:
    async def main() -> None:
        ring = KeyRing()
        _install(ring, 1, L3State.ACTIVE)
        vault = Vault.open(tmp_path / "vault.db", sealer=ring.record_mac)
        try:
            await body(vault, ring, tmp_path)
        finally:
            vault.close()

    asyncio.run(main())


def _key(vault: Vault, ring: KeyRing, uid: str) -> tuple[int, bytes]:
    rec = vault.get(uid)
    assert rec is not None
    with ring.unwrap("demo", uid, rec.l3_version, rec.wrapped) as plain:
        return rec.l3_version, bytes(plain.view())


def test_the_outbox_moves_to_the_active_version_with_fresh_macs(tmp_path: Path) -> None:
    async def body(vault: Vault, ring: KeyRing, where: Path) -> None:
        keys = {f"k-{i}": os.urandom(32) for i in range(7)}
        for uid, key in keys.items():
            await vault.put(_record(ring, uid, key))
        await vault.put(_record(ring, "at-core", os.urandom(32), synced=True))
        worker = VaultRewrapper(vault, ring, ["demo"], batch=3)
        assert await worker.run_once() == 0  # nothing older than the active version
        _install(ring, 2, L3State.ACTIVE)
        ring.set_state("demo", 1, L3State.DEACTIVATED)
        assert await worker.run_once() == 7
        assert await worker.run_once() == 0  # done for this active version
        vault.close()
        fresh = Vault.open(where / "vault.db", sealer=ring.record_mac)  # rows checked again
        try:
            assert {uid: _key(fresh, ring, uid) for uid in keys} == {
                uid: (2, key) for uid, key in keys.items()}
            assert fresh.l3_versions("demo") == {2}
            at_core = fresh.get("at-core")  # follows the Core's record, not moved here
            assert at_core is not None and at_core.l3_version == 1
        finally:
            fresh.close()

    with_vault(tmp_path, body)


def test_a_record_changed_after_it_was_read_is_not_moved(tmp_path: Path) -> None:
    async def body(vault: Vault, ring: KeyRing, where: Path) -> None:
        await vault.put(_record(ring, "k", os.urandom(32)))
        read = vault.get("k")
        assert read is not None
        _install(ring, 2, L3State.ACTIVE)
        await vault.update_state("k", 6)  # destroyed meanwhile: material erased
        version, blob = ring.wrap("demo", "k", SecretBytes(os.urandom(32)))
        assert not await vault.rewrap(read, version, blob)
        now = vault.get("k")
        assert now is not None and (now.l3_version, now.wrapped) == (1, b"")

    with_vault(tmp_path, body)


def test_a_record_under_a_dropped_version_takes_the_cores_copy(tmp_path: Path) -> None:
    async def body(vault: Vault, ring: KeyRing, where: Path) -> None:
        key = os.urandom(32)
        await vault.put(_record(ring, "k", key))
        _install(ring, 2, L3State.ACTIVE)
        version, blob = ring.wrap("demo", "k", SecretBytes(key))
        core = replace(_record(ring, "k", key, synced=True), l3_version=version, wrapped=blob)
        core = replace(core, mac=ring.record_mac("demo", 2, authenticated_bytes(core)))
        ring.drop("demo", 1)  # revoked while this gateway was away
        vault.close()
        reopened = Vault.open(where / "vault.db", sealer=ring.record_mac)
        try:
            with pytest.raises(KeyUnavailable):
                reopened.get("k")
            peeked = reopened.peek("k")
            assert peeked is not None and peeked.l3_version == 1
            assert await reopened.adopt(reopened.authentic(core), seq=7)
            assert _key(reopened, ring, "k") == (2, key)
            assert reopened.cursor() == 7
        finally:
            reopened.close()

    with_vault(tmp_path, body)


def test_records_the_core_refused_leave_the_outbox_listed(tmp_path: Path) -> None:
    async def body(vault: Vault, ring: KeyRing, where: Path) -> None:
        for uid in ("a", "b", "c"):
            await vault.put(_record(ring, uid, os.urandom(32)))
        why = {"a": "refused by the Krypton Core: v1", "c": "refused by the Krypton Core: v1"}
        assert await vault.quarantine(why) == 2
        assert [r.uid for r in vault.outbox(10)] == ["b"]
        assert await vault.quarantine(why) == 0  # once
        waiting, rows = quarantined(where / "vault.db")
        assert waiting == 1
        assert sorted((q.uid, q.reason) for q in rows) == sorted(why.items())
        # out of the outbox for a delegation too (no sync before delegate)
        assert [vault.get(u).synced for u in ("a", "b", "c")] == [True, False, True]  # type: ignore[union-attr]

    with_vault(tmp_path, body)
