"""Durability: a gateway killed with SIGKILL right after acknowledging keys loses none.

Several connections create keys concurrently (so group commit batches them);
each acknowledged identifier is recorded the moment its response arrives, and
for Create+Get batches the key material too. The process is then killed with
SIGKILL — no shutdown, no flush — restarted on the same directory, and every
acknowledged key must be served again, with the same material.
"""

from __future__ import annotations

from pathlib import Path

from tests.helpers.fixtures import DevStacks
from tests.helpers.load import client, created_until_killed

WRITERS = 6


def test_sigkill_after_ack_loses_no_key(tmp_path: Path, start_dev: DevStacks) -> None:
    srv = start_dev(tmp_path)
    snapshot = created_until_killed(srv, WRITERS, 300, 20.0, srv.kill)  # SIGKILL mid-load
    restarted = start_dev(tmp_path, port=srv.port)  # the same directory, vault and port
    with client(restarted) as c:
        for uid, key in snapshot.items():
            material = c.get(uid)
            if key is not None:
                assert material == key, f"key {uid} changed across the crash"
            else:
                assert len(material) == 16
