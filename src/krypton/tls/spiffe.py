"""SPIFFE IDs, parsed by the SPIFFE ID specification (not by prefix).

A SPIFFE ID is ``spiffe://<trust-domain><path>``:

* the scheme is exactly ``spiffe`` (lower case), followed by ``://``;
* the trust domain is 1-255 characters of lower-case letters, digits, ``.``,
  ``-`` and ``_`` (no port, no user info, no upper case);
* the path is empty or ``/``-separated segments of letters, digits, ``.``,
  ``-`` and ``_``; no segment is empty, ``.`` or ``..`` (so no trailing
  ``/`` either);
* no percent-encoding, query or fragment, and at most 2048 bytes in all.

Anything else is refused with :class:`krypton.errors.PermissionDenied`: a
policy that grants ``spiffe://krypton.dev/tenant/demo/`` must never match
``spiffe://krypton.dev/tenant/demo/../other/x``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from krypton.errors import PermissionDenied

SCHEME = "spiffe://"
MAX_LENGTH = 2048
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True, slots=True)
class SpiffeId:
    trust_domain: str
    path: str  # "" or "/seg/seg"

    def __str__(self) -> str:
        return f"{SCHEME}{self.trust_domain}{self.path}"

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path.split("/")[1:]) if self.path else ()


def looks_like_spiffe(text: str) -> bool:
    """Whether ``text`` claims to be a SPIFFE ID (scheme compared case-insensitively)."""
    return text[: len(SCHEME)].lower() == SCHEME


def _bad(text: str, why: str) -> PermissionDenied:
    shown = text if len(text) <= 120 else text[:117] + "..."
    return PermissionDenied(f"not a valid SPIFFE ID ({why}): {shown!r}")


def parse_spiffe_id(text: str) -> SpiffeId:
    """The SPIFFE ID in ``text``, or PermissionDenied saying what is wrong with it."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_LENGTH:
        raise _bad(text, f"longer than {MAX_LENGTH} bytes")
    if not text.startswith(SCHEME):
        raise _bad(text, "the scheme must be 'spiffe://'")
    rest = text[len(SCHEME):]
    for char, what in (("%", "percent-encoding"), ("?", "a query"), ("#", "a fragment")):
        if char in rest:
            raise _bad(text, f"{what} is not allowed")
    domain, slash, path = rest.partition("/")
    if not _TRUST_DOMAIN.fullmatch(domain):
        raise _bad(text, "the trust domain must be lower-case letters, digits, '.', '-', '_'")
    if not slash:
        return SpiffeId(domain, "")
    for segment in path.split("/"):
        if not segment:
            raise _bad(text, "empty path segment")
        if segment in (".", ".."):
            raise _bad(text, "dot path segment")
        if not _SEGMENT.fullmatch(segment):
            raise _bad(text, "path segments must be letters, digits, '.', '-', '_'")
    return SpiffeId(domain, "/" + path)
