"""Kept counts (Located Items without COUNT(*)), on both backends: after a random
history of writes the kept count equals the matches, the count query reads the
counter table only, and a registry of the schema before migrates to counts that
are right (krypton.registry._counts)."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import sqlite3
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.helpers.pg import PgServer

from krypton.model import LocateQuery, ObjectRecord, Registry
from krypton.registry import locate_count_sql, open_registry
from krypton.registry._counts import FOLD_EVERY, FOLD_SURPLUS
from krypton.registry.postgres import PostgresRegistry
from krypton.registry.schema import LATEST, POSTGRES, migrate_sqlite

TENANTS = ("demo", "other")
TYPES = (2, 7, 3)  # Symmetric Key, Secret Data, Public Key
STATES = (1, 2, 3, 4, 5, 6)  # Pre-Active ... Destroyed (5), Destroyed Compromised (6)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'registry.db'}"
    server: PgServer = request.getfixturevalue("pg")
    return server.create_database()


def _raw(url: str) -> Callable[[str, tuple[Any, ...]], None]:
    """A write beside the registry, straight in SQL (what no registry method
    does: delete an object, move it to another tenant)."""

    def sqlite_write(sql: str, params: tuple[Any, ...]) -> None:
        with sqlite3.connect(url.removeprefix("sqlite:"), timeout=10) as db:
            db.execute("PRAGMA foreign_keys = ON")  # the side rows go with their object
            db.execute(sql, params)

    def pg_write(sql: str, params: tuple[Any, ...]) -> None:
        with psycopg.connect(url, autocommit=True) as db:
            db.execute(sql.replace("?", "%s"), params)

    return sqlite_write if url.startswith("sqlite:") else pg_write


def _record(rng: random.Random, n: int) -> ObjectRecord:
    return ObjectRecord(
        uid=f"u{n}", tenant=rng.choice(TENANTS), object_type=rng.choice(TYPES),
        state=rng.choice(STATES), created=1_700_000_000 + rng.randrange(50),
        algorithm=3, length=256, l3_version=1, sealed=os.urandom(8), attributes=b"",
        origin="gw", names=(f"n{n % 3}",),
    )  # fmt: skip


async def _history(reg: Registry, url: str, rng: random.Random) -> None:
    """Batches of puts (some concurrent, some repeated), state changes and
    destroys through the registry, deletes and re-tenanting in raw SQL."""
    raw = _raw(url)
    made = itertools.count()
    live: dict[str, str] = {}  # uid -> tenant
    for _ in range(12):
        batches = [[_record(rng, next(made)) for _ in range(rng.randrange(1, 150))]
                   for _ in range(3)]  # fmt: skip
        batches[1] += batches[1][:2]  # a uid twice in one batch: its first record counts
        await asyncio.gather(*(reg.put_objects(b) for b in batches))
        await reg.put_objects(batches[0][:5])  # already there: counted once
        live.update((r.uid, r.tenant) for b in batches for r in b)
        for uid in rng.sample(sorted(live), min(25, len(live))):
            rec = await reg.get_object(live[uid], uid)
            assert rec is not None
            state = rng.choice((5, 6)) if rng.random() < 0.3 else rng.choice(STATES)
            await reg.update_object(replace(rec, state=state, sealed=None))
        for uid in rng.sample(sorted(live), 3):
            raw("DELETE FROM objects WHERE uid = ?", (uid,))
            del live[uid]
        for uid in rng.sample(sorted(live), 3):
            live[uid] = "demo" if live[uid] == "other" else "other"
            raw("UPDATE objects SET tenant = ? WHERE uid = ?", (live[uid], uid))
        uid = rng.choice(sorted(live))
        raw("UPDATE objects SET object_type = ?, state = ? WHERE uid = ?",
            (rng.choice(TYPES), rng.choice(STATES), uid))  # fmt: skip


async def _check_every_shape(reg: Registry, dialect: str) -> int:
    """The kept count of every (tenant, type, state, destroyed) against the
    matches Locate returns; how many shapes were checked."""
    shapes = itertools.product((*TENANTS, "nobody"), (None, *TYPES, 99), (None, *STATES),
                               (None, True, False))  # fmt: skip
    checked = 0
    for tenant, kind, state, destroyed in shapes:
        query = LocateQuery(tenant, object_type=kind, state=state, destroyed=destroyed)
        sql, _ = locate_count_sql(query, dialect)  # type: ignore[arg-type]
        assert " FROM object_counts " in sql, sql  # kept, not counted
        matches = await reg.locate(query)
        assert await reg.locate_count(query) == len(matches), query
        named = replace(query, name="n1")  # a side filter: still COUNT(*), still right
        assert await reg.locate_count(named) == len(await reg.locate(named)), named
        checked += 1
    return checked


@pytest.mark.parametrize("seed", [1, 2])
def test_kept_counts_equal_the_matches_after_any_history(url: str, seed: int) -> None:
    dialect = "sqlite" if url.startswith("sqlite:") else "postgresql"

    async def main() -> None:
        reg = await open_registry(url)
        try:
            await _history(reg, url, random.Random(seed))
            assert await _check_every_shape(reg, dialect) == 3 * 5 * 7 * 3
            if isinstance(reg, PostgresRegistry):
                assert await reg.fold_counts()
                assert await _check_every_shape(reg, dialect) == 3 * 5 * 7 * 3
        finally:
            await reg.close()
        if dialect == "postgresql":  # folded: one row per key at most
            with psycopg.connect(url) as db:
                rows = db.execute("SELECT tenant, object_type, state FROM object_counts").fetchall()
            assert len(rows) == len(set(rows)) and len(rows) <= len(TENANTS) * 3 * 6

    asyncio.run(main())


def test_sqlite_count_reads_the_counter_table_only(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    asyncio.run(_fill(f"sqlite:{path}"))
    with sqlite3.connect(path) as db:
        for query in _COUNTED:
            sql, params = locate_count_sql(query, "sqlite")
            plan = [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
            assert len(plan) == 1, plan
            assert plan[0].startswith("SEARCH c USING PRIMARY KEY (tenant=?"), plan


def test_postgresql_count_reads_the_counter_table_only(pg: PgServer) -> None:
    url = pg.create_database()
    asyncio.run(_fill(url))
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("VACUUM ANALYZE")
        for query in _COUNTED:
            sql, params = locate_count_sql(query, "postgresql")
            plan = "\n".join(row[0] for row in db.execute(f"EXPLAIN {sql}", params))
            assert "on object_counts" in plan, plan
            assert " on objects" not in plan and "objects_" not in plan, plan


_COUNTED = [
    LocateQuery("t1"), LocateQuery("t1", object_type=2), LocateQuery("t1", state=2),
    LocateQuery("t1", object_type=2, state=3), LocateQuery("t1", destroyed=False),
    LocateQuery("t1", object_type=2, destroyed=True),
]  # fmt: skip


async def _fill(url: str) -> None:
    reg = await open_registry(url)
    try:
        for at in range(0, 6000, 1000):
            await reg.put_objects([
                ObjectRecord(f"u{i}", f"t{i % 3}", 2 + 5 * (i % 7 == 0), 1 + i % 4, i)
                for i in range(at, at + 1000)
            ])  # fmt: skip
    finally:
        await reg.close()


def test_postgresql_folds_delta_rows_on_read_and_every_so_many_writes(pg: PgServer) -> None:
    url = pg.create_database()

    def rows() -> int:
        with psycopg.connect(url) as db:
            return int(db.execute("SELECT count(*) FROM object_counts").fetchone()[0])  # type: ignore[index]

    async def main() -> None:
        reg = await open_registry(url)
        try:
            for i in range(FOLD_SURPLUS + 2):  # one delta row per write of one key
                await reg.put_objects([ObjectRecord(f"u{i}", "demo", 2, 1, i)])
            assert rows() == FOLD_SURPLUS + 2
            assert await reg.locate_count(LocateQuery("demo")) == FOLD_SURPLUS + 2
            assert rows() == 1  # that read folded them
            more = FOLD_EVERY - (FOLD_SURPLUS + 2)  # then this instance wrote FOLD_EVERY times
            for i in range(more):
                if i == more - 1:
                    assert rows() == more  # 1 for demo, more - 1 for other
                await reg.put_objects([ObjectRecord(f"v{i}", "other", 2, 1, i)])
            assert rows() == 2  # every FOLD_EVERY writes, a fold of every tenant
            assert await reg.locate_count(LocateQuery("other")) == more
        finally:
            await reg.close()

    asyncio.run(main())


def test_postgresql_writers_of_one_key_do_not_wait_for_each_other(pg: PgServer) -> None:
    """No hot row: while one transaction that inserted an object of (demo, 2, 1)
    is open, another inserts one of the same key and commits without waiting."""
    url = pg.create_database()
    asyncio.run(_fill(url))  # creates the schema (and some other keys)
    row = "INSERT INTO objects (uid, tenant, object_type, state, created, attributes, origin," \
          " revision) VALUES (%s, 'demo', 2, 1, 1, '', 'gw', 1)"  # fmt: skip
    with psycopg.connect(url) as first, psycopg.connect(url, autocommit=True) as second:
        first.execute(row, ("held",))  # its transaction stays open
        second.execute("SET lock_timeout = '2s'")
        second.execute(row, ("passing",))  # would wait for 'held' on a counter row
        first.commit()

    async def count() -> int:
        reg = await open_registry(url)
        try:
            return await reg.locate_count(LocateQuery("demo", object_type=2, state=1))
        finally:
            await reg.close()

    assert asyncio.run(count()) == 2


# -- migration -------------------------------------------------------------------------
_V5_ROWS = [(f"m{i}", ("demo", "other")[i % 2], (2, 7)[i % 3 == 0], (1, 2, 5, 6)[i % 7 % 4])
            for i in range(300)]  # fmt: skip
_INSERT_V5 = (
    "INSERT INTO objects (uid, tenant, object_type, state, created, attributes, origin,"
    " revision) VALUES (?, ?, ?, ?, 1, ?, 'gw', 1)"
)


def _expected(tenant: str, kind: int | None, destroyed: bool | None) -> int:
    return sum(1 for _, t, k, s in _V5_ROWS if t == tenant and kind in (None, k)
               and destroyed in (None, s in (5, 6)))  # fmt: skip


async def _counts_after_opening(url: str) -> None:
    reg = await open_registry(url)
    try:
        shapes = itertools.product(TENANTS, (None, 2, 7), (None, True, False))
        for tenant, kind, destroyed in shapes:
            query = LocateQuery(tenant, object_type=kind, destroyed=destroyed)
            assert await reg.locate_count(query) == _expected(tenant, kind, destroyed), query
        await reg.put_objects([ObjectRecord("new", "demo", 2, 1, 2)])  # the triggers run too
        assert await reg.locate_count(LocateQuery("demo")) == _expected("demo", None, None) + 1
    finally:
        await reg.close()


def _kept(rows: list[Any]) -> Counter[tuple[str, int, int]]:
    """(tenant, type, state) -> count, as the migrated ``object_counts`` holds them."""
    return Counter({(str(t), int(k), int(s)): int(n) for t, k, s, n in rows if n})


_KEPT = "SELECT tenant, object_type, state, SUM(n) FROM object_counts GROUP BY 1, 2, 3"
_WANT = Counter((t, k, s) for _, t, k, s in _V5_ROWS) + Counter({("demo", 2, 1): 1})


def test_a_v5_sqlite_registry_migrates_and_counts_its_objects(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    with sqlite3.connect(path, isolation_level=None) as db:
        assert migrate_sqlite(db, target=LATEST - 1) == LATEST - 1 == 5
        db.execute("BEGIN")
        db.executemany(_INSERT_V5, [(*row, b"") for row in _V5_ROWS])
        db.execute("COMMIT")
    db.close()
    asyncio.run(_counts_after_opening(f"sqlite:{path}"))
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(LATEST,)]
        assert _kept(db.execute(_KEPT).fetchall()) == _WANT


def test_a_v5_postgresql_registry_migrates_and_counts_its_objects(pg: PgServer) -> None:
    url = pg.create_database()
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for step in POSTGRES[: LATEST - 1]:
            for stmt in step:
                db.execute(stmt)
        db.execute("INSERT INTO schema_version VALUES (%s)", (LATEST - 1,))
        with db.cursor() as cur:
            cur.executemany(_INSERT_V5.replace("?", "%s"), [(*row, b"") for row in _V5_ROWS])
    asyncio.run(_counts_after_opening(url))
    with psycopg.connect(url) as db:
        assert db.execute("SELECT version FROM schema_version").fetchall() == [(LATEST,)]
        assert _kept(db.execute(_KEPT).fetchall()) == _WANT
