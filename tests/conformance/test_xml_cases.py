"""Every OASIS KMIP XML test case parses, survives TTLV and XML round trips.

Placeholders (``$NOW``, ``$UNIQUE_IDENTIFIER_0``...) are replaced by dummy
values of the item's type before encoding, since TTLV has no way to carry them.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from tests.helpers.oasis import CASES, needs_cases

from krypton.ttlv.codec import EncodeError, Placeholder, decode, encode
from krypton.ttlv.enums import CryptographicAlgorithm, CryptographicUsageMask, ObjectType, State
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag
from krypton.ttlv.xml import (
    XmlError,
    item_from_xml,
    item_to_xml,
    map_placeholders,
    parse_case_file,
)

CASES_DIR = CASES
pytestmark = needs_cases
CASE_FILES = sorted(CASES_DIR.rglob("*.xml"))

DUMMIES: dict[ItemType, int | bool | str | bytes] = {
    ItemType.INTEGER: 7,
    ItemType.LONG_INTEGER: 7,
    ItemType.BIG_INTEGER: 7,
    ItemType.ENUMERATION: 1,
    ItemType.BOOLEAN: True,
    ItemType.TEXT_STRING: "dummy",
    ItemType.BYTE_STRING: b"\x00\x01",
    ItemType.DATE_TIME: 1_700_000_000,
    ItemType.INTERVAL: 7,
    ItemType.DATE_TIME_EXTENDED: 1_700_000_000_000_000,
}


def dummy(item: Item) -> Item:
    return Item(item.tag, item.type, DUMMIES[item.type])


def has_placeholder(item: Item) -> bool:
    if item.type is ItemType.STRUCTURE:
        return any(has_placeholder(c) for c in item.children)
    return isinstance(item.value, Placeholder)


def test_case_files_are_present() -> None:
    assert len(CASE_FILES) > 300, f"expected the OASIS test cases under {CASES_DIR}"


@pytest.mark.parametrize("path", CASE_FILES, ids=lambda p: str(p.relative_to(CASES_DIR)))
def test_case_file_round_trips(path: Path) -> None:
    messages = parse_case_file(path)
    assert messages
    assert {kind for kind, _ in messages} <= {"request", "response"}
    for kind, item in messages:
        expected_tag = Tag.REQUEST_MESSAGE if kind == "request" else Tag.RESPONSE_MESSAGE
        assert item.tag == expected_tag
        assert item_from_xml(ET.fromstring(item_to_xml(item))) == item
        concrete = map_placeholders(item, dummy)
        assert not has_placeholder(concrete)
        if has_placeholder(item):
            with pytest.raises(EncodeError, match="placeholder"):
                encode(item)
        assert decode(encode(concrete)) == concrete


# -- focused checks on the format ---------------------------------------------------
def parse(text: str) -> Item:
    return item_from_xml(ET.fromstring(text))


def test_enumeration_by_name_and_hex() -> None:
    assert parse('<ObjectType type="Enumeration" value="SymmetricKey"/>') == Item.enum(
        Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY
    )
    assert parse('<ObjectType type="Enumeration" value="0x00000002"/>').value == 2
    assert parse('<OpaqueDataType type="Enumeration" value="0x80000001"/>').value == 0x80000001
    with pytest.raises(XmlError):
        parse('<ObjectType type="Enumeration" value="NoSuchThing"/>')


def test_attribute_value_resolved_by_sibling_attribute_name() -> None:
    attr = parse(
        "<Attribute>"
        '<AttributeName type="TextString" value="Cryptographic Algorithm"/>'
        '<AttributeValue type="Enumeration" value="AES"/>'
        "</Attribute>"
    )
    assert attr.children[1].value == CryptographicAlgorithm.AES
    state = parse(
        "<Attribute>"
        '<AttributeName type="TextString" value="State"/>'
        '<AttributeValue type="Enumeration" value="PreActive"/>'
        "</Attribute>"
    )
    assert state.children[1].value == State.PRE_ACTIVE
    mask = parse(
        "<Attribute>"
        '<AttributeName type="TextString" value="Cryptographic Usage Mask"/>'
        '<AttributeValue type="Integer" value="Encrypt   Decrypt"/>'
        "</Attribute>"
    )
    usage = CryptographicUsageMask.ENCRYPT | CryptographicUsageMask.DECRYPT
    assert mask.children[1].value == int(usage)
    assert 'value="Encrypt Decrypt"' in item_to_xml(mask)


def test_mask_by_tag_and_attribute_reference_by_tag_name() -> None:
    mask = parse('<CryptographicUsageMask type="Integer" value="Sign Verify"/>')
    assert mask.value == 3
    ref = parse('<AttributeReference type="Enumeration" value="ActivationDate"/>')
    assert ref.value == Tag.ACTIVATION_DATE
    assert 'value="ActivationDate"' in item_to_xml(ref)


def test_scalar_types() -> None:
    assert parse('<BatchCount type="Integer" value="-3"/>').value == -3
    assert parse('<Sensitive type="Boolean" value="false"/>').value is False
    assert parse('<KeyMaterial type="ByteString" value="00ff"/>').value == b"\x00\xff"
    when = parse('<ActivationDate type="DateTime" value="2008-03-14T11:56:40+00:00"/>')
    assert when.value == 1205495800
    assert parse('<ActivationDate type="DateTime" value="2008-03-14T21:56:40+10:00"/>') == when
    assert parse('<ActivationDate type="DateTime" value="2008-03-14T11:56:40Z"/>') == when
    assert 'value="2008-03-14T11:56:40+00:00"' in item_to_xml(when)
    assert parse('<LeaseTime type="Interval" value="3600"/>').value == 3600
    assert parse('<Modulus type="BigInteger" value="0000000000010001"/>').value == 65537
    assert parse('<UsageLimitsTotal type="LongInteger" value="16"/>').value == 16


def test_placeholders_kept_as_placeholders() -> None:
    for text, itype in [
        ('<UniqueIdentifier type="TextString" value="$UNIQUE_IDENTIFIER_0"/>', "TEXT_STRING"),
        ('<TimeStamp type="DateTime" value="$NOW-3600"/>', "DATE_TIME"),
        ('<KeyMaterial type="ByteString" value="$KEY_MATERIAL_0"/>', "BYTE_STRING"),
    ]:
        item = parse(text)
        assert isinstance(item.value, Placeholder)
        assert item.type.name == itype
        assert item_from_xml(ET.fromstring(item_to_xml(item))) == item


def test_vendor_tags_use_ttlv_element() -> None:
    item = Item.structure(0x540001, Item.text(0x540002, "x"), Item.enum(0x540003, 5))
    text = item_to_xml(item)
    assert 'tag="0x540001"' in text
    assert parse(text) == item


def test_bad_xml_is_an_xml_error() -> None:
    for text in (
        '<NoSuchTag type="Integer" value="1"/>',
        '<BatchCount type="Float" value="1"/>',
        '<BatchCount type="Integer"/>',
        '<BatchCount type="Integer" value="many"/>',
        '<Sensitive type="Boolean" value="maybe"/>',
        '<KeyMaterial type="ByteString" value="zz"/>',
        '<ActivationDate type="DateTime" value="yesterday"/>',
    ):
        with pytest.raises(XmlError):
            parse(text)
