"""A vault process killed with SIGKILL mid-load loses no acknowledged put.

The child acknowledges a uid on stdout only after ``await vault.put()``
returned; the parent kills it without warning, reopens the vault and looks
for every uid it was told about. On each backend: a SQLite file, and an
OpenBao server with Raft storage, which is SIGKILLed too and restarted
(unsealed) before the uids are read back through it with a cold cache.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from krypton.openbao.server import RaftServer
from krypton.vault import Vault
from krypton.vault.openbao import BaoVault
from krypton.vault.port import VaultStore

CHILD = r"""
import asyncio, os, sys
from krypton.model import KeyRecord, new_uid
from krypton.vault import Vault
from krypton.vault.openbao import BaoVault

def open_vault():
    if sys.argv[1] == "sqlite":
        return Vault.open(sys.argv[2])
    return BaoVault.open(sys.argv[2], token=os.environ["BAO_TOKEN"], connections=16)

async def writer(vault):
    out = sys.stdout
    while True:
        uid = new_uid()
        await vault.put(KeyRecord(uid, "demo", 2, 3, 256, 1, 1, os.urandom(65), b"a" * 40))
        out.write(uid + "\n")
        out.flush()

async def main():
    vault = open_vault()
    print("ready", flush=True)
    await asyncio.gather(*(writer(vault) for _ in range(16)))

asyncio.run(main())
"""

WANT = 400


Reopen = Callable[[], VaultStore]


@pytest.fixture(params=["sqlite", "openbao"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
            ) -> Iterator[tuple[str, str, Reopen]]:  # fmt: skip
    """(backend, where, reopen): the child's arguments, and how the parent opens
    the vault again after the kill (OpenBao: killed too, restarted, unsealed)."""
    if request.param == "sqlite":
        path = tmp_path / "vault.db"
        yield "sqlite", str(path), lambda: Vault.open(path)
        return
    server = RaftServer(tmp_path / "bao", tmp_path / "bao.json")
    server.start()

    def reopen() -> VaultStore:
        server.kill()  # no clean shutdown: only what Raft made durable counts
        server.start()
        return BaoVault.open(server.address, token=server.root_token, cache_size=0)

    monkeypatch.setenv("BAO_TOKEN", server.root_token)  # the child's token
    try:
        yield "openbao", server.address, reopen
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_every_acknowledged_put_survives_sigkill(backend: tuple[str, str, Reopen]) -> None:
    kind, where, reopen = backend
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, kind, where],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdout is not None
    fd = child.stdout.fileno()
    acked: list[str] = []
    pending = b""
    deadline = time.monotonic() + 60
    try:
        while len(acked) < WANT:
            assert time.monotonic() < deadline, f"only {len(acked)} puts acknowledged"
            ready, _, _ = select.select([fd], [], [], 1.0)
            if not ready:
                continue
            chunk = os.read(fd, 65536)
            assert chunk, "child exited: " + (child.stderr.read() if child.stderr else b"").decode()
            pending += chunk
            *lines, pending = pending.split(b"\n")
            acked.extend(line.decode() for line in lines if line != b"ready")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert child.returncode == -signal.SIGKILL
    # Lines the child wrote before it died were acknowledged too.
    rest = pending + child.stdout.read()
    acked.extend(line.decode() for line in rest.split(b"\n")[:-1] if line != b"ready")
    assert len(acked) >= WANT

    vault = reopen()
    try:
        missing = [uid for uid in acked if vault.get(uid) is None]
        assert not missing, f"{len(missing)} of {len(acked)} acknowledged puts were lost"
        assert vault.records_written == 0
    finally:
        vault.close()
