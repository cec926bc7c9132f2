"""Vault records as OpenBao KV v2 secrets: paths, encoding, the calls made.

How this works
--------------
One secret per key: ``<mount>/data/<prefix>/keys/<uid>`` holds exactly what a
row of the SQLite vault holds — the wrapped L4 blob (AES-GCM under the
tenant's L3, never plaintext), the attribute blob, state, L3 version, outbox
mark and record MAC — as JSON (blobs in base64), plus ``at``, the write time
in nanoseconds that orders the outbox. Small vault state lives beside it:
``<prefix>/state/cursor`` (the change-feed cursor) and
``<prefix>/quarantine/<uid>`` (outbox records that did not decode); with a
gateway seal, its sealed L3 copies at ``<prefix>/sealed_l3/<tenant>~<version>``
(:mod:`krypton.vault._bao_sealed`).

A new record is written with ``cas = 0`` (KV v2 check-and-set: only if the
secret does not exist), so a duplicate uid is refused by OpenBao itself. A
rewrite reads the secret, and writes with ``cas`` = the version it read; if
the wrapped blob changed (a destroyed key's is erased) it then destroys the
versions it replaced (``<mount>/destroy``), so the old blob does not linger in
the secret's history.

Every call is synchronous (``OpenBaoClient``: a pool of keep-alive
connections); :class:`krypton.vault.openbao.BaoVault` runs them on worker
threads. Every failure is a :class:`~krypton.errors.StorageError`.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any, Final
from urllib.parse import quote

from krypton.errors import OpenBaoError, StorageError
from krypton.model.record import KeyRecord
from krypton.openbao import OpenBaoClient
from krypton.vault.held import BadRow, decode

DUPLICATE: Final = "a key with this unique identifier exists"
_CAS_MISMATCH: Final = "check-and-set parameter did not match"
_FIELDS: Final = ("tenant", "object_type", "algorithm", "length", "state", "l3_version",
                  "wrapped", "attributes", "created", "synced")  # fmt: skip
_BLOBS: Final = frozenset(("wrapped", "attributes"))


@contextmanager
def translated(what: str) -> Iterator[None]:
    """OpenBao errors as StorageError (their text names no secret content)."""
    try:
        yield
    except OpenBaoError as exc:
        raise StorageError(f"vault {what} (OpenBao): {exc.message}") from None


def encode(record: KeyRecord, at: int) -> dict[str, Any]:
    """The JSON a record is stored as (``synced`` as 0/1, blobs in base64)."""
    data: dict[str, Any] = {}
    for name in _FIELDS:
        value = getattr(record, name)
        if name in _BLOBS:
            value = base64.b64encode(value).decode()
        data[name] = value if isinstance(value, str) else int(value)
    data["mac"] = base64.b64encode(record.mac).decode()
    data["at"] = at
    return data


def _blob(value: Any) -> Any:
    if not isinstance(value, str):
        return value  # decode() says what is wrong with it
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return value


def decoded(uid: str, data: Any) -> tuple[KeyRecord, int, int]:
    """A stored secret's (record, at, synced 0/1/2); :class:`BadRow` if it does not decode."""
    if not isinstance(data, dict):
        raise BadRow("not a JSON object")
    try:
        row = [uid, *((_blob(data[n]) if n in _BLOBS else data[n]) for n in _FIELDS)]
        mac, at = _blob(data["mac"]), data.get("at", 0)
    except KeyError as missing:
        raise BadRow(f"field {missing.args[0]} is missing") from None
    if not isinstance(mac, bytes):
        raise BadRow("field mac: not a blob")
    record = replace(decode(row), mac=mac)
    return record, (at if type(at) is int else 0), int(row[-1])


class Conflict(StorageError):
    """A check-and-set write found the secret at another version."""


def _conflict(exc: OpenBaoError) -> bool:
    return exc.http_status == 400 and _CAS_MISMATCH in exc.message


def _version(answer: dict[str, Any]) -> int:
    version = (answer.get("data") or {}).get("version")
    return version if type(version) is int else 0


