"""Readiness as a list of named checks, each saying what is missing.

A :class:`Check` is a name and a callable that returns what stops the
process from serving (empty when nothing does). A process keeps its checks in
a plain list the admin endpoint reads at every ``/readyz``, so a part added
later (a certificate that must not have expired, a root of trust that must
answer) appends one more without touching the endpoint. A check runs on the
admin thread: it reads state, it never blocks on the event loop for long.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

log = logging.getLogger("krypton.admin")


@dataclass(frozen=True, slots=True)
class Check:
    """``run()`` → what is missing, one sentence each (empty: ready)."""

    name: str
    run: Callable[[], Sequence[str]]


def evaluate(checks: Iterable[Check]) -> dict[str, list[str]]:
    """Each check's name → what it found missing. A check that raises counts as
    failed, with the error's type (never its message: it is served over HTTP)."""
    out: dict[str, list[str]] = {}
    for check in list(checks):
        try:
            out[check.name] = [str(p) for p in check.run()]
        except Exception as exc:
            log.warning("readiness check %s failed", check.name, exc_info=True)
            out[check.name] = [f"the check failed ({type(exc).__name__})"]
    return out


def missing(results: dict[str, list[str]]) -> list[str]:
    return [p for problems in results.values() for p in problems]
