"""The gateway side of the uplink: one gRPC channel to the Krypton Core over
mutual TLS, a Subscribe consumer that keeps itself connected, and bounded
unary calls.

How this works
--------------
:meth:`UplinkClient.start` opens the channel and starts one task that holds a
``Subscribe`` stream open. Each stream goes CONNECTING → READY when its first
Heartbeat arrives (the Core sends one right after the current L3 versions, so
READY means "in sync") and events are handed to the registered listeners. When
the stream breaks, the Core refuses it, or nothing (not even a heartbeat)
arrives for ``stale_after`` seconds, the state becomes DOWN and the task
retries after a jittered exponential backoff (``backoff[0]`` doubling up to
``backoff[1]``, each delay drawn from its upper half), reset once a stream
reaches READY. The channel's own reconnect backoff is capped the same way, so
a Core that comes back is found within about ``backoff[1]`` seconds.

Liveness: gRPC keepalive pings every ``liveness.keepalive`` seconds (through
the pipe, end to end) and a ping unanswered for ``liveness.keepalive_timeout``
ends the connection, so a silent partition (packets dropped, no reset) is
noticed within their sum and a new connection is made; ``stale_after`` stays
as a backstop. All of these are ``gateway.uplink.*`` settings.

Unary calls (:meth:`execute`, :meth:`sync_keys`, :meth:`fetch_key`) never wait
for the stream and never queue: each is one RPC with a deadline of ``timeout``
seconds, sent fail-fast (``wait_for_ready=False``, gRPC retries off). Once the uplink
is known down (the stream broke and has not been READY since), a call fails
at once without touching the network, so a batch of N delegated items under
a partition never waits N times ``timeout``. A Core
that is down or slow therefore costs a caller at most ``timeout`` and yields
:class:`~krypton.errors.UpstreamUnavailable` ("the Krypton Core is
unreachable: ..."); other gRPC failures are translated by
:func:`krypton.uplink.convert.error_of`. A call that timed out may still have
reached the Core (the Core's handler is cancelled when the deadline passes).

The Core is recognised by its SPIFFE ID (``core_id``,
``gateway.uplink.core_id``): the TLS of every connection the channel makes is
done by :class:`krypton.uplink._pipe.CorePipe`, which checks the server's
certificate before gRPC may use the connection. What the Core sends is
checked against what was asked: a pushed event must be for a subscribed
tenant, a FetchKey answer for the uid and tenant asked.

The change feed: a gateway with a :class:`FeedSink` (``set_feed``) subscribes
with the feed position it last applied (``FeedSink.cursor``) and has every
state change applied by ``FeedSink.apply`` one at a time, in stream order,
before the next message is read. The stream's first Heartbeat goes to
``FeedSink.caught_up`` (which reconciles when the Core says the position is
too old, and records the position) *before* the state becomes READY: READY
means the gateway holds nothing the Core has changed. A sink that fails makes
the stream end, so the same changes are replayed on the next one. An
:class:`L3Versions` (the end of each L3 snapshot) goes to ``on_versions``
listeners; :class:`UplinkL3Source` drops every version it does not list.

L3 material pushed by the Core becomes a :class:`SecretBytes` at once and is
owned by the (first) ``on_l3`` listener, e.g. :class:`UplinkL3Source`, which
installs it into the gateway's :class:`~krypton.crypto.keyring.KeyRing`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

import grpc

from krypton.config import GatewayConfig, TLSConfig, split_addresses
from krypton.crypto.keyring import KeyRing, L3Grant
from krypton.crypto.secret import SecretBytes
from krypton.errors import KryptonError, PermissionDenied, UpstreamUnavailable
from krypton.model.record import KeyRecord
from krypton.tls.material import Material
from krypton.uplink import convert
from krypton.uplink._pipe import CorePipe
from krypton.uplink.types import (
    ConnectionState,
    ExecuteRequest,
    ExecuteResult,
    Heartbeat,
    L3Versions,
    Liveness,
    StateChange,
)
from krypton.uplink.v1 import uplink_pb2 as pb
from krypton.uplink.v1 import uplink_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 2.0
DEFAULT_BACKOFF = (0.1, 5.0)
DEFAULT_STALE_AFTER = 15.0
MAX_MESSAGE = 16 * 1024 * 1024
_GUARD = 0.25  # extra seconds before our own timer backs up gRPC's deadline
_JITTER = random.SystemRandom()
# Stream endings that mean the link (not the Core's judgement) failed.
_LOST = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})

Req = TypeVar("Req")
Resp = TypeVar("Resp")
L3Listener = Callable[[L3Grant], None]
StateListener = Callable[[StateChange], None]
ConnectionListener = Callable[[ConnectionState], None]
VersionsListener = Callable[[L3Versions], None]


class FeedSink(Protocol):
    """Where the Core's change feed is applied (the gateway's upstream)."""

    def cursor(self) -> int | None:
        """The last feed position applied; None when nothing is held yet."""
        ...

    async def apply(self, change: StateChange) -> None:
        """Apply one change durably, its position with it (raise to replay it)."""
        ...

    async def caught_up(self, beat: Heartbeat) -> None:
        """The replay is over (``beat.feed_seq``); reconcile first if ``beat.reconcile``."""
        ...


class _Stale(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Listener:
    on_l3: L3Listener | None
    on_state: StateListener | None
    on_connection: ConnectionListener | None
    on_versions: VersionsListener | None = None


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Delay before retry ``attempt`` (0-based): in [d/2, d] with d = min(cap, base·2^n)."""
    ceiling = min(cap, base * 2.0 ** min(attempt, 32))
    return ceiling / 2 + _JITTER.uniform(0, ceiling / 2)


