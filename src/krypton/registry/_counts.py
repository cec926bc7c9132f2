"""Kept object counts: Located Items without counting the matches.

How this works
--------------
A KMIP 2.1 Locate answers Located Items, the number of every match, next to
its page. Counting with ``COUNT(*)`` walks one index entry per match (a
million keys: 0.1 to 0.6 s here), so for the queries that filter on nothing but
the tenant, the Object Type, the State and the Storage Status Mask (the
destroyed states in or out) the count is *kept* instead: the table
``object_counts (tenant, object_type, state, n)`` holds how many objects
each (tenant, type, state) has, and Located Items is ``SUM(n)`` over the
tenant's rows that pass the same filters (:func:`count_sql`); a tenant has
one row per (type, state) it uses, a handful. A Locate that also filters on a
Name, an Object Group or a custom attribute still counts with ``COUNT(*)``
(``krypton.registry._common.locate_count_sql`` picks).

The counts are maintained by triggers on ``objects`` (registry schema v6),
never by the Python code, so that no write path, present or future, can
forget them: INSERT adds, DELETE subtracts, an UPDATE that moves an object
to another (tenant, type, state) does both. The migration fills the table
from the rows already there, in the same transaction that creates the
triggers, so an existing registry is counted right the moment it opens.

SQLite has one writer at a time, so a row per key updated in place is all
it needs: a row trigger upserts ``n + 1`` / ``n - 1``. A table with triggers
runs each INSERT statement in a statement journal (~6 us), so the registry
inserts objects in multi-row statements (``sqlite._insert_all``), where the
triggers cost ~1 us a row.

PostgreSQL has concurrent writers (several Cores, a pool each); one row per
key updated in place would be a hot row that serialises every Create of a
tenant. There the triggers only ever INSERT *delta* rows (several rows per
key, no unique key): one statement-level trigger per INSERT, DELETE and
UPDATE reads the statement's transition tables and appends one row per key
it changed with the net difference (a ``SyncKeys`` batch of 512 keys adds one
or two rows, an UPDATE that leaves the state as it was adds none). Inserts
never wait for each other. The count is the same ``SUM(n)``, correct whatever
the number of rows. Rows are *folded* (:data:`FOLD_SQL`: the rows of every
key that has more than one are deleted and their sum inserted as one row, in
one transaction) so that a count reads a handful of rows: when a count reads
more than :data:`FOLD_SURPLUS` rows beyond one per key (that tenant is
folded), and every :data:`FOLD_EVERY` writes of a registry instance (every
tenant). A fold takes a transaction-level advisory lock with ``try`` (a
second folder at the same time skips, it does not wait); even without it a
fold is safe under READ COMMITTED: each delta row is deleted by exactly one
transaction and its value re-inserted by that same transaction, and rows
committed after the fold's snapshot are left for the next one, so a reader
sees either the rows before or the rows after, whose sums are equal.
"""

from __future__ import annotations

from typing import Any

from krypton.model.record import DESTROYED_STATES

# Fold a tenant when a count reads more than this many rows beyond one per key,
# and fold every tenant after this many write transactions of one instance.
FOLD_SURPLUS = 32
FOLD_EVERY = 256
FOLD_LOCK = 0x4B52434E  # "KRCN": pg_try_advisory_xact_lock key of a fold

_KEY = "tenant, object_type, state"

SQLITE_STEP: tuple[str, ...] = (
    "CREATE TABLE object_counts (tenant TEXT NOT NULL, object_type INTEGER NOT NULL,"
    " state INTEGER NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (tenant, object_type, state))"
    " WITHOUT ROWID",
    f"INSERT INTO object_counts ({_KEY}, n)"  # noqa: S608 (constant fragments only)
    f" SELECT {_KEY}, COUNT(*) FROM objects GROUP BY {_KEY}",
    "CREATE TRIGGER objects_count_insert AFTER INSERT ON objects BEGIN"  # noqa: S608
    f" INSERT INTO object_counts ({_KEY}, n) VALUES (NEW.tenant, NEW.object_type, NEW.state, 1)"
    f" ON CONFLICT ({_KEY}) DO UPDATE SET n = n + 1; END",
    "CREATE TRIGGER objects_count_delete AFTER DELETE ON objects BEGIN"
    " UPDATE object_counts SET n = n - 1 WHERE tenant = OLD.tenant"
    " AND object_type = OLD.object_type AND state = OLD.state; END",
    "CREATE TRIGGER objects_count_update AFTER UPDATE OF tenant, object_type, state"  # noqa: S608
    " ON objects"
    " WHEN NEW.tenant IS NOT OLD.tenant OR NEW.object_type IS NOT OLD.object_type"
    " OR NEW.state IS NOT OLD.state BEGIN"
    " UPDATE object_counts SET n = n - 1 WHERE tenant = OLD.tenant"
    " AND object_type = OLD.object_type AND state = OLD.state;"
    f" INSERT INTO object_counts ({_KEY}, n) VALUES (NEW.tenant, NEW.object_type, NEW.state, 1)"
    f" ON CONFLICT ({_KEY}) DO UPDATE SET n = n + 1; END",
)


