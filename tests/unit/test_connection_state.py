"""The connection's state machine, framing, backpressure and deadlines on a fake clock.

The first half drives :class:`ConnState` (sans-I/O) directly. The second half
drives a real :class:`Connection` -- real dispatcher, vault, key ring, policy
and a TLS session completed in memory with the development PKI -- over a
recording transport on an event loop, still with the fake clock and no sleeps.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from krypton.config import TLSConfig
from krypton.crypto.keyring import KeyRing, L3State
from krypton.crypto.secret import generate_key
from krypton.errors import InvalidMessage, MessageTooLarge
from krypton.gateway._conn_state import (
    ANSWER,
    ANSWER_AND_PAUSE,
    CLOSE_GRACE,
    DEADLINES,
    INITIAL_BUFFER,
    MAX_QUEUED,
    NOTHING,
    PAUSE,
    TRANSITIONS,
    Budget,
    ConnState,
    Event,
    IllegalTransition,
    State,
    Verdict,
)
from krypton.gateway.engine.dispatch import Dispatcher
from krypton.gateway.engine.services import Services
from krypton.gateway.listener import Connection, Listener
from krypton.gateway.policy import Policy
from krypton.kmip import client_messages as cm
from krypton.kmip.versions import ProtocolVersion
from krypton.pki import DevLayout, init_dev_dir
from krypton.tls.contexts import client_context, server_context
from krypton.ttlv.codec import Limits, decode, encode
from krypton.ttlv.enums import ResultReason, ResultStatus
from krypton.ttlv.tags import Tag
from krypton.vault.sqlite import Vault

READ, IDLE = 10.0, 300.0
LIMITS = Limits(max_message_size=4096)
T0 = 1000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def frame(body: int = 16, tag: int = Tag.REQUEST_MESSAGE) -> bytes:
    """A frame the framer accepts: a Structure header announcing ``body`` bytes."""
    return struct.pack(">II", (tag << 8) | 0x01, body) + bytes(range(body % 256))[:body].ljust(
        body, b"\x00"
    )


def state(c: ConnState) -> State:
    """The current state (a call, so that mypy does not narrow it between events)."""
    return c.state


def conn(clock: Clock | None = None) -> ConnState:
    c = ConnState(LIMITS, clock or Clock(), read_timeout=READ, idle_timeout=IDLE)
    c.fire(Event.ACCEPTED)
    return c


def feed(c: ConnState, data: bytes) -> int:
    """Write ``data`` into the buffer the way the event loop does, in one read."""
    todo = NOTHING
    while data:
        room = c.get_buffer(len(data))
        n = min(len(room), len(data))
        room[:n] = data[:n]
        data = data[n:]
        todo = c.received(n)
    return todo


# -- the table -----------------------------------------------------------------------


def test_every_event_not_in_the_table_is_refused_and_closes() -> None:
    refused = 0
    for before in State:
        for event in Event:
            if (before, event) in TRANSITIONS:
                continue
            c = conn()
            c.state = before
            c.queue.append(b"x")
            with pytest.raises(IllegalTransition, match=f"{event.name} is not allowed"):
                c.fire(event)
            assert state(c) is State.CLOSED and not c.queue
            refused += 1
    assert refused
    for impossible in (
        (State.HANDSHAKING, Event.CUT),
        (State.IDLE, Event.MORE),
        (State.IDLE, Event.DONE),
        (State.READING, Event.START),
        (State.DRAINING, Event.CUT),
        (State.CLOSING, Event.ACCEPTED),
    ):
        assert impossible not in TRANSITIONS


def test_closed_is_terminal_and_ending_twice_is_harmless() -> None:
    assert {e for (s, e) in TRANSITIONS if s is State.CLOSED} == {
        Event.CLOSE,
        Event.ABORT,
        Event.LOST,
    }
    assert all(to is State.CLOSED for (s, _), to in TRANSITIONS.items() if s is State.CLOSED)
    c = conn()
    c.close()
    c.close()
    assert state(c) is State.CLOSING
    c.closed(Event.ABORT)
    c.closed(Event.LOST)
    assert state(c) is State.CLOSED


def test_done_without_work_is_illegal() -> None:
    c = conn()
    with pytest.raises(IllegalTransition):
        c.answered()  # an answer while IDLE: nothing was asked
    assert state(c) is State.CLOSED


def test_bytes_before_the_handshake_finished_are_illegal() -> None:
    c = ConnState(LIMITS, Clock(), read_timeout=READ, idle_timeout=IDLE)
    with pytest.raises(IllegalTransition):
        feed(c, frame())
    assert state(c) is State.CLOSED


# -- framing -------------------------------------------------------------------------


def test_message_split_across_many_reads() -> None:
    clock = Clock()
    c = conn(clock)
    msg = frame(200)
    for i, byte in enumerate(msg[:-1]):
        clock.now = T0 + i
        assert feed(c, bytes([byte])) == NOTHING
        assert state(c) is State.READING
        assert c.mark == T0  # the read clock started with the first byte
    assert feed(c, msg[-1:]) == ANSWER
    assert state(c) is State.WORKING and list(c.queue) == [msg]
    assert c.start == c.end == 0


def test_two_messages_in_one_read() -> None:
    c = conn()
    one, two = frame(8), frame(24)
    assert feed(c, one + two) == ANSWER
    assert list(c.queue) == [one, two] and state(c) is State.WORKING


def test_whole_messages_and_the_start_of_the_next() -> None:
    clock = Clock()
    c = conn(clock)
    one, two = frame(8), frame(40)
    feed(c, one[:5])
    clock.now = T0 + 3
    feed(c, one[5:] + two[:10])  # completes one, starts two: the read clock restarts
    assert state(c) is State.WORKING_READING and c.mark == T0 + 3
    assert list(c.queue) == [one]
    c.queue.popleft()
    c.answered()
    assert state(c) is State.READING
    feed(c, two[10:])
    assert state(c) is State.WORKING and list(c.queue) == [two]


def big_conn(budget: Budget | None = None) -> ConnState:
    c = ConnState(
        Limits(max_message_size=INITIAL_BUFFER * 8),
        Clock(),
        read_timeout=READ,
        idle_timeout=IDLE,
        budget=budget,
    )
    c.fire(Event.ACCEPTED)
    return c


def test_memory_grows_as_bytes_arrive_the_budget_is_charged_for_the_whole_message() -> None:
    budget = Budget(1 << 30)
    c = big_conn(budget)
    big = frame(INITIAL_BUFFER * 6)  # 24,584 bytes: a 32 KiB buffer in the end
    feed(c, big[:8])
    assert len(c.buf) == INITIAL_BUFFER and budget.used == 0  # the header allocates nothing
    feed(c, big[8 : INITIAL_BUFFER * 2 - 1])
    assert len(c.buf) == INITIAL_BUFFER * 2  # doubled once it was full, no more
    assert budget.used == INITIAL_BUFFER * 8 - INITIAL_BUFFER  # but 32 KiB charged at once
    assert c.until == len(big)  # and reading stops at the message's end
    assert feed(c, big[INITIAL_BUFFER * 2 - 1 :] + frame(96)) == ANSWER
    assert list(c.queue) == [big, frame(96)]
    assert len(c.buf) == INITIAL_BUFFER and c.until == 0  # empty again: shrunk
    assert budget.used == len(big)  # the buffer's charge given back, the frame's held
    assert c.next_frame() == big and budget.used == len(big)  # in hand: still held
    c.answered()
    assert budget.used == 0  # answered: given back


def test_connections_that_cannot_be_charged_a_whole_message_hold_nothing() -> None:
    """Issue 13: with the budget taken as bytes arrived, connections each held part
    of it with every message half read and none could finish (400 connections of
    66 KB each starved until their read timeout). Now a connection is charged the
    whole message or nothing: the one charged finishes, then the next."""
    freed: list[int] = []
    one = frame(INITIAL_BUFFER * 2 - 8)  # 8,192 bytes: an 8 KiB buffer, 4 KiB charged
    budget = Budget(INITIAL_BUFFER, lambda: freed.append(budget.used))
    conns = [big_conn(budget) for _ in range(3)]
    results = [feed(c, one[:INITIAL_BUFFER]) for c in conns]
    assert results == [NOTHING, PAUSE, PAUSE]  # the first is charged, the others wait
    assert [c.charged for c in conns] == [INITIAL_BUFFER, 0, 0]
    assert [c.starved for c in conns] == [False, True, True]
    assert conns[1].regrow() is False  # nothing given back yet
    # The charged one finishes (its frame, held until answered, fills the budget).
    assert feed(conns[0], one[INITIAL_BUFFER:]) == ANSWER_AND_PAUSE
    assert conns[0].next_frame() == one
    conns[0].answered()
    assert budget.used == 0 and freed
    assert conns[1].regrow() is True and conns[2].regrow() is False
    assert feed(conns[1], one[INITIAL_BUFFER:]) == ANSWER_AND_PAUSE
    assert list(conns[1].queue) == [one]


def test_a_held_frame_leaves_no_room_for_the_next_until_answered() -> None:
    """Issue 13: whole frames waiting in the queue count against the budget (before:
    only partial buffers did, and a client pipelining 16 large messages it never
    waited for held 16 of them beyond every budget)."""
    one = frame(INITIAL_BUFFER * 2)  # 8,200 bytes: a 16 KiB buffer, 12 KiB charged
    budget = Budget(len(one) + INITIAL_BUFFER * 3 - 100)
    c = big_conn(budget)
    assert feed(c, one) == ANSWER and c.reading
    assert budget.used == len(one) and c.held == len(one)
    # The next one cannot be charged its 12 KiB while the first is held.
    assert feed(c, one[:INITIAL_BUFFER]) == ANSWER_AND_PAUSE
    assert c.starved and not c.reading and c.regrow() is False
    assert c.next_frame() == one
    c.answered()  # answered: its bytes are given back
    assert budget.used == 0 and c.held == 0
    assert c.regrow() is True and c.reading
    assert feed(c, one[INITIAL_BUFFER:]) == ANSWER and list(c.queue) == [one]


def test_frames_that_fill_the_budget_pause_reading() -> None:
    """The frames cut take the last of the budget: reading pauses, and resumes once
    one of them is answered; a closed connection gives back all."""
    freed: list[int] = []
    one = frame(INITIAL_BUFFER * 4 - 16)  # 16,376 bytes held, 12 KiB charged to read it
    budget = Budget(INITIAL_BUFFER * 3 + 50, lambda: freed.append(budget.used))
    c = big_conn(budget)
    assert feed(c, one) == ANSWER_AND_PAUSE
    assert c.starved and not c.reading and budget.full()
    other = big_conn(budget)
    assert feed(other, one[:INITIAL_BUFFER]) == PAUSE  # none left for others
    assert c.next_frame() == one
    c.answered()
    assert freed and budget.used == 0 and not budget.full()
    assert c.regrow() is True and c.reading
    assert other.regrow() is True
    c.closed(Event.LOST)
    other.closed(Event.LOST)
    assert budget.used == 0


def test_answers_a_client_does_not_take_are_charged_while_writing_is_paused() -> None:
    """Issue 13: what the transport holds for a client that does not read is
    charged (before: a thousand such clients held a megabyte answer each, uncounted)."""
    budget = Budget(1 << 20)
    c = big_conn(budget)
    c.pause_writing()
    c.hold_unsent(300_000)
    assert budget.used == 300_000 and c.unsent == 300_000
    c.hold_unsent(200_000)  # paused again with less: no double charge
    assert budget.used == 300_000
    c.resume_writing()
    assert budget.used == 0 and c.unsent == 0
    c.pause_writing()
    c.hold_unsent(1 << 20)
    assert budget.full()
    c.closed(Event.LOST)
    assert budget.used == 0


def test_small_frames_are_not_charged() -> None:
    budget = Budget(INITIAL_BUFFER)
    c = big_conn(budget)
    assert feed(c, frame(96) * 3) == ANSWER and budget.used == 0 and c.held == 0
    assert isinstance(c.next_frame(), bytes) and c.in_hand == 0


def test_an_exhausted_budget_pauses_reading_until_it_has_room() -> None:
    freed: list[int] = []
    budget = Budget(INITIAL_BUFFER, lambda: freed.append(budget.used))
    hog, starved = big_conn(budget), big_conn(budget)
    assert feed(hog, frame(INITIAL_BUFFER * 2 - 8)[: INITIAL_BUFFER * 2 - 1]) == NOTHING
    assert budget.used == INITIAL_BUFFER  # the hog's buffer doubled: the budget is spent
    msg = frame(INITIAL_BUFFER)
    assert feed(starved, msg[:INITIAL_BUFFER]) == PAUSE  # full, and no room to grow
    assert starved.starved and not starved.reading and len(starved.buf) == INITIAL_BUFFER
    assert starved.regrow() is False  # still no room
    hog.closed(Event.LOST)  # a closed connection gives its buffer back at once
    assert budget.used == 0 and freed == [0] and len(hog.buf) == 0
    assert starved.regrow() is True and starved.reading and not starved.starved
    # Cut, the frame stays charged: larger than the whole budget, it pauses reading.
    assert feed(starved, msg[INITIAL_BUFFER:]) == ANSWER_AND_PAUSE
    assert list(starved.queue) == [msg] and budget.used == len(msg)


def test_oversized_length_is_refused_from_the_header() -> None:
    c = conn()
    header = frame(LIMITS.max_message_size)[:8]  # 8 + max: one frame too long
    assert feed(c, header) == ANSWER_AND_PAUSE
    assert state(c) is State.DRAINING and not c.reading
    assert len(c.buf) == INITIAL_BUFFER  # nothing was allocated for the body
    (err,) = c.queue
    assert isinstance(err, MessageTooLarge)
    assert feed(c, bytes(100)) == NOTHING  # later bytes are dropped
    assert c.end == 0 and len(c.queue) == 1


def test_frames_before_a_bad_header_are_answered_first() -> None:
    c = conn()
    good = frame(8)
    assert feed(c, good + frame(8, tag=Tag.RESPONSE_MESSAGE)) == ANSWER_AND_PAUSE
    assert c.queue[0] == good and isinstance(c.queue[1], InvalidMessage)
    c.queue.popleft()
    assert c.answered() is False  # DRAINING: reading stays off
    assert state(c) is State.DRAINING


# -- backpressure --------------------------------------------------------------------


def test_backlog_pauses_reading_and_half_of_it_resumes() -> None:
    c = conn()
    assert feed(c, frame(8) * (MAX_QUEUED - 1)) == ANSWER
    assert c.reading
    assert feed(c, frame(8)) == ANSWER_AND_PAUSE
    assert not c.reading
    resumed = []
    while c.queue:
        c.queue.popleft()
        resumed.append(c.answered())
    assert resumed.index(True) == MAX_QUEUED - MAX_QUEUED // 2  # once below half
    assert resumed.count(True) == 1 and c.reading and state(c) is State.IDLE


# -- deadlines -----------------------------------------------------------------------


@pytest.mark.parametrize("limit", [0.5, READ])
def test_read_timeout_fires_exactly_at_its_limit(limit: float) -> None:
    clock = Clock()
    c = ConnState(LIMITS, clock, read_timeout=limit, idle_timeout=IDLE)
    c.fire(Event.ACCEPTED)
    msg = frame(64)
    feed(c, msg[:3])
    clock.now = T0 + limit / 2
    feed(c, msg[3:10])  # bytes still coming do not extend a started message
    assert c.expired(T0 + limit - 0.001) == (Verdict.NONE, "")
    assert c.expired(T0 + limit) == (Verdict.ABORT, "read timeout")


def test_a_started_message_does_not_time_out_while_we_are_behind() -> None:
    """Frames in hand and the next message started: its rest waits on us (and on
    reading, paused for the backlog), so read_timeout counts only once we caught up."""
    clock = Clock()
    c = conn(clock)
    msg = frame(64)
    feed(c, frame(8) * 3 + msg[:10])
    assert state(c) is State.WORKING_READING
    assert c.expired(T0 + READ * 5) == (Verdict.NONE, "")  # three frames still in hand
    c.queue.clear()  # the last one is being answered: we are no longer behind
    assert c.expired(T0 + READ * 5 + READ - 0.001) == (Verdict.NONE, "")
    assert c.expired(T0 + READ * 5 + READ) == (Verdict.ABORT, "read timeout")


def test_idle_timeout_counts_from_the_last_activity() -> None:
    clock = Clock()
    c = conn(clock)
    clock.now = T0 + 7
    feed(c, frame(8))
    c.queue.popleft()
    clock.now = T0 + 9
    c.answered()
    assert state(c) is State.IDLE
    assert c.expired(T0 + 9 + IDLE - 0.001) == (Verdict.NONE, "")
    assert c.expired(T0 + 9 + IDLE) == (Verdict.CLOSE, "idle timeout")


def test_idle_peer_that_does_not_read_its_answers_is_aborted() -> None:
    c = ConnState(LIMITS, Clock(), read_timeout=READ, idle_timeout=IDLE, write_timeout=IDLE * 2)
    c.fire(Event.ACCEPTED)
    c.pause_writing()
    assert c.expired(T0 + IDLE) == (Verdict.ABORT, "not reading its answers")
    c.resume_writing()
    assert c.expired(T0 + IDLE) == (Verdict.CLOSE, "idle timeout")


def test_a_writer_stalled_for_the_write_timeout_is_aborted_in_any_state() -> None:
    clock = Clock()
    c = ConnState(LIMITS, clock, read_timeout=READ, idle_timeout=IDLE, write_timeout=2.0)
    c.fire(Event.ACCEPTED)
    feed(c, frame(8) * 2)  # frames in hand: the idle deadline does not run
    clock.now = T0 + 1
    c.pause_writing()
    assert c.expired(T0 + 2.9) == (Verdict.NONE, "")
    assert c.expired(T0 + 3) == (Verdict.ABORT, "write timeout: not reading its answers")
    c.resume_writing()
    assert c.expired(T0 + 3) == (Verdict.NONE, "")


def test_frames_waiting_on_us_are_not_the_peers_idleness() -> None:
    c = conn()
    feed(c, frame(8) * 2)
    assert state(c) is State.WORKING
    assert c.expired(T0 + IDLE * 2) == (Verdict.NONE, "")
    c.queue.clear()  # one being answered, nothing else: the peer is idle
    assert c.expired(T0 + IDLE) == (Verdict.CLOSE, "idle timeout")


def test_close_grace_then_abort() -> None:
    clock = Clock()
    c = conn(clock)
    clock.now = T0 + 50
    c.close()
    clock.now = T0 + 60
    c.close()  # closing again does not restart the grace
    assert c.expired(T0 + 50 + CLOSE_GRACE - 0.001) == (Verdict.NONE, "")
    assert c.expired(T0 + 50 + CLOSE_GRACE) == (Verdict.ABORT, "close grace over")


def test_handshake_and_closed_have_no_deadline_here() -> None:
    # the loop's ssl_handshake_timeout times the handshake: no transport to close before it
    assert State.HANDSHAKING not in DEADLINES and State.CLOSED not in DEADLINES
    c = ConnState(LIMITS, Clock(), read_timeout=READ, idle_timeout=IDLE)
    assert c.expired(T0 + 10**6) == (Verdict.NONE, "")


# -- the I/O half over a recording transport -------------------------------------------


@dataclass
class Transport:
    """Records what the connection asks of its transport."""

    sslobj: ssl.SSLObject
    written: list[bytes] = field(default_factory=list)
    reading: bool = True
    closed: bool = False
    aborted: bool = False
    read_limit: int | None = None
    write_limit: int | None = None
    unsent: int = 0

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.sslobj if name == "ssl_object" else default

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def pause_reading(self) -> None:
        self.reading = False

    def set_read_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.read_limit = high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.write_limit = high

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted


def tls_in_memory(dev: DevLayout) -> ssl.SSLObject:
    """Complete a mutual TLS handshake between two SSLObjects; return the server's."""
    server_ctx = server_context(TLSConfig(cert=dev.gateway, key=dev.gateway_key, ca=dev.ca))
    client_ctx = client_context(dev.ca, dev.client, dev.client_key)
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost")
    done: set[str] = set()
    for _ in range(10):
        for name, side in (("client", client), ("server", server)):
            if name not in done:
                try:
                    side.do_handshake()
                    done.add(name)
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if len(done) == 2 and server.getpeercert(binary_form=True):
            return server
    raise AssertionError("in-memory handshake did not finish")


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> DevLayout:
    return init_dev_dir(tmp_path_factory.mktemp("dev"))


