"""A blocking KMIP client: one TLS connection, one request at a time."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from types import TracebackType

from krypton.errors import GeneralFailure, InvalidMessage
from krypton.kmip import client_messages as cm
from krypton.kmip.versions import ProtocolVersion
from krypton.ttlv.codec import decode, encode
from krypton.ttlv.enums import ResultStatus
from krypton.ttlv.framing import _HEADER as _FRAME
from krypton.ttlv.framing import HEADER_SIZE
from krypton.ttlv.item import Item

DEFAULT_VERSION = ProtocolVersion(1, 4)


def tls_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


class KmipError(GeneralFailure):
    """The server answered a batch item with a failure."""


class KmipClient:
    def __init__(
        self,
        host: str,
        port: int,
        context: ssl.SSLContext,
        *,
        version: ProtocolVersion = DEFAULT_VERSION,
        timeout: float = 10.0,
        server_hostname: str = "localhost",
    ) -> None:
        self.host, self.port, self.context = host, port, context
        self.version, self.timeout, self.server_hostname = version, timeout, server_hostname
        self.sock: ssl.SSLSocket | None = None

    def connect(self, session: ssl.SSLSession | None = None) -> KmipClient:
        raw = socket.create_connection((self.host, self.port), timeout=self.timeout)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.sock = self.context.wrap_socket(
                raw, server_hostname=self.server_hostname, session=session
            )
        except BaseException:
            raw.close()
            raise
        return self

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None

    def __enter__(self) -> KmipClient:
        return self if self.sock is not None else self.connect()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- transport ------------------------------------------------------------------
    def roundtrip(self, data: bytes) -> bytes:
        if self.sock is None:
            self.connect()
        assert self.sock is not None
        self.sock.sendall(data)
        header = self._recv(HEADER_SIZE)
        _, length = _FRAME.unpack(header)
        return header + self._recv(length)

    def _recv(self, n: int) -> bytes:
        assert self.sock is not None
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self.sock.recv_into(view[got:])
            if k == 0:
                raise InvalidMessage(f"connection closed after {got} of {n} bytes")
            got += k
        return bytes(buf)

    def call(self, items: list[Item]) -> cm.Response:
        message = cm.request_message(self.version, items)
        return cm.parse_response(decode(self.roundtrip(encode(message))))

    def call_ok(self, items: list[Item]) -> cm.Response:
        response = self.call(items)
        for item in response.items:
            if item.status is not ResultStatus.SUCCESS:
                reason = item.reason.name if item.reason is not None else "?"
                raise KmipError(f"{reason}: {item.message}")
        return response

    # -- operations -------------------------------------------------------------------
    def create(self, length: int = 256, *, name: str | None = None) -> str:
        r = self.call_ok([cm.create_item(self.version, cm.aes_attributes(length, name=name))])
        assert r.items[0].payload is not None
        return cm.unique_identifier(r.items[0].payload)

    def get(self, uid: str) -> bytes:
        r = self.call_ok([cm.get_item(uid)])
        assert r.items[0].payload is not None
        return cm.key_material(r.items[0].payload)

    def create_get(self, length: int = 256) -> tuple[str, bytes]:
        r = self.call_ok(
            [
                cm.create_item(self.version, cm.aes_attributes(length), b"\x01"),
                cm.get_item(None, b"\x02"),
            ]
        )
        assert r.items[1].payload is not None
        return cm.unique_identifier(r.items[1].payload), cm.key_material(r.items[1].payload)
