"""Shared test helpers: OASIS documents, servers, clusters, PostgreSQL (see README.md)."""
