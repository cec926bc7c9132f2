"""The vault's sealed copies of L3 versions (``[gateway.seal]``, krypton.gateway.seal).

One row per (tenant, version): the version's state, the absolute wall-clock
end of its lease, the wall-clock time the row was stored, which kind of root
sealed it, and the sealed bytes. The gateway's seal (a PKCS#11 token or
OpenBao Transit) made the blob, bound to all of these columns, so a row
edited on disk (a later lease end, say) no longer opens; the vault never sees
an L3 in the clear. Writes go through the vault's writer thread like every
other vault write (:meth:`krypton.vault.sqlite.Vault.submit`).

:class:`SealedRows` is this table as a
:class:`~krypton.vault.port.SealedL3Store` (``Vault.sealed_l3()``); the
OpenBao vault keeps the same rows as KV secrets (:mod:`krypton.vault._bao_sealed`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from krypton.vault.sqlite import Vault

_UPSERT = (
    "INSERT OR REPLACE INTO sealed_l3 (tenant, version, state, lease_end, stored_at, kind,"
    " sealed) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_SELECT = (
    "SELECT tenant, version, state, lease_end, stored_at, kind, sealed FROM sealed_l3"
    " ORDER BY tenant, version"
)


@dataclass(frozen=True, slots=True)
class SealedL3:
    tenant: str
    version: int
    state: int
    lease_end: float  # wall clock (seconds since the epoch)
    stored_at: float  # wall clock
    kind: str  # the kind of root that sealed it (krypton.roots.kind_of)
    sealed: bytes

    def __repr__(self) -> str:
        return (f"SealedL3(tenant={self.tenant!r}, version={self.version}, state={self.state},"
                f" lease_end={self.lease_end}, kind={self.kind!r}, sealed=<{len(self.sealed)}"
                " bytes>)")


def put_row(conn: sqlite3.Connection, row: SealedL3) -> int:
    conn.execute(_UPSERT, (row.tenant, int(row.version), int(row.state), float(row.lease_end),
                           float(row.stored_at), row.kind, row.sealed))
    return 0


def drop_rows(
    conn: sqlite3.Connection, payload: tuple[str, Sequence[int] | None, Sequence[int] | None]
) -> int:
    """``(tenant, drop, keep)``: drop the listed versions, or every version not kept."""
    tenant, drop, keep = payload
    if drop is not None:
        return conn.executemany("DELETE FROM sealed_l3 WHERE tenant = ? AND version = ?",
                                [(tenant, int(v)) for v in drop]).rowcount
    kept = tuple(int(v) for v in keep or ())
    marks = ", ".join("?" * len(kept)) or "NULL"
    return conn.execute(
        f"DELETE FROM sealed_l3 WHERE tenant = ? AND version NOT IN ({marks})",  # noqa: S608
        (tenant, *kept),
    ).rowcount


async def store(vault: Vault, row: SealedL3) -> None:
    await vault.submit(put_row, row)


async def drop(vault: Vault, tenant: str, versions: Sequence[int]) -> None:
    await vault.submit(drop_rows, (tenant, tuple(versions), None))


async def keep_only(vault: Vault, tenant: str, versions: Sequence[int]) -> None:
    await vault.submit(drop_rows, (tenant, None, tuple(versions)))


def rows(vault: Vault) -> list[SealedL3]:
    return [SealedL3(str(t), int(v), int(s), float(e), float(a), str(k), bytes(b))
            for t, v, s, e, a, k, b in vault.query(_SELECT)]


class SealedRows:
    """The ``sealed_l3`` table of one SQLite vault (a
    :class:`~krypton.vault.port.SealedL3Store`)."""

    __slots__ = ("_vault",)

    def __init__(self, vault: Vault) -> None:
        self._vault = vault

    async def store(self, row: SealedL3) -> None:
        await store(self._vault, row)

    async def drop(self, tenant: str, versions: Sequence[int]) -> None:
        await drop(self._vault, tenant, versions)

    async def keep_only(self, tenant: str, versions: Sequence[int]) -> None:
        await keep_only(self._vault, tenant, versions)

    async def rows(self) -> list[SealedL3]:
        return rows(self._vault)
