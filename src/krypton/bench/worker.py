"""One load-generating process: an event loop (uvloop) driving N mutual-TLS connections.

How this works
--------------
The parent forks P of these (``--procs``); each gets a :class:`WorkerSpec`
and one end of a pipe. A worker opens its connections, says ``ready`` (with
the negotiated TLS version), waits for ``go``, and then every connection runs
closed-loop: one request outstanding, the next one written from inside the
callback that completed the previous one.

The hot path is :meth:`_Conn.buffer_updated`: bytes land in a preallocated
``bytearray`` handed out by ``get_buffer`` (``BufferedProtocol``: no
per-read ``bytes``); the 8-byte TTLV header gives the frame length; the
response is checked in place by :func:`~krypton.bench.wire.check_status`
(every batch item's Result Status, not just "a response came"); the latency
(``perf_counter_ns``, an ``int``) is appended to an ``array('q')``; the next
request is one of the plan's precomputed byte strings. No per-request
object is created beyond the ints.

``--op connect`` instead runs N coroutines ("slots") that each open a NEW
TLS connection per operation, send one Get and close. To resume TLS
sessions, :class:`ResumingContext` hands the session of an earlier
connection to ``wrap_bio`` (asyncio has no ``session=`` argument; uvloop
calls the context's ``wrap_bio`` for every connection).

Phases: warmup (responses counted but not sampled), measuring (from
``warmup`` seconds after ``go``), stopped (after ``duration``, or when every
connection has used its ``--count`` quota). A ticker sends the new samples
to the parent every ``tick`` seconds (for the live progress line) and aborts
a connection whose request is older than ``timeout``. At the end the worker
sends a :class:`WorkerResult` with the rest of the samples, error counts by
code and the CPU time it used while measuring.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import resource
import signal
import ssl
import time
from array import array
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from typing import Any, cast

from krypton.bench.wire import (
    CONN_LOST,
    CONNECT_FAILED,
    HEADER,
    MALFORMED,
    MAX_RESPONSE,
    RESPONSE_WORD,
    TIMEOUT,
    Plan,
    check_full,
    check_status,
    created_uid,
)

_now = time.perf_counter_ns
_BUFFER = 64 * 1024


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int
    server_name: str
    ca: str
    cert: str
    key: str


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    target: Target
    plan: Plan
    connect: bool
    resume: bool
    connections: int
    first: int
    quotas: tuple[int, ...] | None
    duration: float | None
    warmup: float
    full_check: bool
    timeout: float
    tick: float = 0.25
    record: bool = False  # keep the identifier of every key a Create made (--keys-file)


@dataclass(slots=True)
class WorkerResult:
    ops: int = 0
    errors: dict[int, int] = field(default_factory=dict)
    warm_ops: int = 0
    warm_errors: dict[int, int] = field(default_factory=dict)
    t_start: float = 0.0
    t_end: float = 0.0
    cpu: float = 0.0
    resumed: int = 0
    full: int = 0
    tls: dict[str, str] = field(default_factory=dict)
    samples: bytes = b""
    kinds: bytes = b""
    uids: list[str] = field(default_factory=list)


class ResumingContext(ssl.SSLContext):
    """A client context whose new connections resume a session of an earlier one."""

    sessions: collections.deque[ssl.SSLSession]

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        if session is None and self.sessions:
            session = self.sessions.pop()
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)


def client_context(target: Target) -> ResumingContext:
    """Raises ``OSError``/``ssl.SSLError`` for unusable files (the caller translates)."""
    ctx = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.sessions = collections.deque(maxlen=4096)
    ctx.load_verify_locations(cafile=target.ca)
    ctx.load_cert_chain(target.cert, target.key)
    return ctx


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def tls_info(sslobj: object) -> dict[str, str]:
    if not isinstance(sslobj, ssl.SSLObject):
        return {}
    cipher = sslobj.cipher()
    return {"version": sslobj.version() or "?", "cipher": cipher[0] if cipher else "?"}


class _Run:
    """What a worker's connections share: phase, samples, error counts."""

    __slots__ = (
        "active", "cpu_start", "errors", "finished", "full", "kinds", "measuring", "ops",
        "record", "resumed", "samples", "stopping", "t_end", "t_start", "tls", "track_kinds",
        "warm_errors", "warm_ops",
    )  # fmt: skip

    def __init__(
        self, plan: Plan, loop: asyncio.AbstractEventLoop, *, record: bool = False
    ) -> None:
        self.record: list[str] | None = [] if record else None
        self.samples = array("q")
        self.kinds = array("B")
        self.track_kinds = len(plan.kind_names) > 1
        self.errors: dict[int, int] = {}
        self.warm_errors: dict[int, int] = {}
        self.ops = self.warm_ops = self.active = self.resumed = self.full = 0
        self.measuring = self.stopping = False
        self.finished: asyncio.Future[None] = loop.create_future()
        self.t_start = self.t_end = self.cpu_start = 0.0
        self.tls: dict[str, str] = {}

    def error(self, code: int) -> None:
        d = self.errors if self.measuring else self.warm_errors
        d[code] = d.get(code, 0) + 1

    def begin(self) -> None:
        if not self.stopping:
            self.measuring = True
            self.t_start = time.monotonic()
            self.cpu_start = _cpu()

    def stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.t_end = time.monotonic()
        if not self.measuring:
            self.t_start, self.cpu_start = self.t_end, _cpu()
        self.measuring = False
        if not self.finished.done():
            self.finished.set_result(None)

    def retire(self) -> None:
        self.active -= 1
        if self.active <= 0:
            self.stop()

    def result(self, cpu: float) -> WorkerResult:
        return WorkerResult(
            self.ops, self.errors, self.warm_ops, self.warm_errors, self.t_start, self.t_end,
            cpu, self.resumed, self.full, self.tls, uids=self.record or [],
        )  # fmt: skip


