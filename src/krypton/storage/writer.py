"""The one SQLite writer thread, with durable group commit.

How this works
--------------
A :class:`Writer` owns a store's write connection and one thread. An async
caller hands it an operation, ``submit(work, payload)``, and awaits the
future it gets back. ``work`` is a plain function ``work(conn, payload)``;
what it returns becomes the future's result.

The thread takes everything queued (up to ``max_batch`` operations), runs it
in ONE transaction and commits; with ``journal_mode=WAL`` and
``synchronous=FULL`` the commit fsyncs the WAL, so one fsync covers every
caller in the batch. Only then are the futures resolved, with one
``loop.call_soon_threadsafe`` per event loop and batch: when the await
returns, the write is on disk. While one commit syncs, the next batch builds
up, so the more concurrent writers, the more each fsync carries.

Two ways to run a batch, chosen by the store:

- ``savepoint_each=False`` (the vault, whose writes rarely fail): the whole
  batch in one go, through the store's ``apply_batch`` if it has one (the
  vault turns runs of inserts into one ``executemany``). If anything fails,
  the batch is rolled back and redone the other way, so only the failing
  caller gets the error.
- ``savepoint_each=True`` (the registry, whose writes are compare-and-sets
  that fail as a matter of course): every operation in its own ``SAVEPOINT``;
  one that fails is rolled back to it and only its caller gets the error.

An operation's sqlite3 error becomes a :class:`~krypton.errors.StorageError`
(:mod:`krypton.storage.errors`); any other exception it raises (a
``RegistryConflict``, say) reaches its caller as it is. If the COMMIT fails,
every caller in the batch gets the error. After a commit the store's
``committed`` hook runs on the writer thread with the operations that
succeeded, *before* their callers wake (the vault updates its cache there),
and its ``settled`` hook after the futures are resolved (the registry
publishes the batch's changes there).

``close`` lets every queued write finish, stops the thread and closes the
connection; a ``submit`` after it raises :class:`StorageError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from krypton.errors import StorageError
from krypton.metrics.meter import BATCH_BUCKETS, COMMIT_BUCKETS, Histogram
from krypton.storage.errors import storage_error

W = TypeVar("W", bound=Callable[[sqlite3.Connection, Any], Any])
Hook = Callable[[list["Op[W]"]], None]


class Op(Generic[W]):
    """One queued operation and, once run, its result or error."""

    __slots__ = ("error", "future", "loop", "payload", "result", "work")

    def __init__(
        self, work: W, payload: Any, future: asyncio.Future[Any], loop: asyncio.AbstractEventLoop
    ) -> None:
        self.work = work
        self.payload = payload
        self.future = future
        self.loop = loop
        self.result: Any = None
        self.error: BaseException | None = None


_STOP = object()


def _settle(ops: list[Op[Any]]) -> None:
    for op in ops:
        if op.future.done():
            continue
        if op.error is not None:
            op.future.set_exception(op.error)
        else:
            op.future.set_result(op.result)


class Writer(Generic[W]):
    """The writer thread of the ``name`` store; see the module comment."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        name: str,
        max_batch: int,
        savepoint_each: bool,
        apply_batch: Callable[[sqlite3.Connection, list[Op[W]]], None] | None = None,
        committed: Hook[W] | None = None,
        settled: Hook[W] | None = None,
        duplicate: str | None = None,
    ) -> None:
        self.name = name
        self.commits = 0  # transactions committed (each one fsync of the WAL)
        self.largest_batch = 0
        # Each transaction's time (commit included) and operations; written by the thread.
        self.commit_seconds = Histogram(COMMIT_BUCKETS)
        self.batch_sizes = Histogram(BATCH_BUCKETS)
        # The last write that failed for a reason other than a constraint (disk full,
        # I/O error, read-only file), until a transaction commits again.
        self.write_error: str | None = None
        self._conn = conn
        self._max_batch = max(1, max_batch)
        self._savepoint_each = savepoint_each
        self._apply_batch = apply_batch or _apply_each
        self._committed = committed
        self._settled = settled
        self._duplicate = duplicate
        self._queue: queue.SimpleQueue[Op[W] | object] = queue.SimpleQueue()
        self._gate = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"{name}-writer", daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self._closed

    def unwritable(self) -> str | None:
        """Why this store cannot take writes now (closed, its thread gone, its
        last write failed for want of disk or an I/O error), or None."""
        if self._closed:
            return f"the {self.name} is closed"
        if not self._thread.is_alive():
            return f"the {self.name} writer thread has stopped"
        error = self.write_error
        return None if error is None else f"the last {self.name} write failed ({error})"

    def submit(self, work: W, payload: Any) -> asyncio.Future[Any]:
        """Queue ``work(conn, payload)``; the future resolves once it is durable."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        with self._gate:
            if self._closed:
                raise StorageError(f"the {self.name} is closed")
            self._queue.put(Op(work, payload, future, loop))
        return future

    def stop(self) -> bool:
        """Refuse new writes and let the thread stop after the queued ones; False
        if it was stopped already. :meth:`join` waits for it."""
        with self._gate:
            if self._closed:
                return False
            self._closed = True
            self._queue.put(_STOP)
        return True

    def join(self) -> None:
        """Wait for the thread to finish (after :meth:`stop`), close the connection."""
        self._thread.join()
        self._conn.close()

    def close(self) -> None:
        """Finish every queued write, stop the thread, close the connection."""
        if self.stop():
            self.join()

    # -- the thread ----------------------------------------------------------------
    def _run(self) -> None:
        q = self._queue
        stop = False
        while not stop:
            item = q.get()
            batch: list[Op[W]] = []
            while True:
                if item is _STOP:
                    stop = True
                    break
                assert isinstance(item, Op)
                batch.append(item)
                if len(batch) >= self._max_batch:
                    break
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    break
            if not batch:
                continue
            began = time.perf_counter()
            try:
                done = self._commit(batch)
            except BaseException as exc:  # a bug here must not strand callers
                done = None
                for op in batch:
                    op.error = op.error or StorageError(f"{self.name} writer failed: {exc!r}")
            self.commit_seconds.observe(time.perf_counter() - began)
            self.batch_sizes.observe(len(batch))
            self._resolve(batch)
            if done is not None and self._settled is not None:
                self._settled(done)

    def _error(self, exc: Exception, what: str) -> BaseException:
        """An operation's (``what="write"``) or the COMMIT's error, for its callers."""
        if isinstance(exc, sqlite3.Error):
            if not isinstance(exc, sqlite3.IntegrityError):
                self.write_error = f"{exc.__class__.__name__}: {exc}"
            duplicate = self._duplicate if what == "write" else None
            return storage_error(exc, f"{self.name} {what}", duplicate=duplicate)
        return exc

    def _commit(self, batch: list[Op[W]]) -> list[Op[W]] | None:
        """Run and commit ``batch``; the operations that are now durable (None if
        the commit failed)."""
        if self._savepoint_each:
            return self._commit_isolated(batch)
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            self._apply_batch(conn, batch)
            conn.execute("COMMIT")
        except BaseException as exc:
            self._rollback()
            if not isinstance(exc, Exception):
                raise
            if len(batch) > 1:
                return self._commit_isolated(batch)
            batch[0].error = self._error(exc, "write")
            return None
        return self._done(batch)

    def _commit_isolated(self, batch: list[Op[W]]) -> list[Op[W]] | None:
        """Run ``batch`` with a savepoint per operation."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op in batch:
                conn.execute("SAVEPOINT op")
                try:
                    op.result = op.work(conn, op.payload)
                except Exception as exc:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    op.error = self._error(exc, "write")
                    continue
                conn.execute("RELEASE op")
            conn.execute("COMMIT")
        except BaseException as exc:
            self._rollback()
            if not isinstance(exc, sqlite3.Error):
                raise
            error = self._error(exc, "commit")
            for op in batch:
                op.error = op.error or error
            return None
        return self._done([op for op in batch if op.error is None])

    def _done(self, ops: list[Op[W]]) -> list[Op[W]]:
        self.commits += 1
        if ops:
            self.write_error = None
        self.largest_batch = max(self.largest_batch, len(ops))
        if self._committed is not None:
            self._committed(ops)
        return ops

    def _rollback(self) -> None:
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")

    def _resolve(self, batch: list[Op[W]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[Op[W]]] = {}
        for op in batch:
            by_loop.setdefault(op.loop, []).append(op)
        for loop, ops in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop has been closed
                loop.call_soon_threadsafe(_settle, ops)


def _apply_each(conn: sqlite3.Connection, batch: list[Op[Any]]) -> None:
    for op in batch:
        op.result = op.work(conn, op.payload)
