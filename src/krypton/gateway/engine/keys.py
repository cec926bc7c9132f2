"""The hot path: Create and Get of symmetric (L4) keys at the gateway.

Create: check the attributes the client sends against the one table of what a
client may set (:mod:`krypton.engine.attr_rules`) → draw the key from the kernel
CSPRNG → wrap it under the tenant's active L3 → store the wrapped record →
answer only once the vault says the record is durable. Get: look up the
wrapped record (the vault caches records in memory, never plaintext) →
unwrap with the L3 version named in the record → answer in the requested
key format. The plaintext exists only in a ``SecretBytes`` (wiped after the
response item is built) and in the response bytes.
"""

from __future__ import annotations

from krypton.engine import keyformat, server_attrs
from krypton.engine.attr_rules import RULES, check_single, check_type
from krypton.engine.object_errors import NotExtractable, ObjectDestroyed, SensitiveObject
from krypton.engine.objects import Outcome, payload_fields, request_uid, stored_attributes
from krypton.engine.symmetric import check_quantum_safe, generate, key_bytes
from krypton.errors import (
    FeatureNotSupported,
    InvalidField,
    KeyFormatTypeNotSupported,
    MissingField,
)
from krypton.gateway.engine import wrapping
from krypton.gateway.engine.rawkey import plain_symmetric, raw_key_layout
from krypton.gateway.engine.services import NotLocal, Services, load_through
from krypton.kmip.attributes import (
    Attribute,
    attributes_v2,
    parse_attributes,
    parse_template_attribute,
)
from krypton.model.context import RequestContext
from krypton.model.record import DESTROYED_STATES, KeyRecord
from krypton.ttlv import writer as w
from krypton.ttlv.codec import decode, encode
from krypton.ttlv.enums import KeyFormatType, ObjectType, State
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag

_S = ItemType.STRUCTURE


# Read from the request into the record's own columns, not stored as attributes.
_COLUMNS = frozenset(("Cryptographic Algorithm", "Cryptographic Length"))


def check_client_attributes(attrs: list[Attribute]) -> list[Attribute]:
    """Check types and multiplicity against :data:`~krypton.engine.attr_rules.RULES`
    (the Core's Register checks the same table, with the same reasons); number
    multi-valued instances. What a gateway Create cannot set is Invalid Field."""
    seen: dict[str, int] = {}
    out: list[Attribute] = []
    for a in attrs:
        count = seen.get(a.name, 0)
        if not a.custom:
            rule = RULES.get(a.name)
            if rule is None or not rule.at_gateway:
                raise InvalidField(f"attribute {a.name!r} cannot be set by a client")
            check_type(a, rule)
            check_single(a, rule, count)
        out.append(Attribute(a.name, a.value, count))
        seen[a.name] = count + 1
    return out


def request_attributes(f: dict[int, Item]) -> list[Attribute]:
    """Either dialect, whatever the version: 1.x Template-Attribute, 2.x Attributes."""
    attrs: list[Attribute] = []
    tmpl = f.get(Tag.TEMPLATE_ATTRIBUTE)
    if tmpl is not None:
        attrs.extend(parse_template_attribute(tmpl))
    a2 = f.get(Tag.ATTRIBUTES)
    if a2 is not None:
        attrs.extend(parse_attributes(a2))
    return attrs


def _value(attrs: list[Attribute], name: str) -> int | None:
    for a in attrs:
        if a.name == name and isinstance(a.value.value, int):
            return int(a.value.value)
    return None


