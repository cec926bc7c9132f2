"""Krypton Gateway: a KMIP key gateway (OpenKCM split-function model)."""

from __future__ import annotations

__version__ = "0.1.0"