@dataclass
class Gateway:
    loop: asyncio.AbstractEventLoop
    listener: Listener
    clock: Clock
    dev: DevLayout

    def connect(self) -> tuple[Connection, Transport]:
        c = Connection(self.listener)
        t = Transport(tls_in_memory(self.dev))
        assert self.listener.admit(c)
        c.connection_made(t)  # type: ignore[arg-type]
        return c, t

    def spin(self, until: object = None, turns: int = 200) -> None:
        """Run the loop for ``turns`` turns (no sleeping), or until ``until()`` holds
        (then also waiting, up to 10 s, for the vault's reader thread: a Get of a
        record not cached is read there, off the loop)."""

        async def go() -> None:
            for _ in range(turns):
                if callable(until) and until():
                    return
                await asyncio.sleep(0)
            deadline = time.monotonic() + 10
            while callable(until) and not until() and time.monotonic() < deadline:
                await asyncio.sleep(0.001)  # the loop's turn while a reader thread works

        self.loop.run_until_complete(go())

    def deliver(self, c: Connection, data: bytes) -> None:
        """One read of ``data``, from inside the loop as the event loop would call it."""

        async def go() -> None:
            room = c.get_buffer(len(data))
            room[: len(data)] = data
            c.buffer_updated(len(data))

        self.loop.run_until_complete(go())


