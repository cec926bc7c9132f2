"""Operation and Result Reason names as the KMIP specification writes them.

``Operation.GET_ATTRIBUTE_LIST`` is "Get Attribute List" and
``ResultReason.ITEM_NOT_FOUND`` "Item Not Found" (KMIP 2.1 §11.36 and Table
478): the words of the enumeration's member name, capitalised, except where
the specification spells a name otherwise (the table below). A value the
enumeration does not know (an extension) is its hexadecimal value.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final

from krypton.ttlv.enums import Operation, ResultReason

# Where the specification's spelling is not the capitalised words of the member
# name. One table per enumeration: members of two IntEnums with one value are equal.
_OPERATIONS: Final[dict[int, str]] = {
    Operation.RE_KEY: "Re-key",
    Operation.RE_CERTIFY: "Re-certify",
    Operation.RE_KEY_KEY_PAIR: "Re-key Key Pair",
    Operation.MAC: "MAC",
    Operation.MAC_VERIFY: "MAC Verify",
    Operation.RNG_RETRIEVE: "RNG Retrieve",
    Operation.RNG_SEED: "RNG Seed",
    Operation.PKCS_11: "PKCS#11",
    Operation.RE_PROVISION: "Re-Provision",
}
_REASONS: Final[dict[int, str]] = {
    ResultReason.INDEX_OUT_OF_BOUNDS: "Index Out of Bounds",
    ResultReason.INVALID_CSR: "Invalid CSR",
    ResultReason.PKCS_11_CODEC_ERROR: "PKCS#11 Codec Error",
    ResultReason.PKCS_11_INVALID_FUNCTION: "PKCS#11 Invalid Function",
    ResultReason.PKCS_11_INVALID_INTERFACE: "PKCS#11 Invalid Interface",
}


def _names(enum: type[IntEnum], spelled: dict[int, str]) -> dict[int, str]:
    return {int(m): spelled.get(m) or " ".join(w.capitalize() for w in m.name.split("_"))
            for m in enum}


OPERATION_SPEC_NAMES: Final = _names(Operation, _OPERATIONS)
REASON_SPEC_NAMES: Final = _names(ResultReason, _REASONS)


def operation_name(value: int) -> str:
    """``10`` → ``"Get"``; an unknown value → ``"0x8000000A"``."""
    return OPERATION_SPEC_NAMES.get(value) or f"0x{value:08X}"


def reason_name(value: int) -> str:
    """``1`` → ``"Item Not Found"``; an unknown value → ``"0x80000001"``."""
    return REASON_SPEC_NAMES.get(value) or f"0x{value:08X}"
