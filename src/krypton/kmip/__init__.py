"""Pure KMIP model: versions, messages, attributes, payload helpers (no I/O)."""
