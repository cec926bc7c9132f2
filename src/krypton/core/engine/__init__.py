"""The Core's KMIP handlers: the control table and what it runs."""
