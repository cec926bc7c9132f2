"""The development root: a 256-bit key held in this process (from a 0600 file
or an environment variable), sealing with :mod:`krypton.crypto.wrap` exactly
as the Core master key always has, so hierarchies made before pluggable roots
open unchanged."""

from __future__ import annotations

from krypton.crypto.secret import SecretBytes
from krypton.crypto.wrap import WrappingKey
from krypton.errors import RootUnavailable
from krypton.roots.base import Plain

KEY_ID = 1  # the key id every file-sealed blob names (krypton.core.keystore.MASTER_KEY_ID)


class FileSealer:
    """Seals under a key in memory; takes ownership of ``material`` (wiped on close)."""

    kind = "file"

    def __init__(self, material: SecretBytes, where: str = "a key file") -> None:
        self._key = WrappingKey(KEY_ID, material)
        self._where = where

    def describe(self) -> str:
        return f"file root ({self._where})"

    def __repr__(self) -> str:
        return f"FileSealer({self._where})"

    async def seal(self, context: bytes, plaintext: Plain) -> bytes:
        return self._key.seal(context, plaintext)

    async def unseal(self, context: bytes, blob: bytes) -> SecretBytes:
        return self._key.open(context, blob)

    async def check(self) -> None:
        if self._key.wiped:
            raise RootUnavailable("the file root is closed")

    async def close(self) -> None:
        self._key.wipe()
