"""Protocol versions we speak, and how a request's version is answered."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class ProtocolVersion:
    major: int
    minor: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"

    @property
    def v2(self) -> bool:
        """KMIP 2.x: Attributes instead of Template-Attribute, attribute references."""
        return self.major >= 2


SUPPORTED: tuple[ProtocolVersion, ...] = tuple(
    ProtocolVersion(a, b) for a, b in ((2, 1), (2, 0), (1, 4), (1, 3), (1, 2), (1, 1), (1, 0))
)
_SUPPORTED_SET = frozenset(SUPPORTED)
_HIGHEST_MINOR = {v.major: max(s.minor for s in SUPPORTED if s.major == v.major) for v in SUPPORTED}


def negotiate(requested: ProtocolVersion) -> ProtocolVersion | None:
    """The version to answer in, or None when the major version is not ours.

    A later minor version of a major version we speak is answered in our
    highest minor of that major (the spec: same major, unknown fields are
    ignored).
    """
    if requested in _SUPPORTED_SET:
        return requested
    highest = _HIGHEST_MINOR.get(requested.major)
    if highest is None or requested.minor < 0:
        return None
    if requested.minor > highest:
        return ProtocolVersion(requested.major, highest)
    return None
