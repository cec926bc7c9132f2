from __future__ import annotations

import os
import pickle

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from krypton.crypto.secret import SecretBytes, generate_key
from krypton.crypto.wrap import (
    FORMAT_V1,
    HEADER_LEN,
    MAX_WRAPS,
    OVERHEAD,
    WrappingKey,
    binding,
    blob_key_id,
    l4_binding,
    unwrap,
    wrap,
)
from krypton.errors import CryptographicFailure, InvalidField, KeyUnavailable, UnwrapFailed

TENANT = "demo"
UID = "6f1c2d1e-1234-4567-89ab-0123456789ab"

# AES-256-GCM known answers, 96-bit IV, 128-bit tag:
# (key, iv, aad, plaintext, ciphertext, tag)
NIST_VECTORS = [
    # NIST CAVP "GCM Test Vectors" (SP 800-38D), gcmEncryptExtIV256.rsp,
    # [Keylen = 256][IVlen = 96][PTlen = 0][AADlen = 0][Taglen = 128] Count = 0
    (
        "b52c505a37d78eda5dd34f20c22540ea1b58963cf8e5bf8ffa85f9f2492505b4",
        "516c33929df5a3284ff463d7",
        "",
        "",
        "",
        "bdc1ac884d332457a1d2664f168c76f0",
    ),
    # gcmEncryptExtIV256.rsp, [PTlen = 128][AADlen = 128][Taglen = 128] Count = 0
    (
        "92e11dcdaa866f5ce790fd24501f92509aacf4cb8b1339d50c9c1240935dd08b",
        "ac93a1a6145299bde902f21a",
        "1e0889016f67601c8ebea4943bc23ad6",
        "2d71bcfa914e4ac045b2aa60955fad24",
        "8995ae2e6df3dbf96fac7b7137bae67f",
        "eca5aa77d51d4a0a14d9c51e1da474ab",
    ),
    # gcmEncryptExtIV256.rsp, [PTlen = 408][AADlen = 720][Taglen = 128] Count = 2
    (
        "c277df045d0a1a3956958f271055c229d2634427b1d73e99d54920da69f72e01",
        "79e24f84bc77a21a6cb14ee2",
        "ca09282238d492029afbd30ea9b4aa9d448d77b4b41a791c35ebe3f8e5034ac71210117a843fae647cea"
        "020712c27e5c8f85acf933d5e28430c7770862d8dbb197cbbcfe49dd63f6aa05fbd13e32c459342698df"
        "ee5935c7c321",
        "5ca68d858cc30b1cb0514c4e9de98e1a1a835df401f69e9ec6f1bcb1158f09114dff551683b3827457f7"
        "7e17a7097b1ea69eac",
        "5c5223c8eda59a8dc28b08e6c21482a46e5d84d32c7050bf144fc57f4e8094de133198da7b4b8398b167"
        "204aff837da15d9ab2",
        "378885950a4491bee3cd681d3c957b9a",
    ),
    # McGrew & Viega, "The Galois/Counter Mode of Operation (GCM)", Test Case 16
    # (AES-256, the GCM submission to NIST that SP 800-38D standardises).
    (
        "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
        "cafebabefacedbaddecaf888",
        "feedfacedeadbeeffeedfacedeadbeefabaddad2",
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e"
        "2449a6b525b16aedf5aa0de657ba637b39",
        "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b"
        "1056828838c5f61e6393ba7a0abcc9f662",
        "76fc6ece0f4e1768cddf8853bb2d551b",
    ),
]


def _key(version: int = 1, material: bytes | None = None) -> WrappingKey:
    return WrappingKey(version, SecretBytes(material) if material else generate_key(256))