async def create(svc: Services, ctx: RequestContext, payload: Item | None) -> Outcome:
    f = payload_fields(payload, "Create")
    ot = f.get(Tag.OBJECT_TYPE)
    if ot is None:
        raise MissingField("Create: Object Type is missing")
    if ot.value != ObjectType.SYMMETRIC_KEY:
        raise NotLocal(InvalidField("Create: this server creates symmetric keys only"))
    attrs = check_client_attributes(request_attributes(f))
    alg = _value(attrs, "Cryptographic Algorithm")
    if alg is None:
        raise MissingField("Create: Cryptographic Algorithm is required")
    length = _value(attrs, "Cryptographic Length")
    if length is None:
        raise MissingField("Create: Cryptographic Length is required")
    key_bytes(alg, length, "Create")
    if server_attrs.flag(attrs, "Quantum Safe"):
        check_quantum_safe(alg, length, "Create")
    activation = _value(attrs, "Activation Date")
    state = State.ACTIVE if activation is not None and activation <= ctx.now else State.PRE_ACTIVE

    stored = [a for a in attrs if a.name not in _COLUMNS]
    uid = svc.new_uid()
    key = generate(alg, length, "Create")
    try:
        made = [server_attrs.digest(key.view(), KeyFormatType.RAW)]
        l3_version, blob = svc.keyring.wrap(ctx.tenant, uid, key)
    finally:
        key.wipe()
    stored += server_attrs.implied(
        stored, ObjectType.SYMMETRIC_KEY, ctx.now, generated=True, digests=made
    )
    stored.append(Attribute("Last Change Date", Item.datetime(Tag.LAST_CHANGE_DATE, ctx.now)))
    record = KeyRecord(
        uid=uid,
        tenant=ctx.tenant,
        object_type=ObjectType.SYMMETRIC_KEY,
        algorithm=alg,
        length=length,
        state=state,
        l3_version=l3_version,
        wrapped=blob,
        attributes=encode(attributes_v2(stored)),
        created=ctx.now,
    )
    await svc.store.put(record)
    if svc.upstream is not None:
        svc.upstream.created()
    return Outcome(
        Item.structure(
            Tag.RESPONSE_PAYLOAD,
            Item.enum(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY),
            Item.text(Tag.UNIQUE_IDENTIFIER, uid),
        ),
        uid,
    )


_FORMATS = frozenset((KeyFormatType.RAW, KeyFormatType.TRANSPARENT_SYMMETRIC_KEY))


def _served_format(rec: KeyRecord, *, wrapped: bool = False) -> int | None:
    """Refuse a Get the object's Sensitive / Extractable forbid (KMIP 1.4 §3.48: a
    Sensitive object only wrapped; §3.50); return the Key Format Type it was made or
    registered in (None: the type's default)."""
    if rec.object_type == ObjectType.SYMMETRIC_KEY and plain_symmetric(rec):
        return None
    stored = stored_attributes(rec)
    if server_attrs.flag(stored, "Sensitive") and not wrapped:
        raise SensitiveObject(f"Get: object {rec.uid!r} is Sensitive and cannot be exported")
    if server_attrs.flag(stored, "Extractable") is False:
        raise NotExtractable(f"Get: object {rec.uid!r} is not Extractable")
    fmt = next((a.value.value for a in stored if a.name == "Key Format Type"), None)
    return fmt if isinstance(fmt, int) else None


