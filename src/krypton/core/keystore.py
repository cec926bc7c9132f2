"""The Core's tenant (L2) and service (L3) keys, kept in the registry's key table.

How this works
--------------
The root of trust (L1, ``[core.root]``, a :class:`~krypton.roots.RootSealer`)
seals what the table below calls "sealed by the root": a PKCS#11 token or
OpenBao Transit, or for development a master key (32 bytes, from
``$KRYPTON_CORE_MASTER_KEY`` as hex or from a 0600 file that ``krypton core
init`` creates). Everything lives in the registry
(:class:`~krypton.model.registry.Registry`, SQLite or PostgreSQL) as
:class:`~krypton.model.registry.SealedKey` rows, so several Core
instances on one PostgreSQL database share the same keys:

===========  ==========  ========  ===============================================
tenant       level       version   sealed
===========  ==========  ========  ===============================================
``""``       ``MK``      1         a constant sealed by the root (the check)
``""``       ``TENANT``  n         tenant directory slot n: the tenant's name,
                                   sealed by the root
t            ``L2``      1         t's L2, sealed by the root, ``"L2"|t``
t            ``L3``      v         t's L3 version v, sealed by its L2,
                                   ``"L3"|t|v``; None once DESTROYED
t            ``L3LOG``   n         the n-th committed change to t's L3 versions
                                   (16 random bytes; no key)
===========  ==========  ========  ===============================================

L3 under L2 is sealed with the gateway's AES-256-GCM helper
(:mod:`krypton.crypto.wrap`); the root seals with the binding (``"L2"|t``,
...) as its context. So no key is ever stored in the clear and a blob copied
to another row fails to open. ``state`` is an
:class:`~krypton.crypto.keyring.L3State` value (ACTIVE for the rows that have
no lifecycle). Opening with another root fails on the check row with
:class:`~krypton.errors.MasterKeyMismatch`, which names the kind of root that
sealed the hierarchy when it is not the configured one; a registry without
a check row is refused (:class:`NotInitialised`) unless the store is opened to
create the hierarchy (``create=True``, what ``krypton core init`` does), so a
typo in the registry setting never starts an empty hierarchy by itself.

Concurrency between Core instances is optimistic, built on the registry's rule
that an existing version's sealed material is never replaced (a clash raises
:class:`~krypton.model.registry.RegistryConflict`). Every change to a tenant's
L3 versions is ONE ``put_keys`` transaction whose first row is the tenant's
next ``L3LOG`` version, computed from a read made *before* the L3 rows were
read. Two Cores changing one tenant at once both claim the same log version
with different random bytes, so exactly one commits. ``rotate_l3`` then
reports the clash (the other Core's change stands; a blind retry would rotate
twice); ``set_l3_state`` and ``ensure_tenant`` re-read, re-check their rules
and retry. New tenants claim a directory slot the same way.

:meth:`CoreKeyStore.rewrap_root` moves the root's rows (the check, the
directory, every L2) to another root in ONE transaction of compare-and-swap
replacements (:meth:`~krypton.model.registry.Registry.reseal_keys`): L3 and
L4 are untouched, and a crash leaves the old root or the new one, never a mix.

Listeners (:meth:`CoreKeyStore.add_listener`) hear ``(tenant, version, state)``
for every L3 version whose state differs from what this store last reported.
A change made through this store is reported before the method returns. A
change made elsewhere (another Core instance, ``krypton core rotate-l3``, a
second store in this process) is found by the watcher
(:meth:`CoreKeyStore.start_watching`), which re-reads a tenant's L3 rows when

* the registry's ``subscribe`` reports a ``KeyChange`` for it: on PostgreSQL
  this is LISTEN/NOTIFY, so another instance's commit arrives in milliseconds;
  a slow full re-read (``resync_interval``, a minute) only repairs what a lost
  LISTEN connection missed;
* on a SQLite file, where ``subscribe`` only reports changes made through the
  same registry object, the registry's ``key_fingerprint`` (per tenant and
  level: count, highest version, a state checksum and how many rows hold
  material) changes. The registry computes it with one aggregate statement
  on a read-only connection; the store asks every ``poll_interval``
  (0.25 s). That is acceptable here: the key table holds a few rows per
  tenant, WAL readers never block the writer, and SQLite is the single-node
  backend, so the readers are a handful of local processes (a poll costs
  about 0.1 ms for two tenants, 2 ms for 200). A registry whose
  ``subscribe`` hears every process answers None and is not polled.

Reports are diffs against this store's own view, so an event heard twice (the
subscription and the poll, or our own commit coming back) is reported once.
Listeners run on the event loop, one event at a time, while the store's lock
is held: they may read the store (``grant``, ``grants``, ``l3_states``) but
must not change it. L2 keys stay in memory once opened (the root is asked once
per tenant); L3 plaintext exists only inside the
:class:`~krypton.crypto.keyring.L3Grant` objects handed out.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from krypton.crypto.keyring import L3Grant, L3State
from krypton.crypto.secret import SecretBytes, generate_key
from krypton.crypto.wrap import WrappingKey, binding
from krypton.errors import (
    ConfigError,
    InvalidField,
    ItemNotFound,
    MasterKeyMismatch,
    StorageError,
    UnwrapFailed,
    WrongKeyLifecycleState,
)
from krypton.model.registry import (
    Change,
    KeyChange,
    KeyFingerprint,
    Registry,
    RegistryConflict,
    SealedKey,
)
from krypton.roots import FileSealer, RootHealth, RootSealer, kind_of, probe

log = logging.getLogger("krypton.core.keys")

MASTER_KEY_ENV = "KRYPTON_CORE_MASTER_KEY"
MASTER_KEY_ID = 1
L2_KEY_ID = 1
CHECK_PLAINTEXT = b"krypton core master key check v1"

CORE_ROWS = ""  # the tenant column of Core-wide rows (the check and the directory)
MK, DIRECTORY, L2, L3, L3_LOG = "MK", "TENANT", "L2", "L3", "L3LOG"
RETRIES = 8  # each conflict means another Core committed, so retries make progress

Listener = Callable[[str, int, L3State], Awaitable[None] | None]
Event = tuple[str, int, L3State]

# Which L3 state changes the Core allows (DESTROYED is final; COMPROMISED can
# only be destroyed).
_ALLOWED: Mapping[L3State, frozenset[L3State]] = {
    L3State.ACTIVE: frozenset(L3State),
    L3State.DEACTIVATED: frozenset(L3State),
    L3State.COMPROMISED: frozenset({L3State.COMPROMISED, L3State.DESTROYED}),
    L3State.DESTROYED: frozenset({L3State.DESTROYED}),
}
_USABLE = frozenset({L3State.ACTIVE, L3State.DEACTIVATED})
_WATCHED = (L3, L3_LOG)


def load_master_key(
    path: str | Path | None,
    *,
    env: str = MASTER_KEY_ENV,
    environ: Mapping[str, str] | None = None,
    create: bool = False,
) -> SecretBytes:
    """The Core master key: ``$env`` (64 hex digits) if set, else the file at
    ``path`` (32 raw bytes, mode 0600). A missing file is an error
    (:class:`MasterKeyFileMissing`), unless ``create`` (``krypton core init``):
    then it is made with fresh random bytes."""
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
    if not create:
        if not path.exists():
            raise MasterKeyFileMissing(f"master key file {path}: no such file")
        return _read_master_key(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_master_key(path)
    except OSError as exc:
        raise ConfigError(f"master key file {path}: {exc.strerror}") from None
    key = generate_key(256)
    try:
        os.fchmod(fd, 0o600)  # exactly: the umask could only have narrowed it
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


class MasterKeyFileMissing(ConfigError):
    """The master key file does not exist (``krypton core init`` makes it)."""


class NotInitialised(ConfigError):
    """The registry holds no key hierarchy (``krypton core init`` makes one)."""


def _states(rows: Iterable[SealedKey]) -> dict[int, L3State]:
    return {k.version: L3State(k.state) for k in rows}


def _next(rows: Sequence[SealedKey]) -> int:
    return max((k.version for k in rows), default=0) + 1


def _row(tenant: str, level: str, version: int, sealed: bytes) -> SealedKey:
    return SealedKey(tenant, level, version, L3State.ACTIVE, sealed, time.time())


def _log_row(tenant: str, log_rows: Sequence[SealedKey]) -> SealedKey:
    return _row(tenant, L3_LOG, _next(log_rows), os.urandom(16))


def _clash(tenant: str) -> RegistryConflict:
    return RegistryConflict(
        f"tenant {tenant!r}: another Core changed its service keys (L3) at the same time;"
        " nothing was changed here"
    )


class CoreKeyStore:
    """L2 and L3 keys of every tenant, in a registry (``await CoreKeyStore.open(...)``)."""

    def __init__(self, registry: Registry, root: RootSealer) -> None:
        self._registry = registry
        self._root = root
        self._l2: dict[str, WrappingKey] = {}
        self._names: dict[int, str] = {}  # directory slot -> tenant name
        self._seen: dict[str, dict[int, L3State]] = {}  # what listeners were told
        self._listeners: list[Listener] = []
        self._lock = asyncio.Lock()
        self._closed = False
        self._tasks: list[asyncio.Task[None]] = []
        self._unsubscribe: Callable[[], None] | None = None
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()

    @classmethod
    async def open(
        cls, registry: Registry, root: RootSealer | SecretBytes, *, create: bool = False
    ) -> CoreKeyStore:
        """Check ``root`` against the registry and load the current L3 states. A
        registry without a key hierarchy (no check row) is refused with
        :class:`NotInitialised` unless ``create``: then the check is stored (the
        root of a new hierarchy: ``krypton core init``). The store owns ``root``
        (closed with the store, or here if opening fails); a master key given as
        bytes becomes a file root of the store's own copy (wipe yours). The caller
        keeps owning ``registry`` (close it after the store)."""
        if isinstance(root, SecretBytes):
            root = FileSealer(SecretBytes(root.view()), "master key")
        try:
            await _check_root(registry, root, create=create)
            store = cls(registry, root)
            for tenant in await store.tenants():
                store._seen[tenant] = _states(await registry.keys(tenant, L3))
        except BaseException:
            await root.close()
            raise
        return store

    def __repr__(self) -> str:
        return f"CoreKeyStore({self._registry!r})"

    async def close(self) -> None:
        """Stop watching and forget every key held in memory (not the registry)."""
        if self._closed:
            return
        self._closed = True
        await self._stop_watching()
        self._listeners.clear()
        for key in self._l2.values():
            key.wipe()
        self._l2.clear()
        await self._root.close()

    # -- the root ----------------------------------------------------------------------
    @property
    def root(self) -> RootSealer:
        return self._root

    async def root_health(self, timeout: float = 5.0) -> RootHealth:
        """Whether the root answers now (for /readyz and metrics; never raises for
        a root failure). The L2 keys already opened keep serving either way."""
        return await probe(self._root, timeout)

    async def rewrap_root(self, new: RootSealer) -> int:
        """Seal the check, the tenant directory and every L2 under ``new`` instead,
        in one transaction (see the module comment); how many rows moved. The
        caller keeps owning ``new``. L3 and L4 are not touched."""
        self._check_open()
        reg = self._registry
        async with self._lock:
            rows = [*await reg.keys(CORE_ROWS, MK), *await reg.keys(CORE_ROWS, DIRECTORY)]
            for row in await reg.keys(CORE_ROWS, DIRECTORY):
                rows += await reg.keys(await self._tenant_name(row), L2)
            moved: list[tuple[SealedKey, bytes]] = []
            for row in rows:
                if row.sealed is None:
                    continue
                bind = _root_binding(row)
                with await self._root.unseal(bind, row.sealed) as plain:
                    moved.append((row, await new.seal(bind, plain)))
            check = next(blob for row, blob in moved if row.level == MK)
            with await new.unseal(binding(MK, "check"), check) as plain:
                if plain != SecretBytes(CHECK_PLAINTEXT):
                    raise UnwrapFailed("the new root did not give the check value back")
            await reg.reseal_keys(moved)
        return len(moved)

    # -- listeners and the watcher ---------------------------------------------------
    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Hear every L3 change (see the module comment); returns the unsubscribe
        function. ``listener`` may be a plain function or a coroutine function."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._listeners.remove(listener)

        return unsubscribe

    async def start_watching(
        self, *, poll_interval: float = 0.25, resync_interval: float = 60.0
    ) -> None:
        """Report changes made by other processes too (see the module comment)."""
        self._check_open()
        if self._tasks:
            return
        self._unsubscribe = await self._registry.subscribe(self._on_registry_change)
        self._tasks.append(asyncio.create_task(self._refresher(), name="core-keys-refresh"))
        first = await self._registry.key_fingerprint(_WATCHED)
        if first is not None:
            poll = self._poll(first, poll_interval)
            self._tasks.append(asyncio.create_task(poll, name="core-keys-poll"))
        else:
            resync = self._resync(resync_interval)
            self._tasks.append(asyncio.create_task(resync, name="core-keys-resync"))
        self._dirty.update(await self.tenants())  # what changed since open
        self._wake.set()

    async def _stop_watching(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _on_registry_change(self, change: Change) -> None:
        if isinstance(change, KeyChange) and change.tenant and change.level in (L3, L3_LOG):
            self._dirty.add(change.tenant)
            self._wake.set()

    async def _refresher(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            for tenant in sorted(dirty):
                try:
                    await self._refresh(tenant)
                except Exception as exc:
                    log.warning("re-reading the service keys of %r failed: %s", tenant, exc)
                    self._dirty.add(tenant)
            if self._dirty:
                await asyncio.sleep(0.5)
                self._wake.set()

    async def _refresh(self, tenant: str) -> None:
        async with self._lock:
            after = _states(await self._registry.keys(tenant, L3))
            await self._report(tenant, after)

    async def _poll(self, last: KeyFingerprint, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                now = await self._registry.key_fingerprint(_WATCHED)
            except StorageError as exc:
                log.warning("polling the key table failed: %s", exc)
                continue
            if now is None:
                continue
            changed = {t for t in now.keys() | last.keys() if now.get(t) != last.get(t)}
            last = now
            if changed:
                self._dirty |= changed
                self._wake.set()

    async def _resync(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self._dirty.update(await self.tenants())
            except StorageError as exc:
                log.warning("re-reading the tenant directory failed: %s", exc)
                continue
            self._wake.set()

    async def _report(self, tenant: str, after: Mapping[int, L3State]) -> None:
        """Tell listeners what differs from what they last heard (call with _lock held)."""
        before = self._seen.get(tenant, {})
        events = [(tenant, v, s) for v, s in after.items() if before.get(v) != s]
        events.sort(key=lambda e: (e[2] != L3State.ACTIVE, e[1]))  # the new ACTIVE first
        self._seen[tenant] = dict(after)
        for listener in list(self._listeners):
            for event in events:
                try:
                    result = listener(*event)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("a key store listener failed on %s version %d", *event[:2])

    # -- tenants and L3 versions -------------------------------------------------------
    async def tenants(self) -> list[str]:
        rows = await self._registry.keys(CORE_ROWS, DIRECTORY)
        return sorted({await self._tenant_name(row) for row in rows})

    async def ensure_tenant(self, tenant: str) -> bool:
        """Create the tenant's L2 and L3 v1 if absent; True if this call made them."""
        if not tenant:
            raise InvalidField("a tenant name must not be empty")
        reg = self._registry
        for _ in range(RETRIES):
            self._check_open()
            async with self._lock:
                log_rows = await reg.keys(tenant, L3_LOG)
                l3_rows = await reg.keys(tenant, L3)
                l2_rows = await reg.keys(tenant, L2)
                if l2_rows and l3_rows:
                    return False
                rows: list[SealedKey] = []
                fresh: WrappingKey | None = None
                if l2_rows:
                    l2 = await self._l2_key(tenant)
                else:
                    slot = _next(await reg.keys(CORE_ROWS, DIRECTORY))
                    name = await self._root.seal(binding(DIRECTORY, str(slot)), tenant.encode())
                    material = generate_key(256)
                    try:
                        sealed = await self._root.seal(binding(L2, tenant), material)
                    except BaseException:
                        material.wipe()
                        raise
                    fresh = l2 = WrappingKey(L2_KEY_ID, material)
                    rows += [_row(CORE_ROWS, DIRECTORY, slot, name), _row(tenant, L2, 1, sealed)]
                rows += [_log_row(tenant, log_rows), self._new_l3(l2, tenant, 1)]
                try:
                    await reg.put_keys(rows)
                except RegistryConflict:
                    if fresh is not None:
                        fresh.wipe()
                    continue
                if fresh is not None:
                    self._cache_l2(tenant, fresh)
                await self._report(tenant, {1: L3State.ACTIVE})
                return True
        raise _clash(tenant)

    async def rotate_l3(self, tenant: str) -> int:
        """A new ACTIVE L3 version; the previously active one becomes DEACTIVATED.
        :class:`RegistryConflict` if another Core changed the tenant's L3 keys at
        the same moment (its change stands, nothing is made here)."""
        self._check_open()
        reg = self._registry
        async with self._lock:
            log_rows = await reg.keys(tenant, L3_LOG)
            l3_rows = await reg.keys(tenant, L3)
            if not l3_rows:
                raise ItemNotFound(f"unknown tenant {tenant!r}")
            version = _next(l3_rows)
            new = self._new_l3(await self._l2_key(tenant), tenant, version)
            demoted = [
                replace(k, state=L3State.DEACTIVATED) for k in l3_rows if k.state == L3State.ACTIVE
            ]
            try:
                await reg.put_keys([_log_row(tenant, log_rows), new, *demoted])
            except RegistryConflict:
                raise _clash(tenant) from None
            await self._report(tenant, _states([*l3_rows, new, *demoted]))
        return version

    async def set_l3_state(self, tenant: str, version: int, state: L3State) -> None:
        """Change one version's state. ACTIVE demotes the other active version;
        DESTROYED also erases the sealed key. Retried if another Core changed the
        tenant's L3 keys meanwhile (the rules are checked again)."""
        state = L3State(state)
        reg = self._registry
        for _ in range(RETRIES):
            self._check_open()
            async with self._lock:
                log_rows = await reg.keys(tenant, L3_LOG)
                l3_rows = await reg.keys(tenant, L3)
                row = next((k for k in l3_rows if k.version == version), None)
                if row is None:
                    raise ItemNotFound(f"unknown service key version for tenant {tenant!r}")
                now = L3State(row.state)
                if state not in _ALLOWED[now]:
                    raise WrongKeyLifecycleState(
                        f"service key version is {now.name}; cannot become {state.name}"
                    )
                sealed = None if state == L3State.DESTROYED else row.sealed
                changed = [replace(row, state=state, sealed=sealed)]
                if state == L3State.ACTIVE:
                    changed += [
                        replace(k, state=L3State.DEACTIVATED)
                        for k in l3_rows
                        if k.state == L3State.ACTIVE and k.version != version
                    ]
                if all(k in l3_rows for k in changed):
                    await self._report(tenant, _states(l3_rows))
                    return
                try:
                    await reg.put_keys([_log_row(tenant, log_rows), *changed])
                except RegistryConflict:
                    continue
                await self._report(tenant, _states([*l3_rows, *changed]))
                return
        raise _clash(tenant)

    async def l3_states(self, tenant: str) -> dict[int, L3State]:
        return _states(await self._registry.keys(tenant, L3))

    async def grants(self, tenants: Iterable[str], lease_seconds: float) -> list[L3Grant]:
        """Every usable (ACTIVE or DEACTIVATED) L3 version of these tenants, opened.
        Unknown tenants are skipped. The caller owns (and must wipe) the material."""
        out: list[L3Grant] = []
        for tenant in tenants:
            for row in await self._registry.keys(tenant, L3):
                if L3State(row.state) in _USABLE:
                    out.append(await self._grant(row, lease_seconds))
        return out

    async def grant(self, tenant: str, version: int, lease_seconds: float) -> L3Grant | None:
        """One version, opened, if it is usable."""
        for row in await self._registry.keys(tenant, L3):
            if row.version == version and L3State(row.state) in _USABLE:
                return await self._grant(row, lease_seconds)
        return None

    # -- internals -----------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("the Core key store is closed")

    async def _tenant_name(self, row: SealedKey) -> str:
        name = self._names.get(row.version)
        if name is None:
            if row.sealed is None:
                raise StorageError(f"tenant directory slot {row.version} has no name")
            with await self._root.unseal(binding(DIRECTORY, str(row.version)),
                                         row.sealed) as raw:
                name = self._names[row.version] = raw.reveal().decode()
        return name

    async def _grant(self, row: SealedKey, lease_seconds: float) -> L3Grant:
        assert row.sealed is not None  # only DESTROYED rows lose their material
        l2 = await self._l2_key(row.tenant)
        material = l2.open(binding(L3, row.tenant, str(row.version)), row.sealed)
        return L3Grant(row.tenant, row.version, material, L3State(row.state), lease_seconds)

    def _new_l3(self, l2: WrappingKey, tenant: str, version: int) -> SealedKey:
        with generate_key(256) as l3:
            sealed = l2.seal(binding(L3, tenant, str(version)), l3)
        return _row(tenant, L3, version, sealed)

    async def _l2_key(self, tenant: str) -> WrappingKey:
        key = self._l2.get(tenant)
        if key is not None:
            return key
        self._check_open()
        rows = await self._registry.keys(tenant, L2)
        if not rows or rows[0].sealed is None:
            raise ItemNotFound(f"unknown tenant {tenant!r}")
        material = await self._root.unseal(binding(L2, tenant), rows[0].sealed)
        return self._cache_l2(tenant, WrappingKey(L2_KEY_ID, material))

    def _cache_l2(self, tenant: str, key: WrappingKey) -> WrappingKey:
        kept = self._l2.setdefault(tenant, key)
        if kept is not key:
            key.wipe()
        return kept


