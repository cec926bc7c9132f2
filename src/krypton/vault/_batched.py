"""Read-through misses, gathered into batches for a few reader threads.

How this works
--------------
The event loop asks :meth:`BatchedReads.read` for a uid and gets a future of
its own. If fewer than ``parallel`` batches are in flight, the uids waiting
so far go to a reader thread at once (so a lone miss costs one thread hop);
otherwise they wait for the next batch to finish, and the one that finishes
takes up to ``max_batch`` of them along. Under load, many misses share one
hop and one storage query instead of paying a thread hop (and a wait for the
interpreter lock) each. A uid asked for twice while waiting is read once.

``load_many(uids)`` runs on the reader thread and returns, per uid found, its
record or the error to raise for it (a uid it does not return is not stored).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor

from krypton.errors import KryptonError
from krypton.model.record import KeyRecord

Found = Mapping[str, "KeyRecord | KryptonError"]


class BatchedReads:
    __slots__ = ("_executor", "_flying", "_load_many", "_max_batch", "_parallel", "_waiting")

    def __init__(
        self,
        load_many: Callable[[Sequence[str]], Found],
        executor: Executor,
        *,
        parallel: int = 2,
        max_batch: int = 64,
    ) -> None:
        self._load_many = load_many
        self._executor = executor
        self._parallel = max(1, parallel)
        self._max_batch = max(1, max_batch)
        self._waiting: dict[str, list[asyncio.Future[KeyRecord | None]]] = {}
        self._flying = 0

    @property
    def in_flight(self) -> int:
        """Batches being read now."""
        return self._flying

    def read(self, uid: str) -> asyncio.Future[KeyRecord | None]:
        """The stored record of ``uid`` (None: not stored), read on a reader thread."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[KeyRecord | None] = loop.create_future()
        self._waiting.setdefault(uid, []).append(future)
        if self._flying < self._parallel:
            self._launch(loop)
        return future

    def _launch(self, loop: asyncio.AbstractEventLoop) -> None:
        waiting = self._waiting
        batch: dict[str, list[asyncio.Future[KeyRecord | None]]] = {}
        for uid in list(waiting)[: self._max_batch]:
            batch[uid] = waiting.pop(uid)
        self._flying += 1
        done = loop.run_in_executor(self._executor, self._load_many, tuple(batch))
        done.add_done_callback(lambda f: self._finished(loop, batch, f))

    def _finished(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: dict[str, list[asyncio.Future[KeyRecord | None]]],
        done: asyncio.Future[Found],
    ) -> None:
        self._flying -= 1
        if self._waiting:
            self._launch(loop)
        failed = None if done.cancelled() else done.exception()
        found: Found = {} if failed is not None or done.cancelled() else done.result()
        for uid, futures in batch.items():
            result = found.get(uid)
            for future in futures:
                if future.done():
                    continue
                if done.cancelled():
                    future.cancel()
                elif failed is not None:
                    future.set_exception(failed)
                elif isinstance(result, KryptonError):
                    future.set_exception(result)
                else:
                    future.set_result(result)
