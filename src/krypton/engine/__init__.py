"""KMIP operation handlers over storage interfaces, dispatched by table."""
