"""Get with a Key Wrapping Specification: a symmetric key served wrapped by another one.

KMIP 1.4 §2.1.5 and §4.11 / 2.1 §2.1.5: with Wrapping Method Encrypt and the
wrapping key named in Encryption Key Information, the Key Value of the key
returned is a Byte String, the AES Key Wrap (NIST SP 800-38F KW, RFC 3394) of
the TTLV-encoded Key Value structure — or of the bare key bytes with Encoding
Option No Encoding — and the Key Block says how it was wrapped (Key Wrapping
Data). The wrapping key must be an Active AES key of the same tenant whose
Cryptographic Usage Mask allows Wrap Key, and its Block Cipher Mode (asked
for, or its own) NIST Key Wrap. MAC/Signature wrapping, other modes and
wrapped attributes are not supported.

A Sensitive or non-Extractable key is served wrapped only under a key that is
itself non-Extractable and always was (Extractable False, Never Extractable
True) — the rule KMIP gives the Wrapping Key. Otherwise a caller could name
any key it can also Get in the clear and unwrap the answer itself, which
would launder a Sensitive key out (Operation Failed, reason Sensitive, the
reason KMIP 1.4 and 2.1 list for Get).

The plaintext key exists only in a ``SecretBytes`` and in the buffer it is
encoded into; both are overwritten once the wrap is computed.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.keywrap import aes_key_wrap

from krypton.engine import server_attrs
from krypton.engine.object_errors import InvalidObjectType, SensitiveObject
from krypton.engine.objects import first, int_of, stored_attributes
from krypton.engine.usable import Use, check_usable
from krypton.errors import (
    FeatureNotSupported,
    InvalidField,
    ItemNotFound,
    KryptonError,
)
from krypton.gateway.engine.services import Services, load_through
from krypton.kmip.messages import fields
from krypton.model.context import RequestContext
from krypton.model.record import KeyRecord
from krypton.ttlv import writer as w
from krypton.ttlv.enums import (
    BlockCipherMode,
    CryptographicAlgorithm,
    CryptographicUsageMask,
    EncodingOption,
    KeyFormatType,
    ObjectType,
    ResultReason,
    WrappingMethod,
)
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag

_S = ItemType.STRUCTURE


class WrappingKeyNotFound(ItemNotFound):
    """The wrapping key named does not exist (for this client)."""

    reason = ResultReason.WRAPPING_OBJECT_NOT_FOUND


class WrapTypeNotSupported(KryptonError):
    """This kind of key wrapping is not supported."""

    reason = ResultReason.KEY_WRAP_TYPE_NOT_SUPPORTED


@dataclass(frozen=True, slots=True)
class WrapSpec:
    key_uid: str
    params: Item | None  # the Cryptographic Parameters asked for (echoed back)
    encoding: int | None


def read_spec(spec: Item) -> WrapSpec:
    f = fields(spec, "Key Wrapping Specification")
    method = int_of(f.get(Tag.WRAPPING_METHOD))
    if method != WrappingMethod.ENCRYPT:
        raise WrapTypeNotSupported("Get: only the Encrypt Wrapping Method is supported")
    if Tag.MAC_SIGNATURE_KEY_INFORMATION in f or Tag.ATTRIBUTE_NAME in f:
        raise FeatureNotSupported("Get: MAC/signature wrapping and wrapped attributes")
    info = f.get(Tag.ENCRYPTION_KEY_INFORMATION)
    if info is None or info.type is not _S:
        raise InvalidField("Get: Encryption Key Information is required to wrap")
    ki = fields(info, "Encryption Key Information")
    uid = ki.get(Tag.UNIQUE_IDENTIFIER)
    if uid is None or not isinstance(uid.value, str):
        raise InvalidField("Get: the wrapping key's Unique Identifier is missing")
    encoding = int_of(f.get(Tag.ENCODING_OPTION))
    if encoding not in (None, EncodingOption.NO_ENCODING, EncodingOption.TTLV_ENCODING):
        raise InvalidField("Get: unknown Encoding Option")
    return WrapSpec(uid.value, ki.get(Tag.CRYPTOGRAPHIC_PARAMETERS), encoding)


_WRAP = Use("Get", CryptographicUsageMask.WRAP_KEY)


async def wrapping_key(svc: Services, ctx: RequestContext, spec: WrapSpec) -> KeyRecord:
    try:
        rec = await load_through(svc, ctx, spec.key_uid)
    except ItemNotFound:
        raise WrappingKeyNotFound(f"Get: no wrapping key {spec.key_uid!r}") from None
    if rec.object_type != ObjectType.SYMMETRIC_KEY or rec.algorithm != CryptographicAlgorithm.AES:
        raise InvalidObjectType(f"Get: {rec.uid!r} is not an AES key: it cannot wrap")
    stored = stored_attributes(rec)
    check_usable(_WRAP, rec.uid, rec.state, stored, ctx.now, has_material=bool(rec.wrapped))
    params = spec.params or first(stored, "Cryptographic Parameters")
    mode = int_of(params.find(Tag.BLOCK_CIPHER_MODE)) if params is not None else None
    if mode not in (None, BlockCipherMode.NISTKEYWRAP):
        raise WrapTypeNotSupported("Get: keys are wrapped with NIST Key Wrap (AES-KW) only")
    return rec


def check_may_wrap(rec: KeyRecord, wrapper: KeyRecord) -> None:
    """Refuse to wrap a Sensitive or non-Extractable ``rec`` under a key that is
    or ever was Extractable (the caller could then unwrap it itself)."""
    stored = stored_attributes(rec)
    protected = server_attrs.flag(stored, "Sensitive") or (
        server_attrs.flag(stored, "Extractable") is False
    )
    if not protected:
        return
    kek = stored_attributes(wrapper)
    sealed = server_attrs.flag(kek, "Extractable") is False and server_attrs.flag(
        kek, "Never Extractable"
    )
    if not sealed:
        raise SensitiveObject(
            f"Get: {rec.uid!r} is Sensitive; it may be wrapped only under a non-Extractable key"
        )


def wrapped_object(
    svc: Services, rec: KeyRecord, fmt: int, spec: WrapSpec, wrapper: KeyRecord
) -> Item:
    """The Symmetric Key structure of ``rec`` with its Key Value wrapped."""
    if rec.object_type != ObjectType.SYMMETRIC_KEY or fmt != KeyFormatType.RAW:
        raise FeatureNotSupported("Get: only symmetric keys in Raw format are served wrapped")
    plain = bytearray()
    secret = svc.keyring.unwrap(rec.tenant, rec.uid, rec.l3_version, rec.wrapped)
    kek = svc.keyring.unwrap(wrapper.tenant, wrapper.uid, wrapper.l3_version, wrapper.wrapped)
    try:
        if spec.encoding == EncodingOption.NO_ENCODING:
            plain += secret.view()
        else:
            value = w.begin(plain, Tag.KEY_VALUE)
            w.byte_string(plain, Tag.KEY_MATERIAL, secret.view())
            w.end(plain, value)
        try:
            wrapped = aes_key_wrap(kek.view(), plain)
        except ValueError as exc:
            raise WrapTypeNotSupported(f"Get: AES Key Wrap refused: {exc}") from None
    finally:
        plain[:] = bytes(len(plain))
        secret.wipe()
        kek.wipe()
    info = [Item.text(Tag.UNIQUE_IDENTIFIER, wrapper.uid)]
    if spec.params is not None:
        info.append(spec.params)
    wrapping = [
        Item.enum(Tag.WRAPPING_METHOD, WrappingMethod.ENCRYPT),
        Item.structure(Tag.ENCRYPTION_KEY_INFORMATION, *info),
    ]
    if spec.encoding is not None:
        wrapping.append(Item.enum(Tag.ENCODING_OPTION, spec.encoding))
    return Item.structure(
        Tag.SYMMETRIC_KEY,
        Item.structure(
            Tag.KEY_BLOCK,
            Item.enum(Tag.KEY_FORMAT_TYPE, fmt),
            Item.bytes_(Tag.KEY_VALUE, wrapped),
            Item.enum(Tag.CRYPTOGRAPHIC_ALGORITHM, rec.algorithm),
            Item.integer(Tag.CRYPTOGRAPHIC_LENGTH, rec.length),
            Item.structure(Tag.KEY_WRAPPING_DATA, *wrapping),
        ),
    )
