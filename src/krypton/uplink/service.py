"""The Core side of the uplink: a gRPC server over mutual TLS that authorises
every call and hands it to a :class:`CoreHandler`.

How this works
--------------
The server requires a client certificate chaining to the configured CA (gRPC
checks that during the handshake: a client without one never gets a call in).
For each RPC it reads the peer's certificate from ``context.auth_context()``,
checks it (:func:`krypton.tls.identity.check_peer`: a leaf with clientAuth,
valid now, in the trust domain, not denied — the same rules the KMIP listener
applies), takes its SPIFFE ID and looks it up in ``authorised``: SPIFFE ID →
the tenants that gateway serves. An unknown gateway, or a request naming a
tenant the gateway does not serve (every record of a SyncKeys, Execute's and
FetchKey's tenant), is answered ``PERMISSION_DENIED`` before the handler is
called, and the refusal is audited (``audit``). A Subscribe is refused that
way only when it names no tenant the gateway serves; otherwise each tenant it
does not serve is refused on its own (a warning naming it, an audit record)
and the stream carries the others, so one stray rule in a gateway's policy
does not cost its other tenants their keys. The
handler therefore only ever sees authorised calls, and its ``gateway``
argument is the authenticated SPIFFE ID (the ``gateway`` name inside
requests is the gateway's own claim, used for logs only).

The client identity in an Execute is a *claim* the gateway vouches for: it
must be a well-formed identity (a SPIFFE ID by the spec, in this Core's trust
domain, or a subject DN), and the tenant it acts in must be one that gateway
serves. The audit record names both the gateway and the claimed client.

``Subscribe`` forwards the handler's events and, whenever the stream has been
quiet for ``heartbeat`` seconds, sends a Heartbeat. The handler's iterator is
expected to yield the current L3 versions first, then one :class:`Heartbeat`
(the gateway counts itself in sync from there), then changes. An event for a
tenant outside the subscription is dropped here (and an L3 key's copy wiped)
as a second line of defence.

Errors: a :class:`KryptonError` from the handler becomes a status code by
table (:func:`krypton.uplink.convert.status_of`) with its message as details;
anything else is logged and answered ``INTERNAL`` without detail.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from typing import Any, NoReturn, Protocol, TypeVar

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from krypton.config import TLSConfig
from krypton.crypto.keyring import L3Grant
from krypton.errors import ConfigError, KryptonError, PermissionDenied
from krypton.logs import RateLimitedLog
from krypton.model.record import KeyRecord
from krypton.model.registry import AuditRecord
from krypton.tls.identity import PeerRules, check_peer
from krypton.tls.material import Material, read_files
from krypton.tls.spiffe import looks_like_spiffe, parse_spiffe_id
from krypton.uplink import convert
from krypton.uplink.types import (
    CoreEvent,
    ExecuteRequest,
    ExecuteResult,
    Heartbeat,
    L3Versions,
    StateChange,
)
from krypton.uplink.v1 import uplink_pb2 as pb
from krypton.uplink.v1 import uplink_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT = 5.0
MAX_MESSAGE = 16 * 1024 * 1024
MAX_KEY_STATES = 1000
_IDENTITY_CACHE = 256

Context = grpc.aio.ServicerContext[Any, Any]
AuditSink = Callable[[AuditRecord], Awaitable[None]]
T = TypeVar("T")


class CoreHandler(Protocol):
    """What the Core implements. ``gateway`` is the caller's authenticated SPIFFE ID.

    The server owns the material of every :class:`L3Grant` the handler yields: it
    wipes it once serialised, so yield a fresh ``SecretBytes`` each time.
    """

    def subscribe(
        self, gateway: str, tenants: frozenset[str], after_seq: int | None = None
    ) -> AsyncIterator[CoreEvent]:
        """An L3 snapshot of ``tenants``, the change feed after ``after_seq``, a
        Heartbeat, then changes, until cancelled."""
        ...

    async def sync_keys(self, gateway: str, keys: Sequence[KeyRecord]) -> list[str]:
        """Store the records durably; the uids stored (already held ones included)."""
        ...

    async def execute(self, gateway: str, request: ExecuteRequest) -> ExecuteResult:
        """Run one delegated KMIP batch item."""
        ...

    async def fetch_key(self, gateway: str, tenant: str, uid: str) -> KeyRecord | None:
        """The tenant's record with this uid, or None."""
        ...

    async def key_states(self, gateway: str, tenant: str, uids: Sequence[str]
                         ) -> list[StateChange]:
        """The current state of those of ``uids`` the tenant has."""
        ...


