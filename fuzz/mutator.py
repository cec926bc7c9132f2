"""A structure-aware mutator: half the time, change a decoded TTLV tree and re-encode it.

How this works
--------------
libFuzzer's byte mutations rarely keep a KMIP message valid past its first
length field, so the dispatcher would mostly see undecodable bytes. Here an
input that decodes is changed one node at a time -- a leaf's value set to an
edge value (0, -1, 2^31-1, a known key identifier, an empty string), a child
dropped, duplicated or swapped with its neighbour, a leaf's tag swapped for
one of the message's other tags, an enumeration set to another value -- and
encoded again, so every length stays right and the change reaches the parser
and the handlers. The other half (and anything that does not decode) goes to
the byte mutator libFuzzer provides (``fallback``).
"""

from __future__ import annotations

import random
from collections.abc import Callable

from krypton.errors import KryptonError
from krypton.ttlv.codec import decode, encode
from krypton.ttlv.item import Item, ItemType

__all__ = ["mutate"]

_S = ItemType.STRUCTURE
_INTS = (0, 1, -1, 2, 7, 8, 16, 128, 256, 4096, 65536, (1 << 31) - 1, -(1 << 31))
_TEXTS = ("", "k1", "k3", "k4", "k5", "k999", "x" * 300, "\u00e9")
_BYTES = (b"", b"\x00", b"\x01" * 8, bytes(range(33)))


def _leaf_value(item: Item, rng: random.Random) -> int | bool | str | bytes:
    t = item.type
    if t is ItemType.TEXT_STRING:
        return rng.choice(_TEXTS)
    if t is ItemType.BYTE_STRING:
        return rng.choice(_BYTES)
    if t is ItemType.BOOLEAN:
        return rng.random() < 0.5
    if t in (ItemType.ENUMERATION, ItemType.INTERVAL):
        return rng.choice((0, 1, 2, 3, 0xFF, 0x8000_0000, rng.randrange(1 << 32)))
    if t in (ItemType.LONG_INTEGER, ItemType.DATE_TIME, ItemType.DATE_TIME_EXTENDED):
        return rng.choice((0, -1, 1 << 62, rng.randrange(-(1 << 63), 1 << 63)))
    if t is ItemType.BIG_INTEGER:
        return rng.choice((0, -1, 1 << 200))
    return rng.choice(_INTS)


def _nodes(item: Item, path: tuple[int, ...], out: list[tuple[tuple[int, ...], Item]]) -> None:
    out.append((path, item))
    if item.type is _S:
        for i, child in enumerate(item.children):
            _nodes(child, (*path, i), out)


def _replace(root: Item, path: tuple[int, ...], new: tuple[Item, ...]) -> Item:
    """``root`` with the node at ``path`` replaced by ``new`` (zero or more items)."""
    if not path:
        return new[0] if new else root
    children = list(root.children)
    i = path[0]
    if len(path) == 1:
        children[i : i + 1] = new
    else:
        children[i] = _replace(children[i], path[1:], new)
    return Item(root.tag, _S, tuple(children))


def _mutate_tree(root: Item, rng: random.Random) -> Item:
    nodes: list[tuple[tuple[int, ...], Item]] = []
    _nodes(root, (), nodes)
    path, node = rng.choice(nodes)
    op = rng.randrange(5)
    if op == 0 and node.type is not _S:
        return _replace(root, path, (Item(node.tag, node.type, _leaf_value(node, rng)),))
    if op == 1 and path:
        return _replace(root, path, ())
    if op == 2 and path:
        return _replace(root, path, (node, node))
    if op == 3 and path:
        other_path, other = rng.choice(nodes)
        if other_path and other_path[:-1] != path and not _under(path, other_path):
            return _replace(root, path, (other,))
    if op == 4 and node.type is not _S:
        tag = rng.choice(nodes)[1].tag
        return _replace(root, path, (Item(tag, node.type, node.value),))
    if node.type is _S and len(node.children) >= 2:
        kids = list(node.children)
        i = rng.randrange(len(kids) - 1)
        kids[i], kids[i + 1] = kids[i + 1], kids[i]
        return _replace(root, path, (Item(node.tag, _S, tuple(kids)),))
    return root


def _under(path: tuple[int, ...], other: tuple[int, ...]) -> bool:
    return other[: len(path)] == path


def mutate(data: bytes, max_size: int, seed: int, fallback: Callable[[bytes, int], bytes]) -> bytes:
    """One mutation of ``data`` no longer than ``max_size``."""
    rng = random.Random(seed)
    if rng.random() < 0.5:
        return fallback(data, max_size)
    try:
        root = decode(data)
    except KryptonError:
        return fallback(data, max_size)
    for _ in range(1 + rng.randrange(3)):
        root = _mutate_tree(root, rng)
    try:
        out = encode(root)
    except KryptonError:
        return fallback(data, max_size)
    return out if len(out) <= max_size else fallback(data, max_size)