@pytest.mark.parametrize(("key", "iv", "aad", "pt", "ct", "tag"), NIST_VECTORS)
def test_inner_aead_matches_published_vectors(
    key: str, iv: str, aad: str, pt: str, ct: str, tag: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The published vector pins AES-256-GCM; a WrappingKey seals with exactly that
    # cipher under its key (nonce from os.urandom, AAD = header + binding) and opens it.
    raw, nonce, plain = bytes.fromhex(key), bytes.fromhex(iv), bytes.fromhex(pt)
    reference = AESGCM(raw)
    assert reference.encrypt(nonce, plain, bytes.fromhex(aad)) == bytes.fromhex(ct + tag)
    bind = binding("L4", TENANT, UID)
    wrapping_key = _key(1, raw)
    monkeypatch.setattr(os, "urandom", lambda n: nonce[:n])
    sealed = wrapping_key.seal(bind, plain)
    monkeypatch.undo()
    head = sealed[: HEADER_LEN - len(nonce)]
    assert sealed == head + nonce + reference.encrypt(nonce, plain, head + bind)
    assert wrapping_key.open(bind, sealed).reveal() == plain


def test_blob_is_the_documented_construction() -> None:
    material = generate_key(256)
    raw = material.reveal()
    l4 = generate_key(256)
    blob = wrap(WrappingKey(0x01020304, material), TENANT, UID, l4)
    assert len(blob) == OVERHEAD + 32 == HEADER_LEN + 32 + 16
    assert blob[:5] == bytes([FORMAT_V1, 1, 2, 3, 4])
    nonce, body = blob[5:17], blob[17:]
    aad = blob[:5] + binding("L4", TENANT, UID)
    assert AESGCM(raw).decrypt(nonce, body, aad) == l4.reveal()


def test_golden_blob_still_unwraps() -> None:
    # Written by format v1 (key = 00..1f, key id 7, nonce = 00..0b); guards the
    # on-disk format against accidental change.
    blob = bytes.fromhex(
        "0100000007000102030405060708090a0b0743945881a0845cc508ddc0fda43622d387d567a42e092b603e"
        "bfde41345eed07cf181a857317c859fe6ca4291977a8"
    )
    key = _key(7, bytes(range(32)))
    plain = unwrap(key, "demo", "00000000-0000-4000-8000-000000000001", blob)
    assert plain.reveal() == bytes(range(0x40, 0x60))


@pytest.mark.parametrize("bits", [128, 192, 256])
def test_round_trip(bits: int) -> None:
    key = _key(3)
    l4 = generate_key(bits)
    blob = wrap(key, TENANT, UID, l4)
    assert blob_key_id(blob) == 3
    assert unwrap(key, TENANT, UID, blob) == l4
    assert wrap(key, TENANT, UID, l4.reveal()) != blob  # fresh nonce every time


def test_nonces_are_fresh() -> None:
    key = _key()
    nonces = {wrap(key, TENANT, UID, b"k" * 32)[5:17] for _ in range(2000)}
    assert len(nonces) == 2000


@pytest.mark.parametrize(
    ("tenant", "uid"),
    [("other", UID), (TENANT, "6f1c2d1e-1234-4567-89ab-0123456789ac"), ("", UID)],
)
def test_blob_is_bound_to_tenant_and_uid(tenant: str, uid: str) -> None:
    key = _key()
    blob = wrap(key, TENANT, UID, generate_key(256))
    with pytest.raises(UnwrapFailed):
        unwrap(key, tenant, uid, blob)


def test_blob_is_bound_to_l3_version() -> None:
    material = generate_key(256).reveal()
    v1, v2 = _key(1, material), _key(2, material)
    blob = wrap(v1, TENANT, UID, generate_key(256))
    with pytest.raises(UnwrapFailed, match="another wrapping key version"):
        unwrap(v2, TENANT, UID, blob)
    # Relabel the header to claim version 2: the AAD no longer matches.
    relabelled = blob[:1] + (2).to_bytes(4, "big") + blob[5:]
    with pytest.raises(UnwrapFailed, match="authentication"):
        unwrap(v2, TENANT, UID, relabelled)


def test_wrong_key_fails() -> None:
    blob = wrap(_key(1), TENANT, UID, generate_key(256))
    with pytest.raises(UnwrapFailed):
        unwrap(_key(1), TENANT, UID, blob)


@pytest.mark.parametrize("position", [1, 4, 5, 16, 17, 30, 48, 64])
def test_any_flipped_bit_is_detected(position: int) -> None:
    key = _key(1)
    blob = bytearray(wrap(key, TENANT, UID, generate_key(256)))
    blob[position] ^= 0x01
    with pytest.raises(UnwrapFailed):
        unwrap(key, TENANT, UID, bytes(blob))


@pytest.mark.parametrize("cut", [0, 1, 5, 17, OVERHEAD - 1])
def test_truncated_blob(cut: int) -> None:
    key = _key(1)
    blob = wrap(key, TENANT, UID, generate_key(256))
    with pytest.raises(UnwrapFailed):
        unwrap(key, TENANT, UID, blob[:cut])


def test_unknown_format_version_is_refused() -> None:
    key = _key(1)
    blob = wrap(key, TENANT, UID, generate_key(256))
    future = bytes([2]) + blob[1:]
    with pytest.raises(UnwrapFailed, match="format version 2"):
        unwrap(key, TENANT, UID, future)
    with pytest.raises(UnwrapFailed, match="format version 2"):
        blob_key_id(future)


def test_failure_messages_carry_no_key_bytes() -> None:
    material = generate_key(256)
    raw = material.reveal()
    key = WrappingKey(1, material)
    l4 = generate_key(256)
    blob = wrap(key, TENANT, UID, l4)
    with pytest.raises(CryptographicFailure) as info:
        unwrap(key, "other", UID, blob)
    text = str(info.value) + repr(info.value) + repr(key)
    for secret in (raw, l4.reveal()):
        assert secret.hex() not in text
        assert repr(secret)[2:-1] not in text


def test_wrap_counter_and_limit() -> None:
    material = bytes(range(32))
    key = _key(1, material)
    for _ in range(5):
        wrap(key, TENANT, UID, b"k" * 16)
    assert key.wraps == 5
    blob = wrap(key, TENANT, UID, b"k" * 16)
    worn = WrappingKey(1, SecretBytes(material), wraps=MAX_WRAPS)  # the same key, used up
    assert worn.wraps == MAX_WRAPS
    with pytest.raises(KeyUnavailable, match="rotation"):
        wrap(worn, TENANT, UID, b"k" * 16)
    assert unwrap(worn, TENANT, UID, blob).reveal() == b"k" * 16  # unwrapping still works
    for wraps in (-1, MAX_WRAPS + 1):
        with pytest.raises(InvalidField, match="wrap count"):
            WrappingKey(1, SecretBytes(material), wraps=wraps)


def test_wiped_key_refuses_and_zeroes() -> None:
    material = generate_key(256)
    key = WrappingKey(1, material)
    blob = wrap(key, TENANT, UID, b"k" * 32)
    key.wipe()
    assert key.wiped
    assert material.wiped
    assert not any(material.view())
    with pytest.raises(KeyUnavailable):
        wrap(key, TENANT, UID, b"k" * 32)
    with pytest.raises(KeyUnavailable):
        unwrap(key, TENANT, UID, blob)


def test_wrapping_key_validation_and_pickling() -> None:
    with pytest.raises(InvalidField):
        WrappingKey(1, generate_key(128))
    with pytest.raises(InvalidField):
        WrappingKey(2**32, generate_key(256))
    with pytest.raises(TypeError):
        pickle.dumps(_key())


def test_binding_is_unambiguous() -> None:
    assert binding("L4", "ab", "c") != binding("L4", "a", "bc")
    assert binding("L4", TENANT, UID) == l4_binding(TENANT, UID)
    assert binding("L3", TENANT, "1") != binding("L2", TENANT, "1")
    with pytest.raises(InvalidField):
        l4_binding(TENANT, "x" * 70000)