def _pg_trigger(event: str, referencing: str, rows: str) -> tuple[str, str]:
    """A statement-level trigger on ``objects`` that appends the net delta rows
    of ``rows`` (a union of the transition tables, each row signed)."""
    name = f"krypton_count_{event.lower()}"
    function = (
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"  # noqa: S608
        f" INSERT INTO object_counts ({_KEY}, n) SELECT {_KEY}, SUM(d) FROM ({rows}) AS t"
        f" GROUP BY {_KEY} HAVING SUM(d) <> 0; RETURN NULL; END $$"
    )
    trigger = (
        f"CREATE TRIGGER objects_count_{event.lower()} AFTER {event} ON objects"
        f" REFERENCING {referencing} FOR EACH STATEMENT EXECUTE FUNCTION {name}()"
    )
    return function, trigger


_PLUS = f"SELECT {_KEY}, 1 AS d FROM new_rows"  # noqa: S608
_MINUS = f"SELECT {_KEY}, -1 AS d FROM old_rows"  # noqa: S608

POSTGRES_STEP: tuple[str, ...] = (
    "CREATE TABLE object_counts (tenant TEXT NOT NULL, object_type INTEGER NOT NULL,"
    " state INTEGER NOT NULL, n BIGINT NOT NULL)",
    f"CREATE INDEX object_counts_key ON object_counts ({_KEY})",
    f"INSERT INTO object_counts ({_KEY}, n)"  # noqa: S608
    f" SELECT {_KEY}, COUNT(*) FROM objects GROUP BY {_KEY}",
    *_pg_trigger("INSERT", "NEW TABLE AS new_rows", _PLUS),
    *_pg_trigger("DELETE", "OLD TABLE AS old_rows", _MINUS),
    *_pg_trigger("UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows",
                 f"{_PLUS} UNION ALL {_MINUS}"),
)  # fmt: skip

_DESTROYED = ", ".join(str(int(s)) for s in sorted(DESTROYED_STATES))


def kept_filters(
    alias: str, object_type: int | None, state: int | None, destroyed: bool | None, p: str
) -> tuple[list[str], list[Any]]:
    """The conditions on (object_type, state) both ``objects`` and
    ``object_counts`` answer (the tenant is the caller's)."""
    where: list[str] = []
    params: list[Any] = []
    for column, number in (("object_type", object_type), ("state", state)):
        if number is not None:
            where.append(f"{alias}.{column} = {p}")
            params.append(int(number))
    if destroyed is not None:
        where.append(f"{alias}.state {'IN' if destroyed else 'NOT IN'} ({_DESTROYED})")
    return where, params


def count_sql(
    tenant: str, object_type: int | None, state: int | None, destroyed: bool | None, p: str,
    *, surplus: bool,
) -> tuple[str, list[Any]]:
    """The kept count: ``SUM(n)`` over the tenant's rows that pass the filters;
    with ``surplus`` (PostgreSQL) a second column, how many rows it read beyond
    one per key (what a fold would remove)."""
    where, params = kept_filters("c", object_type, state, destroyed, p)
    extra = ", COUNT(*) - COUNT(DISTINCT (c.object_type, c.state))" if surplus else ""
    sql = (
        f"SELECT COALESCE(SUM(c.n), 0){extra} FROM object_counts c"  # noqa: S608
        f" WHERE {' AND '.join([f'c.tenant = {p}', *where])}"
    )
    return sql, [tenant, *params]


# PostgreSQL: fold the delta rows of every key that has several (of one tenant,
# or of all with the tenant parameter NULL); see the module comment.
FOLD_SQL = (
    f"WITH many AS (SELECT {_KEY} FROM object_counts"  # noqa: S608
    " WHERE %(tenant)s::text IS NULL OR tenant = %(tenant)s::text"
    f" GROUP BY {_KEY} HAVING COUNT(*) > 1),"
    " gone AS (DELETE FROM object_counts c USING many m WHERE c.tenant = m.tenant"
    " AND c.object_type = m.object_type AND c.state = m.state"
    " RETURNING c.tenant, c.object_type, c.state, c.n)"
    f" INSERT INTO object_counts ({_KEY}, n) SELECT {_KEY}, SUM(n) FROM gone"
    f" GROUP BY {_KEY} HAVING SUM(n) <> 0"
)
