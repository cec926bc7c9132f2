"""The vault's record cache bounded in bytes (krypton.vault.cache), misses read
in batches off the event loop (krypton.vault._batched), and a Get whose record
is not cached answered without blocking the loop (the dispatcher's read-through)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

from krypton.crypto.keyring import KeyRing, L3State
from krypton.crypto.secret import SecretBytes
from krypton.errors import KryptonError, StorageError
from krypton.gateway.engine.dispatch import Dispatcher, Session
from krypton.gateway.engine.services import Services
from krypton.kmip import client_messages as cm
from krypton.kmip.versions import ProtocolVersion
from krypton.metrics.meter import SUCCESS, KmipMeter
from krypton.model import KeyRecord
from krypton.model.grant import Grant
from krypton.ttlv.codec import decode, encode
from krypton.ttlv.enums import Operation
from krypton.vault._batched import BatchedReads, Found
from krypton.vault.cache import RECORD_OVERHEAD, RecordCache, weight
from krypton.vault.sqlite import Vault

V14 = ProtocolVersion(1, 4)
SESSION = Session("spiffe://t/demo", Grant("demo", None), 1)


def record(n: int = 0, *, wrapped: int = 40) -> KeyRecord:
    return KeyRecord(uid=f"uid-{n:04d}", tenant="demo", object_type=2, algorithm=3, length=256,
                     state=1, l3_version=1, wrapped=os.urandom(wrapped))  # fmt: skip


# -- the cache ----------------------------------------------------------------------
def test_weight_is_the_byte_fields_plus_the_overhead() -> None:
    rec = record(1, wrapped=100)
    assert weight(rec) == RECORD_OVERHEAD + len(rec.uid) + len("demo") + 100


def test_the_byte_bound_evicts_the_least_recently_used() -> None:
    recs = [record(n) for n in range(5)]
    cache = RecordCache(1000, max_bytes=3 * weight(recs[0]))
    cache.add(recs[:3])
    assert cache.get(recs[0].uid) == recs[0]  # now the most recently used
    cache.add([recs[3]])
    assert cache.get(recs[1].uid) is None  # the least recently used went
    assert [cache.get(r.uid) for r in (recs[0], recs[2], recs[3])] == [recs[0], recs[2], recs[3]]
    assert cache.size_bytes == 3 * weight(recs[0])
    big = record(9, wrapped=3 * weight(recs[0]))  # larger than the whole bound
    cache.add([big])
    assert len(cache) == 0 and cache.size_bytes == 0


def test_the_count_bound_still_holds_and_the_bytes_follow_changes() -> None:
    recs = [record(n) for n in range(4)]
    cache = RecordCache(2, max_bytes=1 << 20)
    cache.add(recs)
    assert len(cache) == 2 and cache.size_bytes == 2 * weight(recs[0])
    grown = replace(recs[3], attributes=b"x" * 50)
    cache.update([recs[3].uid], lambda _: grown)
    assert cache.size_bytes == weight(recs[2]) + weight(grown)
    cache.discard(recs[2].uid)
    assert cache.size_bytes == weight(grown)
    cache.clear()
    assert cache.size_bytes == 0


def test_warm_uses_free_room_only_on_the_cold_side() -> None:
    recs = [record(n) for n in range(6)]
    cache = RecordCache(4)
    cache.add([recs[0]])  # a request's record
    assert cache.warm([recs[5], recs[4], recs[0]], cache.generation) is True
    assert cache.warm([recs[3], recs[2], recs[1]], cache.generation) is False  # full
    assert len(cache) == 4 and cache.get(recs[1].uid) is None
    cache.add([recs[1]])  # the coldest warmed one goes first, not the request's
    assert cache.get(recs[3].uid) is None
    assert all(cache.get(r.uid) == r for r in (recs[0], recs[1], recs[4], recs[5]))


def test_warm_after_a_change_inserts_nothing() -> None:
    cache = RecordCache(10)
    generation = cache.generation
    cache.discard("gone")
    assert cache.warm([record(1)], generation) is None
    assert len(cache) == 0


# -- batched reads ------------------------------------------------------------------
class Gated:
    """A ``load_many`` that serves from a dict once its gate opens, noting each batch."""

    def __init__(self, stored: dict[str, KeyRecord | KryptonError]) -> None:
        self.stored = stored
        self.gate = threading.Event()
        self.batches: list[tuple[str, ...]] = []

    def __call__(self, uids: Sequence[str]) -> Found:
        self.batches.append(tuple(uids))
        if not self.gate.wait(30):
            raise StorageError("gate never opened")
        if "boom" in uids:
            raise StorageError("the read failed")
        return {u: self.stored[u] for u in uids if u in self.stored}


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as executor:
        yield executor


def test_misses_that_wait_together_are_read_together(pool: ThreadPoolExecutor) -> None:
    recs = {r.uid: r for r in (record(n) for n in range(4))}
    load = Gated({**recs, "bad": StorageError("unreadable")})
    reads = BatchedReads(load, pool, parallel=1)
    uids = list(recs)

    async def main() -> list[KeyRecord | BaseException | None]:
        first = reads.read(uids[0])  # goes at once, alone
        assert reads.in_flight == 1
        rest = [reads.read(u) for u in (*uids[1:], uids[1], "bad", "absent")]
        await asyncio.sleep(0)
        load.gate.set()
        return list(await asyncio.gather(first, *rest, return_exceptions=True))

    got = asyncio.run(main())
    assert load.batches == [(uids[0],), (*uids[1:], "bad", "absent")]  # uids[1] once
    assert got[:5] == [recs[u] for u in (*uids, uids[1])]
    assert isinstance(got[5], StorageError) and got[6] is None  # each its own answer


def test_a_failed_batch_fails_its_readers_only(pool: ThreadPoolExecutor) -> None:
    rec = record(1)
    load = Gated({rec.uid: rec})
    load.gate.set()
    reads = BatchedReads(load, pool, parallel=1)

    async def main() -> None:
        with pytest.raises(StorageError):
            await reads.read("boom")
        assert await reads.read(rec.uid) == rec
        assert reads.in_flight == 0

    asyncio.run(main())


# -- the dispatcher: a miss does not block the loop ------------------------------------
def _ring() -> KeyRing:
    ring = KeyRing()
    ring.install("demo", 1, SecretBytes.adopt(bytearray(range(32))), L3State.ACTIVE,
                 ring.lease_deadline(3600))  # fmt: skip
    return ring


def _get(uid: str) -> bytes:
    return encode(cm.request_message(V14, [cm.get_item(uid)]))


def _key_of(response: bytes) -> bytes:
    item = cm.parse_response(decode(response)).items[0]
    assert item.payload is not None, item.message
    return cm.key_material(item.payload)


def test_a_miss_waits_off_the_loop_while_cached_gets_are_answered(tmp_path: Path) -> None:
    ring = _ring()
    path = tmp_path / "vault.db"
    vault = Vault.open(path, sealer=ring.record_mac)
    made = Dispatcher(Services(store=vault, keyring=ring), fast=False)

    async def create() -> str:
        msg = encode(cm.request_message(V14, [cm.create_item(V14, cm.aes_attributes(256))]))
        item = cm.parse_response(decode(await made.handle(msg, SESSION))).items[0]
        assert item.payload is not None
        return cm.unique_identifier(item.payload)

    hot, cold = asyncio.run(create()), asyncio.run(create())
    want = {u: _key_of(asyncio.run(made.handle(_get(u), SESSION))) for u in (hot, cold)}
    vault.close()
    vault = Vault.open(path, sealer=ring.record_mac)  # an empty cache
    try:
        meter = KmipMeter()
        dispatcher = Dispatcher(Services(store=vault, keyring=ring), meter=meter)
        asyncio.run(vault.read_through(hot))  # the hot key is cached, the cold one not
        blocked = _gate(vault)

        async def main() -> None:
            assert dispatcher.answer_now(_get(cold), SESSION) is None  # a miss: not now
            asked = time.perf_counter()
            waiting = asyncio.ensure_future(dispatcher.handle(_get(cold), SESSION))
            for _ in range(3):
                await asyncio.sleep(0)
            assert not waiting.done()  # its read is held on the reader thread...
            for _ in range(3):  # ...while another connection's cached Gets are answered
                hot_answer = await dispatcher.handle(_get(hot), SESSION)
                assert _key_of(hot_answer) == want[hot]
            assert not waiting.done()
            held = time.perf_counter() - asked
            blocked.set()
            assert _key_of(await asyncio.wait_for(waiting, 30)) == want[cold]
            # now cached: the fast path answers it at once
            assert dispatcher.answer_now(_get(cold), SESSION) is not None
            # every Get counted once, the missed one with the time its read was held
            assert meter.counted() == {(Operation.GET, SUCCESS): 5}
            assert meter.timed()[Operation.GET][1] >= held

        asyncio.run(main())
    finally:
        vault.close()


def _gate(vault: Vault) -> threading.Event:
    """Hold the vault's read-through reads on their reader thread until the event is set."""
    gate = threading.Event()
    batched: BatchedReads = vault._batched  # the reader thread's work, held
    real: Callable[[Sequence[str]], Found] = batched._load_many

    def held(uids: Sequence[str]) -> Found:
        assert threading.current_thread() is not threading.main_thread()
        if not gate.wait(30):
            raise StorageError("never released")
        return real(uids)

    batched._load_many = held
    return gate
