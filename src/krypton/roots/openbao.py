"""A root of trust in OpenBao's Transit engine.

How this works
--------------
The root is a Transit key (``<mount>/keys/<name>``) that OpenBao keeps; it
must be *derived* (``derived=true``), so that each call's ``context`` picks a
key of its own: the context is the binding of what is sealed (the tenant for
an L2, the gateway and tenant for a gateway seal), and a blob opens only for
the context it was sealed with. Sealing is ``<mount>/encrypt/<name>``, opening
``<mount>/decrypt/<name>``; the blob is ``0xA2`` and the ciphertext OpenBao
returns (``vault:v<n>:...``), so a Transit key rotated in OpenBao still opens
older blobs.

At open the key is read (``<mount>/keys/<name>``): a missing key is
:class:`~krypton.errors.RootRefused` (Transit would otherwise *create* a key
on the first encrypt for a caller allowed to), a key that is not derived
too; the health probe (:meth:`OpenBaoSealer.check`) reads it again, then
encrypts. A policy that does not allow the read is accepted: then the first
encrypt or decrypt tells. The policy should allow only ``update`` on
``<mount>/encrypt/<name>`` and ``<mount>/decrypt/<name>`` (and ``read`` on
``<mount>/keys/<name>``), never ``create``: an encrypt allowed to create
would make a new key where the old one was deleted. An OpenBao that does not answer is
:class:`~krypton.errors.RootUnavailable`; a refusal (403, a missing key,
a blob it does not accept) is RootRefused or
:class:`~krypton.errors.UnwrapFailed`. The HTTP client
(:class:`~krypton.openbao.OpenBaoClient`) keeps its connections alive and
logs in with AppRole when given a role instead of a token.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, TypeVar

from krypton.crypto.secret import SecretBytes
from krypton.errors import OpenBaoError, RootRefused, RootUnavailable, UnwrapFailed
from krypton.openbao import OpenBaoClient
from krypton.roots.base import OPENBAO_TAG, Plain, blocking, plain_view

T = TypeVar("T")
_PROBE_CONTEXT = b"krypton root probe"


class OpenBaoSealer:
    """The Transit key ``key`` at ``mount`` of an OpenBao (``await OpenBaoSealer.open``).
    Takes ownership of ``client`` (closed with the sealer)."""

    kind = "openbao"

    def __init__(self, client: OpenBaoClient, key: str, mount: str = "transit") -> None:
        self._client = client
        self._key = key
        self._mount = mount.strip("/")

    @classmethod
    async def open(cls, client: OpenBaoClient, key: str, mount: str = "transit") -> OpenBaoSealer:
        self = cls(client, key, mount)
        try:
            await blocking(self._check_key)
        except BaseException:
            client.close()
            raise
        return self

    def describe(self) -> str:
        return (f"openbao root (Transit key {self._mount}/keys/{self._key} at "
                f"{self._client.address})")

    def __repr__(self) -> str:
        return f"OpenBaoSealer({self._client.address}, {self._mount}/{self._key})"

    # -- the sealer ---------------------------------------------------------------------
    async def seal(self, context: bytes, plaintext: Plain) -> bytes:
        body = {"plaintext": _b64(plain_view(plaintext)), "context": _b64(context)}
        answer = await blocking(lambda: self._call("encrypt", body))
        text = _field(answer, "ciphertext")
        return bytes([OPENBAO_TAG]) + text.encode("ascii")

    async def unseal(self, context: bytes, blob: bytes) -> SecretBytes:
        if len(blob) < 2 or blob[0] != OPENBAO_TAG:
            raise UnwrapFailed("the blob was not sealed by an OpenBao root")
        try:
            ciphertext = blob[1:].decode("ascii")
        except UnicodeDecodeError:
            raise UnwrapFailed("the OpenBao-sealed blob is damaged") from None
        body = {"ciphertext": ciphertext, "context": _b64(context)}
        answer = await blocking(lambda: self._call("decrypt", body, opening=True))
        try:
            return SecretBytes(base64.b64decode(_field(answer, "plaintext"), validate=True))
        except (binascii.Error, ValueError):
            raise UnwrapFailed("OpenBao answered a plaintext that is not base64") from None

    async def check(self) -> None:
        await blocking(self._check_key)  # before encrypt, which may re-create a deleted key
        body = {"plaintext": _b64(b"probe"), "context": _b64(_PROBE_CONTEXT)}
        await blocking(lambda: self._call("encrypt", body))

    async def close(self) -> None:
        self._client.close()

    # -- internals ------------------------------------------------------------------------
    def _call(self, op: str, body: dict[str, Any], *, opening: bool = False) -> dict[str, Any]:
        path = f"{self._mount}/{op}/{self._key}"
        try:
            return self._client.post(path, body)
        except OpenBaoError as exc:
            raise _mapped(exc, self.describe(), opening=opening) from None

    def _check_key(self) -> None:
        try:
            answer = self._client.get(f"{self._mount}/keys/{self._key}")
        except OpenBaoError as exc:
            if exc.http_status == 403:
                return  # the policy may allow only encrypt/decrypt: they will tell
            if exc.http_status == 404:
                raise RootRefused(
                    f"OpenBao at {self._client.address} has no Transit key "
                    f"{self._mount}/keys/{self._key} (create it: derived=true)") from None
            raise _mapped(exc, self.describe(), opening=False) from None
        data = answer.get("data")
        if isinstance(data, dict) and data.get("derived") is False:
            raise RootRefused(
                f"the Transit key {self._mount}/keys/{self._key} is not derived: create it with "
                "derived=true, so each sealed key is bound to its context")


def _mapped(exc: OpenBaoError, where: str, *, opening: bool) -> Exception:
    if exc.http_status is None or (exc.http_status >= 500 and exc.http_status != 503):
        return RootUnavailable(f"{where}: {exc.message}")
    if exc.http_status == 503:
        return RootUnavailable(f"{where}: OpenBao is sealed or on standby ({exc.message})")
    if opening and exc.http_status == 400:
        return UnwrapFailed(f"{where} refused to open a sealed key (tampered, sealed for "
                            f"another record, or by another key): {exc.message}")
    return RootRefused(f"{where}: {exc.message}")


def _b64(data: bytes | bytearray | memoryview) -> str:
    return base64.b64encode(data).decode("ascii")


def _field(answer: dict[str, Any], name: str) -> str:
    data = answer.get("data")
    value = data.get(name) if isinstance(data, dict) else None
    if not isinstance(value, str):
        raise RootRefused(f"OpenBao answered without {name}")
    return value

