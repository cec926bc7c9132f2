"""Private Key / Public Key objects and the Key Format Types a Get may ask for.

A key pair's keys are stored (sealed) as their object structure in PKCS#1 DER
(:func:`key_object`, made by the Core's Create Key Pair). :func:`reformat`
serves a Get that asks for another Key Format Type: PKCS#1 or PKCS#8 for the
private key, PKCS#1 or X.509 (SubjectPublicKeyInfo) for the public one;
anything else is Key Format Type Not Supported.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives import serialization as ser

from krypton.engine.objects import int_of
from krypton.errors import KeyFormatTypeNotSupported
from krypton.ttlv.enums import CryptographicAlgorithm, KeyFormatType, ObjectType
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag

ASYMMETRIC = frozenset((ObjectType.PRIVATE_KEY, ObjectType.PUBLIC_KEY))
_S = ItemType.STRUCTURE


def key_object(object_type: int, fmt: int, der: bytes, length: int) -> Item:
    """A Private Key / Public Key object structure: material, algorithm, length only."""
    tag = Tag.PRIVATE_KEY if object_type == ObjectType.PRIVATE_KEY else Tag.PUBLIC_KEY
    return Item.structure(
        tag,
        Item.structure(
            Tag.KEY_BLOCK,
            Item.enum(Tag.KEY_FORMAT_TYPE, fmt),
            Item.structure(Tag.KEY_VALUE, Item.bytes_(Tag.KEY_MATERIAL, der)),
            Item.enum(Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm.RSA),
            Item.integer(Tag.CRYPTOGRAPHIC_LENGTH, length),
        ),
    )


def _private_der(der: bytes, fmt: int) -> bytes:
    key = ser.load_der_private_key(der, None)
    pkcs8 = fmt == KeyFormatType.PKCS_8
    wanted = ser.PrivateFormat.PKCS8 if pkcs8 else ser.PrivateFormat.TraditionalOpenSSL
    return key.private_bytes(ser.Encoding.DER, wanted, ser.NoEncryption())


def _public_der(der: bytes, fmt: int) -> bytes:
    key = ser.load_der_public_key(der)
    x509 = fmt == KeyFormatType.X_509
    wanted = ser.PublicFormat.SubjectPublicKeyInfo if x509 else ser.PublicFormat.PKCS1
    return key.public_bytes(ser.Encoding.DER, wanted)


Convert = Callable[[bytes, int], bytes]


_FORMATS: dict[int, tuple[frozenset[int], Convert]] = {
    ObjectType.PRIVATE_KEY: (frozenset((KeyFormatType.PKCS_1, KeyFormatType.PKCS_8)), _private_der),
    ObjectType.PUBLIC_KEY: (frozenset((KeyFormatType.PKCS_1, KeyFormatType.X_509)), _public_der),
}


def _unsupported(der: bytes, fmt: int) -> bytes:
    raise ValueError("no conversion")


def reformat(obj: Item, object_type: int, wanted: int) -> Item:
    """``obj`` (a stored Private Key / Public Key structure) in Key Format Type ``wanted``."""
    block = obj.find(Tag.KEY_BLOCK)
    value = block.find(Tag.KEY_VALUE) if block is not None else None
    material = value.find(Tag.KEY_MATERIAL) if value is not None else None
    stored = int_of(block.find(Tag.KEY_FORMAT_TYPE)) if block is not None else None
    if stored == wanted:
        return obj
    formats, convert = _FORMATS.get(object_type, (frozenset(), _unsupported))
    if (
        block is None
        or wanted not in formats
        or stored not in formats
        or material is None
        or not isinstance(material.value, bytes)
    ):
        raise KeyFormatTypeNotSupported(
            "Get: RSA private keys are served as PKCS#1 or PKCS#8, public keys as PKCS#1 or X.509"
        )
    try:
        der = convert(material.value, wanted)
    except (ValueError, TypeError) as exc:
        raise KeyFormatTypeNotSupported("Get: the stored key cannot be converted") from exc
    rest = [c for c in block.children if c.tag not in (Tag.KEY_FORMAT_TYPE, Tag.KEY_VALUE)]
    new_block = Item.structure(
        Tag.KEY_BLOCK,
        Item.enum(Tag.KEY_FORMAT_TYPE, wanted),
        Item.structure(Tag.KEY_VALUE, Item.bytes_(Tag.KEY_MATERIAL, der)),
        *rest,
    )
    return Item(obj.tag, _S, (new_block,))
