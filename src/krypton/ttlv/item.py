"""The TTLV item model: one frozen node type for every KMIP value.

A decoded message is a tree of :class:`Item`. The Python type of ``value``
follows the item type:

=====================  ==========================================
Structure              ``tuple[Item, ...]``
Integer, Long Integer  ``int``
Big Integer            ``int`` (two's complement on the wire)
Enumeration            ``int``
Interval               ``int`` (seconds)
Date-Time              ``int`` (seconds since the POSIX epoch)
Date-Time Extended     ``int`` (microseconds since the POSIX epoch)
Boolean                ``bool``
Text String            ``str``
Byte String            ``bytes``
=====================  ==========================================

Tags are plain ``int`` (a :class:`krypton.ttlv.tags.Tag` is one), so vendor
extension tags (0x54xxxx) that no table names still decode and re-encode.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum


class ItemType(IntEnum):
    STRUCTURE = 0x01
    INTEGER = 0x02
    LONG_INTEGER = 0x03
    BIG_INTEGER = 0x04
    ENUMERATION = 0x05
    BOOLEAN = 0x06
    TEXT_STRING = 0x07
    BYTE_STRING = 0x08
    DATE_TIME = 0x09
    INTERVAL = 0x0A
    DATE_TIME_EXTENDED = 0x0B


Value = tuple["Item", ...] | int | bool | str | bytes


@dataclass(frozen=True, slots=True)
class Item:
    tag: int
    type: ItemType
    value: Value

    # -- construction helpers -------------------------------------------------
    @staticmethod
    def structure(tag: int, *children: Item) -> Item:
        return Item(tag, ItemType.STRUCTURE, tuple(children))

    @staticmethod
    def integer(tag: int, value: int) -> Item:
        return Item(tag, ItemType.INTEGER, value)

    @staticmethod
    def enum(tag: int, value: int) -> Item:
        return Item(tag, ItemType.ENUMERATION, int(value))

    @staticmethod
    def text(tag: int, value: str) -> Item:
        return Item(tag, ItemType.TEXT_STRING, value)

    @staticmethod
    def bytes_(tag: int, value: bytes) -> Item:
        return Item(tag, ItemType.BYTE_STRING, value)

    @staticmethod
    def boolean(tag: int, value: bool) -> Item:
        return Item(tag, ItemType.BOOLEAN, value)

    @staticmethod
    def datetime(tag: int, value: int) -> Item:
        return Item(tag, ItemType.DATE_TIME, value)

    # -- navigation (structures only) -----------------------------------------
    @property
    def children(self) -> tuple[Item, ...]:
        v = self.value
        if self.type is not ItemType.STRUCTURE or not isinstance(v, tuple):
            return ()
        return v

    def find(self, tag: int) -> Item | None:
        for child in self.children:
            if child.tag == tag:
                return child
        return None

    def find_all(self, tag: int) -> Iterator[Item]:
        return (c for c in self.children if c.tag == tag)

    def __repr__(self) -> str:
        # Byte strings may be key material: never show their contents.
        if self.type is ItemType.BYTE_STRING:
            shown = f"<{len(self.value)} bytes>"  # type: ignore[arg-type]
        elif self.type is ItemType.STRUCTURE:
            shown = f"<{len(self.children)} items>"
        else:
            shown = repr(self.value)
        return f"Item(0x{self.tag:06X}, {self.type.name}, {shown})"
