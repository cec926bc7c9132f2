"""OpenBao: a small HTTP API client (the Core's root and the gateway's seal use
its Transit engine; ``krypton.roots``)."""

from krypton.openbao.client import OpenBaoClient

__all__ = ["OpenBaoClient"]
