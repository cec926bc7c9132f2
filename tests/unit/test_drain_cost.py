"""The drain's gateway side made cheaper per key (issue 16), its guarantees kept:
the outbox read for SyncKeys leaves the record MACs to the Core, which checks
every one (a batch with a wrong MAC is refused whole; the gateway then finds
the bad record itself, leaves it in the outbox and sends the rest); a row's
columns are checked inline; a record marked synced in the cache is the same
record as ``replace(r, synced=True)``."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from tests.unit.test_outbox import BOTH
from tests.unit.test_uplink import DictCore, client, gateway_tls, run, server
from tests.unit.test_vault_auth import _ring

from krypton.core.records import check_arriving
from krypton.gateway.upstream import Upstream
from krypton.model.record import KeyRecord
from krypton.pki import DevLayout, init_dev_dir
from krypton.ttlv.codec import Limits
from krypton.vault.held import BadRow, _decode_slowly, decode
from krypton.vault.sqlite import Vault, _synced

GOOD: tuple[Any, ...] = ("u-1", "demo", 2, 3, 256, 1, 1, b"\x01blob", b"\x42", 1_700_000_000, 0)
# A wrong value for each column, some of them right for another column.
WRONG: tuple[tuple[Any, ...], ...] = (
    ("", 7, None, b"u"), ("", 7, None), (-1, 1 << 32, "2", True, 2.0), (-1, 1 << 32, None),
    (-1, 1 << 32, b"1"), (-1, 1 << 32, False), (-1, 1 << 32, "1"), ("x", None, 3),
    ("x", None, 4), (-1, 1 << 63, 1.5, "t"), (3, -1, True, None),
)


def _outcome(row: tuple[Any, ...], how: Any) -> KeyRecord | str:
    try:
        result: KeyRecord = how(row, b"mac")
    except BadRow as bad:
        return str(bad)
    return result


def test_the_inline_column_checks_agree_with_the_column_table() -> None:
    rows = [GOOD, (*GOOD[:7], memoryview(b"\x01blob"), bytearray(b"\x42"), *GOOD[9:]),
            (*GOOD[:10], 1), (*GOOD[:10], 2)]
    for at, wrongs in enumerate(WRONG):
        rows += [(*GOOD[:at], value, *GOOD[at + 1 :]) for value in wrongs]
    for row in rows:
        assert _outcome(row, decode) == _outcome(row, _decode_slowly), row
    assert decode((*GOOD[:10], 2)).synced is True  # quarantined: out of the outbox
    assert isinstance(_outcome((*GOOD[:4], True, *GOOD[5:]), decode), str)
    with pytest.raises(ValueError):
        decode(GOOD[:10])


def test_marked_synced_is_the_same_record_with_its_flag_set() -> None:
    record = KeyRecord(uid="u", tenant="t", object_type=2, algorithm=3, length=256, state=2,
                       l3_version=4, wrapped=b"w", attributes=b"a", created=5, synced=False,
                       mac=b"m")  # fmt: skip
    assert [f.name for f in dataclasses.fields(KeyRecord)][-2:] == ["synced", "mac"]
    assert _synced(record) == dataclasses.replace(record, synced=True)


class MacCore(DictCore):
    """A Core that checks each synced record's MAC as the real one does
    (``check_arriving``): one wrong MAC refuses the whole call."""

    def __init__(self) -> None:
        super().__init__()
        self.ring = _ring()
        self.calls_made: list[int] = []

    async def sync_keys(self, gateway: str, keys: Any) -> list[str]:
        self.calls_made.append(len(keys))
        checked = [check_arriving(k, self.ring.record_mac) for k in keys]
        return await super().sync_keys(gateway, checked)


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> DevLayout:
    return init_dev_dir(tmp_path_factory.mktemp("dev"))


def _key(n: int) -> KeyRecord:
    return KeyRecord(uid=f"k-{n}", tenant="demo", object_type=2, algorithm=3, length=256,
                     state=1, l3_version=1, wrapped=b"\x01blob%d" % n, attributes=b"\x42\x00",
                     created=1_700_000_000)  # fmt: skip


def test_a_tampered_outbox_row_is_refused_at_the_core_and_the_rest_sync(
    dev: DevLayout, tmp_path: Path,
) -> None:
    async def main() -> None:
        core = MacCore()
        srv = server(dev, core)
        port = await srv.start()
        path = tmp_path / "vault.db"
        vault = Vault.open(path, sealer=core.ring.record_mac)  # the gateway holds the same L3
        await vault.put_many([_key(n) for n in range(40)])
        with sqlite3.connect(path) as db:  # one bit of one row changed on disk
            db.execute("UPDATE keys SET state = 2 WHERE uid = 'k-7'")
        db.close()
        try:
            async with client(gateway_tls(dev), port, tenants=BOTH, timeout=5.0) as up:
                assert await up.wait_ready(5)
                upstream = Upstream(up, vault, Limits(), batch=16, window=1)
                assert await upstream.pump() == 39
                assert core.calls_made == [16, 15, 16, 8]  # refused whole, then without k-7
                assert await upstream.pump() == 0
            assert [r.uid for r in vault.outbox_page(100, checked=False).records] == ["k-7"]
            assert vault.quarantined == 0  # left where it was, as before
            assert set(core.keys) == {f"k-{n}" for n in range(40)} - {"k-7"}
        finally:
            vault.close()
            await srv.stop(0)

    run(main)


def test_the_unchecked_read_still_sets_gone_versions_aside_and_caches_nothing(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        ring = _ring()
        path = tmp_path / "vault.db"
        vault = Vault.open(path, sealer=ring.record_mac)
        await vault.put_many([_key(n) for n in range(6)])
        vault.close()
        with sqlite3.connect(path) as db:  # as if written under a version revoked since
            db.execute("UPDATE keys SET l3_version = 9 WHERE uid IN ('k-1', 'k-4')")
        db.close()
        vault = Vault.open(path, sealer=ring.record_mac)
        asked: list[tuple[str, int]] = []

        def gone(tenant: str, version: int) -> bool:
            asked.append((tenant, version))
            return version == 9

        try:
            page = vault.outbox_page(10, gone=gone, checked=False)
            assert [r.uid for r in page.records] == ["k-0", "k-2", "k-3", "k-5"]
            assert sorted(asked) == [("demo", 1), ("demo", 9)]  # once per version
            assert vault.quarantined == 2
            assert vault.cached == 0  # unchecked records never enter the cache
        finally:
            vault.close()

    run(main)
