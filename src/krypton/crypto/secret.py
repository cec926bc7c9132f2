"""Holders for key material, and key generation.

:class:`SecretBytes` keeps key bytes in a ``bytearray`` it owns, so they can be
overwritten (:meth:`SecretBytes.wipe`) when the key is no longer needed. This
is best-effort zeroisation: Python may have made copies we cannot reach (the
``bytes`` returned by ``os.urandom``, the copy an ``AESGCM`` object keeps in
OpenSSL, an encoder's output buffer). The holder never shows its bytes in a
repr, refuses to be pickled and compares in constant time.

The bytes are reached only on purpose: :meth:`SecretBytes.view` (a read-only
zero-copy ``memoryview``, valid until :meth:`wipe`) for passing to a cipher or
encoder, and :meth:`SecretBytes.reveal` (an immutable copy that cannot be
wiped) for the rare place that needs ``bytes``.

Long-lived keys (the key ring's L3 versions) move to pages that core dumps
leave out and swap never sees: :meth:`SecretBytes.pin` (see
:mod:`krypton.crypto._arena`).

There is deliberately no ``__del__`` wipe: a view taken from a temporary
holder (``generate_key(256).view()``) would silently turn into zeros.
"""

from __future__ import annotations

import hmac
import os
from types import TracebackType
from typing import NoReturn

from krypton.crypto import _arena
from krypton.errors import InvalidField

AES_KEY_BITS = frozenset({128, 192, 256})


class SecretBytes:
    """A mutable, wipeable, redacted container for key material."""

    __slots__ = ("_buf", "_wiped")

    def __init__(self, data: bytes | bytearray | memoryview = b"") -> None:
        self._buf: bytearray | memoryview = bytearray(data)
        self._wiped = False

    @classmethod
    def adopt(cls, buf: bytearray | memoryview) -> SecretBytes:
        """Take ownership of ``buf`` without copying it (the caller must drop it)."""
        self = cls.__new__(cls)
        self._buf = buf
        self._wiped = False
        return self

    def __len__(self) -> int:
        return len(self._buf)

    @property
    def wiped(self) -> bool:
        return self._wiped

    def view(self) -> memoryview:
        """A read-only, zero-copy view of the key bytes (all zeros after wipe)."""
        return memoryview(self._buf).toreadonly()

    def pin(self) -> bool:
        """Move these bytes, in place, to a slot of a no-dump, locked page (for a key
        kept long), zeroing where they were; views taken before show zeros. False
        (nothing moved) if they do not fit a slot or no page can be had."""
        n = len(self._buf)
        if not 0 < n <= _arena.SLOT or self._wiped or isinstance(self._buf, memoryview):
            return False
        try:
            buf = _arena.slot(n)
        except OSError:
            return False
        buf[:] = self._buf
        self._buf[:] = bytes(n)
        self._buf = buf
        return True

    def buffer(self) -> bytearray | memoryview:
        """The owned buffer itself, for package-internal zero-overhead calls. Never
        keep it, resize it or hand it outside ``krypton.crypto``."""
        return self._buf

    def reveal(self) -> bytes:
        """An immutable copy of the key bytes. It cannot be wiped: use sparingly."""
        return bytes(self._buf)

    def wipe(self) -> None:
        """Overwrite the key bytes with zeros (idempotent)."""
        n = len(self._buf)
        if n:
            self._buf[:] = bytes(n)
        self._wiped = True

    def __enter__(self) -> SecretBytes:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.wipe()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretBytes):
            return NotImplemented
        return hmac.compare_digest(self._buf, other._buf)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        state = ", wiped" if self._wiped else ""
        return f"SecretBytes(<{len(self._buf)} bytes redacted{state}>)"

    __str__ = __repr__

    def __reduce_ex__(self, protocol: object) -> NoReturn:
        raise TypeError("SecretBytes cannot be pickled or copied implicitly")

    def __bytes__(self) -> NoReturn:
        raise TypeError("use SecretBytes.reveal() or .view() to reach key bytes on purpose")


def generate_key(length_bits: int) -> SecretBytes:
    """A fresh AES key from the kernel CSPRNG (``os.urandom``)."""
    if length_bits not in AES_KEY_BITS:
        raise InvalidField(f"unsupported AES key length {length_bits} (use 128, 192 or 256)")
    return SecretBytes.adopt(bytearray(os.urandom(length_bits // 8)))
