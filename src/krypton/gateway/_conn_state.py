"""One KMIP connection's state, framing and deadlines, without sockets (sans-I/O).

How this works
--------------
A connection is in exactly one :class:`State`; what happens to it is an
:class:`Event`, and :data:`TRANSITIONS` -- one table, in the style of h11's
``_state.py`` -- says which state each (state, event) pair leads to. A pair
that is not in the table is a bug or a peer doing something impossible: it
raises :class:`IllegalTransition`, the state becomes ``CLOSED`` and the
listener aborts the connection. The hot path (bytes in, answer out) looks its
transition up in that table's column for the event (``_ON_CUT`` ...: one
dict lookup); everything else goes through :meth:`ConnState.fire`.

::

    HANDSHAKING --ACCEPTED--> IDLE --START--> READING --CUT--> WORKING --DONE--> IDLE
                               |                 \\--CUT_START--> WORKING_READING
                               |   (any open state) --BAD_FRAME--> DRAINING
                               \\-- (any state) --CLOSE--> CLOSING --ABORT/LOST--> CLOSED

``READING`` means part of a message is buffered; ``WORKING`` that frames are
in hand (queued, or one being answered); ``WORKING_READING`` both at once (a
pipelining client). ``DRAINING`` follows a framing error: the frames cut
before it are answered, then the error, then the connection closes; input is
dropped meanwhile, since the stream position is lost.

:class:`ConnState` also owns the bytes: the event loop reads straight into a
preallocated ``bytearray`` (:meth:`ConnState.get_buffer`), :meth:`ConnState.received`
cuts complete frames with :func:`krypton.ttlv.framing.message_length` (an
oversized or malformed header is refused before its body is awaited) and
names the event. The buffer grows as bytes arrive, never on the length a
header announces: it doubles when one message fills it (up to
``max_message_size``). The shared :class:`Budget` for partially received
messages (every byte above :data:`INITIAL_BUFFER`, over all connections) is
charged all at once, though, at the first growth, for the whole buffer the
message will need (``charged``), and reading stops at the message's end
(``until``) so the next one starts in an empty buffer. A connection holding
budget can therefore always finish its message: were budget taken as bytes
arrive, many connections could each hold part of it with every message half
read, and none could finish (400 connections of one client sending 66 KB
each did exactly that). When the budget cannot cover a message, reading
pauses (:data:`PAUSE`) with nothing charged until the budget has room again
(:meth:`ConnState.regrow`); the sender's bytes wait in its socket, and its
read timeout still runs. Once the buffer is empty again it shrinks back to
:data:`INITIAL_BUFFER`, and a closed connection drops it, so the budget is
returned at once.

A whole frame larger than :data:`INITIAL_BUFFER` stays charged to the same
budget from when it is cut until it is answered (``held``: in the queue, then
in hand), so a client pipelining large messages it does not wait for -- up to
:data:`MAX_QUEUED` of them per connection -- holds its share and no more.
Once a cut leaves a budget (the connection's, its tenant's or the listener's)
full, reading pauses as for a buffer that cannot grow, and resumes when an
answer gives bytes back. Smaller frames are not charged (the hot path's
``Get`` and ``Create`` are a few hundred bytes): they are bounded by
``MAX_QUEUED * INITIAL_BUFFER`` per connection and the connection limit.
Answers a client does not take are charged too: when the transport pauses
writing (more than its high-water mark unsent), what it holds is charged
(``unsent``) until it resumes.

Deadlines are a table too (:data:`DEADLINES`): which clock a state is timed
on (when its message started, or the last activity) and what happens when it
runs out. :meth:`ConnState.expired` reads an injected clock's time, so tests
drive every timeout with a fake clock. The TLS handshake is timed by the
event loop (``ssl_handshake_timeout``): before it completes there is no
transport to close, so ``HANDSHAKING`` has no entry here.

Backpressure is decided here and carried out by the listener: at
:data:`MAX_QUEUED` frames in hand, or after a framing error, reading pauses;
it resumes once the backlog halves. ``writable`` mirrors the transport's
pause_writing / resume_writing; the listener's worker waits while it is off,
and a connection whose writing stays paused for ``write_timeout`` (the
client is not reading its answers) is aborted, whatever its state.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from krypton.errors import GeneralFailure, KryptonError
from krypton.ttlv.codec import Limits
from krypton.ttlv.framing import HEADER_SIZE, message_length
from krypton.ttlv.tags import Tag

__all__ = [
    "ANSWER",
    "ANSWER_AND_PAUSE",
    "CLOSE_GRACE",
    "DEADLINES",
    "INITIAL_BUFFER",
    "MAX_QUEUED",
    "NOTHING",
    "PAUSE",
    "TRANSITIONS",
    "Budget",
    "ConnState",
    "Deadline",
    "Event",
    "IllegalTransition",
    "State",
    "Verdict",
]

INITIAL_BUFFER = 4 * 1024
MAX_QUEUED = 16  # frames in hand before reading pauses
CLOSE_GRACE = 1.0  # seconds a closing connection gets to take its last bytes


class State(IntEnum):
    HANDSHAKING = 0
    IDLE = 1  # between messages: nothing buffered, nothing in hand
    READING = 2  # part of a message buffered, nothing in hand
    WORKING = 3  # frames in hand (queued or being answered), nothing partial
    WORKING_READING = 4  # frames in hand and the next message started
    DRAINING = 5  # framing error: answering what was cut before it, then the error
    CLOSING = 6  # flushing the last bytes; aborted after CLOSE_GRACE
    CLOSED = 7


class Event(IntEnum):
    ACCEPTED = 0  # handshake done, the listener took the connection
    START = 1  # the first bytes of a message arrived
    MORE = 2  # more bytes of the message already started
    CUT = 3  # whole messages cut, nothing left over
    CUT_START = 4  # whole messages cut, and the next one started
    DONE = 5  # the last frame in hand is answered
    BAD_FRAME = 6  # a header that is not a KMIP request or announces too much
    CLOSE = 7  # hang up once what was written is flushed
    ABORT = 8  # drop the connection now
    LOST = 9  # the transport is gone


_S = State
_E = Event

_OPEN = (_S.IDLE, _S.READING, _S.WORKING, _S.WORKING_READING)
_ENDINGS = {_E.CLOSE: _S.CLOSING, _E.ABORT: _S.CLOSED, _E.LOST: _S.CLOSED}

TRANSITIONS: dict[tuple[State, Event], State] = {
    (_S.HANDSHAKING, _E.ACCEPTED): _S.IDLE,
    # bytes arriving
    (_S.IDLE, _E.START): _S.READING,
    (_S.IDLE, _E.CUT): _S.WORKING,
    (_S.IDLE, _E.CUT_START): _S.WORKING_READING,
    (_S.READING, _E.MORE): _S.READING,
    (_S.READING, _E.CUT): _S.WORKING,
    (_S.READING, _E.CUT_START): _S.WORKING_READING,
    (_S.WORKING, _E.START): _S.WORKING_READING,
    (_S.WORKING, _E.CUT): _S.WORKING,
    (_S.WORKING, _E.CUT_START): _S.WORKING_READING,
    (_S.WORKING_READING, _E.MORE): _S.WORKING_READING,
    (_S.WORKING_READING, _E.CUT): _S.WORKING,
    (_S.WORKING_READING, _E.CUT_START): _S.WORKING_READING,
    # answers leaving
    (_S.WORKING, _E.DONE): _S.IDLE,
    (_S.WORKING_READING, _E.DONE): _S.READING,
    # framing errors
    **{(s, _E.BAD_FRAME): _S.DRAINING for s in _OPEN},
    # endings, from anywhere (CLOSING --CLOSE--> CLOSING: closing twice is harmless)
    **{(s, e): to for s in State for e, to in _ENDINGS.items() if s is not _S.CLOSED},
    (_S.CLOSED, _E.CLOSE): _S.CLOSED,
    (_S.CLOSED, _E.ABORT): _S.CLOSED,
    (_S.CLOSED, _E.LOST): _S.CLOSED,
}

# States in which arriving bytes are framed; in the others they are dropped.
_FRAMING = frozenset(_OPEN)


def _on(event: Event) -> dict[State, State]:
    """The table's column for one event: what the hot path looks up."""
    return {s: to for (s, e), to in TRANSITIONS.items() if e is event}


