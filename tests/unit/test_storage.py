"""The shared SQLite writer (krypton.storage) on its own, on real SQLite files.

No sleeps: a write that must hold the writer thread waits on a threading.Event
the test sets, and the test waits for the writer to reach it the same way.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from krypton.errors import ItemNotFound, StorageError
from krypton.storage import Op, Readers, Writer, open_file, storage_error, translated

WAIT = 10.0  # seconds a thread may take to reach a point; a failure, never a pause
Work = Callable[[sqlite3.Connection, Any], Any]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS parent (id INTEGER PRIMARY KEY)",
    "CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v INTEGER,"
    " parent INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)",
)


def _migrate(conn: sqlite3.Connection) -> None:
    for sql in _SCHEMA:
        conn.execute(sql)


def insert(conn: sqlite3.Connection, payload: tuple[str, int]) -> int:
    return conn.execute("INSERT INTO t (k, v) VALUES (?, ?)", payload).rowcount


def orphan(conn: sqlite3.Connection, key: str) -> None:
    """A row whose deferred foreign key fails only at COMMIT."""
    conn.execute("INSERT INTO t (k, v, parent) VALUES (?, 0, 42)", (key,))


def not_found(conn: sqlite3.Connection, key: str) -> None:
    raise ItemNotFound(f"no {key}")


def rows(path: Path) -> dict[str, int]:
    """What a connection that shares nothing with the writer sees."""
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT k, v FROM t"))


@pytest.fixture(params=[False, True], ids=["batch", "savepoints"])
def savepoint_each(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


def writer(path: Path, savepoint_each: bool, **hooks: Any) -> Writer[Work]:
    conn = open_file(path, name="test", migrate=_migrate, pragmas=("foreign_keys = ON",))
    return Writer(
        conn, name="test", max_batch=1000, savepoint_each=savepoint_each,
        duplicate="that key exists", **hooks,
    )  # fmt: skip


@pytest.fixture
def store(path: Path, savepoint_each: bool) -> Iterator[Writer[Work]]:
    w = writer(path, savepoint_each)
    yield w
    w.close()


class Hold:
    """A write that holds the writer thread until :meth:`release`."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.go = threading.Event()

    def __call__(self, conn: sqlite3.Connection, payload: tuple[str, int]) -> int:
        self.reached.set()
        assert self.go.wait(WAIT)
        return insert(conn, payload)

    async def wait_reached(self) -> None:
        assert await asyncio.to_thread(self.reached.wait, WAIT)

    def release(self) -> None:
        self.go.set()


# -- group commit ------------------------------------------------------------------------
def test_writes_queued_during_a_commit_share_the_next_one(
    path: Path, store: Writer[Work]
) -> None:
    hold = Hold()

    async def main() -> list[Any]:
        first = store.submit(hold, ("first", 0))
        await hold.wait_reached()  # the writer has taken `first`, alone
        rest = [store.submit(insert, (f"k{i}", i)) for i in range(100)]
        hold.release()
        return await asyncio.gather(first, *rest)

    assert asyncio.run(main()) == [1] * 101
    assert store.commits == 2  # one for `first`, ONE for the hundred queued behind it
    assert store.largest_batch == 100
    assert len(rows(path)) == 101


def test_a_caller_returns_only_after_its_commit(path: Path, savepoint_each: bool) -> None:
    events: list[str] = []

    def work(conn: sqlite3.Connection, payload: tuple[str, int]) -> int:
        events.append("applied")
        return insert(conn, payload)

    def committed(ops: list[Op[Work]]) -> None:
        events.append(f"committed, visible elsewhere: {rows(path)}")

    def settled(ops: list[Op[Work]]) -> None:
        events.append(f"settled {[op.payload[0] for op in ops]}")

    w = writer(path, savepoint_each, committed=committed, settled=settled)

    async def main() -> None:
        await w.submit(work, ("a", 1))
        events.append("returned")

    try:
        asyncio.run(main())
    finally:
        w.close()
    assert events[:2] == ["applied", "committed, visible elsewhere: {'a': 1}"]
    assert set(events[2:]) == {"settled ['a']", "returned"}


# -- errors --------------------------------------------------------------------------------
def test_a_failing_write_fails_only_its_caller(path: Path, store: Writer[Work]) -> None:
    hold = Hold()

    async def main() -> list[Any]:
        first = store.submit(hold, ("dup", 0))
        await hold.wait_reached()
        batch = [
            store.submit(insert, ("a", 1)),
            store.submit(insert, ("dup", 2)),  # a constraint violation
            store.submit(not_found, "x"),  # one of our errors, raised by the operation
            store.submit(insert, ("b", 3)),
        ]
        hold.release()
        return await asyncio.gather(first, *batch, return_exceptions=True)

    first, a, dup, missing, b = asyncio.run(main())
    assert (first, a, b) == (1, 1, 1)
    assert isinstance(dup, StorageError)
    assert dup.message == "test write failed: that key exists"
    assert dup.__cause__ is None and dup.__context__ is None  # no sqlite3 error attached
    assert isinstance(missing, ItemNotFound)
    assert str(missing.message) == "no x"
    assert rows(path) == {"dup": 0, "a": 1, "b": 3}


