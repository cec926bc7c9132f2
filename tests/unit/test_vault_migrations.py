from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from krypton.errors import StorageError
from krypton.model import KeyRecord
from krypton.vault import Vault
from krypton.vault.schema import LATEST, MIGRATIONS, migrate, schema_version


def _version(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT version FROM schema_version").fetchone()[0])


def _indexes(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT name FROM sqlite_master WHERE type='index'").fetchall()
    return {r[0] for r in rows}


def test_new_file_is_at_the_latest_version(tmp_path: Path) -> None:
    path = tmp_path / "vault.db"
    Vault.open(path).close()
    assert LATEST == len(MIGRATIONS) >= 2
    assert _version(path) == LATEST
    assert {"keys_tenant", "keys_outbox"} <= _indexes(path)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    Vault.open(path).close()  # reopening is a no-op
    assert _version(path) == LATEST


def test_a_v1_file_migrates(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    db = sqlite3.connect(path, isolation_level=None)
    assert migrate(db, target=1) == 1
    assert schema_version(db) == 1
    db.execute(
        "INSERT INTO keys VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        ("old-uid", "demo", 2, 3, 256, 1, 4, b"\x01" * 65, b"attrs", 1_700_000_000),
    )
    db.close()
    assert "keys_outbox" not in _indexes(path)

    vault = Vault.open(path)
    try:
        assert _version(path) == LATEST
        assert "keys_outbox" in _indexes(path)
        expected = KeyRecord(
            "old-uid", "demo", 2, 3, 256, 1, 4, b"\x01" * 65, b"attrs", 1_700_000_000, False
        )
        assert vault.get("old-uid") == expected
        assert vault.outbox(10) == [expected]  # v1 rows start unsynced
        assert asyncio.run(vault.mark_synced(["old-uid"])) == 1
        assert vault.outbox(10) == []
    finally:
        vault.close()


def test_outbox_query_uses_its_index(tmp_path: Path) -> None:
    path = tmp_path / "vault.db"
    Vault.open(path).close()
    with sqlite3.connect(path) as db:
        plan = db.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM keys WHERE synced = 0 ORDER BY rowid LIMIT 10"
        ).fetchall()
    details = " ".join(str(row[-1]) for row in plan)
    assert "keys_outbox" in details
    assert "TEMP B-TREE" not in details


def test_a_newer_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "vault.db"
    Vault.open(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_version SET version = ?", (LATEST + 1,))
    with pytest.raises(StorageError, match="newer"):
        Vault.open(path)


def test_a_failed_step_leaves_the_file_at_the_old_version(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    db = sqlite3.connect(path, isolation_level=None)
    migrate(db, target=1)
    # Pre-create what step 2 creates, so that step fails half way.
    db.execute("CREATE INDEX keys_outbox ON keys(tenant)")
    with pytest.raises(sqlite3.OperationalError):
        migrate(db)
    assert schema_version(db) == 1
    columns = {r[1] for r in db.execute("PRAGMA table_info(keys)")}
    assert "synced" not in columns  # the ALTER TABLE was rolled back too
    db.close()
    with pytest.raises(StorageError):
        Vault.open(path)
