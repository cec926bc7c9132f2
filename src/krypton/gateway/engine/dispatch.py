"""The dispatcher: one request message in, one response message out.

How this works
--------------
``Dispatcher.handle`` receives one complete, framed request (bytes) and the
connection's :class:`Session` (identity and policy grant, fixed for the life
of the TLS connection). It decodes the TTLV under the configured limits,
validates the message structure, then runs the batch items in order:

* the operation is looked up in ``HANDLERS`` (a table, not a chain of ifs);
  an operation the caller's grant does not include is ``Permission Denied``,
  one with no handler is ``Operation Not Supported``;
* each handler gets a frozen :class:`RequestContext`; the ID Placeholder set
  by a ``Create`` is carried to the next item by building a new context, so
  ``Create`` + ``Get`` in one batch returns the new key in one round trip;
* a failing item becomes a failed response item carrying its error's result
  reason; with Batch Error Continuation Option *Stop* (the default) the items
  after it are not run, with *Continue* they are; with *Undo* the items before
  it are undone too, for the batches :mod:`krypton.engine.undo` can undo (it
  refuses the others whole, before running anything).

A message over :data:`~krypton.gateway.engine.pacing.LARGE` bytes first waits
for the dispatcher's gate (``max_large_messages``, round-robin by tenant), then
is decoded, parsed, run and encoded in slices of about a millisecond, giving the
event loop up between them (:mod:`krypton.gateway.engine.pacing`): another
connection's Get is answered in between, not after the whole message.

A plain Get whose record is not in the vault's cache is not read on the event
loop: :meth:`Dispatcher.answer_now` declines it, :meth:`Dispatcher.handle`
awaits the vault's ``read_through`` of that uid (a reader thread; the loop
serves other connections meanwhile) and then answers from the fast path.

Message-level failures (undecodable bytes, a wrong structure, a major
version we do not speak) are answered by a response with a single batch item
without Operation, as KMIP §11.1 prescribes. This is the one place with a
catch-all: an unexpected exception fails the item with General Failure and
is logged with the request id — never with the message or key material.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from krypton.engine.objects import Outcome
from krypton.engine.undo import FORGET, UNDO, marked, private_item
from krypton.errors import (
    KryptonError,
    OperationNotSupported,
    PermissionDenied,
    ResponseTooLarge,
)
from krypton.gateway.engine import crypto_ops, info, keys, undo
from krypton.gateway.engine.pacing import LARGE, Gate, Turns
from krypton.gateway.engine.services import Handler, NotLocal, Services
from krypton.gateway.fast import fastcreate, fastcreateget, fastget
from krypton.kmip.messages import (
    OPERATION_NAMES,
    RequestItem,
    ResponseItem,
    error_response,
    parse_request,
    parse_request_in_steps,
    peek_version,
)
from krypton.kmip.reasons import reason_for
from krypton.kmip.versions import ProtocolVersion
from krypton.kmip.wire import begin_response, encode_item, end_response
from krypton.logs import RateLimitedLog
from krypton.metrics.meter import FAILED, NO_OPERATION, SUCCESS, UNDONE, KmipMeter
from krypton.model.context import RequestContext
from krypton.model.grant import Grant
from krypton.ttlv.codec import DEFAULT_LIMITS, Limits, decode, decode_in_steps, encode
from krypton.ttlv.enums import BatchErrorContinuationOption, Operation, ResultReason, ResultStatus
from krypton.ttlv.item import Item
from krypton.ttlv.tags import Tag

log = logging.getLogger("krypton.dispatch")

HANDLERS: dict[int, Handler] = {
    Operation.CREATE: keys.create,
    Operation.GET: keys.get,
    Operation.GET_ATTRIBUTES: info.get_attributes,
    Operation.GET_ATTRIBUTE_LIST: info.get_attribute_list,
    Operation.DISCOVER_VERSIONS: info.discover_versions,
    Operation.QUERY: info.query,
    Operation.ENCRYPT: crypto_ops.encrypt,
    Operation.DECRYPT: crypto_ops.decrypt,
    Operation.RNG_RETRIEVE: crypto_ops.rng_retrieve,
    Operation.LOG: info.log_message,
    Operation.INTEROP: info.interop,
}


@dataclass(frozen=True, slots=True)
class Session:
    """What the TLS connection established: who the peer is and what it may do."""

    identity: str
    grant: Grant
    connection_id: int
    peer: str = "?"  # the client's address, host:port (for the log)


_UNDO = BatchErrorContinuationOption.UNDO
_CONTINUE = BatchErrorContinuationOption.CONTINUE


def _within(limits: Limits, needs: Limits) -> bool:
    return all(
        getattr(limits, f) >= getattr(needs, f)
        for f in ("max_message_size", "max_depth", "max_items", "max_batch_items")
    )


_GET_CACHE = fastget.GetCache()  # the defaults


_DECODE_STEP = 256  # TTLV items decoded between two looks at the clock


def _bound(client: int | None, server: int | None) -> int | None:
    if client is None:
        return server
    return client if server is None else min(client, server)


class Dispatcher:
    """``fast``: answer the plain single-item Get and Create and the plain
    Create + Get batch by :mod:`krypton.gateway.fast.fastget`,
    :mod:`krypton.gateway.fast.fastcreate` and :mod:`krypton.gateway.fast.fastcreateget`
    (byte-identical to the generic path), with caches of this dispatcher's own
    (``get_cache``: how much the Get fast path remembers). ``clock``: seconds
    since the epoch. ``max_response_size``: the server's own bound on a response
    message (``gateway.limits.max_response_size``); a request's Maximum Response
    Size can only lower it. Items of an answer over it fail with Response Too
    Large; a fast-path answer over it is dropped and the request goes the generic
    way, which says so. ``max_rng_bytes``: the random bytes one message's RNG
    Retrieve items may ask for together (``gateway.limits.max_rng_bytes``); the
    items past it fail with Response Too Large without a byte drawn, so a small
    message cannot make the gateway build a huge answer only to refuse it.
    ``gate``: how many large messages are worked on at once (its own by default)."""

    def __init__(
        self,
        services: Services,
        limits: Limits = DEFAULT_LIMITS,
        *,
        fast: bool = True,
        get_cache: fastget.GetCache = _GET_CACHE,
        clock: Callable[[], float] = time.time,
        max_response_size: int | None = None,
        max_rng_bytes: int = 1 << 20,
        meter: KmipMeter | None = None,
        gate: Gate | None = None,
    ) -> None:
        self.services = services
        self.meter = meter
        self.gate = gate or Gate()
        self.max_rng_bytes = max_rng_bytes
        self.limits = limits
        self.clock = clock
        self.max_response_size = max_response_size
        self.fast = fast and _within(limits, fastget.NEEDS)
        self.fast_create = fast and _within(limits, fastcreate.NEEDS)
        self.fast_createget = fast and _within(limits, fastcreateget.NEEDS)
        self._ids = itertools.count(1)
        self._fast_get = fastget.FastGet(
            max_shapes=get_cache.max_shapes, max_memo=get_cache.max_memo
        )
        self._fast_create = fastcreate.FastCreate(max_response_size=max_response_size)
        self._fast_createget = fastcreateget.FastCreateGet(
            max_response_size=max_response_size, clock=_clock
        )
        # Operations the policy does not grant: logged with peer and identity, rate-limited.
        self.denials = RateLimitedLog(log)

    def answer_now(self, frame: bytes | bytearray | memoryview, session: Session) -> bytes | None:
        """The response to a plain Get, computed without waiting; None for anything else."""
        if not self.fast:
            return None
        return self._answer_fast(frame, session, _clock() if self.meter is not None else 0.0)

    def _answer_fast(
        self, frame: bytes | bytearray | memoryview, session: Session, began: float
    ) -> bytes | None:
        """:meth:`answer_now` for a request that arrived at ``began`` (for the meter)."""
        meter = self.meter
        out = self._fast_get.answer(self.services, session.grant, frame, int(self.clock()))
        if out is None:
            return None
        if self.max_response_size is not None and len(out) > self.max_response_size:
            return None
        if meter is not None:
            meter.done(_GET, SUCCESS, _clock() - began)
        return out

    async def handle(
        self, frame: bytes | bytearray | memoryview, session: Session, *, fast: bool = True
    ) -> bytes:
        """The response message to one request message. ``fast=False``: the caller
        already tried :meth:`answer_now`."""
        if fast:
            answered = self.answer_now(frame, session)
            if answered is not None:
                return answered
        missed = self._fast_get.missed
        if missed is not None:  # a plain Get of a record not cached: read it off the loop
            self._fast_get.missed = None
            answered = await self._read_through(missed, frame, session)
            if answered is not None:
                return answered
        meter = self.meter
        began = _clock() if meter is not None else 0.0
        if len(frame) > LARGE:  # in steps, once the gate lets it in (pacing.py)
            tenant = session.grant.tenant
            await self.gate.enter(tenant)
            try:
                return await self._generic(frame, session, Turns(), began, large=True)
            finally:
                self.gate.leave(tenant)
        now = int(self.clock())
        if self.fast_create:
            created = await self._fast_create.answer(self.services, session.grant, frame, now)
            if created is not None:
                if meter is not None:
                    meter.done(_CREATE, SUCCESS, _clock() - began)
                return created
        if self.fast_createget:
            both = await self._fast_createget.answer(self.services, session.grant, frame, now)
            if both is not None:  # each item counted as the generic path counts it
                out, stored = both
                if meter is not None:
                    meter.done(_CREATE, SUCCESS, stored - began)
                    meter.done(_GET, SUCCESS, _clock() - stored)
                return out
        return await self._generic(frame, session, Turns(), began)

    async def _read_through(
        self, uid: str, frame: bytes | bytearray | memoryview, session: Session
    ) -> bytes | None:
        """The fast answer once ``uid``'s record is read into the cache; None if
        there is none (the generic path gives the complete answer)."""
        began = _clock()
        try:
            record = await self.services.store.read_through(uid)
        except KryptonError:
            return None  # the generic path reports it
        if record is None:
            return None
        answered = self._answer_fast(frame, session, began)  # the meter counts the read
        self._fast_get.missed = None
        return answered

    async def _generic(
        self,
        frame: bytes | bytearray | memoryview,
        session: Session,
        turns: Turns,
        began: float,
        *,
        large: bool = False,
    ) -> bytes:
        """Decode, run item by item, encode: taking turns with the other connections.
        ``began``: when the message arrived (for the meter, if any)."""
        meter = self.meter
        now = int(self.clock())
        request_id = f"{session.connection_id}.{next(self._ids)}"
        try:
            if large:
                steps = decode_in_steps(bytes(frame), self.limits, _DECODE_STEP)
                message = await turns.run(steps)
            else:
                message = decode(frame, self.limits)
        except KryptonError as exc:
            log.info("request %s: undecodable message: %s", request_id, exc.message)
            if meter is not None:
                meter.done(NO_OPERATION, exc.reason, _clock() - began)
            return encode(error_response(None, now, exc.reason, exc.message))
        try:
            if large:
                request = await turns.run(parse_request_in_steps(message, self.limits))
            else:
                request = parse_request(message, self.limits)
        except KryptonError as exc:
            log.info("request %s: invalid message: %s", request_id, exc.message)
            if meter is not None:
                meter.done(NO_OPERATION, exc.reason, _clock() - began)
            return encode(error_response(peek_version(message), now, exc.reason, exc.message))

        header = request.header
        svc = self.services
        pending: undo.PendingStore | None = None
        if header.continuation is _UNDO and len(request.items) > 1:
            try:
                undo.check_batch(request.items, HANDLERS)
            except KryptonError as exc:
                if meter is not None:
                    meter.done(NO_OPERATION, exc.reason, _clock() - began)
                return encode(error_response(header.version, now, exc.reason, exc.message))
            pending = undo.PendingStore(svc.store)
            svc = replace(svc, store=pending)

        ctx = RequestContext(
            identity=session.identity,
            tenant=session.grant.tenant,
            version=header.version,
            now=now,
            request_id=request_id,
        )
        results: list[ResponseItem] = []
        failed = False
        rng_left = self.max_rng_bytes
        marks = [began]  # when each item began (the first: when the message did)
        for n, item in enumerate(request.items, 1):
            if n > 1 and meter is not None:
                marks.append(_clock())
            await turns.take()  # a long batch takes turns with other connections
            try:
                undo.refuse_private(item)
                if not session.grant.allows(item.operation):
                    self._denied(session, item.operation, request_id)
                    raise PermissionDenied("this client may not run this operation")
                if item.operation == Operation.RNG_RETRIEVE:
                    rng_left -= _data_length(item.payload)
                    if rng_left < 0:
                        raise ResponseTooLarge(
                            f"more than {self.max_rng_bytes} random bytes in one message"
                        )
                journal = pending.token if pending is not None else None
                outcome = await self._run(svc, ctx, item, journal=journal)
            except KryptonError as exc:
                reason = reason_for(header.version, exc.reason, item.operation)
                results.append(
                    ResponseItem.failure(item.operation, item.batch_id, reason, exc.message)
                )
                failed = True
                if header.continuation is not _CONTINUE:
                    break
                continue
            except Exception:
                log.exception("request %s: internal error", request_id)
                results.append(
                    ResponseItem.failure(
                        item.operation,
                        item.batch_id,
                        ResultReason.GENERAL_FAILURE,
                        f"internal error (request {request_id})",
                    )
                )
                failed = True
                if header.continuation is not _CONTINUE:
                    break
                continue
            ctx = ctx.with_placeholder(outcome.uid)
            if outcome.response is not None:
                relayed = ResponseItem.relayed(outcome.response)
                results.append(relayed)
                if relayed.status is not ResultStatus.SUCCESS:
                    failed = True
                    if header.continuation is not _CONTINUE:
                        break
                continue
            results.append(
                ResponseItem(
                    item.operation,
                    item.batch_id,
                    payload=outcome.payload,
                    encoded=outcome.encoded,
                )
            )
        if pending is not None:
            results = await self._end_undo_batch(svc, ctx, pending, results, failed)

        limit = _bound(header.max_response_size, self.max_response_size)
        out = await _encode(header.version, now, results, turns, limit)
        if out is None:
            results = [_too_large(r) for r in results]
            out = await _encode(header.version, now, results, turns)
            assert out is not None
        if meter is not None:
            marks.append(_clock())
            _count(meter, request.items, results, marks)
        return out

    def _denied(self, session: Session, operation: int, request_id: str) -> None:
        name = str(OPERATION_NAMES.get(operation, f"0x{operation:08X}"))
        self.denials.warning(
            "operation_denied", "request %s from %s (%s, tenant %s): %s denied by the policy",
            request_id, session.peer, session.identity, session.grant.tenant, name,
            peer=session.peer, identity=session.identity, tenant=session.grant.tenant,
            operation=name,
        )

    async def _end_undo_batch(
        self,
        svc: Services,
        ctx: RequestContext,
        pending: undo.PendingStore,
        results: list[ResponseItem],
        failed: bool,
    ) -> list[ResponseItem]:
        """Keep what an Undo batch did, or undo it (krypton.engine.undo)."""
        journaled = any(r.raw is not None for r in results)
        if not failed:
            try:
                await pending.commit()
            except KryptonError as exc:  # the keys made were not stored: undo the rest
                log.warning("request %s: %s", ctx.request_id, exc.message)
                failed = True
        if not failed:
            if svc.upstream is not None:
                svc.upstream.created()
                if journaled:
                    await self._private(svc, ctx, FORGET, pending.token)
            return results
        pending.records.clear()  # the Creates kept back: undone
        why = await self._private(svc, ctx, UNDO, pending.token) if journaled else None
        if why is not None:  # what the Core did stands: say so, item by item
            log.warning("request %s: Undo failed: %s", ctx.request_id, why)
        return [undo.ended(r, why) for r in results]

    async def _private(
        self, svc: Services, ctx: RequestContext, operation: int, token: str
    ) -> str | None:
        """None if the Core did ``operation`` for the batch ``token``, else why not."""
        assert svc.upstream is not None
        try:
            response, _ = await svc.upstream.execute(ctx, private_item(operation, token))
        except KryptonError as exc:
            log.warning("request %s: the Core did not take %08X: %s", ctx.request_id,
                        operation, exc.message)  # fmt: skip
            return exc.message
        return undo.failure_of(response)

    async def _run(
        self, svc: Services, ctx: RequestContext, item: RequestItem, *, journal: str | None = None
    ) -> Outcome:
        """Locally when a handler can, else at the Core, else Operation Not Supported.
        ``journal``: the item belongs to the Undo batch with this journal token, the
        Core keeps what it changes."""
        handler = HANDLERS.get(item.operation)
        if handler is not None:
            try:
                return await handler(svc, ctx, item.payload)
            except NotLocal as not_local:
                if svc.upstream is None:
                    raise not_local.fallback from None
        elif svc.upstream is None:
            raise OperationNotSupported(
                f"operation {OPERATION_NAMES.get(item.operation, item.operation)} "
                "is not supported here"
            )
        raw = marked(item.raw, journal) if journal else item.raw
        response, placeholder = await svc.upstream.execute(ctx, raw)
        return Outcome(None, placeholder, response=response)


_clock = time.perf_counter
_GET = int(Operation.GET)
_CREATE = int(Operation.CREATE)
_SUCCESS = ResultStatus.SUCCESS
_UNDONE = ResultStatus.OPERATION_UNDONE


def _count(meter: KmipMeter, items: Sequence[RequestItem], results: Sequence[ResponseItem],
           marks: Sequence[float]) -> None:
    """Each answered item by its operation and result, with its time: a
    one-item message's from its arrival to its answer; in a batch, each item's
    own turn (the first's includes decoding, the last's encoding)."""
    for n, r in enumerate(results):
        if r.status is _SUCCESS:
            result = SUCCESS
        elif r.status is _UNDONE:
            result = UNDONE
        else:
            result = FAILED if r.reason is None else int(r.reason)
            if r.reason is None and r.raw is not None:
                found = r.raw.find(Tag.RESULT_REASON)
                if found is not None and isinstance(found.value, int):
                    result = found.value
        meter.done(int(items[n].operation), result, marks[n + 1] - marks[n])
async def _encode(
    version: ProtocolVersion,
    now: int,
    results: list[ResponseItem],
    turns: Turns,
    limit: int | None = None,
) -> bytes | None:
    """The response message, taking turns between items; None as soon as it
    outgrows ``limit``."""
    out = begin_response(version, now, len(results))
    for r in results:
        encode_item(r, out)
        if limit is not None and len(out) > limit:
            return None
        await turns.take()
    return end_response(out)


def _data_length(payload: Item | None) -> int:
    """An RNG Retrieve's Data Length when it is a sane Integer (else 0: the handler
    refuses it)."""
    n = payload.find(Tag.DATA_LENGTH) if payload is not None else None
    value = n.value if n is not None else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _too_large(r: ResponseItem) -> ResponseItem:
    if r.status is not ResultStatus.SUCCESS:
        return r
    if r.raw is not None:
        op = r.raw.find(Tag.OPERATION)
        bid = r.raw.find(Tag.UNIQUE_BATCH_ITEM_ID)
        r = ResponseItem(
            op.value if op is not None and isinstance(op.value, int) else None,
            bid.value if bid is not None and isinstance(bid.value, bytes) else None,
        )
    return replace(
        r,
        status=ResultStatus.OPERATION_FAILED,
        reason=ResultReason.RESPONSE_TOO_LARGE,
        message="the response exceeds the Maximum Response Size",
        payload=None,
        encoded=None,
    )
