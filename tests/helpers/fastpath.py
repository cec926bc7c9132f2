"""What the fast-path tests share: one-item request messages and mutations of them."""

from __future__ import annotations

from hypothesis import strategies as st

from krypton.kmip import client_messages as cm
from krypton.kmip.versions import ProtocolVersion
from krypton.ttlv.codec import encode
from krypton.ttlv.item import Item

NOW = 1_790_000_000


def single(
    version: ProtocolVersion,
    item: Item,
    *,
    max_response_size: int | None = None,
    time_stamp: bool = False,
    batch_count: int = 1,
) -> bytes:
    """A request message of one batch item (the header's Time Stamp a little before NOW)."""
    return encode(
        cm.request_message(
            version,
            [item],
            max_response_size=max_response_size,
            time_stamp=NOW - 5 if time_stamp else None,
            batch_count=batch_count,
        )
    )


def mutate(data: st.DataObject, frame: bytes) -> bytes | None:
    """``frame`` with 1-3 bit flips, overwrites, cuts or insertions anywhere;
    None when a cut leaves nothing."""
    base = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 3))):
        kind = data.draw(st.sampled_from(["flip", "byte", "cut", "grow"]))
        at = data.draw(st.integers(0, len(base) - 1))
        if kind == "flip":
            base[at] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "byte":
            base[at] = data.draw(st.integers(0, 255))
        elif kind == "cut":
            del base[at:]
        else:
            base[at:at] = data.draw(st.binary(min_size=1, max_size=16))
        if not base:
            return None
    return bytes(base)
