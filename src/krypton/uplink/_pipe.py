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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import ssl
import tempfile
from pathlib import Path

from krypton.config import TLSConfig
from krypton.errors import PermissionDenied
from krypton.tls.contexts import client_context, peer_rules
from krypton.tls.identity import Usage, check_peer

log = logging.getLogger("krypton.uplink")

CHUNK = 256 * 1024
# Like gRPC's own: a Core that accepts but never finishes the handshake keeps the
# channel CONNECTING (calls are bounded by their own deadlines meanwhile).
HANDSHAKE_TIMEOUT = 10.0
_SUN_PATH_MAX = 100  # a Unix socket's path must fit sockaddr_un (108 bytes on Linux)


def uplink_context(tls: TLSConfig) -> ssl.SSLContext:
    """The gateway's client context: its certificate, the CA, ALPN h2, no host-name check
    (the Core is recognised by its SPIFFE ID instead)."""
    ctx = client_context(tls.ca, tls.cert, tls.key, min_version=tls.min_version)
    ctx.check_hostname = False  # verify_mode stays CERT_REQUIRED
    ctx.set_alpn_protocols(["h2"])
    return ctx


class CorePipe:
    """A local Unix socket for gRPC whose every connection is a checked TLS link to the Core."""

    def __init__(
        self, host: str, port: int, tls: TLSConfig, core_id: str, *,
        timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        self._host, self._port = host, port
        self._ctx = uplink_context(tls)
        self._rules = peer_rules(tls, Usage.SERVER)
        self._core_id = core_id
        self._timeout = timeout
        self._dir: Path | None = None
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.last_refusal = ""

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

    async def _serve(self, local_r: asyncio.StreamReader, local_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            remote = await self._connect()
            if remote is None:
                return
            remote_r, remote_w = remote
            try:
                await asyncio.gather(_copy(local_r, remote_w), _copy(remote_r, local_w))
            finally:
                remote_w.close()
        finally:
            local_w.close()
            if task is not None:
                self._tasks.discard(task)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self._host, self._port, ssl=self._ctx,
                                        server_hostname=self._host, limit=CHUNK),
                self._timeout,
            )
        except (OSError, TimeoutError, ssl.SSLError) as e:
            log.debug("uplink: cannot reach the Core at %s:%d: %s", self._host, self._port, e)
            return None
        sslobj = writer.get_extra_info("ssl_object")
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        try:
            peer = check_peer(der, self._rules)
            if peer.identity != self._core_id:
                raise PermissionDenied(f"{peer.identity} is not the Core ({self._core_id})")
        except PermissionDenied as e:
            writer.close()
            if e.message != self.last_refusal:
                log.error("uplink: refused the server at %s:%d: %s", self._host, self._port,
                          e.message)
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
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if dst.can_write_eof():
                dst.write_eof()
            else:
                dst.close()