class _Conn(asyncio.BufferedProtocol):
    """One TLS connection. With ``waiter`` it answers one request into that future."""

    def __init__(
        self,
        run: _Run,
        plan: Plan,
        quota: int,
        offset: int,
        *,
        full_check: bool,
        waiter: asyncio.Future[tuple[int, int]] | None = None,
    ) -> None:
        self.run = run
        self.requests = plan.requests
        self.expects = plan.expects
        self.kinds = plan.kinds
        self.key_bytes = plan.key_bytes
        self.cycle = len(plan.requests)
        self.i = offset % self.cycle
        self.quota = quota
        self.full_check = full_check
        self.waiter = waiter
        self.buf = bytearray(_BUFFER)
        self.view = memoryview(self.buf)
        self.end = self.need = self.t0 = 0
        self.transport: asyncio.Transport | None = None
        self.closed = self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.waiter is not None:
            self.send()

    def send(self) -> None:
        assert self.transport is not None
        self.t0 = _now()
        self.transport.write(self.requests[self.i])

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view[self.end :]

    def buffer_updated(self, nbytes: int) -> None:
        end = self.end + nbytes
        self.end = end
        need = self.need
        if not need:
            if end < 8:
                return
            word, length = HEADER.unpack_from(self.buf, 0)
            need = 8 + length
            if word != RESPONSE_WORD or length & 7 or need > MAX_RESPONSE:
                self._broken()
                return
            self.need = need
            if need > len(self.buf):
                self._grow(need)
        if end < need:
            return
        t1 = _now()
        if end > need:
            self._broken()
            return
        i = self.i
        if self.full_check:
            code = check_full(bytes(self.view[:need]), self.expects[i], self.key_bytes)
        else:
            code = check_status(self.buf, need, self.expects[i])
        self.end = self.need = 0
        if self.waiter is not None:
            if not self.waiter.done():
                self.waiter.set_result((code, t1))
            return
        run = self.run
        if run.record is not None and not code:  # a key made: keep its identifier
            uid = created_uid(bytes(self.view[:need]))
            if uid is not None:
                run.record.append(uid)
        if run.measuring:
            run.samples.append(t1 - self.t0)
            if run.track_kinds:
                run.kinds.append(self.kinds[i])
            run.ops += 1
            if code:
                run.error(code)
            self.quota -= 1
            if self.quota == 0:
                self.finish()
                return
        elif run.stopping:
            self.finish()
            return
        else:
            run.warm_ops += 1
            if code:
                run.error(code)
        i += 1
        self.i = 0 if i == self.cycle else i
        self.t0 = _now()
        self.transport.write(self.requests[self.i])  # type: ignore[union-attr]

    def _grow(self, need: int) -> None:
        new = bytearray(need)
        new[: self.end] = self.view[: self.end]
        self.buf, self.view = new, memoryview(new)

    def _broken(self) -> None:
        """Bytes that are not a response to what we sent: count, then drop the connection."""
        if self.waiter is not None:
            if not self.waiter.done():
                self.waiter.set_result((MALFORMED, _now()))
        elif not self.run.stopping:
            self.run.error(MALFORMED)
        self.abort()

    def timed_out(self) -> None:
        self.run.error(TIMEOUT)
        self.abort()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        if self.waiter is None:
            self.finish()

    def finish(self) -> None:
        if not self.done:
            self.done = True
            self.run.retire()

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None:
            if not self.waiter.done():
                self.waiter.set_result((CONN_LOST, _now()))
            return
        if not self.closed and not self.done and not self.run.stopping:
            self.run.error(CONN_LOST)
        self.closed = True
        self.finish()


async def _open(spec: WorkerSpec, ctx: ssl.SSLContext, factory: Any) -> tuple[Any, Any]:
    t = spec.target
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(
        loop.create_connection(
            factory,
            t.host,
            t.port,
            ssl=ctx,
            server_hostname=t.server_name,
            ssl_handshake_timeout=spec.timeout,
        ),
        spec.timeout,
    )


