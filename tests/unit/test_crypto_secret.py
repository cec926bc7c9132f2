from __future__ import annotations

import copy
import pickle

import pytest

from krypton.crypto.secret import SecretBytes, generate_key
from krypton.errors import InvalidField


def test_repr_and_str_show_only_the_length() -> None:
    secret = SecretBytes(bytes.fromhex("deadbeefcafebabe"))
    for text in (repr(secret), str(secret), f"{secret}", repr([secret])):
        assert "8 bytes" in text
        assert "dead" not in text.lower()
        assert "\\xde" not in text


def test_wipe_overwrites_the_buffer_in_place() -> None:
    secret = SecretBytes(b"\x01" * 32)
    view = secret.view()
    secret.wipe()
    assert secret.wiped
    assert bytes(view) == bytes(32)
    assert secret.reveal() == bytes(32)
    assert "wiped" in repr(secret)
    secret.wipe()  # idempotent


def test_context_manager_wipes_on_exit() -> None:
    with generate_key(256) as key:
        view = key.view()
        assert any(view)
    assert key.wiped
    assert not any(view)


def test_adopt_does_not_copy() -> None:
    buf = bytearray(b"\x07" * 16)
    secret = SecretBytes.adopt(buf)
    secret.wipe()
    assert buf == bytearray(16)


def test_view_is_read_only() -> None:
    view = SecretBytes(b"abc").view()
    with pytest.raises(TypeError):
        view[0] = 0


@pytest.mark.parametrize(
    "action",
    [pickle.dumps, copy.copy, copy.deepcopy, bytes],
    ids=["pickle", "copy", "deepcopy", "bytes"],
)
def test_no_implicit_copies(action: object) -> None:
    secret = SecretBytes(b"\x01" * 16)
    with pytest.raises(TypeError):
        action(secret)  # type: ignore[operator]


def test_equality_and_unhashable() -> None:
    a = SecretBytes(b"\x01" * 16)
    assert a == SecretBytes(b"\x01" * 16)
    assert a != SecretBytes(b"\x02" * 16)
    assert a != SecretBytes(b"\x01" * 15)
    assert a != b"\x01" * 16
    with pytest.raises(TypeError):
        hash(a)


@pytest.mark.parametrize(("bits", "size"), [(128, 16), (192, 24), (256, 32)])
def test_generate_key_lengths(bits: int, size: int) -> None:
    first, second = generate_key(bits), generate_key(bits)
    assert len(first) == size
    assert first != second
    assert any(first.view())


@pytest.mark.parametrize("bits", [0, 64, 127, 384, 512, -256])
def test_generate_key_rejects_other_lengths(bits: int) -> None:
    with pytest.raises(InvalidField):
        generate_key(bits)