def _root_binding(row: SealedKey) -> bytes:
    """The context a row sealed by the root is bound to."""
    if row.level == MK:
        return binding(MK, "check")
    if row.level == DIRECTORY:
        return binding(DIRECTORY, str(row.version))
    return binding(L2, row.tenant)


async def _check_root(registry: Registry, root: RootSealer, *, create: bool) -> None:
    for _ in range(RETRIES):
        rows = await registry.keys(CORE_ROWS, MK)
        if not rows and not create:
            raise NotInitialised(f"{registry!r} holds no key hierarchy")
        if not rows:
            check = await root.seal(binding(MK, "check"), CHECK_PLAINTEXT)
            try:
                await registry.put_key(_row(CORE_ROWS, MK, 1, check))
            except RegistryConflict:
                continue  # another Core stored its check first: test ours against it
            return
        sealed = rows[0].sealed
        sealed_by = kind_of(sealed)
        if sealed_by != root.kind:
            raise MasterKeyMismatch(
                f"the key hierarchy in {registry!r} is sealed by a {sealed_by} root, but the "
                f"configured root is {root.describe()} (core.root.kind; `krypton core "
                "rewrap-root` moves a hierarchy to another root)"
            )
        try:
            if sealed is None:
                raise UnwrapFailed("no check value")
            with await root.unseal(binding(MK, "check"), sealed) as plain:
                if plain != SecretBytes(CHECK_PLAINTEXT):
                    raise UnwrapFailed("wrong check value")
        except UnwrapFailed:
            what = ("the Core master key" if root.kind == "file"
                    else f"the configured root, {root.describe()},")
            raise MasterKeyMismatch(
                f"{what} does not open the key store in {registry!r}"
            ) from None
        return
    raise RegistryConflict("could not store the master key check (too many concurrent Cores)")
