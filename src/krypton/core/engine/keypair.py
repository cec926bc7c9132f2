"""Create Key Pair at the Core (RSA).

How this works
--------------
Create Key Pair (KMIP 1.4 §4.2, 2.1 §6.1.9) reads the attributes of the
Common, Private Key and Public Key Template-Attribute (1.x) or Attributes
(2.x) structures, whatever the version. Each key gets the union of the
multi-valued attributes and, for a single-valued one, its own value over the
common one; both must agree on algorithm and length. A key without a
Cryptographic Usage Mask gets Sign (private) or Verify (public).

The key pair is generated in a worker thread (an RSA-4096 key takes seconds;
the Core's event loop keeps serving meanwhile). Each key is stored like a
registered Secret Data: the TTLV encoding of its object structure, sealed by
the tenant's L3, so a gateway's ``Get`` returns it as it is. The structures
hold only a Key Format Type, the Key Material and the algorithm and length
(no attributes inside the Key Value: Veeam's 1.4 decoder rejects them);
both are PKCS#1 DER, the format the AKLC test cases' Digest names. Each key
links to the other (Public Key Link / Private Key Link) and carries a SHA-256
Digest of its PKCS#1 encoding, an Original Creation Date and a Random Number
Generator (Unspecified: OpenSSL's). Both objects are written in one
transaction; the ID Placeholder is the private key.
The key objects and their other Key Format Types are :mod:`krypton.engine.keyformat`.
"""

from __future__ import annotations

import asyncio
import hashlib

from cryptography.hazmat.primitives import serialization as ser
from cryptography.hazmat.primitives.asymmetric import rsa

from krypton.core.engine.objects import CoreServices, check_names_free, name_value, rebuild
from krypton.core.engine.register import creation_attributes, request_attributes
from krypton.crypto.secret import SecretBytes
from krypton.engine.attr_rules import rule_for
from krypton.engine.keyformat import key_object
from krypton.engine.object_errors import InvalidAttributeValue
from krypton.engine.objects import (
    Outcome,
    date_driven_state,
    first,
    int_of,
    payload_fields,
    without,
)
from krypton.errors import InvalidField, MissingField
from krypton.kmip.attributes import Attribute
from krypton.model.context import RequestContext
from krypton.model.registry import ObjectRecord
from krypton.ttlv.codec import encode_into
from krypton.ttlv.enums import (
    CryptographicAlgorithm,
    CryptographicUsageMask,
    HashingAlgorithm,
    KeyFormatType,
    LinkType,
    ObjectType,
    RNGAlgorithm,
    State,
)
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag

RSA_LENGTHS = frozenset((1024, 2048, 3072, 4096))
DEFAULT_LENGTH = 2048
PUBLIC_EXPONENT = 65537
_S = ItemType.STRUCTURE
_COLUMNS = ("Cryptographic Algorithm", "Cryptographic Length")
_PKCS1 = KeyFormatType.PKCS_1
_DEFAULT_USAGE: dict[int, int] = {
    ObjectType.PRIVATE_KEY: CryptographicUsageMask.SIGN,
    ObjectType.PUBLIC_KEY: CryptographicUsageMask.VERIFY,
}
# OpenSSL's DRBG (seeded by the kernel) made the key; which one depends on the
# OpenSSL build, so the algorithm is not named.
_RNG = Item.structure(
    Tag.RANDOM_NUMBER_GENERATOR, Item.enum(Tag.RNG_ALGORITHM, RNGAlgorithm.UNSPECIFIED)
)
# (1.x Template-Attribute, 2.x Attributes) of each part of the request.
_COMMON = (Tag.COMMON_TEMPLATE_ATTRIBUTE, Tag.COMMON_ATTRIBUTES)
_PRIVATE = (Tag.PRIVATE_KEY_TEMPLATE_ATTRIBUTE, Tag.PRIVATE_KEY_ATTRIBUTES)
_PUBLIC = (Tag.PUBLIC_KEY_TEMPLATE_ATTRIBUTE, Tag.PUBLIC_KEY_ATTRIBUTES)


# -- request attributes -------------------------------------------------------------------
def _part(f: dict[int, Item], tags: tuple[int, int]) -> list[Attribute]:
    v1, v2 = tags
    given: dict[int, Item] = {
        tag: f[src] for tag, src in ((Tag.TEMPLATE_ATTRIBUTE, v1), (Tag.ATTRIBUTES, v2)) if src in f
    }
    return request_attributes(given)


def _multi(name: str) -> bool:
    if name == "Object Type":  # checked (and dropped) by creation_attributes
        return False
    rule = rule_for(name)
    return rule is not None and rule.multi


def _merge(common: list[Attribute], own: list[Attribute], object_type: int) -> list[Attribute]:
    """One key's attributes: all of its own, and the common ones it does not
    override (every multi-valued instance is kept: the union)."""
    mine = {a.name for a in own}
    merged = [a for a in common if _multi(a.name) or a.name not in mine] + own
    attrs = creation_attributes(merged, object_type)
    if first(attrs, "Cryptographic Usage Mask") is None:
        mask = _DEFAULT_USAGE[object_type]
        attrs.append(
            Attribute("Cryptographic Usage Mask", Item.integer(Tag.CRYPTOGRAPHIC_USAGE_MASK, mask))
        )
    return attrs


