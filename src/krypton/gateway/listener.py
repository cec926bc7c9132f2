"""The KMIP listener: mutual TLS on asyncio (uvloop), BufferedProtocol framing.

How this works
--------------
:class:`Listener` owns the listening socket and the table of live
connections; :class:`Connection` is one TLS session. They are kept apart
(as in trio): the accept side only counts connections and refuses those over
``max_connections``; everything per connection lives in its ``Connection``.

Framing reads straight into a preallocated ``bytearray`` handed to the event
loop by ``get_buffer`` (no per-read allocation). A KMIP message's length is
in its first 8 bytes, so :func:`message_length` rejects an oversized or
malformed header before a single byte of body is awaited. The buffer grows
only when a message is larger than it (up to ``max_message_size``) and is
compacted once per read, never re-sliced in a loop.

Complete frames are copied out and handled strictly in order by one task
per connection (KMIP is request/response; a client that pipelines gets its
answers in order). The task yields to the event loop between queued frames,
so a pipelining client shares the loop with everyone else rather than
holding it for its whole backlog. While that task is busy, further frames
queue; beyond a small bound the transport stops reading. The task waits
while the transport has asked us to pause writing, so a client that sends
without reading its answers is throttled instead of filling our memory
(backpressure both ways).

A framing error (bad header, oversized length) loses the stream position:
the error is queued behind the frames already cut, reading stops and any
later bytes are dropped; the task answers the earlier frames, then sends the
error response and closes.

Timeouts are enforced by one sweep per listener (every ``sweep_interval``
seconds) rather than a timer per read: a message started but not finished
within ``read_timeout`` (counted from when its first bytes arrived) and a
connection silent for ``idle_timeout`` are closed; so is one that neither
sent nor took an answer for ``idle_timeout``. A connection being closed
(after an error response or an idle timeout) gets ``_CLOSE_GRACE`` to take
its last bytes and hang up; then it is aborted, so a peer that keeps sending
cannot hold it open in the TLS shutdown. A slow or stalled client costs only
its own connection.

Identity: the client certificate was verified by TLS (CERT_REQUIRED against
the configured CA); its SPIFFE ID (or subject) is looked up once per
connection in the policy. An identity the policy does not know gets a
``Permission Denied`` response to its first message, then the connection is
closed.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import ssl
import time
import types
from collections.abc import Callable, Coroutine, Generator
from typing import Any, cast

from krypton.errors import KryptonError, PermissionDenied
from krypton.gateway.engine.dispatch import Dispatcher, Session
from krypton.gateway.policy import Policy
from krypton.kmip.messages import error_response
from krypton.tls.contexts import peer_identity
from krypton.ttlv.codec import Limits, encode
from krypton.ttlv.framing import HEADER_SIZE, message_length
from krypton.ttlv.tags import Tag

log = logging.getLogger("krypton.listener")

_INITIAL_BUFFER = 64 * 1024
_MAX_QUEUED = 16
_CLOSE_GRACE = 1.0


class Connection(asyncio.BufferedProtocol):
    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.limits = listener.limits
        self.buf = bytearray(_INITIAL_BUFFER)
        self.view = memoryview(self.buf)
        self.start = 0
        self.end = 0
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self.refused: str | None = None
        self.queue: collections.deque[bytes | KryptonError] = collections.deque()
        self.worker: asyncio.Task[None] | None = None
        self.last_activity = time.monotonic()
        self.partial_since: float | None = None
        self.closing = False
        self.closed_at: float | None = None
        self.broken = False
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.id = 0

    # -- asyncio callbacks -------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass, but has its API.
        self.transport = cast(asyncio.Transport, transport)
        self.id = self.listener.register(self)
        if self.id == 0:
            self.abort()
            return
        der = None
        sslobj = transport.get_extra_info("ssl_object")
        if isinstance(sslobj, ssl.SSLObject):
            der = sslobj.getpeercert(binary_form=True)
        if not der or not isinstance(sslobj, ssl.SSLObject):
            self.abort()
            return
        try:
            identity = peer_identity(sslobj, der)
        except KryptonError as exc:
            self.refused = exc.message
            return
        grant = self.listener.policy.lookup(identity)
        if grant is None:
            self.refused = f"identity {identity!r} is not allowed on this gateway"
            log.info("connection %d: %s", self.id, self.refused)
            return
        self.session = Session(identity, grant, self.id)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.end == len(self.buf):
            self._make_room()
        return self.view[self.end :]

    def buffer_updated(self, nbytes: int) -> None:
        self.end += nbytes
        self.last_activity = time.monotonic()
        if self.broken:
            self.start = self.end = 0
            return
        try:
            self._frames()
        except KryptonError as exc:
            self._stream_lost(exc)

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.listener.unregister(self)
        if self.worker is not None and not self.worker.done():
            self.worker.cancel()
        self.queue.clear()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    # -- framing -----------------------------------------------------------------
    def _frames(self) -> None:
        limits = self.limits
        cut = False
        while True:
            avail = self.end - self.start
            if avail < HEADER_SIZE:
                break
            total = message_length(
                self.view[self.start : self.start + HEADER_SIZE], limits, Tag.REQUEST_MESSAGE
            )
            if avail < total:
                if total > len(self.buf) - self.start:
                    self._make_room(total)
                break
            self.queue.append(bytes(self.view[self.start : self.start + total]))
            self.start += total
            cut = True
        if self.start == self.end:
            self.start = self.end = 0
            self.partial_since = None
        elif cut or self.partial_since is None:
            self.partial_since = time.monotonic()
        if self.queue:
            self._kick()
            if len(self.queue) >= _MAX_QUEUED and self.transport is not None:
                self.transport.pause_reading()

    def _stream_lost(self, exc: KryptonError) -> None:
        log.info("connection %d: closing: %s", self.id, exc.message)
        self.broken = True
        self.start = self.end = 0
        self.partial_since = None
        if self.transport is not None:
            self.transport.pause_reading()
        self.queue.append(exc)
        self._kick()

    def _kick(self) -> None:
        if self.worker is not None and not self.worker.done():
            return  # the running task drains the queue, in order
        if self._eager():
            return
        self.worker = asyncio.ensure_future(self._work())

    def _eager(self) -> bool:
        """Handle the next frame now, without a task, if it completes without waiting.

        The plain ``Get`` is answered by the dispatcher's fast path
        (:mod:`krypton.engine.fastget`) and any other ``Get`` never waits
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
            or self.closing
            or not self.can_write.is_set()
        ):
            return False
        self.queue.popleft()
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
        if not self.can_write.is_set():
            await self.can_write.wait()
        self._respond(response)
        if self.queue:
            await asyncio.sleep(0)
            await self._work()

    def _respond(self, response: bytes) -> None:
        if self.closing or self.transport is None:
            return
        self.transport.write(response)
        self.last_activity = time.monotonic()
        if (
            not self.broken
            and len(self.queue) < _MAX_QUEUED // 2
            and self.transport.is_reading() is False
        ):
            self.transport.resume_reading()

    def _make_room(self, need: int = 0) -> None:
        """Compact unread bytes to the front; grow when one message needs more."""
        pending = self.end - self.start
        size = len(self.buf)
        if need > size or (pending == size and need == 0):
            size = min(max(size * 2, need), self.limits.max_message_size + HEADER_SIZE)
        if self.start or size != len(self.buf):
            new = bytearray(size) if size != len(self.buf) else self.buf
            new[:pending] = bytes(self.view[self.start : self.end])
            if new is not self.buf:
                self.view.release()
                self.buf = new
                self.view = memoryview(new)
            self.start, self.end = 0, pending

    # -- handling ------------------------------------------------------------------
    async def _work(self) -> None:
        dispatcher = self.listener.dispatcher
        while self.queue and not self.closing:
            frame = self.queue.popleft()
            if isinstance(frame, KryptonError):
                self._send_error(frame)
                return
            if self.session is None:
                self._refuse()
                return
            try:
                response = await dispatcher.handle(frame, self.session)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("connection %d: dispatcher failed", self.id)
                self.abort()
                return
            if not self.can_write.is_set():
                await self.can_write.wait()
            if self.closing or self.transport is None:
                return
            self._respond(response)
            if self.queue:
                await asyncio.sleep(0)

    def _refuse(self) -> None:
        exc = PermissionDenied(self.refused or "not allowed")
        self._send_error(exc)

    def _send_error(self, exc: KryptonError) -> None:
        if self.transport is not None and not self.closing:
            self.transport.write(_encode_error(exc))
            self.close()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        """Flush what was written, then hang up (aborted after ``_CLOSE_GRACE``)."""
        if self.closed_at is None:
            self.closed_at = time.monotonic()
        self.closing = True
        if self.transport is not None:
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