@pytest.fixture
def gw(tmp_path: Path, dev: DevLayout) -> Iterator[Gateway]:
    loop = asyncio.new_event_loop()
    vault = Vault.open(tmp_path / "v.db")
    ring = KeyRing()
    ring.install("demo", 1, generate_key(256), L3State.ACTIVE, ring.lease_deadline(3600))
    policy = Policy.from_dict(
        {
            "rule": [
                {
                    "identity": "spiffe://krypton.dev/tenant/demo/*",
                    "tenant": "demo",
                    "operations": ["*"],
                }
            ]
        }
    )
    clock = Clock()
    listener = Listener(
        Dispatcher(Services(store=vault, keyring=ring), LIMITS),
        policy,
        server_context(TLSConfig(cert=dev.gateway, key=dev.gateway_key, ca=dev.ca)),
        LIMITS,
        read_timeout=READ,
        idle_timeout=IDLE,
        clock=clock,
    )
    try:
        yield Gateway(loop, listener, clock, dev)
    finally:
        vault.close()
        loop.close()


def get_request(uid: str = "no-such-key") -> bytes:
    return encode(cm.request_message(ProtocolVersion(1, 4), [cm.get_item(uid)]))


def reason_of(response: bytes) -> ResultReason | None:
    (item,) = cm.parse_response(decode(response)).items
    assert item.status is ResultStatus.OPERATION_FAILED
    return item.reason


