from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import pytest

from krypton.crypto.keyring import KeyRing, L3State
from krypton.crypto.secret import generate_key
from krypton.errors import StorageError
from krypton.model import KeyRecord, new_uid
from krypton.vault import Vault
from krypton.vault.cache import weight
from krypton.vault.openbao import BaoVault
from krypton.vault.port import VaultStore
from krypton.vault.sqlite import quarantined

T = TypeVar("T")


def record(uid: str | None = None, *, tenant: str = "demo", state: int = 1) -> KeyRecord:
    return KeyRecord(
        uid=uid or new_uid(), tenant=tenant, object_type=2, algorithm=3, length=256,
        state=state, l3_version=1, wrapped=os.urandom(65), attributes=b"\x42\x00\x08",
    )  # fmt: skip


@pytest.fixture
def vault(tmp_path: Path) -> Iterator[Vault]:
    v = Vault.open(tmp_path / "vault.db")
    yield v
    v.close()


Opener = Callable[..., VaultStore]


@pytest.fixture(params=["sqlite", "openbao"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens the vault of this test (again, for a reopen) on each backend: a
    SQLite file, or a fresh prefix of a KV v2 mount of the session's OpenBao
    (``openbao``). The vault contract below runs on both."""
    opened: list[VaultStore] = []

    def sqlite_vault(name: str = "vault", *, cache_size: int = 65536,
                     cache_bytes: int | None = None) -> VaultStore:
        return Vault.open(tmp_path / f"{name}.db", cache_size=cache_size,
                          cache_bytes=cache_bytes)

    if request.param == "sqlite":
        make = sqlite_vault
    else:
        server = request.getfixturevalue("openbao")
        mount, prefix = server.enable_kv("kv"), server.unique("vault")

        def make(name: str = "vault", *, cache_size: int = 65536,
                 cache_bytes: int | None = None) -> VaultStore:
            return BaoVault.open(server.address, token=server.root_token, mount=mount,
                                 prefix=f"{prefix}/{name}", cache_size=cache_size,
                                 cache_bytes=cache_bytes)

    def opener(name: str = "vault", *, cache_size: int = 65536,
               cache_bytes: int | None = None) -> VaultStore:
        opened.append(make(name, cache_size=cache_size, cache_bytes=cache_bytes))
        return opened[-1]

    yield opener
    for v in opened:
        v.close()


@pytest.fixture
def store(open_store: Opener) -> VaultStore:
    return open_store()


def run(coro: Awaitable[None]) -> None:
    async def main() -> None:
        await coro

    asyncio.run(main())


def _row_count(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM keys").fetchone()[0])


def test_put_get_and_reopen(open_store: Opener, store: VaultStore) -> None:
    rec = record()
    run(store.put(rec))
    assert store.get(rec.uid) == rec
    assert store.get(new_uid()) is None
    store.close()
    again = open_store(cache_size=0)
    assert again.get(rec.uid) == rec


def test_lookup_is_the_cache_alone_and_read_through_fills_it(open_store: Opener,
                                                             store: VaultStore) -> None:
    rec, other = record(), record()
    run(store.put_many([rec, other]))
    assert store.lookup(rec.uid) == rec  # a record written here is cached
    store.close()
    again = open_store()
    assert again.cached == 0
    assert again.lookup(rec.uid) is None  # stored, not cached: no read
    assert again.cached == 0

    async def read() -> None:
        assert await again.read_through(rec.uid) == rec
        assert await again.read_through(new_uid()) is None
        # misses waiting together are read together, each answered
        got = await asyncio.gather(*(again.read_through(u) for u in (other.uid, rec.uid,
                                                                     other.uid)))
        assert got == [other, rec, other]

    run(read())
    assert again.lookup(rec.uid) == rec and again.lookup(other.uid) == other
    assert again.cached == 2


def test_the_cache_is_bounded_in_bytes(open_store: Opener) -> None:
    recs = [record() for _ in range(10)]
    bound = 4 * weight(recs[0])
    store = open_store(cache_bytes=bound)
    for rec in recs:  # one after the other (OpenBao's put_many writes them in any order)
        run(store.put(rec))
    assert store.cached == 4 and store.cached_bytes <= bound
    assert [store.lookup(r.uid) for r in recs[-4:]] == recs[-4:]
    assert store.get(recs[0].uid) == recs[0]  # read through, the least recent out
    assert store.lookup(recs[6].uid) is None
    assert store.cached == 4


def test_warm_up_loads_the_newest_records_in_the_background(open_store: Opener,
                                                             store: VaultStore) -> None:
    recs = [record() for _ in range(6)]
    for rec in recs:  # one after the other: creation order is storage order
        run(store.put(rec))
    store.close()
    again = open_store(cache_bytes=3 * weight(recs[0]))
    assert again.get(recs[0].uid) == recs[0]  # a request's record before the warm-up
    again.warm()
    assert again.warmed(timeout=30)
    assert again.cached == 3
    assert again.lookup(recs[0].uid) == recs[0]  # what requests touched stays
    assert [again.lookup(r.uid) for r in recs[-2:]] == recs[-2:]  # newest first
    assert [again.lookup(r.uid) for r in recs[1:4]] == [None] * 3


def test_record_repr_hides_the_wrapped_blob() -> None:
    rec = record()
    text = repr(rec)
    assert rec.wrapped.hex() not in text
    assert repr(rec.wrapped)[2:-1] not in text
    assert "wrapped=<65 bytes>" in text


def test_put_returns_only_after_commit(tmp_path: Path, vault: Vault) -> None:
    path = tmp_path / "vault.db"
    blocker = sqlite3.connect(path, isolation_level=None)
    rec = record()

    async def main() -> None:
        blocker.execute("BEGIN IMMEDIATE")  # holds the write lock: the writer must wait
        put = asyncio.ensure_future(vault.put(rec))
        await asyncio.sleep(0.3)
        assert not put.done()
        assert vault.commits == 0
        blocker.execute("ROLLBACK")
        await put
        # Visible to a connection that shares nothing with the vault.
        assert _row_count(path) == 1
        assert vault.commits == 1

    run(main())
    blocker.close()


def test_group_commit_groups(vault: Vault, tmp_path: Path) -> None:
    records = [record() for _ in range(200)]

    async def main() -> None:
        before = vault.commits
        await asyncio.gather(*(vault.put(r) for r in records))
        commits = vault.commits - before
        assert 1 <= commits <= 20, commits

    run(main())
    assert vault.largest_batch > 10
    assert _row_count(tmp_path / "vault.db") == 200
    assert all(vault.get(r.uid) == r for r in records)


def test_queued_puts_share_one_commit(tmp_path: Path, vault: Vault) -> None:
    blocker = sqlite3.connect(tmp_path / "vault.db", isolation_level=None)

    async def main() -> None:
        blocker.execute("BEGIN IMMEDIATE")
        first = asyncio.ensure_future(vault.put(record()))
        await asyncio.sleep(0.05)  # the writer has taken `first` and waits for the lock
        rest = [asyncio.ensure_future(vault.put(record())) for _ in range(100)]
        await asyncio.sleep(0.05)
        blocker.execute("ROLLBACK")
        await asyncio.gather(first, *rest)

    run(main())
    blocker.close()
    assert vault.commits == 2
    assert vault.records_written == 101


def test_a_failing_put_fails_only_its_caller(store: VaultStore) -> None:
    dup = record()
    run(store.put(dup))

    async def main() -> list[BaseException | None]:
        return await asyncio.gather(
            *(store.put(r) for r in [record(), record(dup.uid), record(), record()]),
            return_exceptions=True,
        )

    results = asyncio.run(main())
    assert [type(r) for r in results] == [type(None), StorageError, type(None), type(None)]
    assert "unique identifier" in str(results[1])
    assert store.get(dup.uid) == dup


def test_an_operation_the_vault_does_not_know_is_an_error(vault: Vault) -> None:
    """Every operation has its entry in the table of cache updates; there is no
    default branch that would treat a stranger as "mark synced"."""

    def stranger(conn: sqlite3.Connection, payload: object) -> int:
        return 1

    async def main() -> None:
        await vault.submit(stranger, None)

    with pytest.raises(StorageError, match=r"^vault writer failed: KeyError"):
        asyncio.run(main())
    rec = record()
    run(vault.put(rec))  # the writer goes on
    assert vault.get(rec.uid) == rec


def test_put_many_is_all_or_nothing(open_store: Opener, store: VaultStore) -> None:
    dup = record()
    run(store.put(dup))
    batch = [record(), record(), record(dup.uid)]
    with pytest.raises(StorageError):
        run(store.put_many(batch))
    assert store.get(batch[0].uid) is None
    good = [record() for _ in range(10)]
    run(store.put_many(good))
    run(store.put_many([]))
    assert all(store.get(r.uid) == r for r in good)
    store.close()
    again = open_store(cache_size=0)
    assert again.get(batch[0].uid) is None
    assert [r.uid for r in again.outbox(20)] == [dup.uid] + [r.uid for r in good]


def test_updates_are_durable_and_cached_coherently(open_store: Opener, store: VaultStore
                                                    ) -> None:  # fmt: skip
    rec = record()

    async def main() -> None:
        await store.put(rec)
        assert store.get(rec.uid) is not None  # now cached
        assert await store.update_state(rec.uid, 5) is True
        assert await store.update_attributes(rec.uid, b"\x01\x02") is True
        assert await store.update_state(new_uid(), 5) is False
        assert await store.update_attributes(new_uid(), b"") is False

    run(main())
    got = store.get(rec.uid)
    assert got is not None
    assert (got.state, got.attributes) == (5, b"\x01\x02")
    store.close()
    again = open_store(cache_size=0)
    stored = again.get(rec.uid)
    assert stored is not None
    assert (stored.state, stored.attributes) == (5, b"\x01\x02")


def test_outbox_order_and_mark_synced(open_store: Opener, store: VaultStore) -> None:
    records = [record() for _ in range(5)]
    synced = replace(record(), synced=True)

    async def main() -> None:
        for r in records:
            await store.put(r)
        await store.put(synced)
        assert [r.uid for r in store.outbox(10)] == [r.uid for r in records]
        assert [r.uid for r in store.outbox(2)] == [r.uid for r in records[:2]]
        assert await store.mark_synced([records[0].uid, records[1].uid, new_uid()]) == 2
        assert await store.mark_synced([records[0].uid]) == 0
        assert await store.mark_synced([]) == 0

    run(main())
    assert [r.uid for r in store.outbox(10)] == [r.uid for r in records[2:]]
    first = store.get(records[0].uid)
    assert first is not None
    assert first.synced
    store.close()
    again = open_store(cache_size=0)
    assert [r.uid for r in again.outbox(10)] == [r.uid for r in records[2:]]
    assert sorted(again.held("demo", "", 10)) == sorted([records[0].uid, records[1].uid,
                                                         synced.uid])  # fmt: skip
    assert again.held("other", "", 10) == []


def test_cache_is_bounded_and_optional(open_store: Opener) -> None:
    for size in (0, 2):
        v = open_store(f"v{size}", cache_size=size)
        records = [record() for _ in range(5)]
        run(v.put_many(records))
        assert v.cached == size
        assert [v.get(r.uid) for r in records] == records
        assert v.cached == size
        v.close()


def test_reads_from_another_thread(open_store: Opener) -> None:
    vault = open_store("uncached", cache_size=0)  # every read goes to the storage
    rec = record()
    run(vault.put(rec))
    seen: list[KeyRecord | None] = []
    t = threading.Thread(target=lambda: seen.append(vault.get(rec.uid)))
    t.start()
    t.join()
    vault.close()
    assert seen == [rec]


def test_close_drains_pending_writes(open_store: Opener) -> None:
    v = open_store()
    records = [record() for _ in range(50)]

    async def main() -> None:
        tasks = [asyncio.ensure_future(v.put(r)) for r in records]
        await asyncio.sleep(0)  # every put is queued
        v.close()
        await asyncio.gather(*tasks)
        with pytest.raises(StorageError, match="closed"):
            await v.put(record())

    run(main())
    v.close()  # idempotent
    with pytest.raises(StorageError, match="closed"):
        v.get(new_uid())
    again = open_store(cache_size=0)
    assert all(again.get(r.uid) == r for r in records)


def test_sqlite_errors_become_storage_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError, match=r"junk\.db"):
        Vault.open(junk)
    with pytest.raises(StorageError):
        Vault.open(tmp_path / "missing-dir" / "vault.db")


def test_vault_files_never_hold_key_plaintext(tmp_path: Path) -> None:
    ring = KeyRing()
    l3 = generate_key(256)
    l3_raw = l3.reveal()
    ring.install("demo", 1, l3, L3State.ACTIVE, ring.lease_deadline(3600))
    v = Vault.open(tmp_path / "vault.db")
    plaintexts: list[bytes] = []
    records: list[KeyRecord] = []
    for bits in (128, 192, 256) * 20:
        key = generate_key(bits)
        uid = new_uid()
        version, blob = ring.wrap("demo", uid, key)
        plaintexts.append(key.reveal())
        records.append(KeyRecord(uid, "demo", 2, 3, bits, 1, version, blob))
        key.wipe()
    run(v.put_many(records[:30]))
    run(v.put_many(records[30:]))

    def files() -> bytes:
        return b"".join(p.read_bytes() for p in tmp_path.glob("vault.db*"))

    while_open = files()
    assert records[-1].wrapped in while_open  # the scan would see a key if it were there
    v.close()
    after_close = files()
    assert records[0].wrapped in after_close
    for secret in [*plaintexts, l3_raw]:
        assert secret not in while_open
        assert secret not in after_close
    # and the stored blobs still open
    again = Vault.open(tmp_path / "vault.db")
    stored = again.get(records[7].uid)
    assert stored is not None
    assert ring.unwrap("demo", stored.uid, stored.l3_version, stored.wrapped).reveal() == (
        plaintexts[7])
    again.close()


def test_destroying_erases_the_wrapped_material(tmp_path: Path) -> None:
    blob = os.urandom(60)
    vault = Vault.open(tmp_path / "v.db")
    rec = replace(record(), wrapped=blob)

    async def body() -> None:
        await vault.put(rec)
        await vault.update_state(rec.uid, 2)  # Active: material kept
        kept = vault.get(rec.uid)
        assert kept is not None
        assert kept.wrapped == blob
        await vault.update_state(rec.uid, 5)  # Destroyed: material erased
        gone = vault.get(rec.uid)
        assert gone is not None
        assert gone.state == 5
        assert gone.wrapped == b""

    run(body())
    vault.close()
    reopened = Vault.open(tmp_path / "v.db")
    try:
        again = reopened.get(rec.uid)
        assert again is not None
        assert again.wrapped == b""
    finally:
        reopened.close()
    with sqlite3.connect(tmp_path / "v.db") as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("v.db"))
    assert blob not in raw


# -- issue 12: changes from the Core are never dropped; bad outbox rows quarantined --
_FAIL = (
    "CREATE TRIGGER broken BEFORE UPDATE ON keys BEGIN SELECT RAISE(ABORT, 'disk'); END"
)


def _sql(path: Path, *statements: str, args: tuple[object, ...] = ()) -> None:
    db = sqlite3.connect(path, timeout=5.0)
    try:
        for sql in statements:
            db.execute(sql, args if "?" in sql else ())
        db.commit()
    finally:
        db.close()


def test_a_change_the_vault_cannot_store_is_held_and_retried(tmp_path: Path) -> None:
    path = tmp_path / "v.db"

    async def body() -> None:
        vault = Vault.open(path)
        vault.retry = (0.0, 0.0)  # no real waiting; the retry loop yields to us
        try:
            rec = record()
            await vault.put(rec)
            _sql(path, _FAIL)  # every update fails, as on a full disk
            assert await vault.apply_change(rec.uid, state=3, seq=7) is False
            assert await vault.apply_change(rec.uid, state=5, seq=8) is False  # queued behind
            assert vault.pending_changes == 1
            seen = vault.get(rec.uid)
            assert seen is not None and seen.state == 5 and seen.wrapped == b""
            assert vault.cursor() == 0  # a restart now replays what memory holds
            _sql(path, "DROP TRIGGER broken")
            while vault.pending_changes or vault.cursor() != 8:
                await asyncio.sleep(0)
            stored = vault.get(rec.uid)
            assert stored is not None and (stored.state, stored.wrapped) == (5, b"")
        finally:
            vault.close()
        again = Vault.open(path)
        try:
            back = again.get(rec.uid)
            assert back is not None and (back.state, back.wrapped) == (5, b"")
        finally:
            again.close()

    run(body())


def test_an_undecodable_outbox_row_is_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "v.db"

    async def body() -> None:
        vault = Vault.open(path)
        try:
            bad, good = record(), record()
            await vault.put_many([bad, good])
            _sql(path, "UPDATE keys SET state = 'x' WHERE uid = ?", args=(bad.uid,))
            assert [r.uid for r in vault.outbox(10)] == [good.uid]
            assert vault.quarantined == 1
            while quarantined(path)[1] == []:
                await asyncio.sleep(0)  # the quarantine write is the writer's
            waiting, rows = quarantined(path)
            assert waiting == 1
            assert [(q.uid, q.reason) for q in rows] == [(bad.uid, "column state: not an"
                                                          " integer in 0..4294967295")]
            assert [r.uid for r in vault.outbox(10)] == [good.uid]
            assert vault.quarantined == 1  # counted once
        finally:
            vault.close()
        cold = Vault.open(path)  # no cached copy: the bad row is an error, not a crash
        try:
            with pytest.raises(StorageError, match="unreadable"):
                cold.get(bad.uid)
        finally:
            cold.close()

    run(body())


def ask(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def test_outbox_pages_by_tenant_past_a_position(open_store: Opener, store: VaultStore
                                                ) -> None:  # fmt: skip
    mine = [record() for _ in range(5)]
    theirs = [record(tenant="other") for _ in range(3)]
    for a, b in zip(mine, [*theirs, None, None], strict=True):
        run(store.put(a))
        if b is not None:
            run(store.put(b))
    first = store.outbox_page(2, tenant="demo")
    assert [r.uid for r in first.records] == [r.uid for r in mine[:2]] and first.more
    rest = store.outbox_page(5, tenant="demo", after=first.position)
    assert [r.uid for r in rest.records] == [r.uid for r in mine[2:]] and not rest.more
    assert rest.position > first.position
    assert store.outbox_page(5, tenant="demo", after=rest.position).records == []
    assert [r.uid for r in store.outbox(10, tenant="other")] == [r.uid for r in theirs]
    everyone = store.outbox_page(3)
    assert [r.uid for r in everyone.records] == [mine[0].uid, theirs[0].uid, mine[1].uid]
    assert ask(store.mark_synced([mine[0].uid, theirs[0].uid])) == 2
    keys, oldest = store.outbox_stats()
    assert keys == 6 and oldest is not None and store.unwritable() is None
    store.close()
    again = open_store()
    assert [r.uid for r in again.outbox(10, tenant="demo")] == [r.uid for r in mine[1:]]
    page = again.outbox_page(2, tenant="other")
    assert [r.uid for r in page.records] == [r.uid for r in theirs[1:]] and page.more


def test_keys_the_core_refused_leave_the_outbox(open_store: Opener, store: VaultStore
                                                ) -> None:  # fmt: skip
    a, b, c = record(), record(), record()
    run(store.put_many([a, b, c]))
    assert ask(store.mark_synced([c.uid])) == 1
    assert ask(store.quarantine({a.uid: "revoked L3 version", c.uid: "no"})) == 1
    assert ask(store.quarantine({})) == 0
    assert [r.uid for r in store.outbox(10)] == [b.uid] and store.quarantined == 1
    assert store.outbox_stats()[0] == 1
    store.close()
    assert [r.uid for r in open_store().outbox(10)] == [b.uid]


def test_rewrap_moves_live_outbox_records_as_a_compare_and_set(store: VaultStore) -> None:
    one, two, old = record(), replace(record(), l3_version=2), record()
    gone = record(state=5)
    run(store.put_many([one, two, old, replace(gone, wrapped=b"")]))
    assert ask(store.mark_synced([old.uid])) == 1
    assert store.l3_versions("demo") == {1, 2} and store.l3_versions("other") == set()
    assert store.under_l3("demo", 1, "", 10) == [one.uid]
    assert store.under_l3("demo", 2, "", 10) == [two.uid]
    assert store.under_l3("demo", 2, two.uid, 10) == []
    blob = os.urandom(65)
    assert ask(store.rewrap(one, 2, blob)) is True
    moved = store.get(one.uid)
    assert moved is not None and (moved.l3_version, moved.wrapped) == (2, blob)
    assert ask(store.rewrap(one, 3, os.urandom(65))) is False  # it moved on since
    assert store.l3_versions("demo") == {2}
    assert store.under_l3("demo", 2, "", 10) == sorted([one.uid, two.uid])


def test_adopt_takes_the_cores_record_whole(open_store: Opener, store: VaultStore) -> None:
    rec = record()
    run(store.put(rec))
    assert store.peek(rec.uid) == rec and store.peek("nope") is None
    core = replace(rec, state=2, l3_version=3, wrapped=os.urandom(65), attributes=b"\x01")
    assert ask(store.adopt(core, seq=7)) is True
    assert ask(store.adopt(replace(core, tenant="other"), seq=8)) is False
    got = store.get(rec.uid)
    assert got is not None and (got.state, got.l3_version, got.wrapped, got.attributes,
                                got.synced) == (2, 3, core.wrapped, b"\x01", True)  # fmt: skip
    assert store.outbox(10) == [] and store.cursor() == 8
    store.close()
    again = open_store(cache_size=0)
    assert again.peek(rec.uid) == replace(core, synced=True) and again.cursor() == 8
