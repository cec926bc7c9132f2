"""The one OpenSSL setting the ``ssl`` module does not expose: the session timeout.

``SSL_CTX_set_timeout`` bounds how long a session (and a TLS 1.3 ticket,
whose lifetime hint it also sets) may be resumed; OpenSSL's default is two
hours. CPython keeps the ``SSL_CTX *`` right after the object header of an
``ssl.SSLContext``; this module reads it there and calls the function in the
``libssl`` that ``_ssl`` is linked against. It checks what it can (the
current timeout reads back as a sane value, the new one reads back exactly)
and reports failure instead of guessing; the caller then relies on the check
of the session's age made on every connection
(:func:`krypton.tls.contexts.peer_identity`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import ssl
import sys

_OFFSET = 2 * ctypes.sizeof(ctypes.c_void_p)  # PyObject_HEAD: refcount, type
_lib: ctypes.CDLL | None = None


def _libssl() -> ctypes.CDLL | None:
    global _lib
    if _lib is None:
        major = ssl.OPENSSL_VERSION_INFO[0]
        for name in (f"libssl.so.{major}", ctypes.util.find_library("ssl")):
            if not name:
                continue
            try:
                lib = ctypes.CDLL(name)
            except OSError:
                continue
            lib.SSL_CTX_get_timeout.restype = ctypes.c_long
            lib.SSL_CTX_get_timeout.argtypes = [ctypes.c_void_p]
            lib.SSL_CTX_set_timeout.restype = ctypes.c_long
            lib.SSL_CTX_set_timeout.argtypes = [ctypes.c_void_p, ctypes.c_long]
            _lib = lib
            break
    return _lib


def set_session_timeout(ctx: ssl.SSLContext, seconds: int) -> bool:
    """Set ``ctx``'s session timeout; False when it could not be done safely."""
    if sys.implementation.name != "cpython" or not isinstance(ctx, ssl.SSLContext):
        return False
    lib = _libssl()
    if lib is None:
        return False
    ptr = ctypes.c_void_p.from_address(id(ctx) + _OFFSET).value
    if not ptr:
        return False
    current = lib.SSL_CTX_get_timeout(ptr)
    if not 0 < current <= 10 * 365 * 86400:
        return False
    lib.SSL_CTX_set_timeout(ptr, seconds)
    return bool(lib.SSL_CTX_get_timeout(ptr) == seconds)