def test_request_is_answered_and_the_connection_goes_idle(gw: Gateway) -> None:
    c, t = gw.connect()
    assert c.session is not None and state(c) is State.IDLE and gw.listener.connections
    gw.deliver(c, get_request())
    gw.spin(until=lambda: t.written)
    assert [reason_of(r) for r in t.written] == [ResultReason.ITEM_NOT_FOUND]
    assert state(c) is State.IDLE


def test_paused_writing_stops_work_and_resuming_restarts_it(gw: Gateway) -> None:
    c, t = gw.connect()
    c.pause_writing()
    gw.deliver(c, get_request() * 3)
    gw.spin()
    assert t.written == [] and state(c) is State.WORKING  # answered nothing while paused
    c.resume_writing()
    gw.spin(until=lambda: len(t.written) == 3)
    assert [reason_of(r) for r in t.written] == [ResultReason.ITEM_NOT_FOUND] * 3
    assert state(c) is State.IDLE


def test_backlog_pauses_the_transport_until_it_drains(gw: Gateway) -> None:
    c, t = gw.connect()
    c.pause_writing()
    gw.deliver(c, get_request() * MAX_QUEUED)
    assert not t.reading
    c.resume_writing()
    gw.spin(until=lambda: len(t.written) == MAX_QUEUED)
    assert t.reading and len(t.written) == MAX_QUEUED


