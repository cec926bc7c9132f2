"""Key wrapping with AES-256-GCM: one helper for every level (L4 under L3, L3
under L2, L2 under the Core master key).

How this works
--------------
A blob is ``header || ciphertext || tag``::

    offset  size  field
    0       1     format version (FORMAT_V1 = 1)
    1       4     wrapping key id, big-endian (for L4 blobs: the L3 version)
    5       12    nonce (96 bits from os.urandom, fresh per wrap)
    17      n+16  AES-256-GCM ciphertext of the n-byte key, then the 16-byte tag

The associated data is ``header[0:5] || binding``, where the binding names
what the blob belongs to: ``"L4" | tenant | uid`` for a data key,
``"L3" | tenant | version`` and ``"L2" | tenant`` in the Core. Each part is
length-prefixed so that no two distinct bindings encode alike. A blob moved
to another record, tenant or key version therefore fails authentication
instead of decrypting to a key that belongs to someone else.

A :class:`WrappingKey` builds its ``AESGCM`` object once (construction costs
more than a wrap) and counts its wraps: with random 96-bit nonces NIST SP
800-38D §8.3 caps one key at 2^32 encryptions, so :meth:`WrappingKey.seal`
refuses past :data:`MAX_WRAPS` and the key ring asks for rotation long before.
The counter is incremented by whichever thread wraps; it is exact under the
GIL for the one event loop that does the wrapping.

Each wrapping key also yields a record-authentication key,
``HKDF-SHA256(key, info="krypton record mac v1")``, derived once at
construction: :meth:`WrappingKey.mac` is HMAC-SHA256 under it. An L3 version
thereby authenticates the metadata of the records it wraps (see
:func:`krypton.model.record.authenticated_bytes`); whoever holds the L3 bytes
— the gateway, and the Core, which holds L3 under L2 — can recompute it, and
the label keeps the derived key apart from the wrapping key itself.
"""

from __future__ import annotations

import functools
import hmac
import os
import struct
from typing import NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from krypton.crypto.secret import SecretBytes
from krypton.errors import InvalidField, KeyUnavailable, UnwrapFailed

FORMAT_V1 = 1
NONCE_LEN = 12
TAG_LEN = 16
_HEAD = struct.Struct(">BI")
HEADER_LEN = _HEAD.size + NONCE_LEN
OVERHEAD = HEADER_LEN + TAG_LEN
MAX_WRAPS = 2**32
_MAX_PART = 0xFFFF
MAC_LABEL = b"krypton record mac v1"
MAC_LEN = 32

Plaintext = SecretBytes | bytes | bytearray | memoryview


def binding(level: str, *parts: str) -> bytes:
    """The associated data naming what a blob belongs to (length-prefixed parts)."""
    out = bytearray()
    for part in (level, *parts):
        raw = part.encode()
        if len(raw) > _MAX_PART:
            raise InvalidField("identifier too long to bind to a wrapped key")
        out += len(raw).to_bytes(2, "big")
        out += raw
    return bytes(out)


def blob_key_id(blob: bytes) -> int:
    """The wrapping key id named in a blob's header."""
    if len(blob) < OVERHEAD:
        raise UnwrapFailed("wrapped key blob is truncated")
    fmt, key_id = _HEAD.unpack_from(blob)
    if fmt != FORMAT_V1:
        raise UnwrapFailed(f"wrapped key blob has unknown format version {fmt}")
    return int(key_id)


