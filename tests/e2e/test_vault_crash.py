"""A vault process killed with SIGKILL mid-load loses no acknowledged put.

The child acknowledges a uid on stdout only after ``await vault.put()``
returned; the parent kills it without warning, reopens the file and looks
for every uid it was told about.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from krypton.vault import Vault

CHILD = r"""
import asyncio, os, sys
from krypton.model import KeyRecord, new_uid
from krypton.vault import Vault

async def writer(vault):
    out = sys.stdout
    while True:
        uid = new_uid()
        await vault.put(KeyRecord(uid, "demo", 2, 3, 256, 1, 1, os.urandom(65), b"a" * 40))
        out.write(uid + "\n")
        out.flush()

async def main():
    vault = Vault.open(sys.argv[1])
    print("ready", flush=True)
    await asyncio.gather(*(writer(vault) for _ in range(16)))

asyncio.run(main())
"""

WANT = 400


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_every_acknowledged_put_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "vault.db"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert child.stdout is not None
    fd = child.stdout.fileno()
    acked: list[str] = []
    pending = b""
    deadline = time.monotonic() + 30
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

    vault = Vault.open(path)
    try:
        missing = [uid for uid in acked if vault.get(uid) is None]
        assert not missing, f"{len(missing)} of {len(acked)} acknowledged puts were lost"
        assert vault.records_written == 0
    finally:
        vault.close()
