"""Pacing of large messages (gateway/engine/pacing.py): steps, the gate, the collector."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from krypton.errors import InvalidMessage, LimitExceeded
from krypton.gateway.engine.pacing import Collector, Gate, Turns
from krypton.kmip import client_messages as cm
from krypton.kmip.messages import parse_request, parse_request_in_steps
from krypton.kmip.versions import ProtocolVersion
from krypton.ttlv.codec import DEFAULT_LIMITS, Limits, decode, decode_in_steps, encode
from krypton.ttlv.enums import Operation


def big_message(items: int = 300) -> bytes:
    item = cm.batch_item(Operation.DISCOVER_VERSIONS, cm.payload(), b"id")
    return encode(cm.request_message(ProtocolVersion(1, 4), [item] * items))


def run_steps(steps: Iterator[None]) -> tuple[int, object]:
    paused = 0
    try:
        while True:
            next(steps)
            paused += 1
    except StopIteration as done:
        return paused, done.value


def test_decode_in_steps_pauses_and_gives_what_decode_gives() -> None:
    data = big_message()
    paused, item = run_steps(decode_in_steps(data, DEFAULT_LIMITS, every=100))
    assert item == decode(data)
    assert paused == (1 + 1 + 3 + 1 + 300 * 4) // 100  # header items, then 4 per batch item


def test_decode_in_steps_raises_what_decode_raises() -> None:
    data = big_message()
    with pytest.raises(LimitExceeded):
        run_steps(decode_in_steps(data, Limits(max_items=500), every=64))
    with pytest.raises(InvalidMessage):
        run_steps(decode_in_steps(data[:-8], DEFAULT_LIMITS, every=64))


def test_parse_in_steps_pauses_and_gives_what_parse_gives() -> None:
    message = decode(big_message())
    paused, request = run_steps(parse_request_in_steps(message, DEFAULT_LIMITS, every=64))
    assert request == parse_request(message, DEFAULT_LIMITS)
    assert paused == 300 // 64


def test_turns_run_returns_the_value() -> None:
    async def main() -> object:
        return await Turns().run(decode_in_steps(big_message(), DEFAULT_LIMITS, every=10))

    assert asyncio.run(main()) == decode(big_message())


async def _enter(gate: Gate, tenant: str, order: list[str]) -> None:
    await gate.enter(tenant)
    order.append(tenant)


def test_gate_bounds_each_tenant_and_lets_waiters_in_round_robin() -> None:
    async def main() -> list[str]:
        gate = Gate(slots=2, per_tenant=1)
        order: list[str] = []
        tasks = [asyncio.ensure_future(_enter(gate, t, order)) for t in "aaaabbc"]
        await asyncio.sleep(0)
        assert order == ["a", "b"] and gate.inside == 2
        left = 0
        while left < len(order):  # the oldest one inside leaves, one at a time
            assert gate.inside <= 2 and all(n <= 1 for n in gate.held.values())
            gate.leave(order[left])
            left += 1
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        return order

    # Tenants take turns; a tenant served goes to the back of the round, so c
    # gets in before a's third and b is not held up by a's backlog.
    assert asyncio.run(main()) == ["a", "b", "a", "b", "c", "a", "a"]


def test_a_cancelled_waiter_gives_its_turn_on() -> None:
    async def main() -> None:
        gate = Gate(slots=1, per_tenant=1)
        order: list[str] = []
        await gate.enter("a")
        waiter = asyncio.ensure_future(_enter(gate, "b", order))
        other = asyncio.ensure_future(_enter(gate, "c", order))
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.sleep(0)
        gate.leave("a")
        await other
        assert order == ["c"] and gate.inside == 1 and not gate.waiting

    asyncio.run(main())


@pytest.fixture
def thresholds() -> Iterator[tuple[int, int, int]]:
    saved = gc.get_threshold()
    yield saved
    gc.set_threshold(*saved)


def test_collector_puts_full_collections_off_while_busy(thresholds: tuple[int, int, int]) -> None:
    now = [0.0]
    collector = Collector(collect_every=30.0, clock=lambda: now[0])
    collector.busy(True)
    assert gc.get_threshold()[:2] == thresholds[:2]
    assert gc.get_threshold()[2] > 1_000_000
    now[0] = 29.0
    collector.busy(True)
    assert collector.forced == 0
    now[0] = 30.0
    collector.busy(True)  # a flood that never stops: collected anyway, then put off again
    assert collector.forced == 1 and collector.since == 30.0
    collector.busy(False)
    assert gc.get_threshold() == thresholds


def test_gate_tells_its_collector(thresholds: tuple[int, int, int]) -> None:
    async def main() -> None:
        gate = Gate(slots=2, per_tenant=2, collector=Collector())
        await gate.enter("a")
        await gate.enter("a")
        gate.leave("a")
        assert gc.get_threshold()[2] > 1_000_000
        gate.leave("a")
        assert gc.get_threshold() == thresholds

    asyncio.run(main())
