"""The Core registry: one interface (:class:`krypton.model.Registry`), two backends.

``await open_registry(url)`` picks the backend from the URL, as
``CoreConfig.registry`` spells it:

- ``sqlite:PATH``: one SQLite file (a single Core);
- ``sqlite::memory:``: an in-memory database, gone when closed (tests, demos);
- ``postgresql://...`` or ``postgres://...``: PostgreSQL, for any number of
  Core instances on one database.

``locate_sql(query, dialect)`` is the one SQL statement both backends run for a
Locate, and ``locate_count_sql`` the one that counts its matches (Located
Items: from the counts the registry's triggers keep when the query filters on
tenant, type, state and the destroyed states only, see ``_counts.py``; else a
COUNT(*)); public so that they can be read and EXPLAINed (tests check the plans).

Opening is async because the PostgreSQL backend connects (and migrates)
before it returns, so a wrong DSN fails at start-up, not at the first request.
"""

from __future__ import annotations

from krypton.errors import ConfigError
from krypton.model.registry import Registry
from krypton.registry._common import Dialect, locate_count_sql, locate_sql

__all__ = ["Dialect", "locate_count_sql", "locate_sql", "open_registry"]


async def open_registry(url: str, *, feed_retention: int | None = None) -> Registry:
    """Open the registry ``url`` names (see the module comment); its change feed
    keeps the newest ``feed_retention`` changes (default: the backends')."""
    kw = {} if feed_retention is None else {"feed_retention": feed_retention}
    if url.startswith(("postgresql://", "postgres://")):
        from krypton.registry.postgres import PostgresRegistry

        return await PostgresRegistry.open(url, **kw)
    if url.startswith("sqlite:") and len(url) > len("sqlite:"):
        from krypton.registry.sqlite import SqliteRegistry

        return SqliteRegistry.open(url.removeprefix("sqlite:"), **kw)
    # Never echo the URL: a mistyped PostgreSQL URL may carry a password.
    raise ConfigError("registry: must be 'sqlite:<path>', 'sqlite::memory:' or 'postgresql://...'")

