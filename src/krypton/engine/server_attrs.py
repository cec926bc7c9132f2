"""Attributes the server sets: when an object is made, when it is read, after an edit.

How this works
--------------
Shared by the gateway (:mod:`krypton.gateway.engine.keys`, vault records) and the
Core (:mod:`krypton.core.engine.register`, registry records), so both keep the
same attributes for an object whichever of them made it.

* :func:`implied` — stored when an object is made (KMIP 1.4 §3 / 2.1 §4,
  "When implicitly set"): the SHA-256 Digest of its material (§3.17: of the
  Key Material byte string, or of the TTLV encoding of a Key Material
  structure; in the Key Format Type the object was registered in), Fresh,
  and — for material the server generated — Original Creation Date (equal
  to the Initial Date) and Random Number Generator. Always Sensitive and
  Never Extractable are stored only when true, and the Key Format Type only
  when it is not the default for the object.
* :func:`derived` — computed when an object is read, never stored: the
  defaults of the attributes above (Sensitive False, Extractable True, ...),
  Short Unique Identifier (2.1 §4.56: SHA-256 of the Unique Identifier),
  Protection Storage Mask (Software: both vaults are files on disk) and
  Lease Time. This server has no Obtain Lease and puts no lease on its
  objects, so the lease it states is the longest an Interval can say.
* :func:`follow_ups` — after a client edit: Always Sensitive becomes False
  once Sensitive has been False, Never Extractable False once Extractable
  has been True (1.4 §3.49, §3.51).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from krypton.kmip.attributes import Attribute
from krypton.ttlv.codec import encode
from krypton.ttlv.enums import (
    HashingAlgorithm,
    KeyFormatType,
    ObjectType,
    ProtectionStorageMask,
    RNGAlgorithm,
)
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import TAG_BY_SPEC_NAME, Tag

LEASE_TIME = 0xFFFFFFFF  # the largest Interval: no lease limit
STORAGE = ProtectionStorageMask.SOFTWARE
# The kernel CSPRNG (os.urandom) or OpenSSL's DRBG seeded from it: no named algorithm.
RNG = Item.structure(
    Tag.RANDOM_NUMBER_GENERATOR, Item.enum(Tag.RNG_ALGORITHM, RNGAlgorithm.UNSPECIFIED)
)
_KEYS = frozenset((ObjectType.SYMMETRIC_KEY, ObjectType.PUBLIC_KEY, ObjectType.PRIVATE_KEY))
CRYPTOGRAPHIC = _KEYS | {ObjectType.SECRET_DATA, ObjectType.CERTIFICATE, ObjectType.SPLIT_KEY}
# The format an object is served in when the client names none (2.1 §4.26).
DEFAULT_FORMAT: dict[int, int] = {
    ObjectType.SYMMETRIC_KEY: KeyFormatType.RAW,
    ObjectType.SECRET_DATA: KeyFormatType.RAW,
}


def _boolean(name: str, value: bool) -> Attribute:
    return Attribute(name, Item.boolean(TAG_BY_SPEC_NAME[name], value))


def flag(attrs: Iterable[Attribute], name: str) -> bool | None:
    for a in attrs:
        if a.name == name and isinstance(a.value.value, bool):
            return a.value.value
    return None


# -- Digest -----------------------------------------------------------------------------
def digest(material: bytes | bytearray | memoryview | Item, fmt: int | None) -> Attribute:
    """The SHA-256 Digest of key material (a byte string, or a structure hashed as
    its TTLV encoding), made in Key Format Type ``fmt`` (None: not a key)."""
    data = encode(material) if isinstance(material, Item) else material
    children = [
        Item.enum(Tag.HASHING_ALGORITHM, HashingAlgorithm.SHA_256),
        Item.bytes_(Tag.DIGEST_VALUE, hashlib.sha256(data).digest()),
    ]
    if fmt is not None:
        children.append(Item.enum(Tag.KEY_FORMAT_TYPE, fmt))
    return Attribute("Digest", Item.structure(Tag.DIGEST, *children))


_VALUE_OF: dict[int, int] = {  # objects without a Key Block: what the digest is of
    Tag.CERTIFICATE: Tag.CERTIFICATE_VALUE,
    Tag.OPAQUE_OBJECT: Tag.OPAQUE_DATA_VALUE,
}


def object_digest(obj: Item) -> Attribute | None:
    """The Digest of a registered object structure, in the format it was given in."""
    value_tag = _VALUE_OF.get(obj.tag)
    if value_tag is not None:
        value = obj.find(value_tag)
        if value is None or not isinstance(value.value, bytes):
            return None
        return digest(value.value, None)
    block = obj.find(Tag.KEY_BLOCK)
    fmt = block.find(Tag.KEY_FORMAT_TYPE) if block is not None else None
    key_value = block.find(Tag.KEY_VALUE) if block is not None else None
    material = key_value.find(Tag.KEY_MATERIAL) if key_value is not None else None
    if fmt is None or material is None or not isinstance(fmt.value, int):
        return None
    if isinstance(material.value, bytes):
        return digest(material.value, fmt.value)
    return digest(material, fmt.value)


def key_format(obj: Item) -> int | None:
    """The Key Format Type of an object structure with a Key Block."""
    block = obj.find(Tag.KEY_BLOCK)
    fmt = block.find(Tag.KEY_FORMAT_TYPE) if block is not None else None
    return fmt.value if fmt is not None and isinstance(fmt.value, int) else None


# -- when an object is made -------------------------------------------------------------
def implied(
    client: list[Attribute],
    object_type: int,
    now: int,
    *,
    generated: bool,
    digests: Iterable[Attribute] = (),
    fmt: int | None = None,
) -> list[Attribute]:
    """What the server stores besides the client's attributes on a new object.

    ``generated``: the server made the material (Create, Re-key, Create Key Pair),
    so it names its origin; ``fmt``: the Key Format Type the object is kept in.
    """
    have = {a.name for a in client}
    out = list(digests)
    if object_type in CRYPTOGRAPHIC and "Fresh" not in have:
        out.append(_boolean("Fresh", True))
    if flag(client, "Sensitive"):
        out.append(_boolean("Always Sensitive", True))
    if flag(client, "Extractable") is False:
        out.append(_boolean("Never Extractable", True))
    if fmt is not None and fmt != DEFAULT_FORMAT.get(object_type) and "Key Format Type" not in have:
        out.append(Attribute("Key Format Type", Item.enum(Tag.KEY_FORMAT_TYPE, fmt)))
    if generated:
        if "Original Creation Date" not in have:
            out.append(
                Attribute("Original Creation Date", Item.datetime(Tag.ORIGINAL_CREATION_DATE, now))
            )
        if "Random Number Generator" not in have:
            out.append(Attribute("Random Number Generator", RNG))
    return out


# -- when an object is read -------------------------------------------------------------
_DEFAULTS: tuple[tuple[str, bool], ...] = (
    ("Sensitive", False),
    ("Always Sensitive", False),
    ("Extractable", True),
    ("Never Extractable", False),
)


def derived(uid: str, object_type: int, stored: list[Attribute]) -> list[Attribute]:
    """The server's attributes computed on reading an object (not stored)."""
    have = {a.name for a in stored}
    out = [
        Attribute(
            "Short Unique Identifier",
            Item.bytes_(Tag.SHORT_UNIQUE_IDENTIFIER, hashlib.sha256(uid.encode()).digest()),
        ),
        Attribute("Protection Storage Mask", Item.integer(Tag.PROTECTION_STORAGE_MASK, STORAGE)),
    ]
    out.extend(_boolean(name, value) for name, value in _DEFAULTS if name not in have)
    fmt = DEFAULT_FORMAT.get(object_type)
    if fmt is not None and "Key Format Type" not in have:
        out.append(Attribute("Key Format Type", Item.enum(Tag.KEY_FORMAT_TYPE, fmt)))
    if object_type in CRYPTOGRAPHIC and "Lease Time" not in have:
        out.append(Attribute("Lease Time", Item(Tag.LEASE_TIME, ItemType.INTERVAL, LEASE_TIME)))
    return [a for a in out if a.name not in have]


# -- after a client edit ----------------------------------------------------------------
def follow_ups(stored: list[Attribute]) -> list[Attribute]:
    """``stored`` with Always Sensitive / Never Extractable brought up to date."""
    out = list(stored)
    if flag(out, "Sensitive") is False and flag(out, "Always Sensitive"):
        out = [a for a in out if a.name != "Always Sensitive"]
    if flag(out, "Extractable") and flag(out, "Never Extractable"):
        out = [a for a in out if a.name != "Never Extractable"]
    return out