class Listener:
    """Accepts TLS connections, tracks them, and sweeps their timeouts."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        policy: Policy,
        ssl_context: ssl.SSLContext,
        limits: Limits,
        *,
        max_connections: int = 1024,
        read_timeout: float = 10.0,
        idle_timeout: float = 300.0,
        handshake_timeout: float = 10.0,
        sweep_interval: float = 0.25,
    ) -> None:
        self.dispatcher = dispatcher
        self.policy = policy
        self.ssl_context = ssl_context
        self.limits = limits
        self.max_connections = max_connections
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self.handshake_timeout = handshake_timeout
        self.sweep_interval = sweep_interval
        self.connections: dict[int, Connection] = {}
        self.refused = 0
        self._ids = itertools.count(1)
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None

    def register(self, conn: Connection) -> int:
        if len(self.connections) >= self.max_connections:
            self.refused += 1
            return 0
        cid = next(self._ids)
        self.connections[cid] = conn
        return cid

    def unregister(self, conn: Connection) -> None:
        self.connections.pop(conn.id, None)

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        loop = asyncio.get_running_loop()
        factory: Callable[[], Connection] = lambda: Connection(self)  # noqa: E731
        self._server = await loop.create_server(
            factory,
            host,
            port,
            ssl=self.ssl_context,
            ssl_handshake_timeout=self.handshake_timeout,
            reuse_address=True,
            reuse_port=reuse_port or None,
            backlog=1024,
        )
        self._sweeper = asyncio.ensure_future(self._sweep())

    @property
    def port(self) -> int:
        assert self._server is not None
        sock = self._server.sockets[0]
        return int(sock.getsockname()[1])

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            now = time.monotonic()
            for conn in list(self.connections.values()):
                self._expire(conn, now)

    def _expire(self, conn: Connection, now: float) -> None:
        if conn.closed_at is not None:
            if now - conn.closed_at > _CLOSE_GRACE:
                conn.abort()
        elif conn.partial_since is not None and now - conn.partial_since > self.read_timeout:
            log.info("connection %d: read timeout", conn.id)
            conn.abort()
        elif now - conn.last_activity > self.idle_timeout:
            if not conn.can_write.is_set():
                log.info("connection %d: not reading its answers", conn.id)
                conn.abort()
            elif not conn.queue:
                log.info("connection %d: idle timeout", conn.id)
                conn.close()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections.values()):
            conn.abort()
        if self._server is not None:
            await self._server.wait_closed()
