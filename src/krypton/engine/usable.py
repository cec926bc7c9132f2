"""May this key do this now: the one check Encrypt, Decrypt, key wrapping and the
Core's Get Usage Allocation make.

A key is usable when its state -- after the transitions a reached Activation
or Deactivation Date causes -- is Active and its material is present, its
Cryptographic Usage Mask (when it has one) allows the use or is Unrestricted,
and the use is inside the key's dates: protecting (Encrypt, Wrap) only before
its Protect Stop Date, processing (Decrypt) only after its Process Start Date.
Every failure is Wrong Key Lifecycle State but the mask's, which is
Incompatible Cryptographic Usage Mask; a 1.x client is told Permission Denied
for both (KMIP 1.4 §11.30, :func:`krypton.kmip.reasons.reason_for`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from krypton.engine.object_errors import IncompatibleUsageMask
from krypton.engine.objects import date_driven_state, first, int_of
from krypton.errors import WrongKeyLifecycleState
from krypton.kmip.attributes import Attribute
from krypton.ttlv.enums import CryptographicUsageMask, State


@dataclass(frozen=True, slots=True)
class Use:
    """What a key is asked to do: ``usage`` is the mask bit it needs (None: any
    mask will do); ``protects`` / ``processes``: bound by the Protect Stop / the
    Process Start Date."""

    name: str
    usage: int | None = None
    protects: bool = False
    processes: bool = False


def check_usable(
    use: Use, uid: str, state: int, stored: Sequence[Attribute], now: int,
    *, has_material: bool = True,
) -> None:  # fmt: skip
    """Raise unless the key ``uid`` (its ``state`` and stored attributes) may do ``use`` now."""
    if date_driven_state(state, stored, now) != State.ACTIVE or not has_material:
        raise WrongKeyLifecycleState(f"{use.name}: key {uid!r} is not Active")
    mask = int_of(first(stored, "Cryptographic Usage Mask"))
    allowed = (use.usage or 0) | CryptographicUsageMask.UNRESTRICTED
    if use.usage is not None and mask is not None and not mask & allowed:
        raise IncompatibleUsageMask(
            f"{use.name}: the Cryptographic Usage Mask of {uid!r} does not allow it"
        )
    if use.processes:
        start = int_of(first(stored, "Process Start Date"))
        if start is not None and start > now:
            raise WrongKeyLifecycleState(f"{use.name}: key {uid!r} is before its Process Start")
    if use.protects:
        stop = int_of(first(stored, "Protect Stop Date"))
        if stop is not None and stop <= now:
            raise WrongKeyLifecycleState(f"{use.name}: key {uid!r} is past its Protect Stop Date")
