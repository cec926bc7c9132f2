"""Pacing: how one large message shares the event loop with everyone else.

How this works
--------------
A gateway worker runs every connection on one event loop, so a message the
dispatcher works on without waiting holds up every other connection. Three
things keep a large one (up to ``max_message_size``: a megabyte, a thousand
batch items, a hundred thousand TTLV items) from holding it long:

* **time slices** (:class:`Turns`): the dispatcher decodes a large message a
  few hundred items at a time, runs its batch items and encodes its answer
  item by item, and after each step looks at the clock; once the message has
  held the loop for :data:`SLICE` seconds it gives it up for one turn
  (``asyncio.sleep(0)``). Everything ready runs meanwhile -- another
  connection's Get is answered from its read callback -- and the connections
  that are working on large messages take their slices round-robin;
* **a gate** (:class:`Gate`): at most ``slots`` large messages (over
  :data:`LARGE` bytes) are in hand at once in a process, and at most
  ``per_tenant`` of one tenant; the others wait their turn, let in
  round-robin by tenant, oldest first within a tenant. So however many
  connections flood, a loop turn holds at most ``slots`` slices, the decoded
  trees in memory are bounded, and another tenant's large message waits for
  at most one of the flooder's;
* **garbage collection** (:class:`Collector`): a decoded message is a tree of
  a hundred thousand small objects, freed by reference counting when the
  message is answered. CPython's full collections walk every live object, and
  many such trees make them frequent and long (hundreds of milliseconds, the
  loop stopped). While large messages are in hand the automatic full
  collection is put off; it runs again as soon as none is (then the trees are
  gone and it is quick), and at least every ``collect_every`` seconds of a
  flood that never stops. The young generations are collected as usual
  throughout, and the objects made at start are frozen
  (:meth:`Collector.freeze`) so that no collection walks them again.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Generator
from typing import TypeVar, cast

__all__ = ["LARGE", "SLICE", "Collector", "Gate", "Turns"]

T = TypeVar("T")

SLICE = 0.001  # seconds one message may hold the event loop before the others get a turn
LARGE = 32 * 1024  # bytes: a larger message is decoded in steps and passes the gate


class Turns:
    """One message's time slices: :meth:`take` between two steps of work gives the
    loop up for one turn once the message has held it for :data:`SLICE` seconds."""

    __slots__ = ("since",)

    def __init__(self) -> None:
        self.since = time.perf_counter()

    async def take(self) -> None:
        if time.perf_counter() - self.since >= SLICE:
            await asyncio.sleep(0)
            self.since = time.perf_counter()

    async def run(self, steps: Generator[None, None, T]) -> T:
        """Drive a generator that pauses between steps (``decode_in_steps``,
        ``parse_request_in_steps``) to its return value, taking turns between steps."""
        try:
            while True:
                next(steps)
                await self.take()
        except StopIteration as done:
            return cast(T, done.value)


class Collector:
    """Puts the automatic full garbage collection off while large messages are in
    hand (:meth:`busy`), at most ``collect_every`` seconds at a time."""

    def __init__(
        self, collect_every: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.collect_every = collect_every
        self.clock = clock
        self.held = False
        self.since = 0.0  # when the full collection was put off, or last forced
        self.forced = 0  # full collections run because a flood went on too long
        self._threshold2 = 0

    def busy(self, held: bool) -> None:
        """Large messages are in hand (True) or no longer (False)."""
        if held == self.held:
            if held and self.clock() - self.since >= self.collect_every:
                self.forced += 1
                gc.collect()
                self.since = self.clock()
            return
        self.held = held
        t0, t1, t2 = gc.get_threshold()
        if held:
            self._threshold2 = t2
            self.since = self.clock()
            gc.set_threshold(t0, t1, 1 << 30)
        else:
            gc.set_threshold(t0, t1, self._threshold2)

    @staticmethod
    def freeze() -> None:
        """Move every object alive now (what start-up made) out of the collector's
        sight: no collection walks them again."""
        gc.collect()
        gc.freeze()


class Gate:
    """At most ``slots`` large messages in hand at once, ``per_tenant`` of one tenant;
    the rest wait, let in round-robin by tenant (oldest first within one)."""

    def __init__(
        self, slots: int = 4, per_tenant: int = 1, collector: Collector | None = None
    ) -> None:
        self.slots = slots
        self.per_tenant = min(per_tenant, slots)
        self.collector = collector
        self.inside = 0
        self.held: dict[str, int] = {}
        self.waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    async def enter(self, tenant: str) -> None:
        if self.inside < self.slots and self.held.get(tenant, 0) < self.per_tenant:
            self._let_in(tenant)
            return
        queue = self.waiting.setdefault(tenant, deque())
        fut = asyncio.get_running_loop().create_future()
        queue.append(fut)
        try:
            await fut  # the slot is ours when it resolves (leave() counted it)
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.leave(tenant)  # let in, then cancelled: hand the slot on
            else:
                queue.remove(fut)
                if not queue:
                    self.waiting.pop(tenant, None)
            raise

    def leave(self, tenant: str) -> None:
        self.inside -= 1
        left = self.held[tenant] - 1
        if left:
            self.held[tenant] = left
        else:
            del self.held[tenant]
        self._wake()
        if self.collector is not None:
            self.collector.busy(self.inside > 0)

    def _let_in(self, tenant: str) -> None:
        self.inside += 1
        self.held[tenant] = self.held.get(tenant, 0) + 1
        if self.collector is not None:
            self.collector.busy(True)

    def _wake(self) -> None:
        """Give free slots to waiters: the tenants in turn, each to the back once served."""
        for tenant in list(self.waiting):
            if self.inside >= self.slots:
                return
            if self.held.get(tenant, 0) >= self.per_tenant:
                continue
            queue = self.waiting.pop(tenant)
            fut = queue.popleft()
            if queue:
                self.waiting[tenant] = queue  # to the back of the round
            self._let_in(tenant)
            fut.set_result(None)
