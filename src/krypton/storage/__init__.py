"""What both SQLite stores (the gateway vault, the Core registry) share.

- :class:`Writer`: the one writer thread with group commit (one fsync for
  many concurrent writes; a caller's await returns once its write is durable);
- :func:`open_file` and :class:`Readers`: the write connection (WAL,
  ``synchronous=FULL``) and the per-thread read-only connections;
- :func:`storage_error` and :func:`translated`: sqlite3's errors become
  :class:`~krypton.errors.StorageError` at this boundary;
- :mod:`krypton.storage.schema`: the migration loop of a versioned schema.
"""

from __future__ import annotations

from krypton.storage.connect import Readers, open_file
from krypton.storage.errors import storage_error, translated
from krypton.storage.writer import Op, Writer

__all__ = ["Op", "Readers", "Writer", "open_file", "storage_error", "translated"]
