"""A gateway Create and a Core Register check a client's attributes against one
table (krypton.engine.attr_rules) and answer the same reason for the same fault."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from tests.helpers.embedded import Stack

from krypton.kmip import client_messages as cm
from krypton.kmip.attributes import Attribute, attributes_v2, to_v1
from krypton.kmip.messages import ResponseItem
from krypton.kmip.versions import ProtocolVersion
from krypton.ttlv.enums import (
    CryptographicAlgorithm,
    KeyFormatType,
    ObjectType,
    Operation,
    ResultReason,
    ResultStatus,
)
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag

V14 = ProtocolVersion(1, 4)
V21 = ProtocolVersion(2, 1)
R = ResultReason


@pytest.fixture
def s(start_embedded: Callable[..., Stack]) -> Stack:
    return start_embedded()


def _attributes(version: ProtocolVersion, attrs: list[Attribute]) -> Item:
    if version.v2:
        return attributes_v2(attrs)
    return Item(Tag.TEMPLATE_ATTRIBUTE, ItemType.STRUCTURE, tuple(to_v1(a) for a in attrs))


def _create(s: Stack, version: ProtocolVersion, extra: list[Attribute]) -> ResponseItem:
    """At the gateway: Create is served there, never delegated."""
    item = cm.create_item(version, [*cm.aes_attributes(128), *extra])
    [answer] = s.send(cm.request_message(version, [item])).items
    return answer


def _register(s: Stack, version: ProtocolVersion, extra: list[Attribute]) -> ResponseItem:
    """At the Core: the gateway delegates Register."""
    key = Item.structure(
        Tag.SYMMETRIC_KEY,
        Item.structure(
            Tag.KEY_BLOCK,
            Item.enum(Tag.KEY_FORMAT_TYPE, KeyFormatType.RAW),
            Item.structure(Tag.KEY_VALUE, Item.bytes_(Tag.KEY_MATERIAL, bytes(16))),
            Item.enum(Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm.AES),
            Item.integer(Tag.CRYPTOGRAPHIC_LENGTH, 128),
        ),
    )
    payload = cm.payload(
        Item.enum(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY), _attributes(version, extra), key
    )
    message = cm.request_message(version, [cm.batch_item(Operation.REGISTER, payload)])
    [answer] = s.send(message).items
    return answer


def _text(name: str, tag: int, value: str) -> Attribute:
    return Attribute(name, Item.text(tag, value))


_TWICE = [_text("Description", Tag.DESCRIPTION, "a"), _text("Description", Tag.DESCRIPTION, "b")]
_WRONG_TYPE = [Attribute("Description", Item.integer(Tag.DESCRIPTION, 7))]


@pytest.mark.parametrize(
    ("attrs", "v2_reason"),
    [(_TWICE, R.ATTRIBUTE_SINGLE_VALUED), (_WRONG_TYPE, R.INVALID_ATTRIBUTE_VALUE)],
    ids=["single-valued-twice", "wrong-type"],
)
@pytest.mark.parametrize("version", [V14, V21], ids=str)
def test_gateway_create_and_core_register_give_the_same_reason(
    s: Stack, attrs: list[Attribute], v2_reason: ResultReason, version: ProtocolVersion
) -> None:
    # KMIP 2.1 §11 lists these reasons for Create and Register; KMIP 1.4 §11.2 and
    # §11.4 say Invalid Field ("incorrect attribute value(s) specified").
    want = v2_reason if version.v2 else R.INVALID_FIELD
    answers = [_create(s, version, attrs), _register(s, version, attrs)]
    assert [(a.status, a.reason) for a in answers] == [(ResultStatus.OPERATION_FAILED, want)] * 2


@pytest.mark.parametrize("version", [V14, V21], ids=str)
def test_a_multi_valued_attribute_may_repeat_on_both_sides(
    s: Stack, version: ProtocolVersion
) -> None:
    groups = [Attribute("Object Group", Item.text(Tag.OBJECT_GROUP, g)) for g in ("a", "b")]
    answers = [_create(s, version, groups), _register(s, version, groups)]
    assert [a.status for a in answers] == [ResultStatus.SUCCESS] * 2
