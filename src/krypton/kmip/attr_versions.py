"""Which attributes a protocol version knows, and the shape of a value in that version.

How this works
--------------
Objects keep one set of attributes whatever version made them; what a
client is *shown* depends on the version it speaks. An attribute the
specification of that version does not define is left out of Get
Attributes and Get Attribute List answers (a KMIP 1.2 client has no name
for ``Sensitive``, a 1.x client none for ``Key Format Type`` or ``Short
Unique Identifier``). :data:`INTRODUCED` says when each came (KMIP 1.1-1.4
and 2.0); an attribute it does not name exists in every version, and a
custom one (``x-...``) always shows. (The 1.x attributes 2.0 dropped, such
as Operation Policy Name, are still shown to a 2.x client that set them.)

A value whose structure changed is reshaped by :data:`SHAPES`: the Digest of
KMIP 1.0 has no Key Format Type (1.0 §3.17: Hashing Algorithm and Digest
Value; 1.1 added the format the digest was computed on).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from krypton.kmip.attributes import Attribute
from krypton.kmip.versions import ProtocolVersion
from krypton.ttlv.item import Item
from krypton.ttlv.tags import Tag

V = ProtocolVersion

INTRODUCED: dict[str, ProtocolVersion] = {
    **dict.fromkeys(
        (
            "Certificate Length", "X.509 Certificate Identifier", "X.509 Certificate Subject",
            "X.509 Certificate Issuer", "Digital Signature Algorithm", "Fresh",
        ),
        V(1, 1),
    ),
    **dict.fromkeys(
        ("Alternative Name", "Key Value Present", "Key Value Location", "Original Creation Date"),
        V(1, 2),
    ),
    "Random Number Generator": V(1, 3),
    **dict.fromkeys(
        (
            "PKCS#12 Friendly Name", "Description", "Comment", "Sensitive", "Always Sensitive",
            "Extractable", "Never Extractable",
        ),
        V(1, 4),
    ),
    **dict.fromkeys(
        (
            "Key Format Type", "NIST Key Type", "Opaque Data Type", "Protection Level",
            "Protection Period", "Protection Storage Mask", "Quantum Safe",
            "Short Unique Identifier", "Object Group Member",
            *(f"Certificate {who} {part}" for who in ("Subject", "Issuer") for part in (
                "CN", "O", "OU", "Email", "C", "ST", "L", "UID", "Serial Number", "Title", "DC",
                "DN Qualifier",
            )),
        ),
        V(2, 0),
    ),
}  # fmt: skip


def known_in(name: str, version: ProtocolVersion) -> bool:
    """Whether the specification of ``version`` defines attribute ``name``."""
    since = INTRODUCED.get(name)
    return since is None or version >= since


def _digest_v10(value: Item) -> Item:
    kept = tuple(c for c in value.children if c.tag != Tag.KEY_FORMAT_TYPE)
    return Item(value.tag, value.type, kept)


# (attribute, first version with the current shape, reshape for the versions before)
SHAPES: dict[str, tuple[ProtocolVersion, Callable[[Item], Item]]] = {
    "Digest": (V(1, 1), _digest_v10),
}


def for_version(attrs: Iterable[Attribute], version: ProtocolVersion) -> list[Attribute]:
    """The attributes a client of ``version`` is shown, in the shape it knows."""
    out: list[Attribute] = []
    for a in attrs:
        if not a.custom and not known_in(a.name, version):
            continue
        shape = SHAPES.get(a.name)
        if shape is not None and version < shape[0]:
            out.append(Attribute(a.name, shape[1](a.value), a.index))
        else:
            out.append(a)
    return out
