"""The Core's tenant (L2) and service (L3) keys, persisted in SQLite.

How this works
--------------
A Core master key (32 bytes, from ``$KRYPTON_CORE_MASTER_KEY`` as hex or from
a 0600 file created on first use) stands in for the customer's L1. Each
tenant has one L2 key, stored sealed by the master key with the binding
``"L2" | tenant``; each tenant's L3 versions are stored sealed by its L2 with
``"L3" | tenant | version``. Sealing is the same AES-256-GCM helper the
gateway uses for L4 keys (:mod:`krypton.crypto.wrap`), so no key is ever
written in the clear and a blob copied to another row fails to open.

A sealed constant in ``core_keystore_meta`` tells a wrong master key apart
from a damaged row: opening the store with another master key raises
:class:`~krypton.errors.MasterKeyMismatch` before anything else happens.

L2 keys stay in memory once opened; L3 plaintext exists only inside the
:class:`~krypton.crypto.keyring.L3Grant` objects handed to a source (which
hands their ownership to a key ring). Listeners registered with
:meth:`CoreKeyStore.add_listener` hear ``(tenant, version, state)`` after
every committed L3 change, on the thread that made it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

from krypton.crypto.keyring import L3Grant, L3State
from krypton.crypto.secret import SecretBytes, generate_key
from krypton.crypto.wrap import WrappingKey, binding
from krypton.errors import (
    ConfigError,
    ItemNotFound,
    MasterKeyMismatch,
    StorageError,
    UnwrapFailed,
    WrongKeyLifecycleState,
)

MASTER_KEY_ENV = "KRYPTON_CORE_MASTER_KEY"
MASTER_KEY_ID = 1
L2_KEY_ID = 1
SCHEMA_VERSION = 1
_CHECK_PLAINTEXT = b"krypton core master key check v1"

Listener = Callable[[str, int, L3State], None]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS core_keystore_meta ("
    " name TEXT PRIMARY KEY, value BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS core_l2 ("
    " tenant TEXT PRIMARY KEY, wrapped BLOB NOT NULL, created INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS core_l3 ("
    " tenant TEXT NOT NULL REFERENCES core_l2(tenant),"
    " version INTEGER NOT NULL, state INTEGER NOT NULL,"
    " wrapped BLOB NOT NULL, created INTEGER NOT NULL,"
    " PRIMARY KEY (tenant, version))",
)

# Which L3 state changes the Core allows (DESTROYED is final; COMPROMISED can
# only be destroyed).
_ALLOWED: Mapping[L3State, frozenset[L3State]] = {
    L3State.ACTIVE: frozenset(L3State),
    L3State.DEACTIVATED: frozenset(L3State),
    L3State.COMPROMISED: frozenset({L3State.COMPROMISED, L3State.DESTROYED}),
    L3State.DESTROYED: frozenset({L3State.DESTROYED}),
}


def load_master_key(
    path: str | Path | None,
    *,
    env: str = MASTER_KEY_ENV,
    environ: Mapping[str, str] | None = None,
) -> SecretBytes:
    """The Core master key: ``$env`` (64 hex digits) if set, else the file at
    ``path`` (32 raw bytes, mode 0600), created with fresh random bytes if missing."""
    value = (os.environ if environ is None else environ).get(env, "").strip()
    if value:
        try:
            raw = bytearray.fromhex(value)
        except ValueError:
            raise ConfigError(f"{env}: not hexadecimal (expected 64 hex digits)") from None
        if len(raw) != 32:
            raw[:] = bytes(len(raw))
            raise ConfigError(f"{env}: expected 64 hex digits (a 256-bit key)")
        return SecretBytes.adopt(raw)
    if path is None:
        raise ConfigError(f"no Core master key: set {env} or configure a master key file")
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_master_key(path)
    except OSError as exc:
        raise ConfigError(f"master key file {path}: {exc.strerror}") from None
    key = generate_key(256)
    try:
        os.write(fd, key.view())
        os.fsync(fd)
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return key


def _read_master_key(path: Path) -> SecretBytes:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise ConfigError(f"master key file {path}: {exc.strerror}") from None
    try:
        if os.fstat(fd).st_mode & 0o077:
            raise ConfigError(f"master key file {path}: readable by others (chmod 600 it)")
        buf = bytearray(33)
        n = os.readv(fd, [buf])
    finally:
        os.close(fd)
    if n != 32:
        buf[:] = bytes(len(buf))
        raise ConfigError(f"master key file {path}: expected exactly 32 bytes")
    del buf[32:]
    return SecretBytes.adopt(buf)


@contextlib.contextmanager
def _storage(what: str) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as exc:
        raise StorageError(f"Core key store: {what} failed ({exc.__class__.__name__})") from None


class CoreKeyStore:
    """L2 and L3 keys of every tenant; one SQLite file (``open`` it)."""

    def __init__(self, conn: sqlite3.Connection, master: WrappingKey) -> None:
        self._conn = conn
        self._master = master
        self._l2: dict[str, WrappingKey] = {}
        self._lock = threading.RLock()
        self._listeners: list[Listener] = []

    @classmethod
    def open(cls, path: str | Path, master_key: SecretBytes) -> CoreKeyStore:
        """Open (or create) the store. The store keeps its own copy of
        ``master_key``: the caller may (and should) wipe theirs afterwards."""
        master = WrappingKey(MASTER_KEY_ID, SecretBytes(master_key.view()))
        with _storage("open"):
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            with _storage("open"):
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA foreign_keys=ON")
                conn.execute("BEGIN IMMEDIATE")
                for stmt in _SCHEMA:
                    conn.execute(stmt)
                rows = dict(conn.execute("SELECT name, value FROM core_keystore_meta"))
                if not rows:
                    check = master.seal(binding("MK", "check"), _CHECK_PLAINTEXT)
                    conn.executemany(
                        "INSERT INTO core_keystore_meta VALUES (?, ?)",
                        [("schema_version", SCHEMA_VERSION), ("master_check", check)],
                    )
                conn.execute("COMMIT")
            if rows:
                if int(rows["schema_version"]) > SCHEMA_VERSION:
                    raise StorageError(f"Core key store {path} has a newer schema than this Core")
                try:
                    master.open(binding("MK", "check"), bytes(rows["master_check"])).wipe()
                except UnwrapFailed:
                    raise MasterKeyMismatch(
                        f"the Core master key does not open the key store {path}"
                    ) from None
        except BaseException:
            conn.close()
            master.wipe()
            raise
        return cls(conn, master)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
            for key in self._l2.values():
                key.wipe()
            self._l2.clear()
            self._master.wipe()

    # -- listeners -------------------------------------------------------------
    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Hear every committed L3 change; returns the function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def _notify(self, events: list[tuple[str, int, L3State]]) -> None:
        for listener in list(self._listeners):
            for tenant, version, state in events:
                listener(tenant, version, state)

    # -- tenants and L3 versions -----------------------------------------------
    def tenants(self) -> list[str]:
        with self._lock, _storage("read"):
            return [r[0] for r in self._conn.execute("SELECT tenant FROM core_l2 ORDER BY tenant")]

    def ensure_tenant(self, tenant: str) -> bool:
        """Create the tenant's L2 and L3 v1 if absent; True if anything was made."""
        with self._lock, _storage("create tenant"):
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                made = False
                if not self._exists("core_l2", tenant):
                    with generate_key(256) as l2:
                        blob = self._master.seal(binding("L2", tenant), l2)
                    conn.execute(
                        "INSERT INTO core_l2 VALUES (?, ?, ?)", (tenant, blob, int(time.time()))
                    )
                    made = True
                if not self._exists("core_l3", tenant):
                    self._insert_l3(tenant, 1)
                    made = True
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                self._l2.pop(tenant, None)
                raise
        if made:
            self._notify([(tenant, 1, L3State.ACTIVE)])
        return made

    def rotate_l3(self, tenant: str) -> int:
        """A new ACTIVE L3 version; the previously active one becomes DEACTIVATED."""
        with self._lock, _storage("rotate"):
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                top = conn.execute(
                    "SELECT max(version) FROM core_l3 WHERE tenant=?", (tenant,)
                ).fetchone()[0]
                if top is None:
                    raise ItemNotFound(f"unknown tenant {tenant!r}")
                old = [
                    int(r[0])
                    for r in conn.execute(
                        "SELECT version FROM core_l3 WHERE tenant=? AND state=?",
                        (tenant, L3State.ACTIVE),
                    )
                ]
                conn.execute(
                    "UPDATE core_l3 SET state=? WHERE tenant=? AND state=?",
                    (L3State.DEACTIVATED, tenant, L3State.ACTIVE),
                )
                version = int(top) + 1
                self._insert_l3(tenant, version)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        self._notify(
            [(tenant, version, L3State.ACTIVE)] + [(tenant, v, L3State.DEACTIVATED) for v in old]
        )
        return version

    def set_l3_state(self, tenant: str, version: int, state: L3State) -> None:
        """Change one version's state. ACTIVE demotes the other active version;
        DESTROYED also erases the sealed key."""
        state = L3State(state)
        events = [(tenant, version, state)]
        with self._lock, _storage("set state"):
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(
                    "SELECT state FROM core_l3 WHERE tenant=? AND version=?", (tenant, version)
                ).fetchone()
                if row is None:
                    raise ItemNotFound(f"unknown service key version for tenant {tenant!r}")
                if state not in _ALLOWED[L3State(row[0])]:
                    raise WrongKeyLifecycleState(
                        f"service key version is {L3State(row[0]).name}; cannot become {state.name}"
                    )
                if state == L3State.ACTIVE:
                    for (other,) in conn.execute(
                        "SELECT version FROM core_l3 WHERE tenant=? AND state=? AND version<>?",
                        (tenant, L3State.ACTIVE, version),
                    ).fetchall():
                        events.append((tenant, int(other), L3State.DEACTIVATED))
                    conn.execute(
                        "UPDATE core_l3 SET state=? WHERE tenant=? AND state=? AND version<>?",
                        (L3State.DEACTIVATED, tenant, L3State.ACTIVE, version),
                    )
                conn.execute(
                    "UPDATE core_l3 SET state=? WHERE tenant=? AND version=?",
                    (state, tenant, version),
                )
                if state == L3State.DESTROYED:
                    conn.execute(
                        "UPDATE core_l3 SET wrapped=X'' WHERE tenant=? AND version=?",
                        (tenant, version),
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        self._notify(events)

    def l3_states(self, tenant: str) -> dict[int, L3State]:
        with self._lock, _storage("read"):
            rows = self._conn.execute(
                "SELECT version, state FROM core_l3 WHERE tenant=? ORDER BY version", (tenant,)
            ).fetchall()
        return {int(v): L3State(s) for v, s in rows}

    def grants(self, tenants: Iterable[str], lease_seconds: float) -> list[L3Grant]:
        """Every usable (ACTIVE or DEACTIVATED) L3 version of these tenants, opened.
        Unknown tenants are skipped. The caller owns (and must wipe) the material."""
        out: list[L3Grant] = []
        with self._lock:
            for tenant in tenants:
                with _storage("read"):
                    rows = self._conn.execute(
                        "SELECT version, state, wrapped FROM core_l3 WHERE tenant=? AND state IN"
                        " (?, ?) ORDER BY version",
                        (tenant, L3State.ACTIVE, L3State.DEACTIVATED),
                    ).fetchall()
                out.extend(
                    self._grant(tenant, int(v), L3State(s), bytes(w), lease_seconds)
                    for v, s, w in rows
                )
        return out

    def grant(self, tenant: str, version: int, lease_seconds: float) -> L3Grant | None:
        """One version, opened, if it is usable."""
        with self._lock:
            with _storage("read"):
                row = self._conn.execute(
                    "SELECT state, wrapped FROM core_l3 WHERE tenant=? AND version=?",
                    (tenant, version),
                ).fetchone()
            if row is None or L3State(row[0]) not in (L3State.ACTIVE, L3State.DEACTIVATED):
                return None
            return self._grant(tenant, version, L3State(row[0]), bytes(row[1]), lease_seconds)

    # -- internals (call with _lock held) ------------------------------------------
    def _exists(self, table: str, tenant: str) -> bool:
        sql = f"SELECT 1 FROM {table} WHERE tenant=? LIMIT 1"  # noqa: S608 (fixed table names)
        return self._conn.execute(sql, (tenant,)).fetchone() is not None

    def _grant(
        self, tenant: str, version: int, state: L3State, blob: bytes, lease_seconds: float
    ) -> L3Grant:
        material = self._l2_key(tenant).open(binding("L3", tenant, str(version)), blob)
        return L3Grant(tenant, version, material, state, lease_seconds)

    def _insert_l3(self, tenant: str, version: int) -> None:
        with generate_key(256) as l3:
            blob = self._l2_key(tenant).seal(binding("L3", tenant, str(version)), l3)
        self._conn.execute(
            "INSERT INTO core_l3 VALUES (?, ?, ?, ?, ?)",
            (tenant, version, L3State.ACTIVE, blob, int(time.time())),
        )

    def _l2_key(self, tenant: str) -> WrappingKey:
        key = self._l2.get(tenant)
        if key is None:
            row = self._conn.execute(
                "SELECT wrapped FROM core_l2 WHERE tenant=?", (tenant,)
            ).fetchone()
            if row is None:
                raise ItemNotFound(f"unknown tenant {tenant!r}")
            material = self._master.open(binding("L2", tenant), bytes(row[0]))
            key = self._l2[tenant] = WrappingKey(L2_KEY_ID, material)
        return key
