"""The gateway's TLS to the Core, made by us so that the Core's identity is checked.

How this works
--------------
gRPC's Python API cannot show a client the server's certificate, and its
host-name check (even with ``grpc.ssl_target_name_override``) only proves
that the server holds *some* certificate from the CA with that DNS name —
which a gateway's or a workload's certificate may well have. So the gateway
does the TLS itself: gRPC talks plain HTTP/2 to a Unix socket in a private
folder (mode 0700, made by ``tempfile.mkdtemp``), and for every connection
gRPC opens there (its first one and every reconnection) :class:`CorePipe`
opens a mutual-TLS connection to the Core with the ``ssl`` module, checks the
server's certificate — chain and validity by OpenSSL, then
:func:`krypton.tls.identity.check_peer` (a leaf with serverAuth, valid now,
in the trust domain) and its SPIFFE ID equal to ``core_id`` — and only then
copies bytes both ways. A server that fails is disconnected before a byte of
gRPC reaches it; the reason is kept in :attr:`CorePipe.last_refusal` (the
uplink client shows it as why it is DOWN) and logged.

The Core still sees the gateway's own certificate (this TLS presents it), so
nothing changes on the Core's side.

Several Cores: the pipe is given every Core address; a new connection tries
the one that last worked first, then the others in order (each name's every
resolved address — A and AAAA records alike, re-resolved on each connection,
the record that last worked first — ``connect_timeout`` seconds per attempt),
so when a Core dies gRPC's next connection lands on another.

A dead peer is never hidden: the TCP socket to the Core has keepalive and a
user timeout (unacknowledged data for ``keepalive + keepalive_timeout``
seconds kills it), and when either side of a relayed connection ends, both
are closed, so gRPC sees the loss at once and reconnects. gRPC's own
keepalive pings travel end to end through the pipe and catch a link that
black-holes without the kernel noticing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import socket
import ssl
import tempfile
from collections.abc import Sequence
from pathlib import Path

from krypton.config import TLSConfig
from krypton.errors import PermissionDenied
from krypton.tls.contexts import material_client_context, peer_rules
from krypton.tls.identity import Usage, check_peer
from krypton.tls.material import Material, read_files
from krypton.uplink.types import Liveness

log = logging.getLogger("krypton.uplink")

CHUNK = 256 * 1024
_SUN_PATH_MAX = 100  # a Unix socket's path must fit sockaddr_un (108 bytes on Linux)


def tune_socket(sock: socket.socket, liveness: Liveness) -> None:
    """TCP keepalive and user timeout so the kernel gives up on a silent peer."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    idle = max(1, math.ceil(liveness.keepalive))
    interval = max(1, math.ceil(liveness.keepalive_timeout / 2))
    for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval), ("TCP_KEEPCNT", 2),
                        ("TCP_USER_TIMEOUT",
                         int((liveness.keepalive + liveness.keepalive_timeout) * 1000))):
        option = getattr(socket, name, None)
        if option is not None:  # Linux has them all; elsewhere keepalive's defaults
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, option, value)


def uplink_context(tls: TLSConfig, material: Material | None = None) -> ssl.SSLContext:
    """The gateway's client context: its certificate, the CA, ALPN h2, no host-name check
    (the Core is recognised by its SPIFFE ID instead). ``material`` defaults to ``tls``'s
    files."""
    if material is None:
        material = read_files(tls, "gateway.tls")
    ctx = material_client_context(material, min_version=tls.min_version)
    ctx.check_hostname = False  # verify_mode stays CERT_REQUIRED
    ctx.set_alpn_protocols(["h2"])
    return ctx


