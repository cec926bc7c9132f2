"""Operator-facing L3 rotation and revocation (krypton.core.rotation) on a real
registry, SQLite and PostgreSQL: the list, the --force guard, rotate-first for
the active version, the SyncKeys fence, and the audit trail."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

import pytest
from tests.helpers.keystore_env import opened_registry, opened_store

from krypton.core.keystore import CoreKeyStore
from krypton.core.rotation import L3Version, SyncFence, list_l3, revoke, rotate
from krypton.crypto.keyring import L3State
from krypton.errors import ItemNotFound, WrongKeyLifecycleState
from krypton.model.registry import ObjectRecord, Registry

A, D, C, X = L3State.ACTIVE, L3State.DEACTIVATED, L3State.COMPROMISED, L3State.DESTROYED
ALICE = "os-user:alice"


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(body())  # type: ignore[arg-type]


def wrapped(uid: str, version: int, tenant: str = "demo") -> ObjectRecord:
    return ObjectRecord(uid=uid, tenant=tenant, object_type=2, state=1, created=1,
                        algorithm=3, length=256, l3_version=version, sealed=os.urandom(60),
                        origin="gw-test")


async def trail(registry: Registry) -> list[tuple[str, str, str, str]]:
    """(identity, operation, result, detail) of the audit trail, oldest first
    (re-wraps, which a rotation asks for, are tests/unit/test_core_rewrap.py's)."""
    rows = await registry.audit("demo")
    return [(r.identity, r.operation, r.result, r.detail) for r in rows
            if r.operation != "RewrapL3"]


async def no_wait(_: float) -> None:
    return None


def with_store(keystore_url: str, body: Callable[[CoreKeyStore, Registry], Awaitable[None]]
               ) -> None:
    async def main() -> None:
        async with opened_registry(keystore_url) as registry, \
                opened_store(registry, os.urandom(32)) as store:
            await store.ensure_tenant("demo")
            await body(store, registry)

    run(main)


def test_list_shows_versions_states_and_keys_under_each(keystore_url: str) -> None:
    async def body(store: CoreKeyStore, registry: Registry) -> None:
        await registry.put_objects([wrapped("k-1", 1), wrapped("k-2", 1)])
        assert await rotate(store, registry, "demo", ALICE) == 2
        await registry.put_objects([wrapped("k-3", 2)])
        assert await list_l3(store, registry, "demo") == [L3Version(1, D, 2), L3Version(2, A, 1)]
        with pytest.raises(ItemNotFound):
            await list_l3(store, registry, "nobody")
        assert await trail(registry) == [(ALICE, "RotateL3", "Success", "version 2 active")]

    with_store(keystore_url, body)


def test_revoking_a_version_that_holds_keys_needs_force(keystore_url: str) -> None:
    async def body(store: CoreKeyStore, registry: Registry) -> None:
        await rotate(store, registry, "demo", ALICE)
        await registry.put_objects([wrapped("k-1", 1)])
        with pytest.raises(WrongKeyLifecycleState, match=r"still wraps 1 key.*--force"):
            await revoke(store, registry, "demo", 1, ALICE, sleep=no_wait)
        assert await store.l3_states("demo") == {1: D, 2: A}  # nothing changed
        done = await revoke(store, registry, "demo", 1, ALICE, force=True, sleep=no_wait)
        assert (done.state, done.keys, done.rotated_to) == (C, 1, None)
        assert await store.l3_states("demo") == {1: C, 2: A}
        audit = await trail(registry)
        assert [(who, op, result) for who, op, result, _ in audit] == [
            (ALICE, "RotateL3", "Success"),
            (ALICE, "RevokeL3", "WRONG_KEY_LIFECYCLE_STATE"),
            (ALICE, "RevokeL3", "Success"),
        ]
        assert "forced" in audit[-1][3] and "1 key(s)" in audit[-1][3]

    with_store(keystore_url, body)


def test_revoking_the_active_version_rotates_first(keystore_url: str) -> None:
    async def body(store: CoreKeyStore, registry: Registry) -> None:
        heard: list[tuple[int, L3State]] = []
        store.add_listener(lambda _t, v, s: heard.append((v, s)))
        waited: list[float] = []

        async def grace(seconds: float) -> None:
            waited.append(seconds)
            assert await store.l3_states("demo") == {1: D, 2: A}  # rotated, not yet revoked

        done = await revoke(store, registry, "demo", 1, ALICE, destroy=True, grace=1.5,
                            sleep=grace)
        assert waited == [1.5]
        assert (done.state, done.rotated_to, done.keys) == (X, 2, 0)
        assert await store.l3_states("demo") == {1: X, 2: A}
        assert heard == [(2, A), (1, D), (1, X)]
        ops = [(op, detail) for _, op, _, detail in await trail(registry)]
        assert ops == [("RotateL3", "version 2 active (before revoking version 1)"),
                       ("RevokeL3", "version 1 DESTROYED; 0 key(s) under it")]

    with_store(keystore_url, body)


def test_keys_synced_during_the_grace_stop_an_unforced_revocation(keystore_url: str) -> None:
    async def body(store: CoreKeyStore, registry: Registry) -> None:
        async def late_sync(_: float) -> None:  # a gateway syncs a key made just before
            await registry.put_objects([wrapped("k-late", 1)])

        with pytest.raises(WrongKeyLifecycleState, match="version 2 is now active"):
            await revoke(store, registry, "demo", 1, ALICE, sleep=late_sync)
        assert await store.l3_states("demo") == {1: D, 2: A}  # the rotation stands

    with_store(keystore_url, body)


def test_sync_of_a_record_under_a_revoked_version_is_refused_and_reported(
    keystore_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def body(store: CoreKeyStore, registry: Registry) -> None:
        await revoke(store, registry, "demo", 1, ALICE, sleep=no_wait)
        fence = SyncFence(store, registry)
        offered = [wrapped("k-old", 1), wrapped("k-new", 2), wrapped("k-none", 7)]
        admitted = await fence.admit("spiffe://krypton.dev/gateway/gw", offered)
        assert [r.uid for r in admitted] == ["k-new"]
        assert "k-old" in caplog.text and "COMPROMISED" in caplog.text
        again = await fence.admit("spiffe://krypton.dev/gateway/gw", offered)
        assert [r.uid for r in again] == ["k-new"]  # refused again, reported once
        refusals = [(op, d) for _, op, result, d in await trail(registry)
                    if op == "SyncKeys"]
        assert len(refusals) == 2  # one per refused version
        assert any("k-old" in d and "version 1 (COMPROMISED)" in d for _, d in refusals)
        assert any("k-none" in d and "version 7 (unknown)" in d for _, d in refusals)

    with_store(keystore_url, body)
