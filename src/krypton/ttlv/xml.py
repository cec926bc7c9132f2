"""The OASIS KMIP XML test-case format <-> :class:`Item` trees.

How this works
--------------
Each element is one item: the element name is the tag in the XML spelling
(``UniqueBatchItemID``; unknown/vendor tags as ``<TTLV tag="0x540001" .../>``),
``type`` is the item type (``TextString``, ``Enumeration``...; absent for a
Structure, whose children are its elements) and ``value`` is the value as
text. Enumerations are written by name (``SymmetricKey``) or hex, and the name
is resolved through the tag's enumeration (``ENUM_BY_TAG``). Masks are Integers
written as space-separated names (``"Encrypt Decrypt"``). A KMIP 1.x
``AttributeValue`` has no enumeration of its own: its sibling
``AttributeName`` (``"Cryptographic Algorithm"``) selects it. The 2.x
``AttributeReference`` enumerates tags, so its values are tag names.

Test cases contain placeholders (``$NOW``, ``$UNIQUE_IDENTIFIER_0``,
``$NOW-3600``) in place of values the server chooses. Any value of that form
becomes a :class:`~krypton.ttlv.codec.Placeholder` (a ``str``) in the tree,
whatever the item type; :func:`map_placeholders` substitutes them and
``encode`` refuses any left over.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from enum import Enum
from functools import cache
from pathlib import Path

from krypton.errors import InvalidMessage
from krypton.ttlv.codec import Placeholder, big_integer_size
from krypton.ttlv.enums import (
    ENUM_BY_ATTRIBUTE_NAME,
    ENUM_BY_TAG,
    MASK_BY_ATTRIBUTE_NAME,
    MASK_BY_TAG,
    XML_VALUES,
)
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import TAG_BY_XML_NAME, XML_NAME_BY_TAG, Tag

__all__ = [
    "XmlError",
    "item_from_xml",
    "item_to_element",
    "item_to_xml",
    "map_placeholders",
    "parse_case_file",
]


class XmlError(InvalidMessage):
    """The XML does not describe a valid TTLV item."""


_TYPE_BY_NAME: dict[str, ItemType] = {
    "Structure": ItemType.STRUCTURE,
    "Integer": ItemType.INTEGER,
    "LongInteger": ItemType.LONG_INTEGER,
    "BigInteger": ItemType.BIG_INTEGER,
    "Enumeration": ItemType.ENUMERATION,
    "Boolean": ItemType.BOOLEAN,
    "TextString": ItemType.TEXT_STRING,
    "ByteString": ItemType.BYTE_STRING,
    "DateTime": ItemType.DATE_TIME,
    "Interval": ItemType.INTERVAL,
    "DateTimeExtended": ItemType.DATE_TIME_EXTENDED,
}
_NAME_BY_TYPE = {t: n for n, t in _TYPE_BY_NAME.items()}
_PLACEHOLDER = re.compile(r"^\$[A-Z][A-Z0-9_]*(?:[+-]\d+)?$")
_INT = re.compile(r"^[+-]?(?:0[xX][0-9a-fA-F]+|\d+)$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ATTRIBUTE_VALUE = int(Tag.ATTRIBUTE_VALUE)
_ATTRIBUTE_NAME = int(Tag.ATTRIBUTE_NAME)


# -- value tables ---------------------------------------------------------------
@cache
def _names_by_value(cls: type[Enum]) -> dict[int, str]:
    out: dict[int, str] = {}
    for name, value in XML_VALUES.get(cls, {}).items():
        out.setdefault(value, name)
    return out


def _enum_class(tag: int, attribute_name: str | None) -> type[Enum] | None:
    if tag == _ATTRIBUTE_VALUE and attribute_name is not None:
        return ENUM_BY_ATTRIBUTE_NAME.get(attribute_name)
    return ENUM_BY_TAG.get(tag)


def _enum_values(tag: int, attribute_name: str | None) -> dict[str, int] | None:
    cls = _enum_class(tag, attribute_name)
    if cls is Tag:
        return TAG_BY_XML_NAME
    return XML_VALUES.get(cls) if cls is not None else None


def _enum_names(tag: int, attribute_name: str | None) -> dict[int, str]:
    cls = _enum_class(tag, attribute_name)
    if cls is Tag:
        return XML_NAME_BY_TAG
    return _names_by_value(cls) if cls is not None else {}


def _mask_class(tag: int, attribute_name: str | None) -> type[Enum] | None:
    if tag == _ATTRIBUTE_VALUE and attribute_name is not None:
        return MASK_BY_ATTRIBUTE_NAME.get(attribute_name)
    return MASK_BY_TAG.get(tag)


def _int(text: str) -> int:
    digits = text.lstrip("+-")
    value = int(digits[2:], 16) if digits[:2] in ("0x", "0X") else int(digits)
    return -value if text.startswith("-") else value


# -- XML -> Item ----------------------------------------------------------------
def _tag_of(element: ET.Element) -> int:
    if element.tag == "TTLV":
        raw = element.get("tag", "")
        try:
            return int(raw, 16)
        except ValueError:
            raise XmlError(f"bad TTLV tag attribute {raw!r}") from None
    tag = TAG_BY_XML_NAME.get(element.tag)
    if tag is None:
        raise XmlError(f"unknown tag name {element.tag!r}")
    return tag


def _value(
    tag: int, itype: ItemType, text: str, attribute_name: str | None
) -> int | bool | str | bytes:
    if itype is ItemType.TEXT_STRING:
        return text
    if itype is ItemType.BYTE_STRING:
        return bytes.fromhex(text)
    if itype is ItemType.BOOLEAN:
        flag = text.strip().lower()
        if flag not in ("true", "false", "1", "0"):
            raise ValueError(f"bad Boolean {text!r}")
        return flag in ("true", "1")
    if itype is ItemType.BIG_INTEGER:
        digits = text[2:] if text[:2].lower() == "0x" else text
        return int.from_bytes(bytes.fromhex(digits), "big", signed=True) if digits else 0
    if itype in (ItemType.DATE_TIME, ItemType.DATE_TIME_EXTENDED):
        if _INT.match(text):
            return _int(text)
        when = datetime.fromisoformat(text)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        unit = timedelta(seconds=1) if itype is ItemType.DATE_TIME else timedelta(microseconds=1)
        return (when - _EPOCH) // unit
    if _INT.match(text):
        return _int(text)
    if itype is ItemType.ENUMERATION:
        table = _enum_values(tag, attribute_name)
        if table is None or text not in table:
            raise ValueError(f"unknown enumeration value {text!r}")
        return table[text]
    if itype is ItemType.INTEGER:
        mask = _mask_class(tag, attribute_name)
        names = XML_VALUES.get(mask) if mask is not None else None
        if names is None:
            raise ValueError(f"bad Integer {text!r}")
        total = 0
        for word in text.split():
            if word not in names:
                raise ValueError(f"unknown mask bit {word!r}")
            total |= names[word]
        return total
    raise ValueError(f"bad {itype.name} {text!r}")


def item_from_xml(element: ET.Element, attribute_name: str | None = None) -> Item:
    """The item an XML element describes. ``attribute_name`` is the 1.x
    ``AttributeName`` of the enclosing Attribute (needed for ``AttributeValue``)."""
    tag = _tag_of(element)
    type_name = element.get("type", "Structure")
    itype = _TYPE_BY_NAME.get(type_name)
    if itype is None:
        raise XmlError(f"{element.tag}: unknown type {type_name!r}")
    if itype is ItemType.STRUCTURE:
        children = list(element)
        names = [c.get("value") for c in children if c.tag == "AttributeName"]
        name = names[0] if names else None
        return Item(tag, itype, tuple(item_from_xml(c, name) for c in children))
    if len(element):
        raise XmlError(f"{element.tag}: a {type_name} has no child elements")
    text = element.get("value")
    if text is None:
        raise XmlError(f"{element.tag}: missing value")
    if _PLACEHOLDER.match(text):
        return Item(tag, itype, Placeholder(text))
    try:
        return Item(tag, itype, _value(tag, itype, text, attribute_name))
    except (ValueError, OverflowError) as exc:
        raise XmlError(f"{element.tag}: {exc}") from None


def parse_case_file(path: str | Path) -> list[tuple[str, Item]]:
    """The messages of one test-case file: ("request" | "response", item) in file order."""
    try:
        root = ET.parse(path).getroot()  # noqa: S314 - trusted test vectors
    except ET.ParseError as exc:
        raise XmlError(f"{path}: {exc}") from None
    out: list[tuple[str, Item]] = []
    for element in root:
        if element.tag == "RequestMessage":
            out.append(("request", item_from_xml(element)))
        elif element.tag == "ResponseMessage":
            out.append(("response", item_from_xml(element)))
        else:
            raise XmlError(f"{path}: unexpected element {element.tag!r}")
    return out


# -- Item -> XML ------------------------------------------------------------------
def _text(item: Item, attribute_name: str | None) -> str:
    v = item.value
    itype = item.type
    if isinstance(v, Placeholder):
        return str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v
    if isinstance(v, bytes | bytearray):
        return v.hex()
    if not isinstance(v, int):
        raise XmlError(f"0x{item.tag:06X}: value {type(v).__name__} has no XML form")
    if itype is ItemType.BIG_INTEGER:
        return v.to_bytes(big_integer_size(v), "big", signed=True).hex()
    if itype in (ItemType.DATE_TIME, ItemType.DATE_TIME_EXTENDED):
        unit = "seconds" if itype is ItemType.DATE_TIME else "microseconds"
        try:
            return (_EPOCH + timedelta(**{unit: v})).isoformat()
        except OverflowError:
            return str(v)
    if itype is ItemType.ENUMERATION:
        name = _enum_names(item.tag, attribute_name).get(v)
        return name if name is not None else f"0x{v:08X}"
    if itype is ItemType.INTEGER and v > 0:
        mask = _mask_class(item.tag, attribute_name)
        if mask is not None:
            names = _names_by_value(mask)
            bits = [1 << i for i in range(32) if v >> i & 1]
            if all(b in names for b in bits):
                return " ".join(names[b] for b in bits)
    return str(v)


def item_to_element(item: Item, attribute_name: str | None = None) -> ET.Element:
    name = XML_NAME_BY_TAG.get(item.tag)
    element = ET.Element(name if name is not None else "TTLV")
    if name is None:
        element.set("tag", f"0x{item.tag:06X}")
    if item.type is ItemType.STRUCTURE:
        children = item.children
        names = [c.value for c in children if c.tag == _ATTRIBUTE_NAME]
        child_name = names[0] if names and isinstance(names[0], str) else None
        element.extend(item_to_element(c, child_name) for c in children)
        return element
    element.set("type", _NAME_BY_TYPE[item.type])
    element.set("value", _text(item, attribute_name))
    return element


def item_to_xml(item: Item) -> str:
    """The item as XML text, in the test-case format (indented)."""
    element = item_to_element(item)
    ET.indent(element)
    return ET.tostring(element, encoding="unicode")


def map_placeholders(item: Item, replace: Callable[[Item], Item]) -> Item:
    """A copy of ``item`` with every placeholder item replaced by ``replace(item)``."""
    if item.type is ItemType.STRUCTURE:
        children = item.children
        new = tuple(map_placeholders(c, replace) for c in children)
        if all(a is b for a, b in zip(new, children, strict=True)):
            return item
        return Item(item.tag, item.type, new)
    return replace(item) if isinstance(item.value, Placeholder) else item
