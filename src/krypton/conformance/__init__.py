"""The OASIS KMIP conformance runner (``krypton conformance``)."""
