"""Krypton Core: tenant (L2) and service (L3) key management, registry wiring, audit."""
