"""What the fuzzing campaign (fuzz/, ``make fuzz``) found, each as the input it found.

Each test holds the input the fuzzer produced, inline, and the property it
broke; each failed on the code of the day it was found.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

# The fast-path scanner (being moved out of krypton.engine): imported here only.
from krypton.gateway.fast import fastcreate
from krypton.kmip.messages import parse_request
from krypton.ttlv.codec import DEFAULT_LIMITS, decode, encode
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag
from krypton.ttlv.xml import item_from_xml, item_to_element

# A Request Message (0x420078) holding one Big Integer (tag 0x420078 too) of
# -2**63: its 8 bytes 0x80 00 .. 00 are the shortest two's complement form.
MINUS_2_63 = bytes.fromhex("420078010000001042007804000000088000000000000000")


def test_a_negative_power_of_two_big_integer_re_encodes_in_as_few_bytes() -> None:
    """``encode`` sized a Big Integer by ``bit_length()``, which counts 64 bits
    for -2**63 and asked for 16 bytes: decode + encode grew the message (and the
    XML form carried 8 needless 0xFF bytes)."""
    item = decode(MINUS_2_63)
    assert item.children[0].value == -(1 << 63)
    assert encode(item) == MINUS_2_63
    for value, size in ((-(1 << 63), 8), (-(1 << 63) - 1, 16), ((1 << 63) - 1, 8), (-1, 8)):
        big = Item(Tag.DATA, ItemType.BIG_INTEGER, value)
        assert len(encode(big)) == 8 + size, value
        element = item_to_element(big)
        assert len(bytes.fromhex(element.get("value", ""))) == size, value
        assert item_from_xml(ET.fromstring(ET.tostring(element))) == big


# A single-item Create (KMIP 2.0) whose Request Payload comes before its
# Operation, with an Attributes structure of Cryptographic Algorithm 0x80000000
# (an extension value), Length 128 and Usage Mask 12.
CREATE_ALGORITHM_2_31 = bytes.fromhex(
    "42007801000000a8" "4200770100000038"
    "4200690100000020" "42006a02000000040000000200000000" "42006b02000000040000000000000000"
    "42000d02000000040000000100000000"
    "42000f0100000060" "4200790100000048" "42005705000000040000000200000000"
    "4201250100000030" "42002805000000048000000000000000"
    "42002a02000000040000008000000000" "42002c02000000040000000c00000000"
    "42005c05000000040000000100000000"
)  # fmt: skip


def test_the_create_scanner_reads_an_algorithm_as_the_decoder_does() -> None:
    """The Create scanner read the Cryptographic Algorithm (an Enumeration,
    unsigned) with the signed 4-byte layout: 0x80000000 came out as -2**31
    where the decoder reads 2**31. (No answer diverged: no such algorithm is
    made, so the fast path declined; but the scan must read what the generic
    path reads.)"""
    request = parse_request(decode(CREATE_ALGORITHM_2_31), DEFAULT_LIMITS)
    algorithm = request.items[0].payload.find(Tag.ATTRIBUTES)
    assert algorithm is not None
    want = algorithm.children[0].value
    assert want == 0x8000_0000
    scanned = fastcreate.scan(CREATE_ALGORITHM_2_31)
    assert scanned is not None
    assert scanned.algorithm == want
    assert scanned.length == 128
    assert scanned.usage_mask == 12
