"""Issue 11, finding 5: a Sensitive key cannot be laundered out through Get with a
Key Wrapping Specification naming a key the caller can also Get in the clear.

A real gateway and Core in one process (tests/helpers/embedded.py: the dev stack,
its uplink over gRPC mTLS), driven over KMIP mTLS."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap
from tests.helpers.embedded import Stack

from krypton.kmip import client_messages as cm
from krypton.kmip.attributes import Attribute
from krypton.kmip.messages import ResponseItem
from krypton.kmip.versions import ProtocolVersion
from krypton.ttlv.enums import (
    BlockCipherMode,
    CryptographicUsageMask,
    EncodingOption,
    Operation,
    ResultReason,
    ResultStatus,
    WrappingMethod,
)
from krypton.ttlv.item import Item
from krypton.ttlv.tags import Tag

V14 = ProtocolVersion(1, 4)
V21 = ProtocolVersion(2, 1)
ACTIVE = Attribute("Activation Date", Item.datetime(Tag.ACTIVATION_DATE, 1))
SENSITIVE = Attribute("Sensitive", Item.boolean(Tag.SENSITIVE, True))
SEALED = Attribute("Extractable", Item.boolean(Tag.EXTRACTABLE, False))
WRAP = CryptographicUsageMask.WRAP_KEY


@pytest.fixture
def s(start_embedded: Callable[..., Stack]) -> Stack:
    return start_embedded()


def created(s: Stack, *extra: Attribute, usage: int | None = None) -> str:
    attrs = cm.aes_attributes(256) if usage is None else cm.aes_attributes(256, usage=usage)
    [answer] = s.send(cm.request_message(V21, [cm.create_item(V21, [*attrs, *extra])])).items
    assert answer.payload is not None, answer.message
    return cm.unique_identifier(answer.payload)


def get_wrapped(s: Stack, key: str, kek: str, version: ProtocolVersion) -> ResponseItem:
    spec = Item.structure(
        Tag.KEY_WRAPPING_SPECIFICATION,
        Item.enum(Tag.WRAPPING_METHOD, WrappingMethod.ENCRYPT),
        Item.structure(
            Tag.ENCRYPTION_KEY_INFORMATION,
            Item.text(Tag.UNIQUE_IDENTIFIER, kek),
            Item.structure(Tag.CRYPTOGRAPHIC_PARAMETERS,
                           Item.enum(Tag.BLOCK_CIPHER_MODE, BlockCipherMode.NISTKEYWRAP)),
        ),
        Item.enum(Tag.ENCODING_OPTION, EncodingOption.NO_ENCODING),
    )  # fmt: skip
    payload = cm.payload(Item.text(Tag.UNIQUE_IDENTIFIER, key), spec)
    [answer] = s.send(cm.request_message(version, [cm.batch_item(Operation.GET, payload)])).items
    return answer


def plain(s: Stack, uid: str) -> ResponseItem:
    [answer] = s.send(cm.request_message(V21, [cm.get_item(uid)])).items
    return answer


def wrapped_value(answer: ResponseItem) -> bytes:
    assert answer.status is ResultStatus.SUCCESS, answer.message
    assert answer.payload is not None
    value = answer.payload.find(Tag.SYMMETRIC_KEY).find(Tag.KEY_BLOCK).find(Tag.KEY_VALUE)  # type: ignore[union-attr]
    assert value is not None and isinstance(value.value, bytes)
    return value.value


@pytest.mark.parametrize("version", [V14, V21], ids=str)
def test_a_sensitive_key_is_not_wrapped_under_a_key_the_caller_can_get(
    s: Stack, version: ProtocolVersion
) -> None:
    secret = created(s, SENSITIVE)
    assert plain(s, secret).reason is ResultReason.SENSITIVE
    kek = created(s, ACTIVE, usage=WRAP)  # Extractable: the caller can Get it
    assert plain(s, kek).payload is not None
    answer = get_wrapped(s, secret, kek, version)
    assert answer.status is ResultStatus.OPERATION_FAILED
    assert answer.reason is ResultReason.SENSITIVE
    assert answer.payload is None


def test_a_key_made_non_extractable_later_does_not_count_as_sealed(s: Stack) -> None:
    secret = created(s, SENSITIVE)
    kek = created(s, ACTIVE, usage=WRAP)
    edit = cm.payload(
        Item.text(Tag.UNIQUE_IDENTIFIER, kek),
        Item.structure(Tag.NEW_ATTRIBUTE, Item.boolean(Tag.EXTRACTABLE, False)),
    )
    [done] = s.send(cm.request_message(V21, [cm.batch_item(Operation.SET_ATTRIBUTE, edit)])).items
    assert done.status is ResultStatus.SUCCESS, done.message
    # Not Extractable now, but it was before: it may have left already.
    assert get_wrapped(s, secret, kek, V21).reason is ResultReason.SENSITIVE


def test_a_sensitive_key_wraps_under_a_non_extractable_key(s: Stack) -> None:
    secret = created(s, SENSITIVE)
    kek = created(s, ACTIVE, SEALED, usage=WRAP)
    assert plain(s, kek).reason is ResultReason.NOT_EXTRACTABLE
    blob = wrapped_value(get_wrapped(s, secret, kek, V21))
    assert len(blob) == 40  # AES-KW of a 256-bit key


def test_a_non_sensitive_key_wraps_as_before(s: Stack) -> None:
    key = created(s)
    kek = created(s, ACTIVE, usage=WRAP)
    kek_bytes = cm.key_material(plain(s, kek).payload)  # type: ignore[arg-type]
    key_bytes = cm.key_material(plain(s, key).payload)  # type: ignore[arg-type]
    assert aes_key_unwrap(kek_bytes, wrapped_value(get_wrapped(s, key, kek, V21))) == key_bytes
