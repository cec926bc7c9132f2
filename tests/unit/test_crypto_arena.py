"""krypton.crypto._arena and SecretBytes.pin: long-lived keys on no-dump, locked pages."""

from __future__ import annotations

import ctypes
import re
import sys
from pathlib import Path

import pytest

from krypton.crypto import _arena
from krypton.crypto.keyring import KeyRing, L3State
from krypton.crypto.secret import SecretBytes, generate_key


def _flags_of(view: memoryview) -> set[str]:
    """The VmFlags of the mapping holding ``view`` (this process's /proc/self/smaps)."""
    address = ctypes.addressof(ctypes.c_char.from_buffer(view))
    text = Path("/proc/self/smaps").read_text()
    for block in re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", text):
        lo, hi = (int(x, 16) for x in block.split()[0].split("-"))
        if lo <= address < hi:
            found = re.search(r"VmFlags:(.*)", block)
            assert found is not None
            return set(found.group(1).split())
    raise AssertionError("no mapping holds the slot")


def test_pin_moves_the_bytes_in_place_and_zeroes_the_old_ones() -> None:
    key = generate_key(256)
    before = key.reveal()
    old = key.buffer()
    assert isinstance(old, bytearray)
    assert key.pin()
    assert key.reveal() == before and key == SecretBytes(before)
    assert not any(old)  # where they were: zeros
    assert not key.pin()  # once
    view = key.view()
    key.wipe()
    assert not any(view) and not any(key.buffer())
    assert repr(key) == "SecretBytes(<32 bytes redacted, wiped>)"


def test_what_does_not_fit_a_slot_stays_where_it_is() -> None:
    for big in (SecretBytes(bytes(_arena.SLOT + 1)), SecretBytes(b"")):
        assert not big.pin()
        assert isinstance(big.buffer(), bytearray)
    wiped = generate_key(128)
    wiped.wipe()
    assert not wiped.pin()


def test_slots_are_never_given_out_twice() -> None:
    a, b = _arena.slot(32), _arena.slot(32)
    a[:] = b"\x01" * 32
    assert not any(b)
    with pytest.raises(ValueError):
        _arena.slot(_arena.SLOT + 1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_the_key_rings_keys_are_on_a_no_dump_page() -> None:
    ring = KeyRing()
    material = generate_key(256)
    ring.install("demo", 1, material, L3State.ACTIVE, ring.lease_deadline(60))
    buf = material.buffer()
    assert isinstance(buf, memoryview)
    flags = _flags_of(buf)
    assert "dd" in flags  # left out of core dumps
    _, _, not_dontdump, not_locked = _arena.stats()
    assert not_dontdump == 0
    assert "lo" in flags or not_locked > 0  # locked, unless RLIMIT_MEMLOCK said no