async def get(svc: Services, ctx: RequestContext, payload: Item | None) -> Outcome:
    f = payload_fields(payload, "Get")
    uid = request_uid(f, ctx)
    assert uid is not None
    spec_item = f.get(Tag.KEY_WRAPPING_SPECIFICATION)
    spec = wrapping.read_spec(spec_item) if spec_item is not None else None
    if Tag.KEY_COMPRESSION_TYPE in f:
        raise KeyFormatTypeNotSupported("Get: key compression does not apply to these objects")
    fmt_item = f.get(Tag.KEY_FORMAT_TYPE)
    rec = await load_through(svc, ctx, uid)
    if rec.state in DESTROYED_STATES or not rec.wrapped:
        raise ObjectDestroyed(f"object {uid!r} has been destroyed")
    kept_as = _served_format(rec, wrapped=spec is not None)
    if rec.object_type == ObjectType.SYMMETRIC_KEY:
        fmt = (kept_as or KeyFormatType.RAW) if fmt_item is None else fmt_item.value
        if not isinstance(fmt, int) or fmt not in _FORMATS:
            raise KeyFormatTypeNotSupported(
                "Get: symmetric keys are served as Raw or Transparent Symmetric Key"
            )
        if spec is not None:
            wrapper = await wrapping.wrapping_key(svc, ctx, spec)
            wrapping.check_may_wrap(rec, wrapper)
            return Outcome(
                Item.structure(
                    Tag.RESPONSE_PAYLOAD,
                    Item.enum(Tag.OBJECT_TYPE, rec.object_type),
                    Item.text(Tag.UNIQUE_IDENTIFIER, rec.uid),
                    wrapping.wrapped_object(svc, rec, fmt, spec, wrapper),
                )
            )
        return Outcome(None, encoded=_symmetric_payload(svc, rec, fmt))
    if spec is not None:
        raise FeatureNotSupported("Get: only symmetric keys are served wrapped")
    # Objects registered at the Core (Secret Data, Opaque Object, keys of a pair,
    # certificates) are sealed as the TTLV encoding of the whole object structure.
    secret = svc.keyring.unwrap(rec.tenant, rec.uid, rec.l3_version, rec.wrapped)
    try:
        obj = decode(secret.view())
    finally:
        secret.wipe()
    if fmt_item is not None and rec.object_type in keyformat.ASYMMETRIC:
        if not isinstance(fmt_item.value, int):
            raise InvalidField("Get: Key Format Type must be an Enumeration")
        obj = keyformat.reformat(obj, rec.object_type, fmt_item.value)
    return Outcome(
        Item.structure(
            Tag.RESPONSE_PAYLOAD,
            Item.enum(Tag.OBJECT_TYPE, rec.object_type),
            Item.text(Tag.UNIQUE_IDENTIFIER, rec.uid),
            obj,
        )
    )


def _symmetric_payload(svc: Services, rec: KeyRecord, fmt: int) -> bytes:
    """The Get response payload of a symmetric key, written directly (hot path).

    The plaintext goes from the unwrapped buffer into the payload buffer, and
    both are overwritten once the payload bytes exist.
    """
    if fmt == KeyFormatType.RAW:
        return _raw_payload(svc, rec)
    out = bytearray()
    payload = w.begin(out, Tag.RESPONSE_PAYLOAD)
    w.enum(out, Tag.OBJECT_TYPE, rec.object_type)
    w.text(out, Tag.UNIQUE_IDENTIFIER, rec.uid)
    obj = w.begin(out, Tag.SYMMETRIC_KEY)
    block = w.begin(out, Tag.KEY_BLOCK)
    w.enum(out, Tag.KEY_FORMAT_TYPE, fmt)
    value = w.begin(out, Tag.KEY_VALUE)
    secret = svc.keyring.unwrap(rec.tenant, rec.uid, rec.l3_version, rec.wrapped)
    try:
        if fmt == KeyFormatType.RAW:
            w.byte_string(out, Tag.KEY_MATERIAL, secret.view())
        else:
            material = w.begin(out, Tag.KEY_MATERIAL)
            w.byte_string(out, Tag.KEY, secret.view())
            w.end(out, material)
    finally:
        secret.wipe()
    w.end(out, value)
    w.enum(out, Tag.CRYPTOGRAPHIC_ALGORITHM, rec.algorithm)
    w.integer(out, Tag.CRYPTOGRAPHIC_LENGTH, rec.length)
    w.end(out, block)
    w.end(out, obj)
    w.end(out, payload)
    try:
        return bytes(out)
    finally:
        out[:] = bytes(len(out))


def _raw_payload(svc: Services, rec: KeyRecord) -> bytes:
    uid = rec.uid.encode("utf-8")
    secret = svc.keyring.unwrap(rec.tenant, rec.uid, rec.l3_version, rec.wrapped)
    try:
        layout = raw_key_layout(len(uid), len(secret))
        out = layout.write(uid, rec)
        out[layout.key_at : layout.key_at + layout.key_len] = secret.view()
    finally:
        secret.wipe()
    try:
        return bytes(out)
    finally:
        out[:] = bytes(len(out))
