"""Encrypt, Decrypt and RNG Retrieve at the gateway: the key never leaves it.

How this works
--------------
``encrypt`` / ``decrypt`` read the request (KMIP 1.4 §4.29-4.30, 2.1 §6.1.17,
§6.1.12), load the key record the way ``Get`` does (vault, else the Core),
check that this key may do this now, unwrap it, run the cipher and wipe the
unwrapped buffer before answering:

* **who may** (:mod:`krypton.engine.usable`, the check the Core's usage
  allocation and key wrapping make too): a Symmetric Key of the caller's
  tenant, Active (an Activation or Deactivation Date already reached counts),
  whose Cryptographic Usage
  Mask has Encrypt / Decrypt (or Unrestricted; a key without a mask is not
  restricted), before its Protect Stop Date (Encrypt) and after its Process
  Start Date (Decrypt). The answer is the 2.x reason; a 1.x client gets
  Permission Denied, as KMIP 1.4 §11.30 prescribes;
* **how**: the Cryptographic Parameters of the request, field by field over
  the key's own Cryptographic Parameters attribute (the lowest index), pick a
  scheme (AES ECB/CBC/CTR/GCM, ChaCha20, ChaCha20-Poly1305; see
  :mod:`krypton.engine.ciphers`). Encrypt draws an IV/Counter/Nonce from
  ``os.urandom`` when the client sends none and returns it; Decrypt needs it;
* **streams** (Init Indicator / Correlation Value / Final Indicator): the
  cipher context is kept in the gateway's ``Services.streams``, under a
  random Correlation Value bound to the tenant, key and operation, for at
  most ``ciphers.STREAM_SECONDS``. Multi-part Decrypt of an authenticated
  mode is refused: it would hand out plaintext before the tag is checked;
* **Usage Limits** are the Core's to count: an Encrypt with a key that has
  them first asks the Core for a ``Get Usage Allocation`` (the Core handler
  is :mod:`krypton.core.engine.allocation`), and fails closed when it cannot.

Error reasons follow the OASIS CS-BC test cases where they say something
(missing IV: Invalid Message; bad tag: Cryptographic Failure; bad tag length:
General Failure; dates: Permission Denied, Wrong Key Lifecycle State in 2.1).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from krypton.engine.ciphers import (
    BadParameters,
    InvalidCorrelation,
    Params,
    Scheme,
    pads,
    read_params,
    scheme_for,
    start,
    whole,
)
from krypton.engine.object_errors import InvalidObjectType
from krypton.engine.objects import (
    Outcome,
    first,
    int_of,
    payload_fields,
    request_uid,
    stored_attributes,
)
from krypton.engine.usable import Use, check_usable
from krypton.errors import (
    CryptographicFailure,
    FeatureNotSupported,
    GeneralFailure,
    InvalidField,
    InvalidMessage,
    PermissionDenied,
)
from krypton.gateway.engine.services import Services, load_through
from krypton.kmip.attributes import Attribute
from krypton.model.context import RequestContext
from krypton.model.record import KeyRecord
from krypton.ttlv import writer as w
from krypton.ttlv.enums import (
    CryptographicUsageMask,
    ObjectType,
    Operation,
    ResultStatus,
    UsageLimitsUnit,
)
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag

MAX_RNG_LENGTH = 64 * 1024  # bytes one RNG Retrieve may ask for


# -- the request ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Op:
    name: str
    operation: Operation
    use: Use
    decrypting: bool


_ENCRYPT = _Op(
    "Encrypt", Operation.ENCRYPT, Use("Encrypt", CryptographicUsageMask.ENCRYPT, protects=True),
    False,
)  # fmt: skip
_DECRYPT = _Op(
    "Decrypt", Operation.DECRYPT, Use("Decrypt", CryptographicUsageMask.DECRYPT, processes=True),
    True,
)  # fmt: skip


@dataclass(frozen=True, slots=True, repr=False)
class CryptoRequest:
    data: bytes | None
    iv: bytes | None
    aad: bytes | None
    tag: bytes | None
    correlation: bytes | None
    init: bool
    final: bool


def _bytes(f: dict[int, Item], tag: int, what: str) -> bytes | None:
    item = f.get(tag)
    if item is None:
        return None
    if item.type is not ItemType.BYTE_STRING or not isinstance(item.value, bytes):
        raise InvalidMessage(f"{what} must be a Byte String")
    return item.value


def _flag(f: dict[int, Item], tag: int, what: str) -> bool:
    item = f.get(tag)
    if item is None:
        return False
    if item.type is not ItemType.BOOLEAN or not isinstance(item.value, bool):
        raise InvalidMessage(f"{what} must be a Boolean")
    return item.value


def _read_request(f: dict[int, Item], op: _Op) -> CryptoRequest:
    req = CryptoRequest(
        data=_bytes(f, Tag.DATA, "Data"),
        iv=_bytes(f, Tag.IV_COUNTER_NONCE, "IV/Counter/Nonce"),
        aad=_bytes(f, Tag.AUTHENTICATED_ENCRYPTION_ADDITIONAL_DATA, "Additional Data"),
        tag=_bytes(f, Tag.AUTHENTICATED_ENCRYPTION_TAG, "Authenticated Encryption Tag"),
        correlation=_bytes(f, Tag.CORRELATION_VALUE, "Correlation Value"),
        init=_flag(f, Tag.INIT_INDICATOR, "Init Indicator"),
        final=_flag(f, Tag.FINAL_INDICATOR, "Final Indicator"),
    )
    if req.correlation is not None and req.init:
        raise InvalidField(f"{op.name}: Init Indicator starts a stream, without Correlation Value")
    if req.correlation is None and req.final and not req.init:
        raise InvalidField(f"{op.name}: Final Indicator needs the stream's Correlation Value")
    if req.data is None and not (req.init or req.correlation is not None):
        raise InvalidMessage(f"{op.name}: Data is required")
    return req


# -- may this key do this now -----------------------------------------------------------
def _check_key(ctx: RequestContext, rec: KeyRecord, stored: list[Attribute], op: _Op) -> None:
    if rec.object_type in (ObjectType.PUBLIC_KEY, ObjectType.PRIVATE_KEY):
        raise FeatureNotSupported(f"{op.name}: this server encrypts with symmetric keys only")
    if rec.object_type != ObjectType.SYMMETRIC_KEY:
        raise InvalidObjectType(f"{op.name}: object {rec.uid!r} is not a key")
    check_usable(op.use, rec.uid, rec.state, stored, ctx.now, has_material=bool(rec.wrapped))


def _allocation_item(uid: str, units: int) -> Item:
    return Item.structure(
        Tag.BATCH_ITEM,
        Item.enum(Tag.OPERATION, Operation.GET_USAGE_ALLOCATION),
        Item.structure(
            Tag.REQUEST_PAYLOAD,
            Item.text(Tag.UNIQUE_IDENTIFIER, uid),
            Item(Tag.USAGE_LIMITS_COUNT, ItemType.LONG_INTEGER, units),
        ),
    )


async def allocate(
    svc: Services, ctx: RequestContext, rec: KeyRecord, stored: list[Attribute], n_bytes: int,
    *, first_part: bool,
) -> None:  # fmt: skip
    """Obtain a usage allocation from the Core when the key has Usage Limits."""
    limits = first(stored, "Usage Limits")
    if limits is None:
        return
    by_object = int_of(limits.find(Tag.USAGE_LIMITS_UNIT)) == UsageLimitsUnit.OBJECT
    units = (1 if first_part else 0) if by_object else n_bytes
    if units == 0:
        return
    if svc.upstream is None:
        raise PermissionDenied("Encrypt: the key has Usage Limits and no Krypton Core counts them")
    answer, _ = await svc.upstream.execute(ctx, _allocation_item(rec.uid, units))
    status = answer.find(Tag.RESULT_STATUS)
    if status is None or status.value != ResultStatus.SUCCESS:
        said = answer.find(Tag.RESULT_MESSAGE)
        detail = f": {said.value}" if said is not None and isinstance(said.value, str) else ""
        raise PermissionDenied(f"Encrypt: no usage allocation for key {rec.uid!r}{detail}")


# -- handlers ---------------------------------------------------------------------------
def _answer(
    uid: str, data: bytes, *, iv: bytes | None = None, correlation: bytes | None = None,
    tag: bytes | None = None,
) -> Outcome:  # fmt: skip
    out = bytearray()
    payload = w.begin(out, Tag.RESPONSE_PAYLOAD)
    w.text(out, Tag.UNIQUE_IDENTIFIER, uid)
    w.byte_string(out, Tag.DATA, data)
    if iv is not None:
        w.byte_string(out, Tag.IV_COUNTER_NONCE, iv)
    if correlation is not None:
        w.byte_string(out, Tag.CORRELATION_VALUE, correlation)
    if tag is not None:
        w.byte_string(out, Tag.AUTHENTICATED_ENCRYPTION_TAG, tag)
    w.end(out, payload)
    try:
        return Outcome(None, encoded=bytes(out))
    finally:
        out[:] = bytes(len(out))  # the payload may be plaintext (a decrypted key)


def _iv(scheme: Scheme, params: Params, request: CryptoRequest, op: _Op) -> tuple[bytes, bool]:
    """(IV/Counter/Nonce, whether this server drew it)."""
    given = request.iv
    if not scheme.ivs:
        if given is not None:
            raise BadParameters(f"{scheme.name} takes no IV/Counter/Nonce")
        return b"", False
    if given is None:
        if op.decrypting:
            raise InvalidMessage("Decrypt: the IV/Counter/Nonce is missing (missing-iv)")
        length = params.iv_length // 8 if params.iv_length else scheme.default_iv
        if length not in scheme.ivs or (params.iv_length or 0) % 8:
            raise BadParameters(f"{scheme.name}: cannot make an IV of {params.iv_length} bits")
        return os.urandom(length), True
    if len(given) not in scheme.ivs:
        raise BadParameters(f"{scheme.name}: an IV/Counter/Nonce of {len(given)} bytes")
    if params.iv_length is not None and params.iv_length != len(given) * 8:
        raise BadParameters(f"{scheme.name}: IV Length does not match the IV/Counter/Nonce")
    return given, False


def _tag_length(scheme: Scheme, params: Params, request: CryptoRequest, op: _Op) -> int:
    if not scheme.aead:
        if request.tag is not None or request.aad is not None:
            raise BadParameters(f"{scheme.name} is not an authenticated mode")
        return 0
    if op.decrypting:  # single-part: multi-part authenticated Decrypt is refused
        if request.tag is None:
            raise InvalidMessage("Decrypt: the Authenticated Encryption Tag is missing")
        if params.tag_length is not None and params.tag_length != len(request.tag):
            raise BadParameters("Decrypt: Tag Length does not match the tag")
        length = len(request.tag)
    else:
        length = 16 if params.tag_length is None else params.tag_length
    if length not in scheme.tags:
        raise GeneralFailure(f"{scheme.name}: invalid tag length {length}")
    return length


async def _crypt(svc: Services, ctx: RequestContext, payload: Item | None, op: _Op) -> Outcome:
    f = payload_fields(payload, op.name)
    request = _read_request(f, op)
    if request.correlation is not None:
        return await _continue(svc, ctx, f, request, op)
    uid = request_uid(f, ctx)
    assert uid is not None
    rec = await load_through(svc, ctx, uid)
    stored = stored_attributes(rec)
    _check_key(ctx, rec, stored, op)
    own = read_params(first(stored, "Cryptographic Parameters"), Params())
    params = read_params(f.get(Tag.CRYPTOGRAPHIC_PARAMETERS), own)
    scheme = scheme_for(rec.algorithm, params)
    streaming = request.init and not request.final
    if streaming and (scheme.build is None or (op.decrypting and scheme.aead)):
        raise FeatureNotSupported(
            f"{op.name}: multi-part {scheme.name} is not supported"
            + (" (no plaintext before the tag is checked)" if op.decrypting else "")
        )
    pad = pads(scheme, params)
    iv, drawn = _iv(scheme, params, request, op)
    tag_length = _tag_length(scheme, params, request, op)
    size = len(request.data or b"")
    whole_blocks = not scheme.block or pad or streaming or size % scheme.block_bytes == 0
    if not whole_blocks and not op.decrypting:  # refused before any usage is allocated
        raise BadParameters(f"{scheme.name}: without padding the data must be whole blocks")
    if not op.decrypting:
        await allocate(svc, ctx, rec, stored, len(request.data or b""), first_part=True)
    key = svc.keyring.unwrap(rec.tenant, rec.uid, rec.l3_version, rec.wrapped)
    try:
        material = scheme.expand(iv, params)
        if streaming:
            work = start(
                scheme, key.view(), material, request.tag, request.aad,
                pad=pad, decrypting=op.decrypting, tag_length=tag_length,
            )  # fmt: skip
        else:
            data, tag = whole(
                scheme, key.view(), material, request.data or b"", aad=request.aad,
                tag=request.tag, pad=pad, decrypting=op.decrypting, tag_length=tag_length,
            )  # fmt: skip
    except ValueError as exc:  # e.g. a key length the cipher does not take
        raise CryptographicFailure(f"{op.name}: {scheme.name} failed: {exc}") from None
    finally:
        key.wipe()
    shown = iv if drawn else None
    if streaming:
        head = work.update(request.data or b"")
        value = svc.streams.open(ctx.tenant, rec.uid, op.operation, work, ctx.identity)
        return _answer(rec.uid, head, iv=shown, correlation=value)
    return _answer(rec.uid, data, iv=shown, tag=tag)


async def _continue(
    svc: Services, ctx: RequestContext, f: dict[int, Item], request: CryptoRequest, op: _Op
) -> Outcome:
    assert request.correlation is not None
    stream = svc.streams.take(ctx.tenant, request.correlation, op.operation)
    uid = request_uid(f, ctx, required=False) or stream.uid
    if uid != stream.uid:
        raise InvalidCorrelation("this Correlation Value belongs to another key's stream")
    rec = await load_through(svc, ctx, uid)
    stored = stored_attributes(rec)
    _check_key(ctx, rec, stored, op)
    data = request.data or b""
    if not op.decrypting:
        await allocate(svc, ctx, rec, stored, len(data), first_part=False)
    head = stream.work.update(data)
    if not request.final:
        svc.streams.put_back(request.correlation, stream)
        return _answer(uid, head, correlation=request.correlation)
    tail, tag = stream.work.finish()
    return _answer(uid, head + tail, tag=tag)


async def encrypt(svc: Services, ctx: RequestContext, payload: Item | None) -> Outcome:
    return await _crypt(svc, ctx, payload, _ENCRYPT)


async def decrypt(svc: Services, ctx: RequestContext, payload: Item | None) -> Outcome:
    return await _crypt(svc, ctx, payload, _DECRYPT)


async def rng_retrieve(svc: Services, ctx: RequestContext, payload: Item | None) -> Outcome:
    f = payload_fields(payload, "RNG Retrieve")
    item = f.get(Tag.DATA_LENGTH)
    if item is None:
        raise InvalidMessage("RNG Retrieve: Data Length is required")
    n = item.value
    if item.type is not ItemType.INTEGER or isinstance(n, bool) or not isinstance(n, int):
        raise InvalidMessage("RNG Retrieve: Data Length must be an Integer")
    if not 1 <= n <= MAX_RNG_LENGTH:
        raise InvalidField(f"RNG Retrieve: Data Length must be 1 to {MAX_RNG_LENGTH} bytes")
    try:
        data = os.urandom(n)
    except OSError as exc:
        raise CryptographicFailure("RNG Retrieve: the kernel CSPRNG failed") from exc
    return Outcome(Item.structure(Tag.RESPONSE_PAYLOAD, Item.bytes_(Tag.DATA, data)))


# -- Get Usage Allocation (the Core: the one authoritative counter) ----------------------
