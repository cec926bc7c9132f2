"""The Core's background re-wrap (krypton.core.rewrap) on a real registry, SQLite
and PostgreSQL: a rotation asks for it, the worker moves every object to the
active version (same key, fresh record MAC, one audit record per key naming the
operator), progress is stored per batch and a run cut off halfway resumes."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable

import pytest
from tests.helpers.keystore_env import opened_registry, opened_store

from krypton.core.embedded import EmbeddedL3Source
from krypton.core.keystore import CoreKeyStore
from krypton.core.records import AuthenticatedRegistry
from krypton.core.rewrap import Rewrapper, request
from krypton.core.rotation import revoke, rotate
from krypton.crypto.keyring import KeyRing, L3State
from krypton.crypto.secret import SecretBytes
from krypton.model.registry import ObjectRecord, Registry

ALICE = "os-user:alice"
Body = Callable[[CoreKeyStore, Registry, KeyRing], Awaitable[None]]


class _Crash(Exception):
    pass


def with_core(keystore_url: str, body: Body) -> None:
    async def main() -> None:
        async with opened_registry(keystore_url) as registry, \
                opened_store(registry, os.urandom(32)) as store:
            await store.ensure_tenant("demo")
            ring = KeyRing()
            source = EmbeddedL3Source(store, ["demo"], 3600.0)
            await source.start(ring)
            try:
                await body(store, AuthenticatedRegistry(registry, ring.record_mac), ring)
            finally:
                await source.close()

    asyncio.run(main())


async def made(registry: Registry, ring: KeyRing, n: int) -> dict[str, bytes]:
    """``n`` keys wrapped under the active version, stored with their MAC."""
    keys = {f"k-{i:03}": os.urandom(32) for i in range(n)}
    records = []
    for uid, key in keys.items():
        version, blob = ring.wrap("demo", uid, SecretBytes(key))
        records.append(ObjectRecord(uid=uid, tenant="demo", object_type=2, state=2, created=1,
                                    algorithm=3, length=256, l3_version=version, sealed=blob,
                                    origin="gw-test"))
    await registry.put_objects(records)
    return keys


async def readable(registry: Registry, ring: KeyRing, keys: dict[str, bytes]) -> dict[str, int]:
    """uid -> L3 version, each record read (MAC checked) and unwrapped to its key."""
    out = {}
    for uid, key in keys.items():
        rec = await registry.get_object("demo", uid)
        assert rec is not None and rec.sealed is not None and rec.l3_version is not None
        with ring.unwrap("demo", uid, rec.l3_version, rec.sealed) as plain:
            assert plain.view() == key
        out[uid] = rec.l3_version
    return out


def test_rotation_asks_and_the_worker_moves_every_key(keystore_url: str) -> None:
    async def body(store: CoreKeyStore, registry: Registry, ring: KeyRing) -> None:
        keys = await made(registry, ring, 7)
        assert await rotate(store, registry, "demo", ALICE) == 2
        [job] = await registry.rewrap_jobs("demo")
        assert (job.operator, job.target, job.total, job.done, job.finished) == (
            ALICE, 2, 7, 0, None)
        [done] = await Rewrapper(registry, store, ring, batch=3).run_pending()
        assert (done.done, done.finished is not None) == (7, True)
        assert await registry.rewrap_jobs("demo") == [done]
        assert set((await readable(registry, ring, keys)).values()) == {2}
        assert await registry.l3_usage("demo") == {2: 7}
        moves = [r for r in await registry.audit("demo") if r.operation == "RewrapL3" and r.uid]
        assert sorted(r.uid or "" for r in moves) == sorted(keys)
        assert {(r.identity, r.detail) for r in moves} == {(ALICE, "L3 version 1 -> 2")}
        # v1 wraps nothing now: revoked without --force
        gone = await revoke(store, registry, "demo", 1, ALICE, sleep=asyncio.sleep)
        assert (gone.state, gone.keys) == (L3State.COMPROMISED, 0)
        assert await Rewrapper(registry, store, ring).run_pending() == []

    with_core(keystore_url, body)


def test_a_run_cut_off_halfway_resumes_where_it_was(keystore_url: str) -> None:
    async def body(store: CoreKeyStore, registry: Registry, ring: KeyRing) -> None:
        keys = await made(registry, ring, 5)
        await rotate(store, registry, "demo", ALICE, rewrap=False)
        assert await registry.rewrap_jobs("demo") == []
        await request(store, registry, "demo", "ops:bob")

        async def crash(_: float) -> None:
            raise _Crash

        with pytest.raises(_Crash):  # the process dies after its first batch
            await Rewrapper(registry, store, ring, batch=2, pause=1.0, sleep=crash).run_pending()
        [job] = await registry.rewrap_jobs("demo")
        assert (job.done, job.total, job.finished) == (2, 5, None)
        assert await registry.l3_usage("demo") == {1: 3, 2: 2}
        [job] = await Rewrapper(registry, store, ring, batch=2).run_pending()
        assert (job.done, job.total, job.finished is not None) == (5, 5, True)
        assert set((await readable(registry, ring, keys)).values()) == {2}
        who = {r.identity for r in await registry.audit("demo") if r.operation == "RewrapL3"}
        assert who == {"ops:bob"}

    with_core(keystore_url, body)


def test_a_record_under_an_older_version_after_the_end_reopens_the_job(
        keystore_url: str) -> None:
    async def body(store: CoreKeyStore, registry: Registry, ring: KeyRing) -> None:
        await rotate(store, registry, "demo", ALICE)
        worker = Rewrapper(registry, store, ring)
        [job] = await registry.rewrap_jobs("demo")
        assert (job.total, job.finished is not None) == (0, True)  # nothing to move
        # a gateway cut off during the rotation syncs a key it wrapped under v1
        key = os.urandom(32)
        await registry.put_objects([ObjectRecord(
            uid="late", tenant="demo", object_type=2, state=2, created=1, algorithm=3,
            length=256, l3_version=1, sealed=_wrap_old(ring, 1, "late", key))])
        assert await worker.run_pending() == []  # finished: not looked at by itself
        worker.reopen("demo")
        [job] = await worker.run_pending()
        assert (job.done, job.finished is not None) == (1, True)
        assert await readable(registry, ring, {"late": key}) == {"late": 2}

    with_core(keystore_url, body)


def _wrap_old(ring: KeyRing, version: int, uid: str, key: bytes) -> bytes:
    """A blob under an older (DEACTIVATED) version, as a gateway that had not
    heard of the rotation makes it."""
    newest = max(ring.versions("demo"))
    ring.set_state("demo", newest, L3State.DEACTIVATED)
    ring.set_state("demo", version, L3State.ACTIVE)
    try:
        got, blob = ring.wrap("demo", uid, SecretBytes(key))
        assert got == version
        return blob
    finally:
        ring.set_state("demo", version, L3State.DEACTIVATED)
        ring.set_state("demo", newest, L3State.ACTIVE)


def test_a_rotation_without_rewrap_stops_the_job_and_keeps_it_closed(keystore_url: str) -> None:
    async def body(store: CoreKeyStore, registry: Registry, ring: KeyRing) -> None:
        keys = await made(registry, ring, 3)
        await rotate(store, registry, "demo", ALICE)  # asks for a re-wrap to v2 ...
        await rotate(store, registry, "demo", "ops:bob", rewrap=False)  # ... stopped
        [job] = await registry.rewrap_jobs("demo")
        assert (job.target, job.finished is not None) == (2, True)
        worker = Rewrapper(registry, store, ring)
        worker.reopen("demo")  # a sync under an older version: the job is for v2, not v3
        assert await worker.run_pending() == []
        assert set((await readable(registry, ring, keys)).values()) == {1}
        stops = [r for r in await registry.audit("demo")
                 if r.operation == "RewrapL3" and r.detail.startswith("stopped")]
        assert [r.identity for r in stops] == ["ops:bob"]

    with_core(keystore_url, body)


def test_a_job_waits_until_this_cores_ring_knows_its_target(keystore_url: str) -> None:
    """A rotation committed by another process (the CLI) reaches a running Core's
    key ring a little later; a pass run before that would move nothing and close
    the job with every key still under the old version."""

    async def body(store: CoreKeyStore, registry: Registry, ring: KeyRing) -> None:
        keys = await made(registry, ring, 4)
        behind = KeyRing()
        late = EmbeddedL3Source(store, ["demo"], 3600.0)
        await late.start(behind)
        await late.close()  # holds version 1 and hears of nothing after
        await rotate(store, registry, "demo", ALICE)
        assert behind.active_version("demo") == 1 and ring.active_version("demo") == 2
        assert await Rewrapper(registry, store, behind).run_pending() == []
        [job] = await registry.rewrap_jobs("demo")
        assert job.finished is None and job.done == 0
        [done] = await Rewrapper(registry, store, ring).run_pending()
        assert done.done == 4 and done.finished is not None
        assert set((await readable(registry, ring, keys)).values()) == {2}

    with_core(keystore_url, body)