def test_sweep_applies_each_deadline_at_the_listeners_clock(gw: Gateway) -> None:
    reader, rt = gw.connect()
    idler, it = gw.connect()
    gw.deliver(reader, get_request()[:20])
    gw.listener.sweep(T0 + READ - 0.001)
    assert not (rt.aborted or it.closed)
    gw.clock.now = T0 + READ
    gw.listener.sweep()
    assert rt.aborted and state(reader) is State.CLOSED and not it.closed
    reader.connection_lost(None)
    assert list(gw.listener.connections.values()) == [idler]
    gw.listener.sweep(T0 + IDLE)
    assert it.closed and state(idler) is State.CLOSING and not it.aborted
    gw.listener.sweep(T0 + IDLE + CLOSE_GRACE)
    assert it.aborted


def test_framing_error_answers_then_closes(gw: Gateway) -> None:
    c, t = gw.connect()
    gw.deliver(c, get_request() + frame(LIMITS.max_message_size)[:8])
    assert not t.reading  # the stream position is lost
    gw.spin(until=lambda: t.closed)
    assert [reason_of(r) for r in t.written] == [
        ResultReason.ITEM_NOT_FOUND,
        ResultReason.INVALID_MESSAGE,
    ]
    assert state(c) is State.CLOSING


def test_unknown_identity_is_denied_on_its_first_message(gw: Gateway) -> None:
    gw.listener.policy = Policy.from_dict({})
    c, t = gw.connect()
    assert c.session is None
    gw.deliver(c, get_request())
    gw.spin(until=lambda: t.closed)
    assert [reason_of(r) for r in t.written] == [ResultReason.PERMISSION_DENIED]