class UplinkClient:
    """The gateway's connection to the Core (see the module docstring)."""

    def __init__(
        self,
        address: str,
        tls: TLSConfig,
        gateway_name: str,
        tenants: Iterable[str],
        timeout: float = DEFAULT_TIMEOUT,
        *,
        backoff: tuple[float, float] = DEFAULT_BACKOFF,
        stale_after: float = DEFAULT_STALE_AFTER,
        server_name: str | None = None,
        setting: str = "gateway",
        core_id: str | None = None,
        liveness: Liveness | None = None,
        material: Material | None = None,
    ) -> None:
        if timeout <= 0 or stale_after <= 0 or not 0 < backoff[0] <= backoff[1]:
            raise ValueError("timeout, stale_after and backoff must be positive (base ≤ cap)")
        self._address = address
        self._addresses = split_addresses(address)
        self._liveness = liveness or Liveness()
        self._known_down = False  # the stream broke and has not been READY since
        self._tls = tls
        self._material = material  # what the pipe presents and trusts (default: tls's files)
        self._name = gateway_name
        self._tenants = tuple(sorted(set(tenants)))
        self._timeout = float(timeout)
        self._backoff = backoff
        self._stale_after = stale_after
        self._server_name = server_name
        self._setting = setting
        self._core_id = core_id or None
        self._pipe: CorePipe | None = None
        self._feed: FeedSink | None = None
        self._listeners: list[_Listener] = []
        self._state = ConnectionState.DOWN
        self._last_error = "not started"
        self._first = True
        self._ready = asyncio.Event()
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.UplinkAsyncStub | None = None
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, config: GatewayConfig, tenants: Iterable[str],
                    material: Material | None = None) -> UplinkClient:
        up = config.uplink
        return cls(up.core_address, config.tls, config.name, tenants, up.timeout,
                   backoff=(min(DEFAULT_BACKOFF[0], up.reconnect_max), up.reconnect_max),
                   stale_after=up.stale_after, core_id=up.core_id,
                   liveness=Liveness(up.keepalive, up.keepalive_timeout, up.connect_timeout),
                   material=material)

    def rotate_tls(self, material: Material) -> None:
        """Use ``material`` for the next connection to the Core (the pipe makes a new
        TLS connection with it when gRPC reconnects); the one up stays up. Without
        a ``core_id`` (tests only) the channel's credentials are fixed."""
        self._material = material
        if self._pipe is not None:
            self._pipe.rotate(material)

    # -- state -------------------------------------------------------------------
    @property
    def state(self) -> ConnectionState:
        return self._state

    @property
    def last_error(self) -> str:
        """Why the uplink was last DOWN (no key material, safe to show)."""
        return self._last_error

    @property
    def tenants(self) -> tuple[str, ...]:
        return self._tenants

    @property
    def timeout(self) -> float:
        return self._timeout

    @property
    def started(self) -> bool:
        return self._task is not None

    def add_listener(
        self,
        *,
        on_l3: L3Listener | None = None,
        on_state: StateListener | None = None,
        on_connection: ConnectionListener | None = None,
        on_versions: VersionsListener | None = None,
    ) -> Callable[[], None]:
        """Register callbacks (run on the event loop); returns a function that removes them.

        The first ``on_l3`` listener owns each grant's material; later ones get copies.
        """
        listener = _Listener(on_l3, on_state, on_connection, on_versions)
        self._listeners.append(listener)

        def remove() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return remove

    def set_feed(self, feed: FeedSink | None) -> None:
        """Apply the change feed through ``feed`` (see the module comment)."""
        self._feed = feed

    async def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until the uplink is READY; False if ``timeout`` passes first."""
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        except TimeoutError:
            return False
        return True

    def _set_state(self, state: ConnectionState, reason: str = "", retry: float = 0.0) -> None:
        """Record a transition, log it (retry cycles at debug level) and tell the listeners."""
        previous = self._state
        if state is previous and state is not ConnectionState.DOWN:
            return
        self._state = state
        if state is ConnectionState.READY:
            self._known_down = False
        if state is ConnectionState.DOWN:
            repeated = previous is not ConnectionState.READY and reason == self._last_error
            self._last_error = reason
            level = logging.DEBUG if repeated else logging.WARNING
            log.log(level, "uplink: DOWN, the Krypton Core at %s: %s; retrying in %.2f s",
                    self._address, reason, retry)
        elif state is ConnectionState.READY:
            where = self._pipe.current if self._pipe is not None else self._address
            log.info("uplink: READY, in sync with the Krypton Core at %s", where)
        else:
            loud = previous is ConnectionState.READY or self._first
            self._first = False
            level = logging.INFO if loud else logging.DEBUG
            log.log(level, "uplink: CONNECTING to the Krypton Core at %s", self._address)
        if state is ConnectionState.READY:
            self._ready.set()
        else:
            self._ready.clear()
        if state is not previous:
            for listener in list(self._listeners):
                if listener.on_connection is not None:
                    self._guarded(listener.on_connection, state)

    # -- lifecycle ---------------------------------------------------------------
    async def start(self) -> None:
        """Open the channel and start the Subscribe consumer (returns at once)."""
        if self._task is not None:
            return
        options: list[tuple[str, str | int]] = [
            ("grpc.initial_reconnect_backoff_ms", int(self._backoff[0] * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(self._backoff[1] * 1000)),
            ("grpc.enable_retries", 0),
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.keepalive_time_ms", int(self._liveness.keepalive * 1000)),
            ("grpc.keepalive_timeout_ms", int(self._liveness.keepalive_timeout * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            # Any unanswered ping (keepalive or gRPC's own) ends the connection; the
            # default waits a minute.
            ("grpc.http2.ping_timeout_ms", int(self._liveness.keepalive_timeout * 1000)),
        ]
        if self._core_id is not None:
            self._pipe = CorePipe(self._addresses, self._tls, self._core_id,
                                  liveness=self._liveness, material=self._material)
            target = await self._pipe.start()
            self._channel = grpc.aio.insecure_channel(target, options=options)
        else:  # built in code without a Core identity (tests): the CA alone is trusted
            credentials = convert.channel_credentials(self._tls, f"{self._setting}.tls")
            if self._server_name:
                options.append(("grpc.ssl_target_name_override", self._server_name))
            host, port = self._addresses[0]  # one Core only on this path
            target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            self._channel = grpc.aio.secure_channel(target, credentials, options=options)
        self._stub = pb_grpc.UplinkStub(self._channel)
        self._task = asyncio.create_task(self._subscribe_forever(), name="uplink-subscribe")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close()
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            await pipe.close()
        if self._state is not ConnectionState.DOWN:
            self._state, self._last_error, self._first = ConnectionState.DOWN, "closed", True
            self._ready.clear()
            log.info("uplink: closed the connection to the Krypton Core at %s", self._address)
            for listener in list(self._listeners):
                if listener.on_connection is not None:
                    self._guarded(listener.on_connection, ConnectionState.DOWN)

    async def __aenter__(self) -> UplinkClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the Subscribe consumer ----------------------------------------------------
    async def _subscribe_forever(self) -> None:
        attempt = 0
        while True:
            self._set_state(ConnectionState.CONNECTING)
            try:
                await self._subscribe_once()
                reason, lost = "the Core ended the stream", False
            except grpc.aio.AioRpcError as e:
                reason = f"{e.code().name}: {e.details() or 'no detail'}"
                lost = e.code() in _LOST
                if self._pipe is not None and self._pipe.last_refusal:
                    reason = f"refused the server: {self._pipe.last_refusal}"
            except _Stale:
                reason, lost = f"nothing heard for {self._stale_after:g} s", True
            except Exception as e:  # a bug must not end the reconnect loop
                log.exception("uplink: the Subscribe stream failed")
                reason, lost = f"internal error ({type(e).__name__})", False
            if self._state is ConnectionState.READY:
                attempt = 0
            delay = backoff_delay(attempt, *self._backoff)
            attempt += 1
            # A refusal (PERMISSION_DENIED, ...) is the Core's answer and calls get it
            # too; a link that is gone fails calls at once until the stream is READY.
            self._known_down = self._known_down or lost
            self._set_state(ConnectionState.DOWN, reason, delay)
            await asyncio.sleep(delay)

    async def _subscribe_once(self) -> None:
        stub = self._stub
        assert stub is not None
        feed = self._feed
        request = pb.SubscribeRequest(gateway=self._name, tenants=self._tenants)
        after = None if feed is None else feed.cursor()
        if after is not None:
            request.after_seq = after
        call = stub.Subscribe(request)
        try:
            while True:
                try:
                    async with asyncio.timeout(self._stale_after):
                        msg = await call.read()
                except TimeoutError:
                    raise _Stale from None
                if msg is grpc.aio.EOF:
                    return
                assert isinstance(msg, pb.CoreEvent)
                # The Core answered on this stream: the link is up again, so the
                # calls the sync itself makes (KeyStates, FetchKey while it
                # reconciles, before READY) must not fail fast.
                self._known_down = False
                await self._dispatch(msg, feed)
        finally:
            call.cancel()

    async def _dispatch(self, msg: pb.CoreEvent, feed: FeedSink | None) -> None:
        try:
            event = convert.event_from_pb(msg)
        except KryptonError as e:
            log.warning("uplink: ignored an event from the Core: %s", e.message)
            return
        if isinstance(event, Heartbeat):
            if self._state is not ConnectionState.READY and feed is not None:
                await feed.caught_up(event)
            self._set_state(ConnectionState.READY)
            return
        if event is None:
            return
        if event.tenant not in self._tenants:
            log.warning("uplink: ignored an event for tenant %r, not subscribed", event.tenant)
            if isinstance(event, L3Grant):
                event.material.wipe()
            return
        if isinstance(event, StateChange):
            if feed is not None:
                await feed.apply(event)
            for listener in list(self._listeners):
                if listener.on_state is not None:
                    self._guarded(listener.on_state, event)
        elif isinstance(event, L3Versions):
            for listener in list(self._listeners):
                if listener.on_versions is not None:
                    self._guarded(listener.on_versions, event)
        elif isinstance(event, L3Grant):
            self._hand_over(event)

    def _hand_over(self, grant: L3Grant) -> None:
        sinks = [x.on_l3 for x in self._listeners if x.on_l3 is not None]
        if not sinks:
            grant.material.wipe()
            return
        for sink in sinks[1:]:
            self._guarded(sink, replace(grant, material=SecretBytes(grant.material.view())))
        self._guarded(sinks[0], grant)

    @staticmethod
    def _guarded(callback: Callable[[Req], None], arg: Req) -> None:
        try:
            callback(arg)
        except Exception as e:
            log.error("uplink: a listener failed (%s: %s)", type(e).__name__,
                      e.message if isinstance(e, KryptonError) else "see debug log")
            log.debug("uplink: listener failure", exc_info=True)

    # -- unary calls -----------------------------------------------------------------
    async def _unary(
        self,
        method: Callable[[pb_grpc.UplinkAsyncStub], grpc.aio.UnaryUnaryMultiCallable[Req, Resp]],
        request: Req,
        timeout: float,
    ) -> Resp:
        stub = self._stub
        if stub is None:
            raise UpstreamUnavailable("the Krypton Core is unreachable: the uplink is not started")
        if self._known_down:  # fail fast: no call waits for a link already known dead
            raise UpstreamUnavailable(f"the Krypton Core is unreachable: {self._last_error}")
        try:
            async with asyncio.timeout(timeout + _GUARD):
                return await method(stub)(request, timeout=timeout, wait_for_ready=False)
        except grpc.aio.AioRpcError as e:
            raise convert.error_of(e, timeout) from None
        except TimeoutError:
            raise UpstreamUnavailable(
                f"the Krypton Core is unreachable: no answer within {timeout:g} s"
            ) from None

    async def execute(self, request: ExecuteRequest, *, timeout: float | None = None
                      ) -> ExecuteResult:
        """Run one delegated batch item at the Core; bounded by ``timeout``, never queued."""
        if not request.correlation_id:
            request = replace(request, correlation_id=secrets.token_hex(8))
        bound = self._timeout if timeout is None else timeout
        response = await self._unary(lambda s: s.Execute,
                                     convert.execute_to_pb(request, self._name), bound)
        return convert.result_from_pb(response)

    async def sync_keys(self, records: Iterable[KeyRecord]) -> list[str]:
        """Send wrapped L4 records to the Core; the uids it acknowledged."""
        request = pb.SyncKeysRequest(gateway=self._name)
        add, sent = request.keys.add, set()
        for key in records:  # each built in the request (as convert.key_to_pb), not copied in
            add(uid=key.uid, tenant=key.tenant, object_type=key.object_type,
                algorithm=key.algorithm, length=key.length, state=key.state,
                l3_version=key.l3_version, wrapped=key.wrapped, attributes=key.attributes,
                created=key.created, mac=key.mac)
            sent.add(key.uid)
        if not sent:
            return []
        response = await self._unary(lambda s: s.SyncKeys, request, self._timeout)
        return [uid for uid in response.acked if uid in sent]

    async def fetch_key(self, tenant: str, uid: str) -> KeyRecord | None:
        """The Core's wrapped record of ``uid`` (marked synced), or None if it has none."""
        response = await self._unary(lambda s: s.FetchKey,
                                     pb.FetchKeyRequest(tenant=tenant, uid=uid), self._timeout)
        if not response.found:
            return None
        key = convert.key_from_pb(response.key)
        if key.uid != uid or key.tenant != tenant or tenant not in self._tenants:
            log.error("uplink: FetchKey of %s (%s) answered with %s (%s); refused",
                      uid, tenant, key.uid, key.tenant)
            raise PermissionDenied("the Krypton Core answered FetchKey with another key")
        return key


    async def key_states(self, tenant: str, uids: Sequence[str]) -> dict[str, StateChange]:
        """The Core's current state of those of ``uids`` it holds for ``tenant``."""
        response = await self._unary(lambda s: s.KeyStates,
                                     pb.KeyStatesRequest(tenant=tenant, uids=list(uids)),
                                     self._timeout)
        asked = set(uids)
        out: dict[str, StateChange] = {}
        for msg in response.states:
            change = convert.change_from_pb(msg)
            if change.tenant == tenant and change.uid in asked:
                out[change.uid] = change
        return out


