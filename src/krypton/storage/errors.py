"""sqlite3's errors become :class:`~krypton.errors.StorageError` here.

The message names the store and what failed, and the driver's error class and
text (SQLite's messages name tables and constraints, never values); the
sqlite3 exception is not chained.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator

from krypton.errors import StorageError


def storage_error(exc: sqlite3.Error, what: str, *, duplicate: str | None = None) -> StorageError:
    """``what`` (say ``"vault write"``) failed with ``exc``. ``duplicate``, if
    given, is the message for a constraint violation (sqlite3.IntegrityError)."""
    if duplicate is not None and isinstance(exc, sqlite3.IntegrityError):
        return StorageError(f"{what} failed: {duplicate}")
    return StorageError(f"{what} failed ({exc.__class__.__name__}: {exc})")


@contextlib.contextmanager
def translated(what: str, *, duplicate: str | None = None) -> Iterator[None]:
    """Raise :func:`storage_error` for a sqlite3.Error in the block."""
    try:
        yield
    except sqlite3.Error as exc:
        raise storage_error(exc, what, duplicate=duplicate) from None