async def with_heartbeats(
    events: AsyncIterator[CoreEvent], period: float
) -> AsyncGenerator[CoreEvent, None]:
    """``events`` with a :class:`Heartbeat` inserted after each ``period`` of quiet."""
    pending: asyncio.Future[CoreEvent] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(events))
            done, _ = await asyncio.wait({pending}, timeout=period)
            if not done:
                yield Heartbeat.now()
                continue
            finished, pending = pending, None
            try:
                event = finished.result()
            except StopAsyncIteration:
                return
            yield event
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        close = getattr(events, "aclose", None)
        if close is not None:
            await close()


def _peer(context: Context) -> str:
    """The caller's address as gRPC names it (``ipv4:127.0.0.1:5432``), else ``?``."""
    try:
        return str(context.peer())
    except Exception:  # a context without a transport
        return "?"


class _Servicer(pb_grpc.UplinkServicer):
    def __init__(
        self,
        handler: CoreHandler,
        authorised: Mapping[str, frozenset[str]],
        heartbeat: float,
        rules: PeerRules,
        audit: AuditSink | None,
    ) -> None:
        self._handler = handler
        self._authorised = {k: frozenset(v) for k, v in authorised.items()}
        self._heartbeat = heartbeat
        self._rules = rules
        self._audit = audit
        self._ders: dict[bytes, bytes] = {}
        self._streams: set[asyncio.Task[Any]] = set()  # the Subscribe calls running
        self._ending = False  # end_streams was called: a cancelled stream ends cleanly
        # Refused calls: logged with the peer's address and identity, rate-limited.
        self._refusals = RateLimitedLog(log)

    def end_streams(self) -> int:
        """End every Subscribe stream (drain: their gateways go elsewhere or retry)."""
        streams = [t for t in self._streams if not t.done()]
        self._ending = True
        for task in streams:
            task.cancel()
        return len(streams)

    # -- authorisation -------------------------------------------------------------
    def _identity(self, context: Context) -> str:
        pems = list(context.auth_context().get("x509_pem_cert", ()))
        if not pems:
            raise PermissionDenied("no client certificate")
        pem = pems[0]
        der = self._ders.get(pem)
        if der is None:
            try:
                der = x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)
            except ValueError:
                raise PermissionDenied("client certificate could not be parsed") from None
            if len(self._ders) >= _IDENTITY_CACHE:
                self._ders.clear()
            self._ders[pem] = der
        return check_peer(der, self._rules).identity  # validity is checked on every call

    async def _refuse(
        self, context: Context, call: str, gateway: str, detail: str, *,
        tenant: str = "", identity: str | None = None, uid: str | None = None,
        code: grpc.StatusCode = grpc.StatusCode.PERMISSION_DENIED,
    ) -> NoReturn:
        """Audit a refused call, then abort it with ``code``."""
        peer = _peer(context)
        self._refusals.warning("uplink_denied", "uplink: %s from %s (%s) refused: %s", call,
                               peer, gateway, detail, peer=peer, identity=gateway, tenant=tenant,
                               operation=call)
        await self._record(AuditRecord(
            time=time.time(), identity=identity or gateway, tenant=tenant, operation=call,
            uid=uid, result="PermissionDenied", gateway=gateway, detail=detail,
        ))
        await context.abort(code, detail)

    async def _record(self, record: AuditRecord) -> None:
        if self._audit is None:
            return
        try:
            await self._audit(record)
        except Exception:
            log.exception("uplink: audit record of %s not written", record.operation)

    async def _authorise(
        self, context: Context, call: str, tenants: Iterable[str], *,
        default_all: bool = False, partial: bool = False, identity: str | None = None,
        uid: str | None = None,
    ) -> tuple[str, frozenset[str]]:
        """The caller's SPIFFE ID and the tenants asked for, or abort PERMISSION_DENIED.
        With ``partial`` (Subscribe), tenants the gateway does not serve are refused
        one by one (a warning naming each, audited) and the others are granted."""
        asked = frozenset(tenants)
        first = min(asked, default="")
        try:
            gateway = self._identity(context)
        except PermissionDenied as e:
            await self._refuse(context, call, "(unauthenticated)", e.message, tenant=first,
                               identity=identity, uid=uid,
                               code=grpc.StatusCode.UNAUTHENTICATED)
        served = self._authorised.get(gateway)
        if served is None:
            await self._refuse(context, call, gateway,
                               f"gateway {gateway} is not authorised at this Core",
                               tenant=first, identity=identity, uid=uid)
        if not asked and default_all:
            asked = served
        refused = sorted(asked - served)
        if refused and partial and asked & served:
            await self._skip(call, gateway, refused)
            return gateway, asked & served
        if refused or not asked:
            await self._refuse(
                context, call, gateway,
                f"gateway {gateway} does not serve tenant(s) {', '.join(refused) or '(none)'}",
                tenant=refused[0] if refused else "", identity=identity, uid=uid,
            )
        return gateway, asked

    async def _skip(self, call: str, gateway: str, refused: list[str]) -> None:
        """Refuse some tenants of a call that goes ahead for the others."""
        for tenant in refused:
            detail = f"gateway {gateway} does not serve tenant {tenant}; its other tenants are"
            log.warning("uplink: %s of tenant %s refused: %s", call, tenant, detail + " served")
            await self._record(AuditRecord(
                time=time.time(), identity=gateway, tenant=tenant, operation=call, uid=None,
                result="PermissionDenied", gateway=gateway, detail=detail + " served",
            ))

    def _claimed(self, identity: str) -> str | None:
        """Why a client identity claimed by a gateway is refused, or None if it is well-formed."""
        if not identity.strip():
            return "the client identity is empty"
        if not looks_like_spiffe(identity):
            return None  # a subject DN: only the gateway's policy can judge it
        try:
            spiffe = parse_spiffe_id(identity)
        except PermissionDenied as e:
            return e.message
        domain = self._rules.trust_domain
        if domain is not None and spiffe.trust_domain != domain:
            return f"client identity {identity!r} is not in the trust domain {domain!r}"
        return None

    async def _call(self, context: Context, what: str, work: Awaitable[T]) -> T:
        """Await the handler; its errors become status codes."""
        try:
            return await work
        except KryptonError as e:
            code, detail = convert.status_of(e), e.message
        except Exception:
            log.exception("uplink: %s failed in the Core handler", what)
            code, detail = grpc.StatusCode.INTERNAL, f"{what} failed at the Core"
        await context.abort(code, detail)

    # -- RPCs ----------------------------------------------------------------------
    async def Subscribe(
        self, request: pb.SubscribeRequest, context: Context
    ) -> AsyncIterator[pb.CoreEvent]:
        gateway, tenants = await self._authorise(context, "Subscribe", request.tenants,
                                                 default_all=True, partial=True)
        log.info("uplink: gateway %s (%s) subscribed to %s", request.gateway or "?", gateway,
                 ", ".join(sorted(tenants)))
        after = request.after_seq if request.HasField("after_seq") else None
        events = with_heartbeats(self._handler.subscribe(gateway, tenants, after),
                                 self._heartbeat)
        me = asyncio.current_task()
        if me is not None:
            self._streams.add(me)
        try:
            while True:
                try:
                    event = await anext(events)
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    if self._ending:  # drain: end the call with OK, so the server need not wait
                        return
                    raise
                except KryptonError as e:
                    await context.abort(convert.status_of(e), e.message)
                except Exception:
                    log.exception("uplink: Subscribe of %s failed in the Core handler", gateway)
                    await context.abort(grpc.StatusCode.INTERNAL, "Subscribe failed at the Core")
                if (isinstance(event, L3Grant | L3Versions | StateChange)
                        and event.tenant not in tenants):
                    log.error("uplink: handler pushed tenant %r to %s, not subscribed; dropped",
                              event.tenant, gateway)
                    if isinstance(event, L3Grant):
                        event.material.wipe()
                    continue
                msg = convert.event_to_pb(event)
                if isinstance(event, L3Grant):
                    event.material.wipe()
                yield msg
        finally:
            if me is not None:
                self._streams.discard(me)
            await events.aclose()
            log.info("uplink: gateway %s unsubscribed", gateway)

    async def SyncKeys(self, request: pb.SyncKeysRequest, context: Context) -> pb.SyncKeysResponse:
        keys = [convert.key_from_pb(k) for k in request.keys]
        if not keys:
            await self._authorise(context, "SyncKeys", (), default_all=True)
            return pb.SyncKeysResponse()
        gateway, _ = await self._authorise(context, "SyncKeys", {k.tenant for k in keys},
                                           uid=keys[0].uid)
        acked = await self._call(context, "SyncKeys", self._handler.sync_keys(gateway, keys))
        return pb.SyncKeysResponse(acked=acked)

    async def Execute(self, request: pb.ExecuteRequest, context: Context) -> pb.ExecuteResponse:
        gateway, _ = await self._authorise(context, "Execute", (request.tenant,),
                                           identity=request.identity or None)
        why = self._claimed(request.identity)
        if why is not None:
            await self._refuse(context, "Execute", gateway, why, tenant=request.tenant,
                               identity=request.identity or None)
        req = convert.execute_from_pb(request)
        result = await self._call(context, "Execute", self._handler.execute(gateway, req))
        return convert.result_to_pb(result)

    async def FetchKey(self, request: pb.FetchKeyRequest, context: Context) -> pb.FetchKeyResponse:
        gateway, _ = await self._authorise(context, "FetchKey", (request.tenant,),
                                           uid=request.uid)
        key = await self._call(
            context, "FetchKey", self._handler.fetch_key(gateway, request.tenant, request.uid)
        )
        if key is None:
            return pb.FetchKeyResponse(found=False)
        if key.tenant != request.tenant or key.uid != request.uid:
            log.error("uplink: FetchKey handler answered another key; refused")
            return pb.FetchKeyResponse(found=False)
        return pb.FetchKeyResponse(found=True, key=convert.key_to_pb(key))


    async def KeyStates(self, request: pb.KeyStatesRequest, context: Context
                        ) -> pb.KeyStatesResponse:
        gateway, _ = await self._authorise(context, "KeyStates", (request.tenant,))
        if len(request.uids) > MAX_KEY_STATES:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"KeyStates: at most {MAX_KEY_STATES} uids per call")
        states = await self._call(context, "KeyStates", self._handler.key_states(
            gateway, request.tenant, list(request.uids)))
        asked = set(request.uids)
        return pb.KeyStatesResponse(states=[
            convert.change_to_pb(c) for c in states if c.tenant == request.tenant and c.uid in asked
        ])