def test_sqlite_errors_become_storage_errors(store: Writer[Work]) -> None:
    def bad_sql(conn: sqlite3.Connection, payload: None) -> None:
        conn.execute("SELECT v FROM nowhere")

    async def main() -> None:
        await store.submit(bad_sql, None)

    with pytest.raises(StorageError) as caught:
        asyncio.run(main())
    assert caught.value.message == (
        "test write failed (OperationalError: no such table: nowhere)"
    )
    assert not isinstance(caught.value, sqlite3.Error)
    assert caught.value.__cause__ is None and caught.value.__context__ is None


def test_a_failed_commit_fails_every_caller_in_the_batch(
    path: Path, store: Writer[Work]
) -> None:
    hold = Hold()

    async def main() -> list[Any]:
        first = store.submit(hold, ("first", 0))
        await hold.wait_reached()
        batch = [store.submit(insert, ("a", 1)), store.submit(orphan, "o")]
        hold.release()
        return await asyncio.gather(first, *batch, return_exceptions=True)

    first, a, o = asyncio.run(main())
    assert first == 1
    for error in (a, o):
        assert isinstance(error, StorageError)
        assert error.message.startswith("test commit failed (IntegrityError: FOREIGN KEY")
    assert rows(path) == {"first": 0}
    assert store.commits == 1


def test_translation_helpers() -> None:
    dup = storage_error(sqlite3.IntegrityError("UNIQUE constraint failed: t.k"), "x write")
    assert dup.message == "x write failed (IntegrityError: UNIQUE constraint failed: t.k)"
    named = storage_error(sqlite3.IntegrityError("UNIQUE"), "x write", duplicate="it exists")
    assert named.message == "x write failed: it exists"
    other = storage_error(sqlite3.OperationalError("locked"), "x", duplicate="it exists")
    assert other.message == "x failed (OperationalError: locked)"
    with (
        pytest.raises(StorageError, match=r"^x read failed \(DatabaseError: bad\)$") as caught,
        translated("x read"),
    ):
        raise sqlite3.DatabaseError("bad")
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_open_file_errors_are_storage_errors(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=r"^test open of .* failed \(OperationalError"):
        open_file(tmp_path / "absent" / "store.db", name="test", migrate=_migrate)


# -- stopping ------------------------------------------------------------------------------
def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "test-writer"]


def test_close_finishes_queued_writes_and_stops_the_thread(
    path: Path, savepoint_each: bool
) -> None:
    w = writer(path, savepoint_each)
    hold = Hold()

    async def main() -> list[Any]:
        first = w.submit(hold, ("first", 0))
        await hold.wait_reached()
        rest = [w.submit(insert, (f"k{i}", i)) for i in range(10)]
        assert w.stop()  # what close does first: no new writes, the queued ones finish
        assert w.closed
        with pytest.raises(StorageError, match=r"^the test is closed$"):
            w.submit(insert, ("late", 1))
        hold.release()
        await asyncio.to_thread(w.join)  # what close does then
        return await asyncio.gather(first, *rest)

    assert _writer_threads()
    assert asyncio.run(main()) == [1] * 11
    assert not _writer_threads()
    assert len(rows(path)) == 11
    w.close()  # closing again does nothing


def test_a_write_after_close_fails_clearly(path: Path, savepoint_each: bool) -> None:
    w = writer(path, savepoint_each)
    w.close()

    async def main() -> None:
        await w.submit(insert, ("late", 1))

    with pytest.raises(StorageError, match=r"^the test is closed$"):
        asyncio.run(main())
    assert rows(path) == {}


# -- readers -------------------------------------------------------------------------------
def test_readers_are_read_only_per_thread_and_close(path: Path, store: Writer[Work]) -> None:
    async def main() -> None:
        await store.submit(insert, ("a", 1))

    asyncio.run(main())
    readers = Readers(path, "test")
    conn = readers.get()
    assert readers.get() is conn
    other = threading.Thread(target=lambda: seen.append(readers.get()))
    seen: list[sqlite3.Connection] = []
    other.start()
    other.join()
    assert seen[0] is not conn
    assert conn.execute("SELECT v FROM t WHERE k = 'a'").fetchone() == (1,)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        conn.execute("INSERT INTO t (k, v) VALUES ('b', 2)")
    readers.close()
    fresh: list[BaseException] = []

    def later() -> None:
        try:
            readers.get()
        except StorageError as exc:
            fresh.append(exc)

    late = threading.Thread(target=later)
    late.start()
    late.join()
    assert [str(e) for e in fresh] == ["the test is closed"]


def test_a_new_store_and_its_wal_files_are_private_under_any_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        conn = open_file(tmp_path / "store.db", name="test", migrate=_migrate)
    finally:
        os.umask(old)
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS t (x)")  # the WAL and its index exist
        modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in tmp_path.iterdir()}
    finally:
        conn.close()
    assert modes == {"store.db": "0o600", "store.db-wal": "0o600", "store.db-shm": "0o600"}