def _shared(private: list[Attribute], public: list[Attribute], name: str) -> int | None:
    """A value both keys must have alike (KMIP 1.4 Table 168, 2.1 Table 191)."""
    mine, theirs = int_of(first(private, name)), int_of(first(public, name))
    if mine != theirs:
        raise InvalidField(f"Create Key Pair: {name} must be the same for both keys")
    return mine


def _names(attrs: list[Attribute]) -> list[str]:
    return [n for a in attrs if a.name == "Name" for n in (name_value(a.value),) if n is not None]


def _sealable(item: Item) -> SecretBytes:
    buf = bytearray()
    encode_into(item, buf)
    return SecretBytes.adopt(buf)


def _link(kind: LinkType, uid: str) -> Attribute:
    return Attribute(
        "Link",
        Item.structure(
            Tag.LINK, Item.enum(Tag.LINK_TYPE, kind), Item.text(Tag.LINKED_OBJECT_IDENTIFIER, uid)
        ),
    )


def _digest(der: bytes) -> Attribute:
    return Attribute(
        "Digest",
        Item.structure(
            Tag.DIGEST,
            Item.enum(Tag.HASHING_ALGORITHM, HashingAlgorithm.SHA_256),
            Item.bytes_(Tag.DIGEST_VALUE, hashlib.sha256(der).digest()),
            Item.enum(Tag.KEY_FORMAT_TYPE, _PKCS1),
        ),
    )


def _generate(length: int) -> tuple[bytes, bytes]:
    """(private PKCS#1 DER, public PKCS#1 DER) of a fresh RSA key."""
    key = rsa.generate_private_key(PUBLIC_EXPONENT, length)
    private = key.private_bytes(
        ser.Encoding.DER, ser.PrivateFormat.TraditionalOpenSSL, ser.NoEncryption()
    )
    public = key.public_key().public_bytes(ser.Encoding.DER, ser.PublicFormat.PKCS1)
    return private, public


def _record(
    svc: CoreServices, ctx: RequestContext, uid: str, object_type: int, *, der: bytes,
    length: int, stored: list[Attribute],
) -> ObjectRecord:  # fmt: skip
    secret = _sealable(key_object(object_type, _PKCS1, der, length))
    try:
        l3_version, blob = svc.sealer.seal(ctx.tenant, uid, secret)
    finally:
        secret.wipe()
    record = ObjectRecord(
        uid=uid,
        tenant=ctx.tenant,
        object_type=object_type,
        state=date_driven_state(State.PRE_ACTIVE, stored, ctx.now),
        created=ctx.now,
        algorithm=CryptographicAlgorithm.RSA,
        length=length,
        l3_version=l3_version,
        sealed=blob,
    )
    implied = {
        "Original Creation Date": Item.datetime(Tag.ORIGINAL_CREATION_DATE, ctx.now),
        "Random Number Generator": _RNG,
    }
    extra = [Attribute(name, v) for name, v in implied.items() if first(stored, name) is None]
    return rebuild(record, [*stored, _digest(der), *extra], ctx.now)


async def create_key_pair(svc: CoreServices, ctx: RequestContext, payload: Item | None) -> Outcome:
    f = payload_fields(payload, "Create Key Pair")
    common = _part(f, _COMMON)
    private = _merge(common, _part(f, _PRIVATE), ObjectType.PRIVATE_KEY)
    public = _merge(common, _part(f, _PUBLIC), ObjectType.PUBLIC_KEY)
    algorithm = _shared(private, public, "Cryptographic Algorithm")
    if algorithm is None:
        raise MissingField("Create Key Pair: Cryptographic Algorithm is required")
    if algorithm != CryptographicAlgorithm.RSA:
        raise InvalidAttributeValue("Create Key Pair: this server makes RSA key pairs only")
    length = _shared(private, public, "Cryptographic Length") or DEFAULT_LENGTH
    if length not in RSA_LENGTHS:
        raise InvalidAttributeValue("Create Key Pair: RSA keys of 1024, 2048, 3072 or 4096 bits")
    await check_names_free(svc, ctx.tenant, _names(private) + _names(public))

    private_der, public_der = await asyncio.to_thread(_generate, length)
    private_uid, public_uid = svc.new_uid(), svc.new_uid()
    records = [
        _record(
            svc, ctx, private_uid, ObjectType.PRIVATE_KEY, der=private_der, length=length,
            stored=[*without(private, *_COLUMNS), _link(LinkType.PUBLIC_KEY_LINK, public_uid)],
        ),
        _record(
            svc, ctx, public_uid, ObjectType.PUBLIC_KEY, der=public_der, length=length,
            stored=[*without(public, *_COLUMNS), _link(LinkType.PRIVATE_KEY_LINK, private_uid)],
        ),
    ]  # fmt: skip
    await svc.registry.put_objects(records)
    return Outcome(
        Item.structure(
            Tag.RESPONSE_PAYLOAD,
            Item.text(Tag.PRIVATE_KEY_UNIQUE_IDENTIFIER, private_uid),
            Item.text(Tag.PUBLIC_KEY_UNIQUE_IDENTIFIER, public_uid),
        ),
        uid=private_uid,
    )
