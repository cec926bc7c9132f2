"""The gateway seal's sealed L3 copies on the OpenBao vault: the SQLite
vault's ``sealed_l3`` table as KV v2 secrets.

How this works
--------------
One secret per (tenant, version), beside the records:
``<mount>/data/<prefix>/sealed_l3/<tenant>~<version>`` (a tenant name is
letters, digits, ``.``, ``_``, ``-``: never ``~``). It holds exactly what a
row of the table holds — tenant, version, state, the wall-clock lease end,
the wall-clock time it was stored, the kind of root that sealed it and the
sealed blob (base64) — as JSON. The blob was made by the gateway's seal and
is bound to every other field (:func:`krypton.gateway.seal.seal_context`):
OpenBao never sees an L3 in the clear, and a secret edited in OpenBao (a
later lease end, say) no longer opens.

A store overwrites the secret and destroys the version it replaced, so an
earlier copy (with an earlier lease end) does not linger in the secret's
history; a drop deletes the secret's metadata, which removes every version.
Each operation is a function ``(kv, payload)`` run on the vault's worker
threads by :meth:`krypton.vault.openbao.BaoVault.submit`, like a record write
(a failure is a StorageError and marks the vault unwritable until a write
succeeds, as on SQLite). A secret that does not decode is logged and left
out of :meth:`BaoSealed.rows` (the seal could not open it anyway).
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from krypton.vault._kv import Kv, translated
from krypton.vault.sealed_l3 import SealedL3

if TYPE_CHECKING:
    from krypton.vault.openbao import BaoVault

log = logging.getLogger("krypton.vault")
KIND: Final = "sealed_l3"  # the folder under the vault's prefix
_SEP: Final = "~"
Drop = tuple[str, tuple[int, ...] | None, tuple[int, ...] | None]  # tenant, drop, keep


def name_of(tenant: str, version: int) -> str:
    return f"{tenant}{_SEP}{int(version)}"


def _parsed(name: str) -> tuple[str, int] | None:
    tenant, sep, version = name.rpartition(_SEP)
    return (tenant, int(version)) if sep and version.isdigit() else None


def encode(row: SealedL3) -> dict[str, Any]:
    return {"tenant": row.tenant, "version": int(row.version), "state": int(row.state),
            "lease_end": float(row.lease_end), "stored_at": float(row.stored_at),
            "kind": row.kind, "sealed": base64.b64encode(row.sealed).decode()}  # fmt: skip


# field -> the JSON types it may have
_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "tenant": (str,), "version": (int,), "state": (int,), "lease_end": (int, float),
    "stored_at": (int, float), "kind": (str,), "sealed": (str,),
}  # fmt: skip


def decoded(data: Any) -> SealedL3 | None:
    """The row a secret holds; None if it is not one."""
    if not isinstance(data, dict) or any(
        type(data.get(k)) not in types for k, types in _TYPES.items()
    ):
        return None
    try:
        sealed = base64.b64decode(data["sealed"], validate=True)
    except (binascii.Error, ValueError):
        return None
    return SealedL3(data["tenant"], data["version"], data["state"], float(data["lease_end"]),
                    float(data["stored_at"]), data["kind"], sealed)  # fmt: skip


# -- operations (worker threads) ------------------------------------------------------
def put_sealed(kv: Kv, row: SealedL3) -> None:
    path = kv.path(KIND, name_of(row.tenant, row.version))
    with translated("write"):
        answer = kv.client.post(f"{kv.mount}/data/{path}", {"data": encode(row)})
        version = (answer.get("data") or {}).get("version")
        if type(version) is int and version > 1:
            kv.client.post(f"{kv.mount}/destroy/{path}", {"versions": [version - 1]})


def drop_sealed(kv: Kv, payload: Drop) -> int:
    """Delete the listed versions of the tenant, or every one not kept; how many."""
    tenant, drop, keep = payload
    if drop is None:
        kept = set(keep or ())
        listed = (_parsed(name) for name in kv.uids(KIND))
        drop = tuple(p[1] for p in listed if p is not None and p[0] == tenant
                     and p[1] not in kept)  # fmt: skip
    with translated("delete"):
        for version in drop:
            kv.client.delete(f"{kv.mount}/metadata/{kv.path(KIND, name_of(tenant, version))}")
    return len(drop)


def sealed_rows(kv: Kv, _: None) -> list[SealedL3]:
    found: list[SealedL3] = []
    for name in kv.uids(KIND):
        data = kv.read_state(KIND, name)
        if data is None:
            continue
        row = decoded(data)
        if row is None or name != name_of(row.tenant, row.version):
            log.error("vault: the sealed L3 copy %r on OpenBao does not decode: skipped", name)
            continue
        found.append(row)
    return sorted(found, key=lambda r: (r.tenant, r.version))


OPERATIONS: Final = (put_sealed, drop_sealed, sealed_rows)


class BaoSealed:
    """The sealed L3 copies of one OpenBao vault (a :class:`~krypton.vault.port.SealedL3Store`)."""

    __slots__ = ("_vault",)

    def __init__(self, vault: BaoVault) -> None:
        self._vault = vault

    async def store(self, row: SealedL3) -> None:
        await self._vault.submit(put_sealed, row)

    async def drop(self, tenant: str, versions: Sequence[int]) -> None:
        await self._vault.submit(drop_sealed, (tenant, tuple(versions), None))

    async def keep_only(self, tenant: str, versions: Sequence[int]) -> None:
        await self._vault.submit(drop_sealed, (tenant, None, tuple(versions)))

    async def rows(self) -> list[SealedL3]:
        found: list[SealedL3] = await self._vault.submit(sealed_rows, None)
        return found
