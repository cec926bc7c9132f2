"""Log setup shared by every Krypton process, and a rate-limited logger.

How this works
--------------
:func:`setup` replaces the root logger's handlers with one handler on
stderr whose formatter writes either text or JSON lines (``log_format``),
at ``log_level``. A filter on the handler stamps every record with the
process id and the worker id (``pid``, ``worker``): ``"0"`` for a single
process, the slot number (``"0"``, ``"1"``, ...) in a ``--workers`` gateway,
``"supervisor"`` for the parent that supervises workers and ``"core"`` for
the Core process of ``krypton dev --workers``. A worker calls :func:`setup`
again after the fork with its own id.

A text line::

    2026-12-07T00:01:02.345Z WARNING pid=4242 worker=0 krypton.listener: TLS handshake refused ...

A JSON line carries ``time``, ``level``, ``logger``, ``message``, ``pid``,
``worker`` and, when the caller gave them as ``extra``, the fields of
:data:`EXTRA_FIELDS` (``peer``, ``identity``, ``tenant``, ``operation``,
``event``, ``suppressed``).

:class:`RateLimitedLog` is for what a peer can cause at will (refused
handshakes, denied operations): at most ``burst`` lines per ``per`` seconds
for each kind; what is dropped is counted and the count is written with the
next line of that kind (``suppressed``). Its clock is injectable.

Nothing here ever formats key material: callers log identifiers, never keys.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

LOG_FORMATS = ("text", "json")
EXTRA_FIELDS = ("peer", "identity", "tenant", "operation", "event", "suppressed")
_LEVELS: Mapping[str, int] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
SINGLE = "0"
SUPERVISOR = "supervisor"


def _utc(record: logging.LogRecord) -> str:
    t = time.gmtime(record.created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"


class _Stamp(logging.Filter):
    """Adds ``pid`` and ``worker`` to every record (the pid read per record: a
    forked child that has not called :func:`setup` yet still tells the truth)."""

    def __init__(self, worker: str) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.pid = os.getpid()
        record.worker = self.worker
        return True


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        head = (f"{_utc(record)} {record.levelname} pid={getattr(record, 'pid', os.getpid())} "
                f"worker={getattr(record, 'worker', SINGLE)} {record.name}: ")
        text = head + record.getMessage()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _utc(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": getattr(record, "pid", os.getpid()),
            "worker": getattr(record, "worker", SINGLE),
        }
        for name in EXTRA_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


_FORMATTERS: Mapping[str, Callable[[], logging.Formatter]] = {
    "text": TextFormatter,
    "json": JsonFormatter,
}


def setup(level: str = "info", fmt: str = "text", *, worker: str = SINGLE,
          stream: TextIO | None = None) -> logging.Handler:
    """Configure the root logger for this process; returns the handler."""
    if fmt not in _FORMATTERS:
        raise ValueError(f"log_format must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(_FORMATTERS[fmt]())
    handler.addFilter(_Stamp(worker))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS.get(level.lower(), logging.INFO))
    # gRPC and asyncio are chatty at DEBUG; they follow our level but not below INFO.
    for noisy in ("grpc", "asyncio"):
        logging.getLogger(noisy).setLevel(max(root.level, logging.INFO))
    return handler


@dataclass(slots=True)
class _Kind:
    window_start: float
    sent: int = 0
    dropped: int = 0


@dataclass(slots=True)
class RateLimitedLog:
    """At most ``burst`` lines per ``per`` seconds for each kind of line."""

    logger: logging.Logger
    per: float = 10.0
    burst: int = 10
    clock: Callable[[], float] = time.monotonic
    _kinds: dict[str, _Kind] = field(default_factory=dict, repr=False)

    def log(self, level: int, kind: str, msg: str, *args: object,
            **extra: object) -> bool:
        """Log unless ``kind`` is over its budget; True if the line was written."""
        now = self.clock()
        k = self._kinds.get(kind)
        if k is None or now - k.window_start >= self.per:
            dropped = k.dropped if k is not None else 0
            k = self._kinds[kind] = _Kind(now, dropped=dropped)
        if k.sent >= self.burst:
            k.dropped += 1
            return False
        k.sent += 1
        fields: dict[str, object] = {"event": kind, **extra}
        if k.dropped:
            fields["suppressed"] = k.dropped
            msg += " (%d similar line(s) suppressed)"
            args = (*args, k.dropped)
            k.dropped = 0
        self.logger.log(level, msg, *args, extra=fields)
        return True

    def warning(self, kind: str, msg: str, *args: object, **extra: object) -> bool:
        return self.log(logging.WARNING, kind, msg, *args, **extra)

    def suppressed(self, kind: str) -> int:
        """How many lines of ``kind`` wait to be counted in the next one."""
        k = self._kinds.get(kind)
        return k.dropped if k is not None else 0