async def _slot(run: _Run, spec: WorkerSpec, ctx: ResumingContext, quota: int, k: int) -> None:
    """``--op connect``: a new TLS connection (and one Get) per operation."""
    loop = asyncio.get_running_loop()
    plan, full = spec.plan, spec.full_check
    while not run.stopping:
        waiter: asyncio.Future[tuple[int, int]] = loop.create_future()
        transport: asyncio.Transport | None = None
        t0 = _now()
        try:
            transport, _ = await _open(
                spec, ctx, lambda w=waiter: _Conn(run, plan, -1, k, full_check=full, waiter=w)
            )
            code, t1 = await asyncio.wait_for(waiter, spec.timeout)
        except TimeoutError:
            code, t1 = TIMEOUT, _now()
        except (OSError, ssl.SSLError):
            code, t1 = CONNECT_FAILED, _now()
        if transport is not None:
            sslobj = transport.get_extra_info("ssl_object")
            if isinstance(sslobj, ssl.SSLObject):
                if not run.tls:
                    run.tls = tls_info(sslobj)
                if run.measuring:
                    if sslobj.session_reused:
                        run.resumed += 1
                    else:
                        run.full += 1
                session = sslobj.session
                if spec.resume and session is not None:
                    ctx.sessions.append(session)
            transport.close()
        if run.measuring:
            run.samples.append(t1 - t0)
            if run.track_kinds:
                run.kinds.append(0)
            run.ops += 1
            if code:
                run.error(code)
            quota -= 1
            if quota == 0:
                break
        elif run.stopping:
            break
        else:
            run.warm_ops += 1
            if code:
                run.error(code)
        if code == CONNECT_FAILED:
            await asyncio.sleep(0.01)
    run.retire()


def _flush(run: _Run, pipe: Pipe, sent: int) -> int:
    n = len(run.samples)
    pipe.send(
        (
            "tick",
            run.ops,
            sum(run.errors.values()),
            run.warm_ops,
            sum(run.warm_errors.values()),
            run.samples[sent:n].tobytes(),
        )
    )
    return n


async def _ticker(run: _Run, conns: list[_Conn], pipe: Pipe, spec: WorkerSpec) -> int:
    sent = 0
    limit = int(spec.timeout * 1e9)
    try:
        while not run.stopping:
            await asyncio.sleep(spec.tick)
            sent = _flush(run, pipe, sent)
            now = _now()
            for c in conns:
                if not c.done and not c.closed and c.t0 and now - c.t0 > limit:
                    c.timed_out()
    except asyncio.CancelledError:
        pass
    return sent


async def _main(spec: WorkerSpec, pipe: Pipe) -> None:
    loop = asyncio.get_running_loop()
    run = _Run(spec.plan, loop, record=spec.record)
    ctx = client_context(spec.target)
    conns: list[_Conn] = []
    quotas = spec.quotas or (-1,) * spec.connections
    if not spec.connect:
        t = spec.target
        first: object = None
        plan, full, first_k = spec.plan, spec.full_check, spec.first
        try:
            for k in range(spec.connections):
                q, offset = quotas[k], first_k + k
                transport, conn = await _open(
                    spec, ctx, lambda q=q, o=offset: _Conn(run, plan, q, o, full_check=full)
                )
                conns.append(conn)
                if first is None:
                    first = transport.get_extra_info("ssl_object")
        except (OSError, TimeoutError) as exc:
            pipe.send(("fail", f"cannot connect to {t.host}:{t.port}: {exc!r}"))
            return
        run.tls = tls_info(first)
    pipe.send(("ready", run.tls))
    if pipe.recv() != "go":
        return
    run.active = spec.connections
    if spec.warmup > 0:
        loop.call_later(spec.warmup, run.begin)
    else:
        run.begin()
    if spec.duration is not None:
        loop.call_later(spec.warmup + spec.duration, run.stop)
    slots: list[asyncio.Task[None]] = []
    if spec.connect:
        slots = [
            loop.create_task(_slot(run, spec, ctx, quotas[k], spec.first + k))
            for k in range(spec.connections)
        ]
    else:
        for conn in conns:
            if conn.quota == 0 or conn.closed:
                conn.finish()
            else:
                conn.send()
    ticker = loop.create_task(_ticker(run, conns, pipe, spec))
    await run.finished
    cpu = _cpu() - run.cpu_start
    ticker.cancel()
    sent = await ticker
    for conn in conns:
        conn.closed = True
        if conn.transport is not None:
            conn.transport.abort()
    for task in slots:
        task.cancel()
    await asyncio.gather(*slots, return_exceptions=True)
    result = run.result(cpu)
    result.samples = run.samples[sent:].tobytes()
    result.kinds = run.kinds.tobytes()
    pipe.send(("done", result))


def _run_loop(coro: Coroutine[Any, Any, None]) -> None:
    factory: Callable[[], asyncio.AbstractEventLoop]
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency on POSIX
        factory = asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(coro)


def worker_main(spec: WorkerSpec, pipe: Pipe) -> None:
    """Process entry point. Ctrl-C is the parent's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    gc.freeze()
    try:
        _run_loop(_main(spec, pipe))
    except Exception as exc:
        with contextlib.suppress(OSError):
            pipe.send(("fail", f"worker {spec.first}: {type(exc).__name__}: {exc}"))
    finally:
        pipe.close()