_ON_START = _on(Event.START)
_ON_MORE = _on(Event.MORE)
_ON_CUT = _on(Event.CUT)
_ON_CUT_START = _on(Event.CUT_START)
_ON_DONE = _on(Event.DONE)
_REQUEST = Tag.REQUEST_MESSAGE

# What received() asks of the listener (flags).
NOTHING = 0
ANSWER = 1  # frames are in hand: answer them
PAUSE = 2  # pause reading
ANSWER_AND_PAUSE = ANSWER | PAUSE


class Budget:
    """Bytes shared by many connections (their buffers above :data:`INITIAL_BUFFER`).

    A budget may draw on a ``parent`` (a client identity's on its tenant's, a
    tenant's on the whole listener's): taking needs room in every one."""

    __slots__ = ("limit", "on_free", "parent", "used")

    def __init__(
        self,
        limit: int,
        on_free: Callable[[], None] | None = None,
        parent: Budget | None = None,
    ) -> None:
        self.limit = limit
        self.used = 0
        self.on_free = on_free  # called when bytes are given back
        self.parent = parent

    def take(self, n: int) -> bool:
        if self.used + n > self.limit:
            return False
        if self.parent is not None and not self.parent.take(n):
            return False
        self.used += n
        return True

    def force(self, n: int) -> None:
        """Take ``n`` whatever the limits say (a read already under way)."""
        self.used += n
        if self.parent is not None:
            self.parent.force(n)

    def full(self) -> bool:
        """No room left here or in a parent."""
        budget: Budget | None = self
        while budget is not None:
            if budget.used >= budget.limit:
                return True
            budget = budget.parent
        return False

    def give(self, n: int) -> None:
        self.used -= n
        if self.parent is not None:
            self.parent.give(n)
        if n and self.on_free is not None:
            self.on_free()


