"""Several gateway processes on one port (SO_REUSEPORT), supervised by a parent.

How this works
--------------
Python runs one request at a time per process, so a gateway uses more than
one core by running ``N`` worker processes that each bind the same address
with ``SO_REUSEPORT``; the kernel spreads new connections across them. Each
worker is a complete gateway: its own event loop, vault connection (SQLite in
WAL mode is safe across processes, and every worker's ``Create`` is durable
before it is acknowledged), cache of wrapped records, and L3 source.

The parent builds the TLS server context *before* forking, so every worker
shares one session-ticket key and a client can resume its TLS session on
whichever worker the kernel hands the next connection to. The parent then
only supervises: it forwards SIGTERM/SIGINT (as SIGTERM: each worker drains)
and SIGHUP (each worker reloads its certificates and policy) to the workers,
restarts a worker
that dies unexpectedly (with a short back-off), and exits when all workers
have stopped after a signal.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from types import FrameType

log = logging.getLogger("krypton.workers")

_RESTART_BACKOFF = 0.5


def _child(target: Callable[[], int]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Until the worker's loop handles SIGHUP (reload), one must not kill it.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    code = 1
    try:
        code = target()
    except BaseException:
        log.exception("worker %d failed", os.getpid())
    finally:
        os._exit(code)


def run_workers(targets: Sequence[Callable[[], int]]) -> int:
    """Fork one worker per target and supervise them until signalled."""
    stopping = False
    children: dict[int, int] = {}

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid == 0:
            _child(targets[slot])
        children[pid] = slot

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def on_hangup(signum: int, frame: FrameType | None) -> None:
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hangup)
    try:
        for slot in range(len(targets)):
            spawn(slot)
        log.info("supervising %d worker processes", len(targets))
        status = 0
        while children:
            try:
                pid, raw = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            if pid not in children:
                continue
            slot = children.pop(pid)
            code = os.waitstatus_to_exitcode(raw)
            if stopping:
                continue
            log.warning("worker %d (pid %d) exited with %d; restarting", slot, pid, code)
            status = 1
            time.sleep(_RESTART_BACKOFF)
            if not stopping:
                spawn(slot)
        return 0 if stopping else status
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
