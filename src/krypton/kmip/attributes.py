"""Managed-object attributes in one canonical form, read and written in both KMIP dialects.

How this works
--------------
KMIP 1.x carries attributes as ``Attribute { Attribute Name (text),
[Attribute Index], Attribute Value }`` inside a Template-Attribute; custom
attributes are named ``x-...`` (client) or ``y-...`` (server). KMIP 2.x carries
them as items tagged with the attribute's own tag inside ``Attributes``, and
custom ones as ``Attribute { Vendor Identification, Attribute Name, Attribute
Value }``; vendor ``x``/``y`` are the 1.x custom attributes.

The canonical :class:`Attribute` has a *name* (the spec name, e.g.
``"Cryptographic Length"``, or ``"x-Foo"`` for a custom attribute) and a *value*:
a TTLV item carrying the attribute's own tag for standard attributes and
``Attribute Value`` for custom ones. Converting between the dialects only
swaps the outer tag; nested items (a Name's Name Value and Name Type) are the
same in both.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from krypton.errors import InvalidField, InvalidMessage
from krypton.kmip.messages import fields
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import SPEC_NAME_BY_TAG, TAG_BY_SPEC_NAME, Tag

_S = ItemType.STRUCTURE
_TEXT = ItemType.TEXT_STRING


@dataclass(frozen=True, slots=True)
class Attribute:
    name: str
    value: Item
    index: int = 0

    @property
    def custom(self) -> bool:
        return self.name not in TAG_BY_SPEC_NAME

    @property
    def tag(self) -> int:
        return TAG_BY_SPEC_NAME.get(self.name, Tag.ATTRIBUTE_VALUE)


def _split_vendor(name: str) -> tuple[str, str]:
    vendor, sep, rest = name.partition("-")
    if not sep or not vendor:
        return "x", name
    return vendor, rest


def canonical_name(name: str) -> str:
    """Accept a spec name, or a custom name; reject anything else."""
    if name in TAG_BY_SPEC_NAME:
        return name
    vendor, sep, rest = name.partition("-")
    if sep and vendor and rest:
        return name
    raise InvalidField(f"unknown attribute name {name!r}")


def known_name(tag: int) -> str:
    """The spec name of a tag the tables know; any other tag is an Invalid Field."""
    name = SPEC_NAME_BY_TAG.get(tag)
    if name is None:
        raise InvalidField(f"unknown attribute tag 0x{tag:06X}")
    return name


def retag(item: Item, tag: int) -> Item:
    return item if item.tag == tag else Item(tag, item.type, item.value)


# -- KMIP 1.x -------------------------------------------------------------------
def parse_v1(item: Item) -> Attribute:
    """One 1.x ``Attribute`` structure."""
    f = fields(item, "Attribute")
    name_item = f.get(Tag.ATTRIBUTE_NAME)
    if name_item is None or name_item.type is not _TEXT or not isinstance(name_item.value, str):
        raise InvalidMessage("Attribute: Attribute Name is missing or not text")
    name = canonical_name(name_item.value)
    value = f.get(Tag.ATTRIBUTE_VALUE)
    if value is None:
        raise InvalidField(f"attribute {name!r}: Attribute Value is missing")
    index_item = f.get(Tag.ATTRIBUTE_INDEX)
    index = index_item.value if index_item is not None and isinstance(index_item.value, int) else 0
    attr = Attribute(name, value, int(index))
    return Attribute(name, retag(value, attr.tag), attr.index)


def to_v1(attr: Attribute, *, with_index: bool = False) -> Item:
    out = [Item.text(Tag.ATTRIBUTE_NAME, attr.name)]
    if with_index:
        out.append(Item.integer(Tag.ATTRIBUTE_INDEX, attr.index))
    out.append(retag(attr.value, Tag.ATTRIBUTE_VALUE))
    return Item(Tag.ATTRIBUTE, _S, tuple(out))


def parse_template_attribute(item: Item) -> list[Attribute]:
    """A 1.x Template-Attribute (or Common/Private/Public Template-Attribute)."""
    if item.type is not _S:
        raise InvalidMessage("Template-Attribute: expected a structure")
    out: list[Attribute] = []
    for child in item.children:
        if child.tag == Tag.ATTRIBUTE:
            out.append(parse_v1(child))
        elif child.tag == Tag.NAME:
            raise InvalidField("templates are not supported: reference by Name is not allowed")
    return out


# -- KMIP 2.x -------------------------------------------------------------------
def parse_v2(item: Item) -> Attribute:
    """One child of a 2.x ``Attributes`` structure."""
    if item.tag == Tag.ATTRIBUTE:
        f = fields(item, "Attribute")
        vendor = f.get(Tag.VENDOR_IDENTIFICATION)
        name = f.get(Tag.ATTRIBUTE_NAME)
        value = f.get(Tag.ATTRIBUTE_VALUE)
        if vendor is None or name is None:
            # Some clients send the 1.x form inside Attributes; accept it.
            return parse_v1(item)
        if not isinstance(vendor.value, str) or not isinstance(name.value, str):
            raise InvalidMessage("Vendor Attribute: identification and name must be text")
        if value is None:
            raise InvalidField("Vendor Attribute: Attribute Value is missing")
        return Attribute(f"{vendor.value}-{name.value}", retag(value, Tag.ATTRIBUTE_VALUE))
    return Attribute(known_name(item.tag), item)


def to_v2(attr: Attribute) -> Item:
    if not attr.custom:
        return attr.value
    vendor, name = _split_vendor(attr.name)
    return Item.structure(
        Tag.ATTRIBUTE,
        Item.text(Tag.VENDOR_IDENTIFICATION, vendor),
        Item.text(Tag.ATTRIBUTE_NAME, name),
        retag(attr.value, Tag.ATTRIBUTE_VALUE),
    )


def parse_attributes(item: Item) -> list[Attribute]:
    if item.type is not _S:
        raise InvalidMessage("Attributes: expected a structure")
    return [parse_v2(child) for child in item.children]


def attributes_v2(attrs: Iterable[Attribute], tag: int = Tag.ATTRIBUTES) -> Item:
    return Item(tag, _S, tuple(to_v2(a) for a in attrs))


def reference_v2(attr_name: str) -> Item:
    """A 2.x Attribute Reference naming an attribute."""
    tag = TAG_BY_SPEC_NAME.get(attr_name)
    if tag is not None:
        return Item.enum(Tag.ATTRIBUTE_REFERENCE, tag)
    vendor, name = _split_vendor(attr_name)
    return Item.structure(
        Tag.ATTRIBUTE_REFERENCE,
        Item.text(Tag.VENDOR_IDENTIFICATION, vendor),
        Item.text(Tag.ATTRIBUTE_NAME, name),
    )


def parse_reference(item: Item) -> str:
    """An attribute selector from a request: 1.x name text or 2.x reference."""
    if item.type is _TEXT and isinstance(item.value, str):
        return item.value
    if item.type is ItemType.ENUMERATION and isinstance(item.value, int):
        return known_name(item.value)
    if item.type is _S:
        f = fields(item, "Attribute Reference")
        vendor = f.get(Tag.VENDOR_IDENTIFICATION)
        name = f.get(Tag.ATTRIBUTE_NAME)
        if (
            vendor is not None
            and name is not None
            and isinstance(vendor.value, str)
            and isinstance(name.value, str)
        ):
            return f"{vendor.value}-{name.value}"
    raise InvalidMessage("Attribute Reference: malformed")