UNLIMITED = 1 << 62


def _over_initial(size: int) -> int:
    """What a buffer of ``size`` bytes costs the budget."""
    return max(size - INITIAL_BUFFER, 0)


class Verdict(IntEnum):
    """What a deadline asks of the listener."""

    NONE = 0
    CLOSE = 1  # flush, then hang up
    ABORT = 2  # drop now


@dataclass(frozen=True, slots=True)
class Deadline:
    """A state's timeout: how long (``limit``, a ConnState attribute) since when
    (``since``, one too), and what happens when it runs out."""

    limit: str
    since: str
    verdict: Verdict
    reason: str


_IDLE = Deadline("idle_timeout", "last_activity", Verdict.CLOSE, "idle timeout")
_READ = Deadline("read_timeout", "mark", Verdict.ABORT, "read timeout")

DEADLINES: dict[State, Deadline] = {
    _S.IDLE: _IDLE,
    _S.READING: _READ,
    _S.WORKING: _IDLE,
    _S.WORKING_READING: _READ,
    _S.DRAINING: _IDLE,
    _S.CLOSING: Deadline("close_grace", "mark", Verdict.ABORT, "close grace over"),
}


class IllegalTransition(GeneralFailure):
    """An event the connection's state does not allow; the connection is closed."""


class ConnState:
    """The sans-I/O half of a connection: state, buffer, frames in hand, deadlines.

    ``mark`` is when the state's own clock started: the buffered message's
    first bytes (``READING``, ``WORKING_READING``) or the close (``CLOSING``).
    ``last_activity`` is the last read or answer.
    """

    __slots__ = (
        "budget",
        "buf",
        "charged",
        "clock",
        "close_grace",
        "end",
        "held",
        "idle_timeout",
        "in_hand",
        "last_activity",
        "limits",
        "mark",
        "queue",
        "read_timeout",
        "reading",
        "start",
        "starved",
        "state",
        "unsent",
        "until",
        "view",
        "writable",
        "write_paused",
        "write_timeout",
    )

    def __init__(
        self,
        limits: Limits,
        clock: Callable[[], float],
        *,
        read_timeout: float,
        idle_timeout: float,
        close_grace: float = CLOSE_GRACE,
        budget: Budget | None = None,
        write_timeout: float = 30.0,
    ) -> None:
        self.limits = limits
        self.budget = budget or Budget(UNLIMITED)
        self.clock = clock
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self.close_grace = close_grace
        self.state = State.HANDSHAKING
        self.buf = bytearray(INITIAL_BUFFER)
        self.view = memoryview(self.buf)
        self.start = 0
        self.end = 0
        self.queue: collections.deque[bytes | KryptonError] = collections.deque()
        self.mark = self.last_activity = clock()
        self.reading = True  # False while reading is paused (backlog, or DRAINING)
        self.writable = True  # False while the transport has paused writing
        self.write_timeout = write_timeout
        self.write_paused = 0.0  # when writing paused
        self.starved = False  # reading paused: the buffer (or a budget) is full
        self.held = 0  # bytes of charged frames, queued or in hand
        self.charged = 0  # budget held for the buffer: the current message's whole size
        self.until = 0  # where in the buffer the message the charge covers ends (0: none)
        self.in_hand = 0  # of those, the frame being answered
        self.unsent = 0  # bytes of answers charged while writing is paused

    # -- transitions (the hot path reads the same table, a column at a time) -----
    def fire(self, event: Event) -> State:
        """Apply ``event``; an event the table does not allow closes the connection."""
        try:
            self.state = new = TRANSITIONS[self.state, event]
        except KeyError:
            was, self.state = self.state, State.CLOSED
            self.queue.clear()
            raise IllegalTransition(f"{event.name} is not allowed in {was.name}") from None
        return new

    # -- input -------------------------------------------------------------------
    def get_buffer(self, sizehint: int = -1) -> memoryview:
        if self.end == len(self.buf) and not self._make_room():
            self._grow(force=True)  # read while starved (the loop had a read in flight)
        if self.until > self.end:  # not past the end of the message the charge covers
            return self.view[self.end : self.until]
        return self.view[self.end :]

    def received(self, nbytes: int) -> int:
        """``nbytes`` were written into the buffer: cut frames, fire the event.

        Returns :data:`NOTHING`, :data:`ANSWER` (frames in hand to answer) or
        :data:`ANSWER_AND_PAUSE` (and stop reading: too many frames in hand,
        or a framing error, queued behind the frames cut before it).
        """
        end = self.end = self.end + nbytes
        now = self.last_activity = self.clock()
        if self.state not in _FRAMING:
            self.start = self.end = 0  # stream position lost, or closing: drop
            if self.state is State.HANDSHAKING:
                self.fire(Event.START)  # bytes before the handshake finished: illegal
            return NOTHING
        start = self.start
        had = end - nbytes - start  # bytes of a started message before this read
        queue = self.queue
        queued = len(queue)
        view = self.view
        try:
            while end - start >= HEADER_SIZE:
                total = message_length(view[start : start + HEADER_SIZE], self.limits, _REQUEST)
                if end - start < total:
                    break
                queue.append(bytes(view[start : start + total]))
                start += total
                if total > INITIAL_BUFFER:
                    self.held += total
                    self.budget.force(total)
        except KryptonError as exc:
            self.start = self.end = self.until = 0
            self.fire(Event.BAD_FRAME)
            queue.append(exc)
            self.reading = False
            return ANSWER_AND_PAUSE
        cut = len(queue) > queued
        if start == self.end:
            self.start = self.end = self.until = 0
            if len(self.buf) > INITIAL_BUFFER:
                self._shrink()
            if cut:
                try:
                    self.state = _ON_CUT[self.state]
                except KeyError:
                    self.fire(Event.CUT)
        else:
            self.start = start
            try:
                if cut:
                    self.state = _ON_CUT_START[self.state]
                    self.mark = now
                elif had:
                    self.state = _ON_MORE[self.state]
                else:
                    self.state = _ON_START[self.state]
                    self.mark = now
            except KeyError:
                self.fire(Event.CUT_START if cut else Event.MORE if had else Event.START)
            if self.end == len(self.buf) and not self._make_room():
                self.starved = True
                self.reading = False
                return ANSWER_AND_PAUSE if queue else PAUSE
        if not queue:
            return NOTHING
        if self.held and self.reading and self.budget.full():
            self.starved = True  # the frames in hand took what this client may hold
            self.reading = False
            return ANSWER_AND_PAUSE
        if self.reading and len(queue) >= MAX_QUEUED:
            self.reading = False
            return ANSWER_AND_PAUSE
        return ANSWER

    def _make_room(self) -> bool:
        """The buffer is full: compact unread bytes to the front or, when one
        message fills it, grow it. False when the budget refused the growth."""
        if self.start:
            pending = self.end - self.start
            self.buf[:pending] = bytes(self.view[self.start : self.end])
            if self.until:
                self.until -= self.start
            self.start, self.end = 0, pending
            return True
        return self._grow()

    def _grow(self, *, force: bool = False) -> bool:
        size = len(self.buf)
        cap = self.limits.max_message_size + HEADER_SIZE
        new_size = min(max(size * 2, INITIAL_BUFFER), cap)
        if new_size <= size:
            return True  # a whole message of the largest size fits: framing cuts it
        need = _over_initial(max(new_size, self._whole(cap)))
        if need > self.charged:
            if not self.budget.take(need - self.charged):
                if not force:
                    return False
                self.budget.force(need - self.charged)
            self.charged = need
        self._replace(bytearray(new_size), size)
        return True

    def _whole(self, cap: int) -> int:
        """The buffer size the message at ``start`` needs (doubling from now), and
        ``until`` set to its end; 0 when its header is not in yet."""
        if self.end - self.start < HEADER_SIZE:
            return 0
        try:
            total = message_length(self.view[self.start : self.start + HEADER_SIZE],
                                   self.limits, _REQUEST)  # fmt: skip
        except KryptonError:
            return 0  # refused when framed, not here
        self.until = self.start + total
        size = len(self.buf)
        while size < total and size < cap:
            size = min(size * 2, cap)
        return size

    def _shrink(self) -> None:
        """Empty again: back to the initial buffer, the budget given back."""
        self._replace(bytearray(INITIAL_BUFFER), 0)
        self._uncharge()

    def _uncharge(self) -> None:
        charged, self.charged, self.until = self.charged, 0, 0
        if charged:
            self.budget.give(charged)

    def _replace(self, new: bytearray, keep: int) -> None:
        new[:keep] = self.view[:keep]
        self.view.release()
        self.buf = new
        self.view = memoryview(new)

    def regrow(self) -> bool:
        """A starved connection retries its growth; True when reading may resume."""
        if not self.starved or (self.held and self.budget.full()):
            return False
        if self.end == len(self.buf) and not self._make_room():
            return False
        self.starved = False
        self.reading = len(self.queue) < MAX_QUEUED and self.state is not State.DRAINING
        return self.reading

    def release(self) -> None:
        """Closed: drop the buffer and the frames (and give their budget back)."""
        self.start = self.end = 0
        self.starved = False
        self._replace(bytearray(0), 0)
        self._uncharge()
        held, self.held, self.in_hand = self.held + self.unsent, 0, 0
        self.unsent = 0
        if held:
            self.budget.give(held)

    def next_frame(self) -> bytes | KryptonError:
        """Take the next frame in hand (the queue must not be empty)."""
        frame = self.queue.popleft()
        if self.in_hand:
            self._let_go()  # the frame before was never answered (closed meanwhile)
        if not isinstance(frame, KryptonError) and len(frame) > INITIAL_BUFFER:
            self.in_hand = len(frame)
        return frame

    def _let_go(self) -> None:
        n, self.in_hand = self.in_hand, 0
        self.held -= n
        self.budget.give(n)

    # -- output and backpressure ---------------------------------------------------
    def answered(self) -> bool:
        """An answer was written. Returns True when reading should resume."""
        self.last_activity = self.clock()
        if self.in_hand:
            self._let_go()
        queue = self.queue
        if not queue:
            try:
                self.state = _ON_DONE[self.state]
            except KeyError:
                self.fire(Event.DONE)
        if (
            self.reading
            or self.starved
            or self.state is State.DRAINING
            or len(queue) >= MAX_QUEUED // 2
        ):
            return False
        self.reading = True
        return True

    def pause_writing(self) -> None:
        if self.writable:
            self.write_paused = self.clock()
        self.writable = False

    def hold_unsent(self, unsent: int) -> None:
        """Writing is paused with ``unsent`` bytes of answers: charged until it resumes."""
        if unsent > self.unsent:
            self.budget.force(unsent - self.unsent)
            self.unsent = unsent

    def resume_writing(self) -> None:
        self.writable = True
        unsent, self.unsent = self.unsent, 0
        if unsent:
            self.budget.give(unsent)

    # -- endings -------------------------------------------------------------------
    def close(self) -> None:
        """Hang up after flushing; the grace starts at the first close."""
        if self.state is not State.CLOSING and self.state is not State.CLOSED:
            self.mark = self.clock()
        self.fire(Event.CLOSE)

    def closed(self, event: Event = Event.ABORT) -> None:
        """Aborted (``ABORT``) or gone (``LOST``): nothing more is answered."""
        self.fire(event)
        self.queue.clear()
        self.release()

    @property
    def open(self) -> bool:
        """Still answering: not closing or closed."""
        return self.state < State.CLOSING

    # -- deadlines -------------------------------------------------------------------
    def expired(self, now: float | None = None) -> tuple[Verdict, str]:
        """What the current state's deadline asks for at ``now`` (default: the clock)."""
        deadline = DEADLINES.get(self.state)
        if deadline is None:
            return Verdict.NONE, ""
        if now is None:
            now = self.clock()
        if not self.writable and now - self.write_paused >= self.write_timeout:
            return Verdict.ABORT, "write timeout: not reading its answers"
        if deadline is _READ and self.queue:
            # We are behind (frames in hand; reading may be paused for that
            # backlog): the rest of the started message waits on us, not on the
            # peer, so its time starts again once we catch up. (A connection
            # paused only for the memory budget keeps its deadline: a peer
            # that trickles must not hold buffer space for ever.)
            self.mark = now
            return Verdict.NONE, ""
        if now - getattr(self, deadline.since) < getattr(self, deadline.limit):
            return Verdict.NONE, ""
        if deadline is _IDLE:
            if not self.writable:
                return Verdict.ABORT, "not reading its answers"
            if self.queue:
                return Verdict.NONE, ""  # frames waiting: we are behind, not the peer
        return deadline.verdict, deadline.reason