class WrappingKey:
    """An AES-256 key that wraps other keys; owns its material and its AEAD object."""

    __slots__ = ("_aead", "_head", "_mac_key", "_secret", "_wraps", "key_id")

    def __init__(self, key_id: int, material: SecretBytes, *, wraps: int = 0) -> None:
        """``wraps``: how many blobs the key has sealed already (the counter starts
        there; :data:`MAX_WRAPS` bounds it), 0 for a key new to this process."""
        if len(material) != 32:
            raise InvalidField("a wrapping key must be 256 bits")
        if not 0 <= key_id < 2**32:
            raise InvalidField("wrapping key id out of range")
        if not 0 <= wraps <= MAX_WRAPS:
            raise InvalidField("wrap count out of range")
        self.key_id = key_id
        self._secret = material
        self._aead: AESGCM | None = AESGCM(material.view())
        self._head = _HEAD.pack(FORMAT_V1, key_id)
        self._wraps = wraps
        hkdf = HKDF(algorithm=hashes.SHA256(), length=MAC_LEN, salt=None, info=MAC_LABEL)
        self._mac_key = bytearray(hkdf.derive(material.view()))

    @property
    def wraps(self) -> int:
        """How many blobs this key has sealed in this process."""
        return self._wraps

    @property
    def wiped(self) -> bool:
        return self._aead is None

    def absorb(self, other: SecretBytes) -> bool:
        """Compare ``other`` with this key's bytes in constant time, then wipe
        ``other`` (unless it is this key's own holder). True if they were equal."""
        if other is self._secret:
            return True
        same = self._secret == other
        other.wipe()
        return same

    def wipe(self) -> None:
        """Forget the key: zero our copy and drop the AEAD object (best effort)."""
        self._aead = None
        self._mac_key[:] = bytes(len(self._mac_key))
        self._secret.wipe()

    def mac(self, data: bytes | bytearray | memoryview) -> bytes:
        """HMAC-SHA256 of ``data`` under this key's record-authentication key."""
        if self._aead is None:
            raise KeyUnavailable("the wrapping key has been withdrawn")
        return hmac.digest(self._mac_key, data, "sha256")

    def seal(self, bind: bytes, plaintext: Plaintext) -> bytes:
        aead = self._aead
        if aead is None:
            raise KeyUnavailable("the wrapping key has been withdrawn")
        if self._wraps >= MAX_WRAPS:
            raise KeyUnavailable("the wrapping key reached its wrap limit; rotation required")
        self._wraps += 1
        data = plaintext.buffer() if isinstance(plaintext, SecretBytes) else plaintext
        nonce = os.urandom(NONCE_LEN)
        head = self._head
        return head + nonce + aead.encrypt(nonce, data, head + bind)

    def open(self, bind: bytes, blob: bytes) -> SecretBytes:
        aead = self._aead
        if aead is None:
            raise KeyUnavailable("the wrapping key has been withdrawn")
        head = self._head
        if len(blob) < OVERHEAD or blob[: _HEAD.size] != head:
            blob_key_id(blob)  # raises for a truncated blob or an unknown format
            raise UnwrapFailed("wrapped key blob names another wrapping key version")
        view = memoryview(blob)
        out = bytearray(len(blob) - OVERHEAD)
        try:
            aead.decrypt_into(view[_HEAD.size : HEADER_LEN], view[HEADER_LEN:], head + bind, out)
        except InvalidTag:
            out[:] = bytes(len(out))
            raise UnwrapFailed(
                "wrapped key failed authentication (tampered, or bound to another "
                "record, tenant or key version)"
            ) from None
        return SecretBytes.adopt(out)

    def __repr__(self) -> str:
        return f"WrappingKey(key_id={self.key_id}, wraps={self._wraps}, wiped={self.wiped})"

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("WrappingKey cannot be pickled")


@functools.lru_cache(maxsize=4096)
def _l4_prefix(tenant: str) -> bytes:
    return binding("L4", tenant)


def l4_binding(tenant: str, uid: str) -> bytes:
    """``binding("L4", tenant, uid)``, unrolled for the hot path."""
    u = uid.encode()
    if len(u) > _MAX_PART:
        raise InvalidField("identifier too long to bind to a wrapped key")
    return _l4_prefix(tenant) + len(u).to_bytes(2, "big") + u


def wrap(l3: WrappingKey, tenant: str, uid: str, plaintext: Plaintext) -> bytes:
    """Wrap an L4 key under ``l3`` (key id = the L3 version), bound to tenant and uid."""
    return l3.seal(l4_binding(tenant, uid), plaintext)


def unwrap(l3: WrappingKey, tenant: str, uid: str, blob: bytes) -> SecretBytes:
    """Unwrap an L4 blob; :class:`UnwrapFailed` if it does not belong here."""
    return l3.open(l4_binding(tenant, uid), blob)
