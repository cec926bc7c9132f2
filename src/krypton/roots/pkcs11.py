"""A root of trust in a PKCS#11 token (an HSM; SoftHSM2 in the tests).

How this works
--------------
The root is a 256-bit AES secret key object in the token, found by its label,
created by ``krypton core … init`` (``create=True``) with ``CKA_TOKEN``,
``CKA_SENSITIVE`` and not ``CKA_EXTRACTABLE``: its bytes never leave the
token, and a key found extractable is refused. Sealing is ``CKM_AES_GCM``
*inside the token* with a fresh 96-bit nonce from ``os.urandom`` and the
context as associated data, so a blob opens only for the record it was made
for; the blob is ``0xA1 | nonce | ciphertext | tag``.

One session (logged in with the user PIN) serves every call, one call at a
time under a lock, in a worker thread (PKCS#11 calls block). A call that
fails because the session or the token went away (the token was removed or
re-initialised, the library was re-initialised by another sealer in this
process) reopens the session once and tries again; what still fails is
:class:`~krypton.errors.RootUnavailable`. A missing module, token or key, or
a refused PIN, is a clear error at open; an authentication failure of a blob
is :class:`~krypton.errors.UnwrapFailed`. python-pkcs11's own exceptions
never leave this module.

SoftHSM2 reads its token directory (``SOFTHSM2_CONF``) when the library is
initialised: a token not found is looked for once more after re-initialising
the library (``pkcs11.lib`` is one object per module path in a process).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.mechanisms import GCMParams

from krypton.crypto.secret import SecretBytes
from krypton.errors import RootRefused, RootUnavailable, UnwrapFailed
from krypton.roots.base import PKCS11_TAG, Plain, blocking, plain_view

NONCE = 12
TAG_BITS = 128
_OVERHEAD = 1 + NONCE + TAG_BITS // 8
_PROBE = b"krypton root probe"
T = TypeVar("T")

# Failures that mean the session (not the blob) is gone: reopen once.
_SESSION_LOST: tuple[type[BaseException], ...] = (
    pkcs11.exceptions.SessionHandleInvalid,
    pkcs11.exceptions.SessionClosed,
    pkcs11.exceptions.DeviceRemoved,
    pkcs11.exceptions.DeviceError,
    pkcs11.exceptions.TokenNotPresent,
    pkcs11.exceptions.TokenNotRecognised,
    pkcs11.exceptions.ObjectHandleInvalid,
    pkcs11.exceptions.UserNotLoggedIn,
)
_BAD_BLOB: tuple[type[BaseException], ...] = (
    pkcs11.exceptions.EncryptedDataInvalid,
    pkcs11.exceptions.EncryptedDataLenRange,
    pkcs11.exceptions.GeneralError,  # SoftHSM2's answer to a failed GCM tag
)


class Pkcs11Sealer:
    """The root key ``key_label`` in the token ``token_label`` (``await Pkcs11Sealer.open``)."""

    kind = "pkcs11"

    def __init__(self, module: Path, token_label: str, key_label: str, pin: str) -> None:
        self._module = module
        self._token_label = token_label
        self._key_label = key_label
        self._pin = pin
        self._lock = threading.Lock()
        self._session: Any = None
        self._key: Any = None

    @classmethod
    async def open(
        cls, module: Path, token_label: str, key_label: str, pin: str, *, create: bool = False
    ) -> Pkcs11Sealer:
        """Log in to the token and find the key (make it, if ``create`` and absent)."""
        self = cls(module, token_label, key_label, pin)
        await blocking(lambda: self._locked(lambda: self._connect(create=create)))
        return self

    def describe(self) -> str:
        return (f"pkcs11 root (key {self._key_label!r} in token {self._token_label!r},"
                f" module {self._module})")

    def __repr__(self) -> str:
        return f"Pkcs11Sealer(token={self._token_label!r}, key={self._key_label!r})"

    # -- the sealer ---------------------------------------------------------------------
    async def seal(self, context: bytes, plaintext: Plain) -> bytes:
        nonce = os.urandom(NONCE)
        aad = bytes([PKCS11_TAG]) + context
        # python-pkcs11 takes bytes (a bytearray would be read as an iterable of
        # chunks): this copy cannot be wiped, like the one decrypt returns.
        data = bytes(plain_view(plaintext))
        body = await blocking(lambda: self._call(
            lambda key: key.encrypt(data, mechanism=Mechanism.AES_GCM,
                                    mechanism_param=GCMParams(nonce, aad, TAG_BITS))))
        return bytes([PKCS11_TAG]) + nonce + bytes(body)

    async def unseal(self, context: bytes, blob: bytes) -> SecretBytes:
        if len(blob) < _OVERHEAD or blob[0] != PKCS11_TAG:
            raise UnwrapFailed("the blob was not sealed by a PKCS#11 root")
        nonce, body = blob[1 : 1 + NONCE], blob[1 + NONCE :]
        aad = bytes([PKCS11_TAG]) + context

        def decrypt(key: Any) -> bytes:
            try:
                out: bytes = key.decrypt(body, mechanism=Mechanism.AES_GCM,
                                         mechanism_param=GCMParams(nonce, aad, TAG_BITS))
            except _BAD_BLOB:
                raise UnwrapFailed(
                    "sealed key failed authentication at the PKCS#11 root (tampered, sealed "
                    "for another record, or by another root key)") from None
            return out

        plain = await blocking(lambda: self._call(decrypt))
        return SecretBytes(plain)

    async def check(self) -> None:
        await blocking(lambda: self._call(
            lambda key: key.encrypt(_PROBE, mechanism=Mechanism.AES_GCM,
                                    mechanism_param=GCMParams(os.urandom(NONCE), b"", TAG_BITS))))

    async def close(self) -> None:
        await blocking(lambda: self._locked(self._disconnect))

    # -- the session ----------------------------------------------------------------------
    def _locked(self, fn: Callable[[], T]) -> T:
        with self._lock:
            return fn()

    def _call(self, op: Callable[[Any], T]) -> T:
        with self._lock:
            for attempt in (0, 1):
                try:
                    if self._key is None:
                        self._connect(create=False)
                    return op(self._key)
                except _SESSION_LOST:
                    self._disconnect()
                    if attempt:
                        raise RootUnavailable(
                            f"the PKCS#11 token {self._token_label!r} went away") from None
                except pkcs11.exceptions.PKCS11Error as exc:
                    raise RootUnavailable(
                        f"the PKCS#11 token {self._token_label!r} failed: "
                        f"{type(exc).__name__}") from None
            raise AssertionError("unreachable")  # pragma: no cover

    def _connect(self, *, create: bool) -> None:
        token = self._token()
        try:
            try:
                session = token.open(user_pin=self._pin, rw=True)
            except pkcs11.exceptions.UserAlreadyLoggedIn:
                session = token.open(rw=True)  # another session of this process logged in
        except (pkcs11.exceptions.PinIncorrect, pkcs11.exceptions.PinInvalid,
                pkcs11.exceptions.PinLenRange):
            raise RootRefused(f"the PKCS#11 token {self._token_label!r} refused the PIN") from None
        except pkcs11.exceptions.PKCS11Error as exc:
            raise RootUnavailable(f"cannot log in to the PKCS#11 token {self._token_label!r}:"
                                  f" {type(exc).__name__}") from None
        try:
            key = self._find_key(session, create=create)
        except pkcs11.exceptions.PKCS11Error as exc:
            session.close()
            raise RootUnavailable(f"the PKCS#11 token {self._token_label!r} failed:"
                                  f" {type(exc).__name__}") from None
        except BaseException:
            session.close()
            raise
        self._session, self._key = session, key

    def _token(self) -> Any:
        try:
            lib = pkcs11.lib(str(self._module))
        except pkcs11.exceptions.PKCS11Error as exc:
            raise RootUnavailable(f"the PKCS#11 module {self._module} cannot be loaded:"
                                  f" {exc}") from None
        for attempt in (0, 1):
            try:
                return lib.get_token(token_label=self._token_label)
            except pkcs11.exceptions.NoSuchToken:
                if attempt:
                    break
                lib.reinitialize()  # SoftHSM2 sees tokens made since it was initialised
            except pkcs11.exceptions.MultipleTokensReturned:
                raise RootRefused(
                    f"more than one PKCS#11 token is labelled {self._token_label!r}") from None
        raise RootUnavailable(
            f"no PKCS#11 token labelled {self._token_label!r} in {self._module}")

    def _find_key(self, session: Any, *, create: bool) -> Any:
        label = self._key_label
        try:
            key = session.get_key(object_class=ObjectClass.SECRET_KEY, key_type=KeyType.AES,
                                  label=label)
        except pkcs11.exceptions.NoSuchKey:
            if not create:
                raise RootRefused(
                    f"the PKCS#11 token {self._token_label!r} holds no AES key labelled "
                    f"{label!r} (`krypton core … init` makes it)") from None
            return session.generate_key(
                KeyType.AES, 256, label=label, store=True,
                template={Attribute.EXTRACTABLE: False, Attribute.SENSITIVE: True,
                          Attribute.ENCRYPT: True, Attribute.DECRYPT: True,
                          Attribute.WRAP: False, Attribute.UNWRAP: False},
            )
        except pkcs11.exceptions.MultipleObjectsReturned:
            raise RootRefused(f"more than one AES key is labelled {label!r} in the PKCS#11 "
                              f"token {self._token_label!r}") from None
        if key[Attribute.EXTRACTABLE] or not key[Attribute.SENSITIVE]:
            raise RootRefused(f"the root key {label!r} is extractable or not sensitive: a root "
                              "key must never leave its token")
        return key

    def _disconnect(self) -> None:
        session, self._session, self._key = self._session, None, None
        if session is not None:
            with contextlib.suppress(pkcs11.exceptions.PKCS11Error):
                session.close()
