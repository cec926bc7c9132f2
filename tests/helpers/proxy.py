"""A TCP proxy on 127.0.0.1 that can black-hole its traffic, for partition tests.

How this works
--------------
:class:`BlackHoleProxy` listens on a free loopback port and forwards every
accepted connection to ``target`` (another loopback port), byte for byte, from
its own thread (plain sockets and ``selectors``: it does not need the test's
event loop). Three switches:

* :meth:`partition` — stop forwarding in both directions WITHOUT closing
  anything: the proxy stops reading its sockets (what the peers send waits in
  kernel buffers, then their writes stall), and a new connection is accepted
  but not dialled onwards. That is how a real partition looks to both ends:
  no reset, no FIN, just silence.
* :meth:`heal` — forward again: reading resumes where it stopped, so nothing
  sent is lost (as TCP's retransmissions deliver it after a real partition);
  connections accepted meanwhile are dialled onwards now; a peer that went
  away meanwhile is noticed (EOF) and its partner closed.
* :meth:`reset` — close every connection now (both sides see a reset/EOF).
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from collections.abc import Iterator

_CHUNK = 65536


class BlackHoleProxy:
    def __init__(self, target_port: int, *, host: str = "127.0.0.1") -> None:
        self._target = (host, target_port)
        self._listener = socket.create_server((host, 0))
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self._peers: dict[socket.socket, socket.socket | None] = {}
        self._lock = threading.Lock()
        self._blackhole = False
        self._closing = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._run, name="blackhole-proxy", daemon=True)
        self.accepted = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- switches -------------------------------------------------------------------
    def start(self) -> BlackHoleProxy:
        self._thread.start()
        return self

    def partition(self) -> None:
        """Forward nothing from now on, closing nothing."""
        self._blackhole = True
        self._call("partition")

    def heal(self) -> None:
        """Forward again, from where the partition stopped."""
        self._blackhole = False
        self._call("heal")

    def reset(self) -> None:
        """Close every proxied connection (the listener stays)."""
        self._call("reset")

    def close(self) -> None:
        self._closing = True
        self._call("close")
        self._thread.join(5.0)
        self._listener.close()
        self._wake_w.close()

    def __enter__(self) -> BlackHoleProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the forwarding thread ------------------------------------------------------------
    def _call(self, what: str) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(what[:1].encode())

    def _run(self) -> None:
        while not self._closing:
            for key, _ in self._sel.select(0.5):
                if key.data == "wake":
                    for cmd in self._wake_r.recv(64):
                        self._command(bytes((cmd,)))
                    continue
                if key.fileobj is self._listener:
                    self._accept()
                    continue
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                self._pump(sock)
        self._drop_all()
        self._sel.close()

    def _command(self, cmd: bytes) -> None:
        if cmd in (b"r", b"c"):
            self._drop_all()
        elif cmd == b"p":
            for sock in self._peers:
                with contextlib.suppress(KeyError, ValueError):
                    self._sel.unregister(sock)
        elif cmd == b"h":
            for client in [c for c, up in self._peers.items() if up is None]:
                self._dial(client)
            for sock in list(self._peers):
                with contextlib.suppress(KeyError, ValueError):
                    self._sel.register(sock, selectors.EVENT_READ, None)

    def _accept(self) -> None:
        with contextlib.suppress(BlockingIOError):
            client, _ = self._listener.accept()
            self.accepted += 1
            client.setblocking(False)
            self._peers[client] = None
            if self._blackhole:
                return  # held, unread and not dialled, until healed
            if self._dial(client):
                self._sel.register(client, selectors.EVENT_READ, None)
                upstream = self._peers[client]
                assert upstream is not None
                self._sel.register(upstream, selectors.EVENT_READ, None)

    def _dial(self, client: socket.socket) -> bool:
        try:
            upstream = socket.create_connection(self._target, timeout=2.0)
        except OSError:
            self._drop(client)
            return False
        upstream.setblocking(False)
        self._peers[client] = upstream
        self._peers[upstream] = client
        return True

    def _pump(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop(sock)
            return
        other = self._peers.get(sock)
        if other is None:
            self._drop(sock)
            return
        try:
            other.setblocking(True)
            other.sendall(data)
            other.setblocking(False)
        except OSError:
            self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        other = self._peers.pop(sock, None)
        for s in (sock, other):
            if s is None:
                continue
            self._peers.pop(s, None)
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(s)
            with contextlib.suppress(OSError):
                s.close()

    def _drop_all(self) -> None:
        for sock in list(self._peers):
            self._drop(sock)


@contextlib.contextmanager
def black_hole_proxy(target_port: int) -> Iterator[BlackHoleProxy]:
    proxy = BlackHoleProxy(target_port).start()
    try:
        yield proxy
    finally:
        proxy.close()
