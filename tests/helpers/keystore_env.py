"""Test helpers for the Core key store: open a real registry and a store on it,
hear what a store reports, force two stores to write at the same moment, and
(run as ``python -m tests.helpers.keystore_env``) change keys from another process.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from krypton.core.keystore import CoreKeyStore, load_master_key
from krypton.crypto.keyring import L3State
from krypton.crypto.secret import SecretBytes
from krypton.model import Registry, SealedKey
from krypton.registry import open_registry

REPO = Path(__file__).resolve().parents[2]
Event = tuple[str, int, L3State]


@asynccontextmanager
async def opened_registry(url: str) -> AsyncIterator[Registry]:
    registry = await open_registry(url)
    try:
        yield registry
    finally:
        await registry.close()


@asynccontextmanager
async def opened_store(
    where: str | Registry, master_raw: bytes, *, watch: bool = False
) -> AsyncIterator[CoreKeyStore]:
    """A store on the registry ``where`` is, or on one of its own opened from the
    URL ``where`` (a registry object of its own is what another Core instance has)."""
    if isinstance(where, str):
        async with (
            opened_registry(where) as registry,
            opened_store(registry, master_raw, watch=watch) as store,
        ):
            yield store
        return
    store = await CoreKeyStore.open(where, SecretBytes(master_raw), create=True)  # as init
    try:
        if watch:
            await store.start_watching()
        yield store
    finally:
        await store.close()


async def materials(store: CoreKeyStore, tenant: str) -> dict[int, bytes]:
    out = {}
    for g in await store.grants([tenant], 60):
        out[g.version] = g.material.reveal()
        g.material.wipe()
    return out


class Heard:
    """A listener that records what it hears, and when."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.times: list[float] = []
        self._changed = asyncio.Event()

    def __call__(self, tenant: str, version: int, state: L3State) -> None:
        self.events.append((tenant, version, state))
        self.times.append(time.time())
        self._changed.set()

    async def wait_for(self, event: Event, timeout: float = 1.0) -> float:
        """Wait until ``event`` is heard; the wall-clock time it was heard at."""
        async with asyncio.timeout(timeout):
            while event not in self.events:
                self._changed.clear()
                await self._changed.wait()
        return self.times[self.events.index(event)]


class Gate:
    """A real registry whose next ``put_keys`` waits at a barrier once
    :meth:`arm` is called: two stores on two gates both read, then both write."""

    def __init__(self, inner: Registry) -> None:
        self.inner = inner
        self.writes = 0
        self._barrier: asyncio.Barrier | None = None

    def arm(self, barrier: asyncio.Barrier) -> None:
        self._barrier = barrier

    async def put_keys(self, keys: Sequence[SealedKey]) -> None:
        barrier, self._barrier = self._barrier, None
        if barrier is not None:
            await barrier.wait()
        self.writes += 1
        await self.inner.put_keys(keys)

    async def put_key(self, key: SealedKey) -> None:
        await self.put_keys([key])

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)  # every other call goes to the real registry


# -- another process -------------------------------------------------------------------
def run_elsewhere(url: str, master_raw: bytes, *action: str) -> dict[str, float]:
    """Run ``action`` (``rotate TENANT`` or ``state TENANT VERSION STATE``) in a new
    Python process; what it printed: the result and the time it committed."""
    env = {**os.environ, "KRYPTON_CORE_MASTER_KEY": master_raw.hex()}
    done = subprocess.run(
        [sys.executable, "-m", "tests.helpers.keystore_env", url, *action],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise AssertionError(f"the other process failed:\n{done.stderr}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


async def _elsewhere(url: str, action: list[str]) -> dict[str, float]:
    master = load_master_key(None)
    try:
        async with opened_registry(url) as registry:
            store = await CoreKeyStore.open(registry, master)
            try:
                if action[0] == "rotate":
                    version = await store.rotate_l3(action[1])
                else:
                    version = int(action[2])
                    await store.set_l3_state(action[1], version, L3State[action[3]])
                return {"version": version, "committed": time.time()}
            finally:
                await store.close()
    finally:
        master.wipe()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_elsewhere(sys.argv[1], sys.argv[2:]))))
