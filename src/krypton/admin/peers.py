"""The workers of one gateway (``--workers N``) answer a scrape together.

How this works
--------------
Every worker binds the admin port with ``SO_REUSEPORT`` (as it binds the
KMIP port), so the kernel hands a scrape to any one of them. Each worker also
answers its siblings on a Unix socket, ``worker-<n>.sock``, in a folder the
supervising parent made before it forked (mode 0700, removed when the
parent exits: :func:`rendezvous`). The worker that took the scrape asks every
other socket in that folder for its part (one line naming what — ``families``,
``status`` or ``ready`` — answered with JSON, then closed) and answers with all
of them: ``/metrics`` labels each worker's series with ``worker="<n>"``,
``/readyz`` is ready only when every worker is, the status page shows each.

A worker that does not answer within ``PEER_TIMEOUT`` (restarting, or stuck)
is left out of that scrape's metrics and named in the log, and ``/readyz``
says it is missing; its socket file is replaced when it comes back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import socketserver
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("krypton.admin")

PEER_TIMEOUT = 2.0
_MAX_ANSWER = 64 << 20
WHAT = ("families", "status", "ready")


@dataclass(frozen=True, slots=True)
class WorkerSlot:
    """Worker ``index`` of the ``count`` workers of a gateway, who meet in ``folder``."""

    index: int
    folder: Path
    count: int = 1

    def socket_path(self, index: int | None = None) -> Path:
        return self.folder / f"worker-{self.index if index is None else index}.sock"

    def siblings(self) -> list[tuple[int, Path]]:
        """The other workers' sockets, by index."""
        out = []
        for path in sorted(self.folder.glob("worker-*.sock")):
            number = path.stem.removeprefix("worker-")
            if number.isdigit() and int(number) != self.index:
                out.append((int(number), path))
        return out

    def mark_listening(self) -> bool:
        """Record that this worker listens; True for exactly one worker, the first
        to see every worker listening (it announces the gateway as up, once)."""
        (self.folder / f"listening-{self.index}").touch()
        if any(not (self.folder / f"listening-{n}").exists() for n in range(self.count)):
            return False
        try:  # two workers may both see the set complete: one wins the file
            (self.folder / "announced").touch(exist_ok=False)
        except FileExistsError:
            return False
        return True


@contextlib.contextmanager
def rendezvous() -> Iterator[Path]:
    """A private folder for the workers' sockets, removed afterwards. The parent
    enters it before it forks the workers."""
    with tempfile.TemporaryDirectory(prefix="krypton-admin-") as folder:
        yield Path(folder)


def ask(path: Path, what: str, timeout: float = PEER_TIMEOUT) -> Any:
    """One sibling's answer (JSON) to ``what``; OSError or ValueError if none."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(what.encode() + b"\n")
        chunks = []
        size = 0
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > _MAX_ANSWER:
                raise ValueError("answer too large")
            chunks.append(chunk)
    return json.loads(b"".join(chunks))


def gather(slot: WorkerSlot, what: str) -> list[tuple[int, Any]]:
    """Every sibling's answer to ``what`` that came in time, by index."""
    out = []
    for index, path in slot.siblings():
        try:
            out.append((index, ask(path, what)))
        except (OSError, ValueError) as exc:
            log.info("admin: worker %d did not answer (%s)", index, exc.__class__.__name__)
    return out


class _Handler(socketserver.StreamRequestHandler):
    timeout = PEER_TIMEOUT
    server: PeerServer

    def handle(self) -> None:
        what = self.rfile.readline(64).decode(errors="replace").strip()
        answer = self.server.answer.get(what)
        if answer is None:
            return
        self.wfile.write(json.dumps(answer()).encode())


class PeerServer(socketserver.UnixStreamServer):
    """Answers siblings on this worker's socket, on a thread of its own."""

    def __init__(self, slot: WorkerSlot, answer: dict[str, Callable[[], Any]]) -> None:
        self.slot = slot
        self.answer = answer
        path = slot.socket_path()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # the socket of this slot's previous process
        super().__init__(str(path), _Handler)
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.25},
            name=f"admin-peer-{slot.index}", daemon=True,
        )  # fmt: skip

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self._thread.join()
        with contextlib.suppress(FileNotFoundError):
            self.slot.socket_path().unlink()
