"""Register and Re-key at the Core: new objects whose material is sealed before it is stored.

How this works
--------------
Register reads the object the client sends (Symmetric Key in Raw or
Transparent Symmetric Key format, Secret Data, Opaque Object), checks the
client's attributes against :data:`~krypton.engine.attr_rules.RULES`,
seals the material with the tenant's L3 (:class:`~krypton.model.ports.Sealer`)
and stores only the sealed blob. What is sealed depends on the type:

* Symmetric Key: the raw key bytes, exactly as a gateway wraps the L4s it
  makes (so a gateway's ``Get`` serves a Core-registered key the same way),
  with algorithm and length in the record's columns;
* Secret Data, Opaque Object: the TTLV encoding of the whole object
  structure (Secret Data Type or Opaque Data Type included), so that
  :func:`open_object` can give it back exactly as registered.

Re-key makes a fresh key of the same algorithm and length, copies the old
key's attributes (dates moved by the Offset if one is given; names move to
the new key), and links the two (Replacement / Replaced Object).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from krypton.core.engine.objects import (
    CoreServices,
    check_names_free,
    load,
    mutate,
    name_value,
    rebuild,
    uid_payload,
)
from krypton.crypto.secret import SecretBytes
from krypton.engine import server_attrs
from krypton.engine.attr_rules import check_single, check_type, rule_for
from krypton.engine.certificates import certificate_attributes
from krypton.engine.object_errors import (
    InvalidObjectType,
    KeyValueNotPresent,
    ObjectDestroyed,
)
from krypton.engine.objects import (
    Outcome,
    date_attr,
    date_driven_state,
    first,
    int_of,
    payload_fields,
    request_uid,
    stored_attributes,
    without,
)
from krypton.engine.symmetric import fits, generate
from krypton.errors import (
    FeatureNotSupported,
    IllegalOperation,
    InvalidField,
    InvalidMessage,
    KeyFormatTypeNotSupported,
    MissingField,
)
from krypton.kmip.attributes import Attribute, parse_v1, parse_v2
from krypton.kmip.messages import fields
from krypton.model.context import RequestContext
from krypton.model.record import DESTROYED_STATES
from krypton.model.registry import ObjectRecord
from krypton.ttlv.codec import decode, encode_into
from krypton.ttlv.enums import KeyFormatType, LinkType, ObjectType, State
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import SPEC_NAME_BY_TAG, TAG_BY_SPEC_NAME, Tag

_S = ItemType.STRUCTURE
_COLUMNS = ("Cryptographic Algorithm", "Cryptographic Length")
_SYMMETRIC_FORMATS = frozenset((KeyFormatType.RAW, KeyFormatType.TRANSPARENT_SYMMETRIC_KEY))
_SECRET_FORMATS = frozenset((KeyFormatType.RAW, KeyFormatType.OPAQUE))


@dataclass(frozen=True, slots=True, repr=False)
class Material:
    """What a Register request carries, ready to seal (``plaintext`` is wiped after)."""

    plaintext: SecretBytes
    algorithm: int | None = None
    length: int | None = None
    derived: tuple[Attribute, ...] = ()  # what the server reads off the object itself


def _known(child: Item) -> bool:
    """Whether this server can name the attribute; one it cannot is from a later
    version (the spec: same major version, unknown fields are ignored)."""
    if child.tag != Tag.ATTRIBUTE:
        return child.tag in SPEC_NAME_BY_TAG
    found = child.find(Tag.ATTRIBUTE_NAME)
    text = found.value if found is not None and isinstance(found.value, str) else ""
    if child.find(Tag.VENDOR_IDENTIFICATION) is not None or text in TAG_BY_SPEC_NAME:
        return True
    vendor, dash, rest = text.partition("-")
    return bool(vendor and dash and rest)


def request_attributes(f: dict[int, Item]) -> list[Attribute]:
    """The attributes of a Register / Re-key request, 1.x Template-Attribute or 2.x
    Attributes (whatever the version), without the ones this server cannot name."""
    out: list[Attribute] = []
    for tag, parse in ((Tag.TEMPLATE_ATTRIBUTE, parse_v1), (Tag.ATTRIBUTES, parse_v2)):
        container = f.get(tag)
        if container is None:
            continue
        if container.type is not _S:
            raise InvalidMessage("the attributes of the request must be a structure")
        for child in container.children:
            if tag == Tag.TEMPLATE_ATTRIBUTE and child.tag == Tag.NAME:
                raise InvalidField("templates are not supported: reference by Name is not allowed")
            if _known(child):
                out.append(parse(child))
    return out


def creation_attributes(attrs: list[Attribute], object_type: int) -> list[Attribute]:
    """The client's attributes for a new object, checked; ignored: the ones this
    server does not manage (a later minor version's, say)."""
    counts: dict[str, int] = {}
    out: list[Attribute] = []
    for a in attrs:
        if a.name == "Object Type":
            if int_of(a.value) != object_type:
                raise InvalidField("the Object Type attribute contradicts the request's")
            continue
        if a.name in RESTATED:  # checked against the object by its reader
            continue
        rule = rule_for(a.name)
        if rule is None:
            continue
        check_type(a, rule)
        check_single(a, rule, counts.get(a.name, 0))
        counts[a.name] = counts.get(a.name, 0) + 1
        out.append(a)
    return out


def _sealable(item: Item) -> SecretBytes:
    buf = bytearray()
    encode_into(item, buf)
    return SecretBytes.adopt(buf)


def _key_block(obj: Item, what: str) -> tuple[int, Item]:
    """(Key Format Type, Key Value) of an unwrapped key block."""
    block = obj.find(Tag.KEY_BLOCK)
    if block is None or block.type is not _S:
        raise InvalidField(f"Register: {what} has no Key Block")
    f = fields(block, "Key Block")
    if Tag.KEY_WRAPPING_DATA in f:
        raise FeatureNotSupported("Register: wrapped key material is not supported")
    if Tag.KEY_COMPRESSION_TYPE in f:
        raise KeyFormatTypeNotSupported("Register: key compression is not supported")
    fmt = int_of(f.get(Tag.KEY_FORMAT_TYPE))
    value = f.get(Tag.KEY_VALUE)
    if fmt is None or value is None or value.type is not _S:
        raise InvalidField(f"Register: the {what} Key Block lacks a Key Format Type or Key Value")
    return fmt, block


def _column(block: Item, attrs: list[Attribute], tag: int, name: str) -> int | None:
    """A value given in the key block and/or as an attribute (they must agree)."""
    in_block = int_of(block.find(tag))
    in_attrs = int_of(first(attrs, name))
    if in_block is not None and in_attrs is not None and in_block != in_attrs:
        raise InvalidField(f"Register: {name} differs between the Key Block and the attributes")
    return in_block if in_block is not None else in_attrs


def _symmetric(obj: Item, attrs: list[Attribute]) -> Material:
    fmt, block = _key_block(obj, "Symmetric Key")
    if fmt not in _SYMMETRIC_FORMATS:
        raise KeyFormatTypeNotSupported(
            "Register: symmetric keys are accepted as Raw or Transparent Symmetric Key"
        )
    value = block.find(Tag.KEY_VALUE)
    material = value.find(Tag.KEY_MATERIAL) if value is not None else None
    if material is not None and fmt == KeyFormatType.TRANSPARENT_SYMMETRIC_KEY:
        material = material.find(Tag.KEY) if material.type is _S else None
    if material is None or not isinstance(material.value, bytes) or not material.value:
        raise InvalidField("Register: the Symmetric Key has no key material")
    key = material.value
    algorithm = _column(block, attrs, Tag.CRYPTOGRAPHIC_ALGORITHM, "Cryptographic Algorithm")
    if algorithm is None:
        raise MissingField("Register: Cryptographic Algorithm is required for a Symmetric Key")
    length = _column(block, attrs, Tag.CRYPTOGRAPHIC_LENGTH, "Cryptographic Length")
    if length is not None and not fits(algorithm, length, len(key)):
        raise InvalidField("Register: Cryptographic Length does not match the key material")
    return Material(SecretBytes(key), algorithm, length or len(key) * 8)


def _asymmetric(obj: Item, attrs: list[Attribute]) -> Material:
    """A Public or Private Key, in whatever Key Format Type the client gives it:
    kept (sealed) as given and served so (KMIP 2.1 §4.26)."""
    what = "Private Key" if obj.tag == Tag.PRIVATE_KEY else "Public Key"
    _, block = _key_block(obj, what)
    value = block.find(Tag.KEY_VALUE)
    if value is None or value.find(Tag.KEY_MATERIAL) is None:
        raise InvalidField(f"Register: the {what} has no key material")
    algorithm = _column(block, attrs, Tag.CRYPTOGRAPHIC_ALGORITHM, "Cryptographic Algorithm")
    length = _column(block, attrs, Tag.CRYPTOGRAPHIC_LENGTH, "Cryptographic Length")
    if algorithm is None or length is None:
        raise MissingField(f"Register: a {what} needs its Cryptographic Algorithm and Length")
    return Material(_sealable(obj), algorithm, length)


def _certificate(obj: Item, attrs: list[Attribute]) -> Material:
    f = fields(obj, "Certificate")
    kind = int_of(f.get(Tag.CERTIFICATE_TYPE))
    value = f.get(Tag.CERTIFICATE_VALUE)
    if kind is None or value is None or not isinstance(value.value, bytes):
        raise MissingField("Register: Certificate Type and Certificate Value are required")
    given = first(attrs, "Certificate Type")
    if given is not None and int_of(given) != kind:
        raise InvalidField("Register: the Certificate Type attribute contradicts the object's")
    return Material(_sealable(obj), derived=tuple(certificate_attributes(kind, value.value)))


def _secret_data(obj: Item, attrs: list[Attribute]) -> Material:
    f = fields(obj, "Secret Data")
    if int_of(f.get(Tag.SECRET_DATA_TYPE)) is None:
        raise MissingField("Register: Secret Data Type is required")
    fmt, block = _key_block(obj, "Secret Data")
    if fmt not in _SECRET_FORMATS:
        raise KeyFormatTypeNotSupported("Register: Secret Data is accepted as Raw or Opaque")
    value = block.find(Tag.KEY_VALUE)
    material = value.find(Tag.KEY_MATERIAL) if value is not None else None
    if material is None or not isinstance(material.value, bytes):
        raise InvalidField("Register: the Secret Data has no key material")
    return Material(_sealable(obj))


def _opaque(obj: Item, attrs: list[Attribute]) -> Material:
    f = fields(obj, "Opaque Object")
    value = f.get(Tag.OPAQUE_DATA_VALUE)
    if int_of(f.get(Tag.OPAQUE_DATA_TYPE)) is None or value is None:
        raise MissingField("Register: Opaque Data Type and Opaque Data Value are required")
    if not isinstance(value.value, bytes):
        raise InvalidField("Register: Opaque Data Value must be a Byte String")
    return Material(_sealable(obj))


_READERS: dict[int, tuple[int, Callable[[Item, list[Attribute]], Material]]] = {
    ObjectType.SYMMETRIC_KEY: (Tag.SYMMETRIC_KEY, _symmetric),
    ObjectType.SECRET_DATA: (Tag.SECRET_DATA, _secret_data),
    ObjectType.OPAQUE_OBJECT: (Tag.OPAQUE_OBJECT, _opaque),
    ObjectType.PRIVATE_KEY: (Tag.PRIVATE_KEY, _asymmetric),
    ObjectType.PUBLIC_KEY: (Tag.PUBLIC_KEY, _asymmetric),
    ObjectType.CERTIFICATE: (Tag.CERTIFICATE, _certificate),
}
# Attributes a client may send that only restate the object (checked by its reader).
RESTATED = frozenset(("Certificate Type",))


def _names(attrs: list[Attribute]) -> list[str]:
    return [n for a in attrs if a.name == "Name" for n in (name_value(a.value),) if n is not None]


async def _store_new(
    svc: CoreServices,
    ctx: RequestContext,
    uid: str,
    object_type: int,
    *,
    material: Material,
    stored: list[Attribute],
) -> ObjectRecord:
    """Seal, then insert the new object (Pre-Active unless its dates say otherwise)."""
    try:
        l3_version, blob = svc.sealer.seal(ctx.tenant, uid, material.plaintext)
    finally:
        material.plaintext.wipe()
    record = ObjectRecord(
        uid=uid,
        tenant=ctx.tenant,
        object_type=object_type,
        state=date_driven_state(State.PRE_ACTIVE, stored, ctx.now),
        created=ctx.now,
        algorithm=material.algorithm,
        length=material.length,
        l3_version=l3_version,
        sealed=blob,
    )
    record = rebuild(record, stored, ctx.now)
    await svc.registry.put_objects([record])
    return record


async def register(svc: CoreServices, ctx: RequestContext, payload: Item | None) -> Outcome:
    f = payload_fields(payload, "Register")
    object_type = int_of(f.get(Tag.OBJECT_TYPE))
    if object_type is None:
        raise MissingField("Register: Object Type is missing")
    reader = _READERS.get(object_type)
    if reader is None:
        raise InvalidObjectType(
            "Register: this server registers keys, certificates, Secret Data and Opaque Objects"
        )
    tag, read = reader
    obj = f.get(tag)
    if obj is None or obj.type is not _S:
        raise InvalidField("Register: the object does not match the Object Type")
    restated = [a for a in request_attributes(f) if a.name in RESTATED]
    attrs = creation_attributes(request_attributes(f), object_type)
    material = read(obj, attrs + restated)
    try:
        await check_names_free(svc, ctx.tenant, _names(attrs))
        uid = svc.new_uid()
        stored = without(attrs, *_COLUMNS)
        digest = server_attrs.object_digest(obj)
        stored += [
            *material.derived,
            *server_attrs.implied(
                stored, object_type, ctx.now, generated=False,
                digests=() if digest is None else (digest,), fmt=server_attrs.key_format(obj),
            ),
        ]  # fmt: skip
        await _store_new(svc, ctx, uid, object_type, material=material, stored=stored)
    finally:
        material.plaintext.wipe()
    return Outcome(uid_payload(uid), uid=uid)


def open_object(svc: CoreServices, rec: ObjectRecord) -> Item:
    """The object structure (Symmetric Key in Raw format, Secret Data, Opaque
    Object) with its material unsealed, for a Get of a Core-held object."""
    if rec.state in DESTROYED_STATES:
        raise ObjectDestroyed(f"object {rec.uid!r} has been destroyed")
    if rec.sealed is None or rec.l3_version is None:
        raise KeyValueNotPresent(f"object {rec.uid!r} has no key material here")
    secret = svc.sealer.unseal(rec.tenant, rec.uid, rec.l3_version, rec.sealed)
    try:
        if rec.object_type != ObjectType.SYMMETRIC_KEY:
            return decode(secret.view())
        block: list[Item] = [
            Item.enum(Tag.KEY_FORMAT_TYPE, KeyFormatType.RAW),
            Item.structure(Tag.KEY_VALUE, Item.bytes_(Tag.KEY_MATERIAL, secret.reveal())),
        ]
        if rec.algorithm is not None:
            block.append(Item.enum(Tag.CRYPTOGRAPHIC_ALGORITHM, rec.algorithm))
        if rec.length is not None:
            block.append(Item.integer(Tag.CRYPTOGRAPHIC_LENGTH, rec.length))
        return Item.structure(Tag.SYMMETRIC_KEY, Item.structure(Tag.KEY_BLOCK, *block))
    except InvalidMessage as exc:
        raise KeyValueNotPresent(f"the sealed material of {rec.uid!r} is unreadable") from exc
    finally:
        secret.wipe()


# -- Re-key ----------------------------------------------------------------------------
_NOT_COPIED = (
    "Destroy Date", "Compromise Date", "Compromise Occurrence Date", "Revocation Reason",
    "Link", "Digest", "Random Number Generator", "Last Change Date", "Fresh",
    "Original Creation Date", "Always Sensitive", "Never Extractable", "Key Format Type",
    *_COLUMNS,
)  # fmt: skip
_SHIFTED = ("Process Start Date", "Protect Stop Date", "Deactivation Date")


def _link(kind: LinkType, uid: str) -> Attribute:
    return Attribute(
        "Link",
        Item.structure(
            Tag.LINK,
            Item.enum(Tag.LINK_TYPE, kind),
            Item.text(Tag.LINKED_OBJECT_IDENTIFIER, uid),
        ),
    )


def _offset_dates(old: list[Attribute], offset: int, now: int) -> list[Attribute]:
    """Activation Date = now + Offset; the other dates keep their distance to it."""
    activation = int_of(first(old, "Activation Date"))
    new_activation = now + offset
    out = [date_attr("Activation Date", new_activation)]
    for name in _SHIFTED:
        when = int_of(first(old, name))
        if when is None:
            continue
        if activation is None:
            raise IllegalOperation(
                f"Re-key: an Offset cannot move {name} of a key without an Activation Date"
            )
        out.append(date_attr(name, when + new_activation - activation))
    return out


def _replacement_attributes(
    old: ObjectRecord, requested: list[Attribute], offset: int | None, now: int
) -> list[Attribute]:
    copied = without(stored_attributes(old), *_NOT_COPIED)
    if offset is not None:
        copied = without(copied, "Activation Date", *_SHIFTED) + _offset_dates(
            stored_attributes(old), offset, now
        )
    given = {a.name for a in requested}
    return [
        *without(copied, *given),
        *without(requested, *_COLUMNS),
        _link(LinkType.REPLACED_OBJECT_LINK, old.uid),
    ]


async def re_key(svc: CoreServices, ctx: RequestContext, payload: Item | None) -> Outcome:
    f = payload_fields(payload, "Re-key")
    uid = request_uid(f, ctx)
    assert uid is not None
    offset_item = f.get(Tag.OFFSET)
    offset = int_of(offset_item)
    if offset_item is not None and (offset is None or offset_item.type is not ItemType.INTERVAL):
        raise InvalidField("Re-key: Offset must be an Interval")
    requested = creation_attributes(request_attributes(f), ObjectType.SYMMETRIC_KEY)
    if offset is not None and any(a.name in ("Activation Date", *_SHIFTED) for a in requested):
        raise InvalidMessage("Re-key: Offset cannot be given together with explicit dates")
    old = await load(svc, ctx, uid)
    if old.object_type != ObjectType.SYMMETRIC_KEY:
        raise InvalidObjectType(f"Re-key: object {old.uid!r} is not a Symmetric Key")
    if old.state in DESTROYED_STATES or old.sealed is None:
        raise KeyValueNotPresent(f"Re-key: the key value of {old.uid!r} is no longer held")
    algorithm = int_of(first(requested, "Cryptographic Algorithm")) or old.algorithm
    length = int_of(first(requested, "Cryptographic Length")) or old.length
    if algorithm is None or length is None:
        raise InvalidField(f"Re-key: object {old.uid!r} has no algorithm or length")
    stored = _replacement_attributes(old, requested, offset, ctx.now)
    await check_names_free(svc, ctx.tenant, _names(requested), skip=old.uid)
    new_uid = svc.new_uid()
    key = generate(algorithm, length, "Re-key")
    made = server_attrs.digest(key.view(), KeyFormatType.RAW)
    stored += server_attrs.implied(
        stored, ObjectType.SYMMETRIC_KEY, ctx.now, generated=True, digests=(made,)
    )
    material = Material(key, algorithm, length)
    await _store_new(svc, ctx, new_uid, ObjectType.SYMMETRIC_KEY, material=material, stored=stored)

    def retire(rec: ObjectRecord) -> ObjectRecord:
        kept = without(stored_attributes(rec), "Name")
        kept.append(_link(LinkType.REPLACEMENT_OBJECT_LINK, new_uid))
        return rebuild(rec, kept, ctx.now)

    _, _, event = await mutate(svc, ctx, old.uid, retire)
    return Outcome(uid_payload(new_uid), uid=new_uid, changes=(event,))
