"""Seed inputs for the fuzz targets: real request (and response) messages.

``python -m fuzz.seeds OUTDIR [--oasis DIR]`` writes one file per message
(named by its SHA-1): requests built with :mod:`krypton.kmip.client_messages`
for every supported version -- plain and decorated Gets and Creates of the
keys :func:`fuzz.properties.open_env` makes, batches, the other local
operations -- the answers our dispatcher gives them, and, with ``--oasis``,
every request and response of the OASIS XML test cases under DIR (by
default ``KRYPTON_KMIP_CASES``, see :mod:`krypton.conformance.oasis`, when it
exists) converted to TTLV by :mod:`krypton.ttlv.xml`, placeholders filled in. The seeds are not
committed; ``make fuzz-corpus`` merges them into the minimised corpus under
``fuzz/corpus/<target>``.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import tempfile
from collections.abc import Iterator
from pathlib import Path

from fuzz.properties import NOW, Env, close_env, open_env
from krypton.conformance.oasis import test_cases_dir
from krypton.errors import KryptonError
from krypton.kmip import client_messages as cm
from krypton.kmip.versions import SUPPORTED, ProtocolVersion
from krypton.ttlv.codec import Placeholder, encode
from krypton.ttlv.enums import (
    BatchErrorContinuationOption,
    KeyFormatType,
    Operation,
)
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag
from krypton.ttlv.xml import XmlError, map_placeholders, parse_case_file

__all__ = ["oasis_messages", "our_requests"]


def _one(version: ProtocolVersion, item: Item, **header: object) -> bytes:
    return encode(cm.request_message(version, [item], **header))  # type: ignore[arg-type]


def our_requests() -> Iterator[bytes]:
    """Requests made with our client message builders."""
    for version in SUPPORTED:
        for uid, bid, fmt, mrs, ts in itertools.product(
            ("k1", "k3", "k4", "k5", "none"),
            (None, b"\x01", b"12345678x"),
            (None, KeyFormatType.RAW, KeyFormatType.TRANSPARENT_SYMMETRIC_KEY),
            (None, 4096),
            (None, NOW - 5),
        ):
            get_fields = [Item.text(Tag.UNIQUE_IDENTIFIER, uid)]
            if fmt is not None:
                get_fields.append(Item.enum(Tag.KEY_FORMAT_TYPE, fmt))
            item = cm.batch_item(Operation.GET, cm.payload(*get_fields), bid)
            yield _one(version, item, max_response_size=mrs, time_stamp=ts)
        for length, bid in itertools.product((128, 256), (None, b"\x02")):
            yield _one(version, cm.create_item(version, cm.aes_attributes(length), bid))
            yield _one(version, cm.create_item(version, cm.aes_attributes(length, name="n"), bid))
        yield encode(
            cm.request_message(
                version,
                [cm.create_item(version, cm.aes_attributes(), b"a"), cm.get_item(None, b"b")],
            )
        )
        for option in BatchErrorContinuationOption:
            yield encode(
                cm.request_message(
                    version,
                    [cm.get_item("none", b"a"), cm.create_item(version, cm.aes_attributes())],
                    continuation=option,
                )
            )
        others: list[tuple[Operation, tuple[Item, ...]]] = [
            (Operation.DISCOVER_VERSIONS, ()),
            (Operation.QUERY, (Item.enum(Tag.QUERY_FUNCTION, 1), Item.enum(Tag.QUERY_FUNCTION, 3))),
            (Operation.GET_ATTRIBUTES, (Item.text(Tag.UNIQUE_IDENTIFIER, "k3"),)),
            (Operation.GET_ATTRIBUTE_LIST, (Item.text(Tag.UNIQUE_IDENTIFIER, "k3"),)),
            (Operation.RNG_RETRIEVE, (Item.integer(Tag.DATA_LENGTH, 16),)),
            (
                Operation.ENCRYPT,
                (Item.text(Tag.UNIQUE_IDENTIFIER, "k3"), Item.bytes_(Tag.DATA, b"hello")),
            ),
            (Operation.LOCATE, ()),
        ]
        for op, fields in others:
            yield _one(version, cm.batch_item(op, cm.payload(*fields)))


_FILL: dict[ItemType, int | bool | str | bytes] = {
    ItemType.TEXT_STRING: "k3",
    ItemType.BYTE_STRING: b"\x00" * 16,
    ItemType.INTEGER: 0,
    ItemType.LONG_INTEGER: NOW,
    ItemType.BIG_INTEGER: 1,
    ItemType.ENUMERATION: 1,
    ItemType.BOOLEAN: True,
    ItemType.DATE_TIME: NOW,
    ItemType.INTERVAL: 3600,
    ItemType.DATE_TIME_EXTENDED: NOW * 1_000_000,
}


def _fill(item: Item) -> Item:
    assert isinstance(item.value, Placeholder)
    return Item(item.tag, item.type, _FILL[item.type])


def oasis_messages(root: Path) -> Iterator[bytes]:
    """Every message of the OASIS XML test cases under ``root``, as TTLV."""
    for path in sorted(root.rglob("*.xml")):
        try:
            messages = parse_case_file(path)
        except XmlError:
            continue
        for _, item in messages:
            try:
                yield encode(map_placeholders(item, _fill))
            except KryptonError:
                continue


def _answers(env: Env, requests: list[bytes]) -> Iterator[bytes]:
    for frame in requests:
        yield env.run(env.slow, frame)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument(
        "--oasis", type=Path, default=None, help="default: KRYPTON_KMIP_CASES, if it exists"
    )
    args = parser.parse_args()
    oasis: Path | None = args.oasis
    if oasis is None and test_cases_dir().is_dir():
        oasis = test_cases_dir()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    requests = list(our_requests())
    with tempfile.TemporaryDirectory(prefix="krypton-seeds-") as tmp:
        env = open_env(Path(tmp))
        try:
            answers = list(_answers(env, requests))
        finally:
            close_env(env)
    seeds = [*requests, *answers]
    if oasis is not None:
        seeds += oasis_messages(oasis)
    for data in seeds:
        (out / hashlib.sha1(data).hexdigest()).write_bytes(data)
    print(f"{len(set(seeds))} seeds in {out}")


if __name__ == "__main__":
    main()
