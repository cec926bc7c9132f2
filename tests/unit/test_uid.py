"""The one uid maker: UUID version 7 (RFC 9562), time-ordered so that every index
on the uid grows at its right edge."""

from __future__ import annotations

import time
import uuid

import pytest

from krypton.model.record import new_uid, uuid7


def test_the_rfc_9562_example_uuidv7() -> None:
    # RFC 9562, Appendix A.6: unix_ts_ms 0x017F22E279B0, rand_a 0xCC3,
    # rand_b 0b01 followed by 0x8C4DC0C0C07398F (62 bits).
    random = (0xCC3 << 62 | 0x18C4DC0C0C07398F).to_bytes(10, "big")
    assert uuid7(0x017F22E279B0, random) == "017f22e2-79b0-7cc3-98c4-dc0c0c07398f"


def test_a_new_uid_is_a_version_7_uuid_of_now() -> None:
    before = time.time_ns() // 1_000_000
    text = new_uid()
    after = time.time_ns() // 1_000_000
    u = uuid.UUID(text)
    assert str(u) == text
    assert u.version == 7
    assert u.variant == uuid.RFC_4122
    assert before <= u.int >> 80 <= after


def test_uids_made_in_later_milliseconds_sort_after_earlier_ones() -> None:
    made = []
    for _ in range(5):
        made.append(new_uid())
        ms = time.time_ns() // 1_000_000
        while time.time_ns() // 1_000_000 == ms:  # the next millisecond
            pass
    assert made == sorted(made)
    assert len(set(made)) == len(made)


def test_uids_are_unique_within_a_millisecond() -> None:
    assert len({new_uid() for _ in range(20_000)}) == 20_000


@pytest.mark.parametrize(("ms", "random"), [(-1, bytes(10)), (1 << 48, bytes(10)),
                                             (0, bytes(9)), (0, bytes(11))])
def test_uuid7_refuses_what_does_not_fit(ms: int, random: bytes) -> None:
    with pytest.raises(ValueError, match="uuid7"):
        uuid7(ms, random)
