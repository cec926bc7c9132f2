"""How the conformance runner names a difference: paths and values in the XML spelling."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from krypton.errors import KryptonError
from krypton.ttlv.codec import Placeholder
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import XML_NAME_BY_TAG, Tag
from krypton.ttlv.xml import item_to_element

__all__ = [
    "TYPE_NAME",
    "CaseError",
    "Difference",
    "attribute_name",
    "describe",
    "format_item",
    "redacted",
    "scalar_text",
    "tag_name",
]

TYPE_NAME = {t: "".join(w.capitalize() for w in t.name.split("_")) for t in ItemType}


class CaseError(KryptonError):
    """The test case cannot be run as written (malformed, or uses a value never captured)."""


@dataclass(frozen=True, slots=True)
class Difference:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def tag_name(tag: int) -> str:
    name = XML_NAME_BY_TAG.get(tag)
    return name if name is not None else f"TTLV(0x{tag:06X})"


def attribute_name(children: Sequence[Item]) -> str | None:
    """The 1.x ``AttributeName`` among these children (it types the ``AttributeValue``)."""
    for child in children:
        if child.tag == Tag.ATTRIBUTE_NAME and isinstance(child.value, str):
            return child.value
    return None


def scalar_text(item: Item, attribute: str | None = None) -> str:
    value = item.value
    if isinstance(value, Placeholder):
        return str(value)
    if item.type is ItemType.BYTE_STRING and isinstance(value, bytes):
        # Byte strings may be key material: a length and a short fingerprint only.
        return f"[{len(value)} bytes sha256:{hashlib.sha256(value).hexdigest()[:8]}]"
    text = item_to_element(item, attribute).get("value", "")
    return f'"{text}"' if item.type is ItemType.TEXT_STRING else text


def format_item(item: Item, attribute: str | None = None) -> str:
    """``Enumeration Active``, ``TextString "x"``, ``Structure (3 items)``."""
    if item.type is ItemType.STRUCTURE:
        n = len(item.children)
        return f"Structure ({n} item{'' if n == 1 else 's'})"
    return f"{TYPE_NAME[item.type]} {scalar_text(item, attribute)}"


def describe(item: Item, attribute: str | None = None) -> str:
    """A short name for a missing or unexpected item: ``Attribute "State"``, ``TextString "x"``."""
    if item.type is ItemType.STRUCTURE:
        name = attribute_name(item.children)
        return f'{tag_name(item.tag)} "{name}"' if name is not None else tag_name(item.tag)
    return format_item(item, attribute)


def redacted(item: Item) -> Item:
    """``item`` with every byte string replaced by its length and fingerprint (for display)."""
    if item.type is ItemType.STRUCTURE:
        return Item(item.tag, item.type, tuple(redacted(c) for c in item.children))
    if item.type is ItemType.BYTE_STRING and isinstance(item.value, bytes):
        return Item(item.tag, item.type, Placeholder(scalar_text(item)))
    return item
