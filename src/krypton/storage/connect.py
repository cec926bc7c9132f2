"""Opening a SQLite store: the write connection and the per-thread readers.

:func:`open_file` opens (creating as needed) the file, sets WAL with
``synchronous=FULL`` (a COMMIT fsyncs the WAL) plus the store's own pragmas,
runs its migration and, for a new file, fsyncs the directory so that the
file's name survives a crash too. A new file is created mode 0600 whatever the
umask (it holds wrapped keys, names, digests, the audit trail); SQLite gives
the ``-wal`` and ``-shm`` files the database file's mode. :class:`Readers`
hands every thread its own read-only connection; WAL readers see the last
committed state and never block the writer.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from krypton.errors import StorageError
from krypton.storage.errors import translated

MEMORY = ":memory:"


def _connect(path: str, name: str, pragmas: Iterable[str]) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA busy_timeout = 10000")
        if path != MEMORY:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StorageError(f"{name} {path}: WAL journal mode is not available here")
            conn.execute("PRAGMA synchronous = FULL")
        for pragma in pragmas:
            conn.execute(f"PRAGMA {pragma}")
    except BaseException:
        conn.close()
        raise
    return conn


FILE_MODE = 0o600


def _create_private(path: str) -> None:
    """An empty database file readable by its owner only (a missing folder is left
    to SQLite's open to report)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except (FileExistsError, FileNotFoundError):  # made meanwhile: theirs; no folder
        return
    except OSError as exc:
        raise StorageError(f"{path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def _fsync_directory(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def open_file(
    path: str | Path,
    *,
    name: str,
    migrate: Callable[[sqlite3.Connection], object],
    pragmas: Iterable[str] = (),
) -> sqlite3.Connection:
    """The write connection of the ``name`` store at ``path`` (``":memory:"``
    for an in-memory database, which has no WAL), migrated."""
    path = str(path)
    new = path != MEMORY and not os.path.exists(path)
    with translated(f"{name} open of {path}"):
        if new:
            _create_private(path)
        conn = _connect(path, name, pragmas)
        try:
            migrate(conn)
        except BaseException:
            conn.close()
            raise
    if new:
        _fsync_directory(path)
    return conn


class Readers:
    """One read-only connection per thread to the file at ``path``."""

    def __init__(self, path: str | Path, name: str) -> None:
        self._path = str(path)
        self._name = name
        self._local = threading.local()
        self._gate = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
        self._closed = False

    def get(self) -> sqlite3.Connection:
        """This thread's connection (:class:`StorageError` once closed)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            with self._gate, translated(f"{self._name} open for reading"):
                if self._closed:
                    raise StorageError(f"the {self._name} is closed")
                conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA query_only = ON")
                conn.execute("PRAGMA busy_timeout = 10000")
                self._conns.append(conn)
            self._local.conn = conn
        return conn

    def close(self) -> None:
        with self._gate:
            self._closed = True
            for conn in self._conns:
                conn.close()
            self._conns.clear()