def test_illegal_transition_aborts_the_connection(gw: Gateway) -> None:
    c, t = gw.connect()

    async def respond() -> None:
        c._respond(b"an answer nobody asked for")  # DONE while IDLE

    gw.loop.run_until_complete(respond())
    assert t.aborted and state(c) is State.CLOSED


def test_full_budget_drops_the_oldest_handshake_then_refuses(gw: Gateway) -> None:
    gw.listener.budget = 3
    done, _ = gw.connect()  # through TLS: never dropped for a newcomer
    first, second = Connection(gw.listener), Connection(gw.listener)
    assert gw.listener.admit(first) and gw.listener.admit(second)
    third = Connection(gw.listener)
    assert gw.listener.admit(third)  # the oldest handshake made room
    assert state(first) is State.CLOSED and first.id not in gw.listener.connections
    assert list(gw.listener.handshaking) == [second.id, third.id]
    gw.listener.established(second)
    gw.listener.established(third)
    assert not gw.listener.admit(Connection(gw.listener))  # nobody left to drop
    assert gw.listener.refused == 1 and gw.listener.evicted == 1
    assert state(done) is State.IDLE


def test_a_starved_connection_resumes_when_another_gives_its_buffer_back(gw: Gateway) -> None:
    gw.listener.limits = Limits(max_message_size=4 * INITIAL_BUFFER)
    gw.listener.pending.limit = INITIAL_BUFFER  # room for one buffer to double, not two
    big = frame(INITIAL_BUFFER * 2 - 8)  # 8 KiB in all: twice the initial buffer
    (c1, t1), (c2, t2) = gw.connect(), gw.connect()
    gw.deliver(c1, big[:INITIAL_BUFFER])
    assert t1.reading and gw.listener.pending.used == INITIAL_BUFFER
    gw.deliver(c2, big[:INITIAL_BUFFER])
    assert not t2.reading and list(gw.listener.starving) == [c2.id]
    c1.connection_lost(None)
    assert t2.reading and not gw.listener.starving  # c1's buffer went back to the budget
    gw.deliver(c2, big[INITIAL_BUFFER:])
    gw.spin(until=lambda: t2.written)
    assert len(t2.written) == 1  # the whole message was framed and answered


