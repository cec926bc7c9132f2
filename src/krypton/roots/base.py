"""What every root of trust offers: seal and unseal bytes under a key held elsewhere.

How this works
--------------
A :class:`RootSealer` seals a small secret (a tenant's L2, a tenant's name, a
gateway's copy of an L3 version) bound to a *context* — the bytes that say
what the blob belongs to (:func:`krypton.crypto.wrap.binding`) — and opens it
again only with the same context. The root key itself never reaches this
process except for the development ``file`` root:

=========  ===============================================================
kind       blob (the first byte names the kind)
=========  ===============================================================
file       ``0x01`` ... the AES-256-GCM format of :mod:`krypton.crypto.wrap`
           (key id 1), as every hierarchy before pluggable roots was sealed
pkcs11     ``0xA1 | nonce(12) | ciphertext | tag(16)``: AES-256-GCM inside
           the token, associated data ``0xA1 | context``
openbao    ``0xA2 | "vault:v<n>:..."``: Transit encrypt with the context
           as the (derived) key's context
=========  ===============================================================

so a blob handed to a root of another kind is recognised
(:func:`kind_of`) and refused with a message that names both kinds.

The methods are ``async``: the PKCS#11 and OpenBao sealers run their
blocking calls in a worker thread (:func:`blocking`), so the event loop never
waits on a token or the network. :meth:`RootSealer.check` is the health
probe: it proves the root can be reached and its key used, or raises
:class:`~krypton.errors.RootUnavailable` / :class:`~krypton.errors.RootRefused`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from krypton.crypto.secret import SecretBytes
from krypton.errors import KryptonError

FILE_TAG = 0x01  # krypton.crypto.wrap.FORMAT_V1
PKCS11_TAG = 0xA1
OPENBAO_TAG = 0xA2
KINDS = {FILE_TAG: "file", PKCS11_TAG: "pkcs11", OPENBAO_TAG: "openbao"}

T = TypeVar("T")
Plain = SecretBytes | bytes


class RootSealer(Protocol):
    """A root of trust (see the module comment)."""

    kind: str

    def describe(self) -> str:
        """Where the root is, for messages and logs (never a secret)."""
        ...

    async def seal(self, context: bytes, plaintext: Plain) -> bytes: ...

    async def unseal(self, context: bytes, blob: bytes) -> SecretBytes:
        """The plaintext; :class:`~krypton.errors.UnwrapFailed` if ``blob`` is not
        this root's sealing of it under ``context``."""
        ...

    async def check(self) -> None:
        """Raise RootUnavailable or RootRefused unless the root serves now."""
        ...

    async def close(self) -> None: ...


def kind_of(blob: bytes | None) -> str:
    """Which kind of root sealed ``blob`` ("unknown" if none does)."""
    return KINDS.get(blob[0], "unknown") if blob else "unknown"


async def blocking(fn: Callable[[], T]) -> T:
    """Run a blocking root call in a worker thread."""
    return await asyncio.to_thread(fn)


def plain_view(plaintext: Plain) -> bytes | memoryview:
    return plaintext.view() if isinstance(plaintext, SecretBytes) else plaintext


@dataclass(frozen=True, slots=True)
class RootHealth:
    """The answer of :func:`probe`: for ``/readyz`` and metrics."""

    kind: str
    where: str
    ok: bool
    detail: str  # "" when ok; the error's message otherwise (no secrets)
    seconds: float  # how long the probe took
    checked_at: float  # wall clock


async def probe(root: RootSealer, timeout: float = 5.0) -> RootHealth:
    """Check ``root`` within ``timeout`` seconds; never raises for a root failure."""
    start, wall = time.monotonic(), time.time()
    try:
        async with asyncio.timeout(timeout):
            await root.check()
    except KryptonError as exc:
        return RootHealth(root.kind, root.describe(), False, exc.message,
                          time.monotonic() - start, wall)
    except TimeoutError:
        return RootHealth(root.kind, root.describe(), False,
                          f"no answer within {timeout:g} s", time.monotonic() - start, wall)
    return RootHealth(root.kind, root.describe(), True, "", time.monotonic() - start, wall)
