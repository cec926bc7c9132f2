"""The model: the records every side shares and the ports the handlers use.

A leaf package: it imports only :mod:`krypton.ttlv`, :mod:`krypton.kmip` and
:mod:`krypton.errors`, and every other package may import it.

- :class:`KeyRecord` — the one key record (a wrapped L4 and its metadata);
- :class:`Grant` — what a client identity may do;
- :class:`RequestContext` — per-request state;
- the registry's records (:class:`ObjectRecord`, :class:`AuditRecord`,
  :class:`SealedKey`, :class:`StateChange`, :class:`KeyChange`,
  :class:`LocateQuery`);
- the ports: :class:`KeyStore`, :class:`Upstream`, :class:`Registry`, :class:`Sealer`.
"""

from __future__ import annotations

from krypton.model.context import RequestContext
from krypton.model.grant import Grant
from krypton.model.ports import KeyStore, Sealer, Upstream
from krypton.model.record import KeyRecord, new_uid
from krypton.model.registry import (
    AuditRecord,
    Change,
    KeyChange,
    LocateQuery,
    ObjectRecord,
    Registry,
    RegistryConflict,
    SealedKey,
    StateChange,
)

__all__ = [
    "AuditRecord",
    "Change",
    "Grant",
    "KeyChange",
    "KeyRecord",
    "KeyStore",
    "LocateQuery",
    "ObjectRecord",
    "Registry",
    "RegistryConflict",
    "RequestContext",
    "SealedKey",
    "Sealer",
    "StateChange",
    "Upstream",
    "new_uid",
]
