"""The KMIP listener: mutual TLS on asyncio (uvloop), BufferedProtocol framing.

How this works
--------------
:class:`Listener` owns the listening socket and the table of live
connections; :class:`Connection` is one TLS session. They are kept apart
(as in trio): the accept side only counts connections and refuses those over
``max_connections``; everything per connection lives in its ``Connection``.

A ``Connection`` is two halves. The sans-I/O half,
:class:`krypton.gateway._conn_state.ConnState`, holds the state (one
transition table), the read buffer and framing, the frames in hand, the
backpressure decisions and the deadlines; it is driven without sockets in
``tests/unit/test_connection_state.py``. This module is the I/O half: it
feeds the event loop's reads to that state, runs the dispatcher, writes the
answers and carries out what the state decides (pause or resume reading,
close, abort).

Complete frames are handled strictly in order by one task per connection
(KMIP is request/response; a client that pipelines gets its answers in
order). The task yields to the event loop between queued frames, so a
pipelining client shares the loop with everyone else rather than holding it
for its whole backlog. While that task is busy, further frames queue; beyond
a small bound the transport stops reading. The task waits while the
transport has asked us to pause writing, so a client that sends without
reading its answers is throttled instead of filling our memory
(backpressure both ways).

A framing error (bad header, oversized length) loses the stream position:
the error is queued behind the frames already cut, reading stops and any
later bytes are dropped; the task answers the earlier frames, then sends the
error response and closes.

Accepting is ours, not the event loop's (:meth:`Listener._accept`): the
listening socket is non-blocking and read by a reader callback, so a
connection is counted from ``accept()``, before its TLS handshake, against
one budget (``max_connections``, and never more than the descriptor limit
less ``descriptor_reserve``; the soft ``RLIMIT_NOFILE`` is raised to the hard
one at start); who is admitted, and what share of the buffers and slots a
tenant gets, is :mod:`krypton.gateway._admission`'s. ``EMFILE`` on accept is
survived (accepting pauses briefly; logged at most every 10 s). Each
accepted socket's kernel receive buffer is set to ``receive_buffer``: what a
client sends ahead of us waits there, and the event loop's TLS layer reads
(and holds) at most about that much at a time.
The accepted socket is given to the loop (``connect_accepted_socket``), which
runs the TLS handshake.

Timeouts are enforced by one sweep per listener (every ``sweep_interval``
seconds) rather than a timer per read: it asks each connection's state what
its deadline says at the listener's clock (``read_timeout`` for a message
started but not finished, ``idle_timeout`` between messages, a grace for a
closing connection) and closes or aborts accordingly. A slow or stalled
client costs only its own connection. The TLS handshake is timed by
the event loop (``handshake_timeout``).

Identity: the client certificate was verified by TLS (CERT_REQUIRED against
the configured CA); its SPIFFE ID (or subject) is looked up once per
connection in the policy. An identity the policy does not know does not keep
its slot: a request it sends within ``refuse_grace`` of the handshake (or
had begun by then) is answered ``Permission Denied``, and the connection is
closed at the first sweep after that grace either way.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import socket
import ssl
import time
import types
from collections.abc import Callable, Coroutine, Generator
from typing import Any, cast

from krypton.errors import KryptonError, PermissionDenied
from krypton.gateway._admission import Admission, Shares, raise_descriptor_limit
from krypton.gateway._conn_state import (
    ANSWER,
    PAUSE,
    ConnState,
    Event,
    IllegalTransition,
    State,
    Verdict,
)
from krypton.gateway._cork import Cork
from krypton.gateway.engine.dispatch import Dispatcher, Session
from krypton.gateway.policy import Policy
from krypton.kmip.messages import error_response
from krypton.logs import RateLimitedLog
from krypton.tls.contexts import peer_identity
from krypton.ttlv.codec import Limits, encode

log = logging.getLogger("krypton.listener")

_CLOSING = State.CLOSING
_WAITING_ROOM = 16  # accepted sockets that may wait for a slot
_ACCEPT_BATCH = 64  # accepts per readable event, so one flood cannot hold the loop
_EMFILE_PAUSE = 0.1  # seconds accepting pauses when the process is out of descriptors
_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_TLS_READ_BUFFER = 16 * 1024  # bytes the TLS layer buffers before it stops reading
_TLS_WRITE_BUFFER = 64 * 1024  # bytes unsent before the worker waits (and they are charged)
_HANDSHAKE_FAILED = (OSError, ssl.SSLError, EOFError, asyncio.TimeoutError)
# TLS handshakes by result (``Listener.handshakes``: krypton_tls_handshakes_total).
_SUCCESS, _FAILED, _TIMEOUT = "success", "failed", "timeout"


def peer_of(where: object) -> str:
    """``host:port`` of a peer address (``getpeername()`` / ``peername``), else ``?``."""
    if isinstance(where, tuple) and len(where) >= 2:
        host = str(where[0])
        return f"[{host}]:{where[1]}" if ":" in host else f"{host}:{where[1]}"
    return "?"


def _handshake_error(exc: BaseException) -> str:
    """Why a handshake failed, in words (an SSL error's reason, never a key)."""
    if isinstance(exc, ssl.SSLError):
        return exc.reason or type(exc).__name__
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return "no handshake in time"
    return f"{type(exc).__name__} during the handshake"


class Connection(ConnState, asyncio.BufferedProtocol):
    """One TLS session: the event loop's callbacks around a :class:`ConnState`."""

    __slots__ = (
        "can_write",
        "handshake",
        "id",
        "listener",
        "refused",
        "session",
        "transport",
        "worker",
    )

    def __init__(self, listener: Listener) -> None:
        super().__init__(
            listener.limits,
            listener.clock,
            read_timeout=listener.read_timeout,
            idle_timeout=listener.idle_timeout,
            budget=listener.pending,
            write_timeout=listener.write_timeout,
        )
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.handshake: asyncio.Task[None] | None = None
        self.session: Session | None = None
        self.refused: str | None = None
        self.worker: asyncio.Task[None] | None = None
        self.can_write = asyncio.Event()  # wakes the task when writing resumes
        self.can_write.set()
        self.id = 0

    # -- accepted, then TLS ----------------------------------------------------------
    async def _handshake(self, sock: socket.socket) -> None:
        """Give the accepted socket to the loop and run the TLS handshake on it."""
        listener = self.listener
        try:
            peer = peer_of(sock.getpeername())
        except OSError:
            peer = "?"
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: self,
                sock,
                ssl=listener.ssl_context,
                ssl_handshake_timeout=listener.handshake_timeout,
            )
        except _HANDSHAKE_FAILED as exc:
            listener.handshakes[_TIMEOUT if isinstance(exc, TimeoutError) else _FAILED] += 1
            listener.refusals.warning(
                "tls_handshake_refused", "connection %d from %s: TLS handshake refused: %s",
                self.id, peer, _handshake_error(exc), peer=peer, identity="",
            )
            listener.unregister(self)
        except asyncio.CancelledError:
            listener.unregister(self)  # dropped for a newer connection (or closing)
        self.handshake = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The TLS handshake is done: look the client's identity up in the policy."""
        # uvloop's TLS transport is not an asyncio.Transport subclass, but has its API.
        self.transport = cast(asyncio.Transport, transport)
        # The TLS layer's own read buffer stays small: what is not yet read waits
        # in the socket, not in our memory.
        transport.set_read_buffer_limits(_TLS_READ_BUFFER)  # type: ignore[attr-defined]
        # And the answers a client has not taken pause the worker soon (one answer,
        # at most max_response_size, is written whole).
        self.transport.set_write_buffer_limits(_TLS_WRITE_BUFFER)
        self.listener.handshakes[_SUCCESS] += 1
        self.listener.established(self)
        self.fire(Event.ACCEPTED)
        der = None
        sslobj = transport.get_extra_info("ssl_object")
        if isinstance(sslobj, ssl.SSLObject):
            der = sslobj.getpeercert(binary_form=True)
        if not der or not isinstance(sslobj, ssl.SSLObject):
            self.abort()
            return
        identity = ""
        try:
            identity = peer_identity(sslobj, der)
        except KryptonError as exc:
            self.refused = exc.message
        else:
            grant = self.listener.policy.lookup(identity)
            if grant is None:
                self.refused = f"identity {identity!r} is not allowed on this gateway"
            else:
                session = Session(identity, grant, self.id, peer_of(
                    transport.get_extra_info("peername")))
                self.refused = self.listener.let_in(self, session)
                if self.refused is None:
                    self.session = session
                    return
        peer = peer_of(transport.get_extra_info("peername"))
        self.listener.refusals.warning(
            "connection_refused", "connection %d from %s (%s): refused: %s", self.id, peer,
            identity or "no identity", self.refused, peer=peer, identity=identity,
        )
        self.listener.unwelcome[self.id] = (self.listener.clock(), self)

    def buffer_updated(self, nbytes: int) -> None:
        try:
            todo = self.received(nbytes)
        except IllegalTransition as exc:
            self._illegal(exc)
            return
        if todo & PAUSE and self.transport is not None:
            self.transport.pause_reading()
            if self.starved:
                self.listener.starving[self.id] = self
        if todo & ANSWER:
            self._kick()

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed(Event.LOST)
        self.listener.unregister(self)
        if self.worker is not None and not self.worker.done():
            self.worker.cancel()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.transport is not None:
            self.hold_unsent(self.transport.get_write_buffer_size())
        self.can_write.clear()

    def resume_writing(self) -> None:
        super().resume_writing()
        self.can_write.set()

    # -- handling ------------------------------------------------------------------
    def _kick(self) -> None:
        if self.worker is not None and not self.worker.done():
            return  # the running task drains the queue, in order
        if self._eager():
            return
        self.worker = asyncio.ensure_future(self._work())

    def _eager(self) -> bool:
        """Handle the next frame now, without a task, if it completes without waiting.

        The plain ``Get`` is answered by the dispatcher's fast path
        (:mod:`krypton.gateway.fast.fastget`) and any other ``Get`` never waits
        either (record cache, in-memory L3), so on the hot path the response is
        written from inside ``buffer_updated``: no task to create and schedule.
        A handler that does wait (``Create`` waits for the vault's fsync) is
        resumed by a task from where it stopped. Only one frame is handled this
        way; a pipelined backlog goes to the task, which yields between frames.
        Returns True when nothing is left to do.
        """
        frame = self.queue[0]
        if (
            isinstance(frame, KryptonError)
            or self.session is None
            or self.state >= _CLOSING
            or not self.writable
        ):
            return False
        self.next_frame()
        dispatcher = self.listener.dispatcher
        try:
            answered = dispatcher.answer_now(frame, self.session)
        except Exception:
            log.exception("connection %d: dispatcher failed", self.id)
            self.abort()
            return True
        if answered is not None:
            self._respond(answered)
            return not self.queue
        coro = dispatcher.handle(frame, self.session, fast=False)
        try:
            pending = coro.send(None)
        except StopIteration as done:
            self._respond(done.value)
            return not self.queue
        except Exception:
            log.exception("connection %d: dispatcher failed", self.id)
            self.abort()
            return True
        self.worker = asyncio.ensure_future(self._resume(coro, pending))
        return True

    async def _resume(self, coro: Coroutine[Any, Any, bytes], pending: Any) -> None:
        try:
            response = await _continue(coro, pending)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("connection %d: dispatcher failed", self.id)
            self.abort()
            return
        if not self.writable:
            await self.can_write.wait()
        self._respond(response)
        if self.queue:
            await asyncio.sleep(0)
            await self._work()

    def _respond(self, response: bytes) -> None:
        if self.state >= _CLOSING or self.transport is None:
            return
        listener = self.listener
        listener.cork.write(self.transport, response, alone=len(listener.connections) < 2)
        try:
            resume = self.answered()
        except IllegalTransition as exc:
            self._illegal(exc)
            return
        if resume:
            self.transport.resume_reading()

    async def _work(self) -> None:
        dispatcher = self.listener.dispatcher
        while self.queue and self.open:
            frame = self.next_frame()
            if isinstance(frame, KryptonError):
                log.info("connection %d: closing: %s", self.id, frame.message)
                self._send_error(frame)
                return
            if self.session is None:
                self._send_error(PermissionDenied(self.refused or "not allowed"))
                return
            try:
                response = await dispatcher.handle(frame, self.session)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("connection %d: dispatcher failed", self.id)
                self.abort()
                return
            if not self.writable:
                await self.can_write.wait()
            if not self.open:
                return
            self._respond(response)
            if self.queue:
                await asyncio.sleep(0)

    def turn_away(self) -> None:
        """Refused by the policy and its grace is over: a request already in hand
        is answered ``Permission Denied`` by the worker (which then closes), a
        request begun is answered so now; a connection that sent nothing is closed."""
        if not self.open or self.queue or (self.worker is not None and not self.worker.done()):
            return
        if self.state is State.READING:
            self._send_error(PermissionDenied(self.refused or "not allowed"))
        else:
            self.close()

    def _send_error(self, exc: KryptonError) -> None:
        if self.transport is not None and self.open:
            self.listener.cork.write_now(self.transport, _encode_error(exc))
            self.close()

    def _illegal(self, exc: IllegalTransition) -> None:
        log.error("connection %d: %s", self.id, exc.message)
        self.abort()

    # -- endings -------------------------------------------------------------------
    def abort(self) -> None:
        self.closed(Event.ABORT)
        if self.transport is not None:
            self.transport.abort()
        elif self.handshake is not None:
            self.handshake.cancel()  # still handshaking: the socket is closed

    def close(self) -> None:
        """Flush what was written, then hang up (aborted after the close grace)."""
        super().close()
        if self.transport is not None:
            self.listener.cork.flush()  # its answers held for the turn's end go first
            self.transport.close()