class UplinkL3Source:
    """A :class:`~krypton.crypto.keyring.L3Source` fed by the Core over the uplink.

    Every L3 version the Core pushes is installed into the ring with its lease,
    cut to ``max_lease`` seconds; COMPROMISED or DESTROYED versions are dropped
    (and wiped) at once, and so is every held version an :class:`L3Versions`
    (the end of each snapshot) does not list. ``start``
    starts the client if it is not running (and ``close`` then closes it) and
    waits up to ``wait`` seconds (default: the client's timeout) for the first
    snapshot; a Core that is down does not stop the gateway from starting.
    """

    def __init__(
        self, client: UplinkClient, *, wait: float | None = None, max_lease: float | None = None
    ) -> None:
        self._client = client
        self._max_lease = max_lease
        self._wait = client.timeout if wait is None else wait
        self._ring: KeyRing | None = None
        self._remove: Callable[[], None] | None = None
        self._owns_client = False

    async def start(self, ring: KeyRing) -> None:
        self._ring = ring
        self._remove = self._client.add_listener(on_l3=self._install,
                                                 on_versions=self._keep_only)
        if not self._client.started:
            await self._client.start()
            self._owns_client = True
        if not await self._client.wait_ready(self._wait):
            log.warning("uplink: no L3 keys from the Krypton Core yet (%s); the hot path "
                        "serves each tenant once its keys arrive", self._client.last_error)

    async def close(self) -> None:
        if self._remove is not None:
            self._remove()
            self._remove = None
        self._ring = None
        if self._owns_client:
            self._owns_client = False
            await self._client.close()

    def _install(self, grant: L3Grant) -> None:
        ring = self._ring
        if ring is None:
            grant.material.wipe()
            return
        if self._max_lease is not None and grant.lease_seconds > self._max_lease:
            grant = replace(grant, lease_seconds=self._max_lease)
        ring.install_grant(grant)
        log.info("uplink: L3 %s v%d is %s", grant.tenant, grant.version, grant.state.name)

    def _keep_only(self, listed: L3Versions) -> None:
        ring = self._ring
        if ring is None:
            return
        for version in ring.versions(listed.tenant):
            if version not in listed.versions:
                ring.drop(listed.tenant, version)
                log.warning("uplink: L3 %s v%d is no longer usable at the Core: dropped",
                            listed.tenant, version)
