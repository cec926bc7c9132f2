"""A small KMIP client over mutual TLS, for our own tools and tests."""
