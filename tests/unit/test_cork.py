"""Small answers leave together at the end of the loop's turn; order and closes kept."""

from __future__ import annotations

import asyncio

from krypton.gateway._cork import SMALL, Cork


class Transport(asyncio.WriteTransport):
    def __init__(self, name: str, log: list[tuple[str, bytes]]) -> None:
        super().__init__()
        self.name = name
        self.log = log
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.log.append((self.name, bytes(data)))

    def is_closing(self) -> bool:
        return self.closing


def test_small_answers_wait_for_the_end_of_the_turn_then_leave_in_order() -> None:
    async def turn() -> list[tuple[str, bytes]]:
        log: list[tuple[str, bytes]] = []
        cork = Cork()
        a, b = Transport("a", log), Transport("b", log)
        cork.write(a, b"1")
        cork.write(b, b"2")
        cork.write(a, b"3")
        assert log == [] and len(cork) == 3  # nothing sent inside the turn
        await asyncio.sleep(0)
        assert len(cork) == 0
        return log

    assert asyncio.run(turn()) == [("a", b"1"), ("b", b"2"), ("a", b"3")]


def test_a_large_answer_goes_now_after_what_is_held() -> None:
    async def turn() -> list[tuple[str, bytes]]:
        log: list[tuple[str, bytes]] = []
        cork = Cork()
        a, b = Transport("a", log), Transport("b", log)
        big = b"x" * (SMALL + 1)
        cork.write(b, b"small")
        cork.write(a, b"x" * SMALL)  # at the bound: still held
        cork.write(a, big)
        assert log == [("b", b"small"), ("a", b"x" * SMALL), ("a", big)]
        cork.write(b, b"later")
        await asyncio.sleep(0)
        return log[3:]

    assert asyncio.run(turn()) == [("b", b"later")]


def test_an_explicit_flush_sends_at_once_and_a_closing_transport_is_skipped() -> None:
    async def turn() -> list[tuple[str, bytes]]:
        log: list[tuple[str, bytes]] = []
        cork = Cork()
        a, gone = Transport("a", log), Transport("gone", log)
        cork.write(gone, b"lost")
        cork.write(a, b"kept")
        gone.closing = True  # aborted before the turn ended
        cork.flush()
        assert log == [("a", b"kept")]
        await asyncio.sleep(0)  # the scheduled flush finds nothing left
        return log

    assert asyncio.run(turn()) == [("a", b"kept")]


def test_a_last_word_goes_now_after_what_is_held() -> None:
    log: list[tuple[str, bytes]] = []
    cork = Cork()
    a = Transport("a", log)

    async def turn() -> None:
        cork.write(a, b"answer")
        cork.write_now(a, b"error")  # then the connection closes
        assert log == [("a", b"answer"), ("a", b"error")]

    asyncio.run(turn())


def test_an_answer_on_the_only_connection_goes_now() -> None:
    log: list[tuple[str, bytes]] = []
    cork = Cork()
    a = Transport("a", log)

    async def turn() -> None:
        cork.write(a, b"answer", alone=True)
        assert log == [("a", b"answer")] and len(cork) == 0

    asyncio.run(turn())