class CorePipe:
    """A local Unix socket for gRPC whose every connection is a checked TLS link to the Core."""

    def __init__(
        self, addresses: Sequence[tuple[str, int]], tls: TLSConfig, core_id: str, *,
        liveness: Liveness | None = None, material: Material | None = None,
    ) -> None:
        if not addresses:
            raise ValueError("the pipe needs at least one Core address")
        self._addresses = tuple(addresses)
        self._tls = tls
        self._ctx = uplink_context(tls, material)
        self._rules = peer_rules(tls, Usage.SERVER)
        self._core_id = core_id
        self._liveness = liveness or Liveness()
        self._good = 0  # index of the address that last worked
        self._good_record = ""  # which of its name's resolved addresses worked
        self._dir: Path | None = None
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.last_refusal = ""

    def rotate(self, material: Material) -> None:
        """Present and trust ``material`` from the next connection on (a new context:
        the old CAs are not kept); connections already made are left alone."""
        self._ctx = uplink_context(self._tls, material)

    async def start(self) -> str:
        """Listen; the gRPC target (``unix:<path>``)."""
        self._dir = Path(tempfile.mkdtemp(prefix="krypton-uplink-"))
        path = self._dir / "core.sock"
        if len(os.fsencode(path)) > _SUN_PATH_MAX:  # a long TMPDIR: fall back to /tmp
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = Path(tempfile.mkdtemp(prefix="krypton-uplink-", dir="/tmp"))
            path = self._dir / "core.sock"
        self._server = await asyncio.start_unix_server(self._serve, path=os.fspath(path))
        return f"unix:{path}"

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if server is not None:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    @property
    def current(self) -> str:
        """The Core address that last worked (or is tried first)."""
        host, port = self._addresses[self._good]
        return f"{host}:{port}"

    async def _serve(self, local_r: asyncio.StreamReader, local_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            remote = await self._connect()
            if remote is None:
                return
            remote_r, remote_w = remote
            up = asyncio.ensure_future(_copy(local_r, remote_w))
            down = asyncio.ensure_future(_copy(remote_r, local_w))
            try:
                # Either side ending ends both: gRPC must see a dead Core at once.
                await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
            finally:
                core_ended = down.done()
                up.cancel()
                down.cancel()
                if core_ended or self._server is None:
                    # A Core that is gone, or the pipe closing (its loop may end
                    # next, leaving a graceful close half done and the Core's
                    # calls open): drop the connection now.
                    remote_w.transport.abort()
                else:  # gRPC hung up: flush what it sent (bounded by the TCP user timeout)
                    remote_w.close()
        except asyncio.CancelledError:
            # Cancelled by close(): the connection is over. Ending quietly, since
            # asyncio's stream server reports a cancelled handler as an error.
            return
        finally:
            local_w.close()
            if task is not None:
                self._tasks.discard(task)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        n = len(self._addresses)
        for i in [(self._good + k) % n for k in range(n)]:
            host, port = self._addresses[i]
            records = await self._resolve(host, port)
            if i == self._good and self._good_record in records:  # the one that worked first
                records.remove(self._good_record)
                records.insert(0, self._good_record)
            for addr in records:
                got = await self._open(host, addr, port)
                if got is not None:
                    self._good, self._good_record = i, addr
                    return got
        return None

    async def _resolve(self, host: str, port: int) -> list[str]:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM)
        except OSError as e:
            log.debug("uplink: cannot resolve the Core's name %s: %s", host, e)
            return []
        return list(dict.fromkeys(str(info[4][0]) for info in infos))

    async def _open(self, host: str, addr: str, port: int
                    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(addr, port, ssl=self._ctx, server_hostname=host,
                                        limit=CHUNK),
                self._liveness.connect_timeout,
            )
        except (OSError, TimeoutError, ssl.SSLError) as e:
            log.debug("uplink: cannot reach the Core at %s:%d: %s", addr, port, e)
            return None
        sock = writer.get_extra_info("socket")
        if sock is not None:
            tune_socket(sock, self._liveness)
        sslobj = writer.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        try:
            peer = check_peer(der, self._rules)
            if peer.identity != self._core_id:
                raise PermissionDenied(f"{peer.identity} is not the Core ({self._core_id})")
        except PermissionDenied as e:
            writer.close()
            if e.message != self.last_refusal:
                log.error("uplink: refused the server at %s:%d: %s", addr, port, e.message)
            self.last_refusal = e.message
            return None
        self.last_refusal = ""
        return reader, writer


async def _copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(CHUNK):
            dst.write(data)
            await dst.drain()
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
        pass