class UplinkServer:
    """The Core's uplink listener (``grpc.aio``, mutual TLS).

    ``authorised`` maps each gateway's SPIFFE ID to the tenants it serves;
    ``rules`` what a gateway's certificate must satisfy (default: a leaf with
    clientAuth, valid now, any trust domain); ``audit`` receives a record of
    every refused call. Port 0 picks a free port; :meth:`start` returns the
    one bound.
    """

    def __init__(
        self,
        handler: CoreHandler,
        tls: TLSConfig,
        authorised: Mapping[str, frozenset[str]],
        host: str = "127.0.0.1",
        port: int = 5697,
        *,
        heartbeat: float = DEFAULT_HEARTBEAT,
        setting: str = "core",
        rules: PeerRules | None = None,
        audit: AuditSink | None = None,
        material: Material | None = None,
    ) -> None:
        if heartbeat <= 0:
            raise ValueError("heartbeat must be > 0 seconds")
        self._servicer = _Servicer(handler, authorised, heartbeat, rules or PeerRules(), audit)
        self._tls = tls
        self._material = material
        # Material handed over by rotate(), taken by gRPC before its next handshake
        # (from one of its own threads: hence the lock).
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self._pending_lock = threading.Lock()
        self._host = host
        self._port = port
        self._setting = setting
        self._server: grpc.aio.Server | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self._port}"

    def rotate(self, material: Material) -> None:
        """Present and trust ``material`` from the next handshake on (the old bundle is
        replaced, not added to); connections already made are left alone."""
        config = convert.server_certificates(material)
        with self._pending_lock:
            self._pending = config

    def _fetch_certificates(self) -> grpc.ServerCertificateConfiguration | None:
        with self._pending_lock:
            config, self._pending = self._pending, None
        return config

    async def start(self) -> int:
        material = self._material or read_files(self._tls, f"{self._setting}.tls")
        credentials = convert.dynamic_server_credentials(material, self._fetch_certificates)
        server = grpc.aio.server(options=[
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            # Gateways ping every few seconds (gateway.uplink.keepalive) to notice a
            # silent partition: never answer that with GOAWAY "too_many_pings".
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 500),
            ("grpc.http2.max_ping_strikes", 0),
        ])
        pb_grpc.add_UplinkServicer_to_server(self._servicer, server)
        try:
            port = server.add_secure_port(self.address, credentials)
        except RuntimeError:
            port = 0
        if port == 0:
            raise ConfigError(
                f"{self._setting}.listen_port: cannot listen on {self.address} "
                "(in use, or not an address of this host)"
            )
        await server.start()
        self._server, self._port = server, port
        log.info("uplink: listening on %s", self.address)
        return port

    async def drain(self, timeout: float) -> None:
        """SIGTERM: stop accepting calls, end the Subscribe streams, and give the
        calls in flight up to ``timeout`` seconds to finish."""
        server, self._server = self._server, None
        if server is None:
            return
        stopping = asyncio.ensure_future(server.stop(timeout))
        await asyncio.sleep(0)
        ended = self._servicer.end_streams()
        await stopping
        log.info("uplink: drained (%d stream(s) ended); stopped listening on %s", ended,
                 self.address)

    async def stop(self, grace: float | None = 1.0) -> None:
        """Stop accepting calls; running ones get ``grace`` seconds, streams are cancelled."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace)
            log.info("uplink: stopped listening on %s", self.address)

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()
