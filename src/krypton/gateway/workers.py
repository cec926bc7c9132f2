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

The workers share one vault, so one outbox: :class:`DrainOwner` makes exactly
one of them at a time the one that drains it to the Core (issue 16: each
worker drained the whole outbox, so every key was sent once per worker). The
owner holds an exclusive ``flock`` on ``drain.lock`` in the workers' shared
folder; the kernel releases it when the owner's process dies, and another
worker takes it on its next try (its drainer's next wake or interval). The
owner also binds ``drain.sock``, a Unix datagram socket: a worker that made a
key sends it one byte (:meth:`DrainOwner.nudge`), so keys made anywhere are
drained as soon as keys made by the owner itself, not on its interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path
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


class DrainOwner:
    """Whether this worker drains the shared outbox: :meth:`claim` takes (or
    keeps) the exclusive lock in ``folder`` without waiting; :meth:`release`
    gives it back. While it owns, a datagram on ``drain.sock`` calls
    ``on_nudge`` on the event loop that claimed."""

    LOCK = "drain.lock"
    SOCKET = "drain.sock"

    def __init__(self, folder: Path, on_nudge: Callable[[], None] | None = None) -> None:
        self.folder = folder
        self.on_nudge = on_nudge
        self._fd: int | None = None  # the locked file, while this worker owns
        self._inbox: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outbox: socket.socket | None = None

    @property
    def owns(self) -> bool:
        return self._fd is not None

    def claim(self) -> bool:
        """True if this worker owns the drain (now or already); never blocks."""
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.folder / self.LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:  # the folder is gone (the supervisor with it)
            # Drain, as a lone gateway does: a key sent twice is harmless, a
            # key never sent is not.
            log.warning("drain: no lock to share the drain (%s); draining here", exc.strerror)
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        self._listen()
        return True

    def release(self) -> None:
        """Stop owning (closing the lock's file releases it)."""
        self._unlisten()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def close(self) -> None:
        self.release()
        if self._outbox is not None:
            self._outbox.close()
            self._outbox = None

    def nudge(self) -> None:
        """Tell the owner (whichever worker it is) that keys wait; nothing if
        there is none or its queue is full: its interval drains them anyway."""
        if self._fd is not None:
            return
        if self._outbox is None:
            self._outbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._outbox.setblocking(False)
        with contextlib.suppress(OSError):
            self._outbox.sendto(b"!", str(self.folder / self.SOCKET))

    def _listen(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop to be told on: the interval alone drains
        path = self.folder / self.SOCKET
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a dead owner's: the lock says it is gone
        inbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        inbox.setblocking(False)
        try:
            inbox.bind(str(path))
        except OSError as exc:
            inbox.close()
            log.warning("drain: no wake-up socket (%s); draining on the interval", exc)
            return
        loop.add_reader(inbox.fileno(), self._nudged)
        self._inbox, self._loop = inbox, loop

    def _unlisten(self) -> None:
        inbox, loop = self._inbox, self._loop
        if inbox is None or loop is None:
            return
        self._inbox = self._loop = None
        if not loop.is_closed():
            loop.remove_reader(inbox.fileno())
        inbox.close()
        with contextlib.suppress(FileNotFoundError):
            (self.folder / self.SOCKET).unlink()

    def _nudged(self) -> None:
        inbox = self._inbox
        if inbox is None:
            return
        with contextlib.suppress(OSError):
            while inbox.recv(64):  # one wake-up for however many came
                pass
        if self.on_nudge is not None:
            self.on_nudge()
