"""A TCP proxy that can black-hole a link, as a real partition does.

How this works
--------------
:class:`Blackhole` listens on a free loopback port and forwards every
connection to ``127.0.0.1:<target>``, on an asyncio loop in its own thread
(the tests themselves are synchronous). Three switches:

* :meth:`drop` — stop forwarding *without closing anything*: bytes already
  read are held, nothing more is read or written, and a new connection is
  accepted by the kernel but never connected onwards. Both ends see an open
  socket and silence, as when packets are dropped (no FIN, no RST); only an
  application-level check (gRPC keepalive) can notice.
* :meth:`heal` — forward again; held bytes go on, as TCP would retransmit them.
* :meth:`reset` — abort every connection with a TCP RST (SO_LINGER 0).

``connections`` counts the connections accepted so far (a client that made
a new connection after a drop shows up here).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

CHUNK = 64 * 1024
T = TypeVar("T")


class Blackhole:
    def __init__(self, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target_port = target_port
        self.host = host
        self.port = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="blackhole",
                                        daemon=True)
        self._flowing: asyncio.Event | None = None
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    # -- control (from the test's thread) ---------------------------------------------
    def start(self) -> Blackhole:
        self._thread.start()
        self.port = self._run(self._start())
        return self

    def drop(self) -> None:
        """Black-hole: hold every byte, close nothing."""
        self._run(self._set(False))

    def heal(self) -> None:
        self._run(self._set(True))

    def reset(self) -> None:
        """Abort every connection with a RST (forwarding stays as it was)."""
        self._run(self._reset())

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._run(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def __enter__(self) -> Blackhole:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    # -- on the proxy's loop ----------------------------------------------------------
    async def _start(self) -> int:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._serve, self.host, 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _set(self, flowing: bool) -> None:
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _reset(self) -> None:
        for writer in list(self._writers):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        self._writers.clear()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._reset()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        self.connections += 1
        self._writers.add(client_w)
        try:
            await self._flowing.wait()  # a partition drops the SYN onwards too
            try:
                target_r, target_w = await asyncio.open_connection(self.host, self.target_port)
            except OSError:
                return
            self._writers.add(target_w)
            try:
                await asyncio.gather(self._pump(client_r, target_w),
                                     self._pump(target_r, client_w))
            finally:
                self._writers.discard(target_w)
                target_w.close()
        finally:
            self._writers.discard(client_w)
            client_w.close()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        assert self._flowing is not None
        try:
            while True:
                await self._flowing.wait()
                data = await src.read(CHUNK)
                if not data:
                    break
                await self._flowing.wait()
                dst.write(data)
                await dst.drain()
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                if dst.can_write_eof():
                    dst.write_eof()