@types.coroutine
def _continue(coro: Coroutine[Any, Any, bytes], pending: Any) -> Generator[Any, Any, bytes]:
    """Drive a coroutine that already ran up to its first wait (``pending``, the
    future it is waiting on) to the end, under whichever task awaits this."""
    while True:
        try:
            sent = yield pending
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # delivered into the coroutine, as await would
            try:
                pending = coro.throw(exc)
            except StopIteration as done:
                return cast(bytes, done.value)
        else:
            try:
                pending = coro.send(sent)
            except StopIteration as done:
                return cast(bytes, done.value)


def _encode_error(exc: KryptonError) -> bytes:
    return encode(error_response(None, int(time.time()), exc.reason, exc.message))


class Listener(Admission):
    """Accepts connections within a budget, tracks them, and sweeps their timeouts."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        policy: Policy,
        ssl_context: ssl.SSLContext,
        limits: Limits,
        *,
        max_connections: int = 1024,
        descriptor_reserve: int = 64,
        max_pending_bytes: int = 16 << 20,
        shares: Shares | None = None,
        receive_buffer: int = 32 * 1024,
        read_timeout: float = 10.0,
        idle_timeout: float = 300.0,
        handshake_timeout: float = 3.0,
        write_timeout: float = 30.0,
        sweep_interval: float = 0.25,
        refuse_grace: float = 0.25,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.policy = policy
        self.ssl_context = ssl_context
        self.limits = limits
        Admission.__init__(self, max_connections, max_pending_bytes, shares or Shares())
        self.descriptor_reserve = descriptor_reserve
        self.receive_buffer = receive_buffer  # SO_RCVBUF of each connection (0: the kernel's)
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self.handshake_timeout = handshake_timeout
        self.write_timeout = write_timeout
        self.sweep_interval = sweep_interval
        self.refuse_grace = refuse_grace  # what a refused identity's first request gets
        # Refused handshakes and identities: logged with peer and identity, rate-limited.
        self.refusals = RateLimitedLog(log)
        # Monotonic seconds for every deadline; the running loop's time by default.
        self.clock: Callable[[], float] = clock or time.monotonic
        self._own_clock = clock is None
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeper: asyncio.Task[None] | None = None
        # Accepted when every slot was taken by a connection let in: closed unless a
        # slot is freed within ``refuse_grace`` (a client that closed and reconnects).
        self.waiting: collections.deque[tuple[float, socket.socket]] = collections.deque()
        self._letting_in = False
        self.handshakes = dict.fromkeys((_SUCCESS, _FAILED, _TIMEOUT), 0)
        self.cork = Cork()  # small answers leave together at the end of a turn

    # -- accepting -------------------------------------------------------------------
    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        loop = self._loop = asyncio.get_running_loop()
        if self._own_clock:
            self.clock = loop.time
        nofile = raise_descriptor_limit()
        self.budget = max(1, min(self.max_connections, nofile - self.descriptor_reserve))
        if self.budget < self.max_connections:
            log.warning(
                "descriptor limit %d: at most %d connections (max_connections %d)",
                nofile,
                self.budget,
                self.max_connections,
            )
        family, kind, proto, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(addr)
            sock.listen(1024)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        loop.add_reader(sock.fileno(), self._accept)
        self._sweeper = asyncio.ensure_future(self._sweep())

    def _accept(self) -> None:
        assert self._sock is not None
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno not in _OUT_OF_DESCRIPTORS:
                    raise
                self._starved(exc)
                return
            conn = Connection(self)
            if self.admit(conn):
                self._start(conn, sock)
            elif len(self.waiting) < _WAITING_ROOM:
                self.waiting.append((self.clock(), sock))  # a slot may be freed in a moment
            else:
                sock.close()

    def _start(self, conn: Connection, sock: socket.socket) -> None:
        sock.setblocking(False)
        if self.receive_buffer:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.receive_buffer)
        conn.handshake = asyncio.ensure_future(conn._handshake(sock))

    def slot_freed(self) -> None:
        """A connection went: let in the ones waiting for a slot (on the next turn)."""
        if self.waiting and not self._letting_in and self._loop is not None:
            self._letting_in = True
            self._loop.call_soon(self._let_waiting_in)

    def _let_waiting_in(self) -> None:
        self._letting_in = False
        while self.waiting and len(self.connections) < self.budget:
            _, sock = self.waiting.popleft()
            conn = Connection(self)
            if not self.admit(conn):
                sock.close()
                return
            self._start(conn, sock)

    def _starved(self, exc: OSError) -> None:
        """Out of descriptors: free the oldest handshake, pause accepting briefly."""
        self._log_rarely("emfile", "accept failed: %s; pausing accepts", exc.strerror)
        if self.handshaking:
            _, oldest = next(iter(self.handshaking.items()))
            self.unregister(oldest)
            oldest.abort()
        assert self._loop is not None
        assert self._sock is not None
        self._loop.remove_reader(self._sock.fileno())
        self._loop.call_later(_EMFILE_PAUSE, self._resume_accepting)

    def _resume_accepting(self) -> None:
        if self._sock is not None and self._loop is not None:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    @property
    def port(self) -> int:
        assert self._sock is not None
        return int(self._sock.getsockname()[1])

    @property
    def listening(self) -> bool:
        """True from ``start`` until ``close``."""
        return self._sock is not None

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            self.sweep()

    def sweep(self, now: float | None = None) -> None:
        """Close or abort every connection whose deadline has passed at ``now``."""
        if now is None:
            now = self.clock()
        self.turn_away_unwelcome(now)
        while self.waiting and now - self.waiting[0][0] >= self.refuse_grace:
            self.waiting.popleft()[1].close()
        for conn in list(self.connections.values()):
            verdict, reason = conn.expired(now)
            if verdict is Verdict.NONE:
                continue
            log.info("connection %d: %s", conn.id, reason)
            _VERDICTS[verdict](conn)

    def _stop_accepting(self) -> None:
        if self._sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    async def drain(self, timeout: float, poll: float = 0.01) -> int:
        """SIGTERM: stop accepting, let the requests in hand be answered (for at most
        ``timeout`` seconds), hang up once the answers are flushed, then close.
        Returns how many connections still had work when the time ran out."""
        self._stop_accepting()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline and any(_busy(c) for c in self.connections.values()):
            await asyncio.sleep(poll)
        late = sum(1 for c in self.connections.values() if _busy(c))
        for conn in list(self.connections.values()):
            conn.close()
        grace = min(deadline, loop.time() + 1.0)  # the answers' last bytes
        while self.connections and loop.time() < grace:
            await asyncio.sleep(poll)
        await self.close()
        return late

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._stop_accepting()
        for conn in list(self.connections.values()):
            conn.abort()
        while self.waiting:
            self.waiting.popleft()[1].close()
        await asyncio.sleep(0)


def _busy(conn: Connection) -> bool:
    """A request of ``conn`` is being answered or waits in its queue."""
    return bool(conn.queue) or (conn.worker is not None and not conn.worker.done())


_VERDICTS: dict[Verdict, Callable[[Connection], None]] = {
    Verdict.CLOSE: Connection.close,
    Verdict.ABORT: Connection.abort,
}