def _absent(exc: OpenBaoError, mount: str) -> bool:
    """A 404 for a secret that is not there (True), or for a mount that is not
    (an error naming the mount)."""
    if exc.http_status != 404:
        return False
    if "no handler for route" in exc.message:
        raise OpenBaoError(f"no KV v2 secrets engine is mounted at {mount!r}", 404)
    return True


class Kv:
    """The vault's secrets on one KV v2 mount, under one path prefix."""

    __slots__ = ("client", "mount", "prefix")

    def __init__(self, client: OpenBaoClient, mount: str, prefix: str) -> None:
        self.client = client
        self.mount = mount.strip("/")
        self.prefix = prefix.strip("/")

    def path(self, kind: str, name: str = "") -> str:
        return "/".join(p for p in (self.prefix, kind, quote(name, safe="")) if p)

    # -- records ------------------------------------------------------------------
    def read(self, uid: str) -> tuple[Any, int] | None:
        """A key's stored JSON and its KV version, None if there is none."""
        return self._read(self.path("keys", uid))

    def create(self, record: KeyRecord) -> tuple[int, int]:
        """A new key's secret: its ``at`` and KV version; StorageError (DUPLICATE)
        if the uid is taken."""
        at = time.time_ns()
        try:
            answer = self.client.post(f"{self.mount}/data/{self.path('keys', record.uid)}",
                                      {"options": {"cas": 0}, "data": encode(record, at)})
        except OpenBaoError as exc:
            if _conflict(exc):
                raise StorageError(DUPLICATE) from None
            raise StorageError(f"vault write (OpenBao): {exc.message}") from None
        return at, _version(answer)

    def rewrite(self, record: KeyRecord, at: int, version: int, *, destroy: bool) -> int:
        """Overwrite a key's secret if it is still at ``version``; with ``destroy``
        (the wrapped blob changed: erased or re-wrapped) destroy every earlier
        version too, so the old blob is gone from OpenBao, not only hidden. The
        new version; :class:`Conflict` if the secret is at another version."""
        path = self.path("keys", record.uid)
        try:
            answer = self.client.post(f"{self.mount}/data/{path}",
                                      {"options": {"cas": version}, "data": encode(record, at)})
        except OpenBaoError as exc:
            if _conflict(exc):
                raise Conflict(f"vault record {record.uid!r} changed meanwhile") from None
            raise StorageError(f"vault write (OpenBao): {exc.message}") from None
        with translated("write"):
            if destroy:
                self.client.post(f"{self.mount}/destroy/{path}",
                                 {"versions": list(range(1, version + 1))})
        return _version(answer)

    def uids(self, kind: str = "keys") -> list[str]:
        """Every secret name under ``<prefix>/<kind>/`` (LIST; [] if none)."""
        with translated("list"):
            try:
                answer = self.client.list(f"{self.mount}/metadata/{self.path(kind)}/")
            except OpenBaoError as exc:
                if _absent(exc, self.mount):
                    return []
                raise
        keys = (answer.get("data") or {}).get("keys") or []
        return [str(k) for k in keys if isinstance(k, str) and not k.endswith("/")]

    # -- small state ------------------------------------------------------------------
    def read_state(self, kind: str, name: str) -> Any:
        found = self._read(self.path(kind, name))
        return None if found is None else found[0]

    def write_state(self, kind: str, name: str, data: dict[str, Any]) -> None:
        with translated("write"):
            self.client.post(f"{self.mount}/data/{self.path(kind, name)}", {"data": data})

    def _read(self, path: str) -> tuple[Any, int] | None:
        with translated("read"):
            try:
                answer = self.client.get(f"{self.mount}/data/{path}")
            except OpenBaoError as exc:
                if _absent(exc, self.mount):
                    return None
                raise
        body = answer.get("data") or {}
        meta = body.get("metadata") or {}
        if body.get("data") is None:  # a destroyed or deleted version
            return None
        return body["data"], int(meta.get("version") or 0)
