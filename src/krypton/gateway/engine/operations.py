"""Which operations a gateway answers: its own, and the ones its Core runs.

Query (:func:`krypton.gateway.engine.info.query`) lists them; the dispatcher's
handler table (:data:`krypton.gateway.engine.dispatch.HANDLERS`) serves
:data:`LOCAL` (a test holds the two to the same operations, in order).
"""

from __future__ import annotations

from krypton.gateway.engine.services import Services
from krypton.ttlv.enums import Operation

LOCAL: tuple[int, ...] = (
    Operation.CREATE,
    Operation.GET,
    Operation.GET_ATTRIBUTES,
    Operation.GET_ATTRIBUTE_LIST,
    Operation.DISCOVER_VERSIONS,
    Operation.QUERY,
    Operation.ENCRYPT,
    Operation.DECRYPT,
    Operation.RNG_RETRIEVE,
    Operation.LOG,
    Operation.INTEROP,
)


# What the Krypton Core runs for a gateway (krypton.core.engine.control.CONTROL_HANDLERS);
# listed here so Query at a gateway can answer without importing the Core's engine.
DELEGATED: tuple[int, ...] = (
    Operation.REGISTER,
    Operation.RE_KEY,
    Operation.LOCATE,
    Operation.CHECK,
    Operation.ADD_ATTRIBUTE,
    Operation.MODIFY_ATTRIBUTE,
    Operation.DELETE_ATTRIBUTE,
    Operation.SET_ATTRIBUTE,
    Operation.ACTIVATE,
    Operation.REVOKE,
    Operation.DESTROY,
    Operation.CREATE_KEY_PAIR,
    Operation.GET_USAGE_ALLOCATION,
)


def supported_operations(services: Services | None = None) -> tuple[int, ...]:
    local = tuple(
        op for op in LOCAL if op != Operation.INTEROP or (services is not None and services.interop)
    )
    if services is not None and services.upstream is not None:
        return (*local, *DELEGATED)
    return local