def test_unknown_identity_is_closed_right_after_the_handshake(gw: Gateway) -> None:
    gw.listener.policy = Policy.from_dict({})
    _, ts = gw.connect()
    begun, tb = gw.connect()
    gw.deliver(begun, get_request()[:20])  # a request started, not finished
    gw.listener.sweep(T0 + gw.listener.refuse_grace / 2)
    assert not ts.closed and not tb.closed  # the grace: a request on its way is answered
    gw.listener.sweep(T0 + gw.listener.refuse_grace)
    assert ts.closed and ts.written == []  # sent nothing: closed without a word
    assert tb.closed and [reason_of(r) for r in tb.written] == [ResultReason.PERMISSION_DENIED]
    assert not gw.listener.unwelcome


def test_full_budget_drops_a_refused_identity_for_a_newcomer(gw: Gateway) -> None:
    gw.listener.policy = Policy.from_dict({})
    gw.listener.budget = 1
    _, t = gw.connect()
    assert gw.listener.admit(Connection(gw.listener))
    assert t.aborted and not gw.listener.unwelcome


def test_one_tenant_cannot_take_more_than_its_share(gw: Gateway) -> None:
    gw.listener.per_tenant = 1
    first, _ = gw.connect()
    second, t2 = gw.connect()  # the same tenant: over its share, turned away like a stranger
    assert first.session is not None and second.session is None
    assert second.refused == "too many connections for tenant 'demo'"
    gw.listener.sweep(T0 + gw.listener.refuse_grace)
    assert t2.closed
    first.connection_lost(None)  # its slot comes back to the tenant
    third, _ = gw.connect()
    assert third.session is not None and gw.listener.held["t:demo"] == 1


def test_a_tenants_share_of_the_buffer_budget_is_its_own(gw: Gateway) -> None:
    gw.listener.limits = Limits(max_message_size=4 * INITIAL_BUFFER)
    gw.listener.pending_per_tenant = INITIAL_BUFFER
    big = frame(INITIAL_BUFFER * 2 - 8)
    (c1, t1), (c2, t2) = gw.connect(), gw.connect()
    gw.deliver(c1, big[:INITIAL_BUFFER])
    gw.deliver(c2, big[:INITIAL_BUFFER])
    assert t1.reading and not t2.reading  # the tenant's share is spent, not the whole budget
    assert gw.listener.pending.used == INITIAL_BUFFER


def test_a_connection_waiting_for_a_slot_is_closed_after_the_grace(gw: Gateway) -> None:
    mine, peer = socket.socketpair()
    with peer:
        gw.listener.waiting.append((T0, mine))
        gw.listener.sweep(T0 + gw.listener.refuse_grace / 2)
        assert mine.fileno() != -1  # a slot may still be freed for it
        gw.listener.sweep(T0 + gw.listener.refuse_grace)
        assert mine.fileno() == -1 and not gw.listener.waiting
