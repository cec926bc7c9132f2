"""A stand-in for SPIRE's agent: the SPIFFE Workload API, served for tests.

SPIRE cannot be installed here, so this serves the official Workload API proto
(the ``SpiffeWorkloadAPI`` service shipped inside py-spiffe,
``spiffe._proto.workload_pb2_grpc``) on a Unix socket. Only
``FetchX509SVID`` is implemented — the stream a workload holds open to receive
its X.509-SVID and bundle, and every later one. As the specification asks,
a call without the ``workload.spiffe.io: true`` metadata is refused
(``INVALID_ARGUMENT``).

SVIDs are issued from a CA the test gives (the dev CA) for one SPIFFE ID;
:meth:`WorkloadAPI.rotate` issues a new one and pushes it down every open
stream, as SPIRE does at half an SVID's lifetime. :meth:`fail_streams` ends
the open streams with a status py-spiffe does not retry, so its
``X509Source`` closes (what a gateway must recover from).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from pathlib import Path

import grpc
from cryptography.hazmat.primitives import serialization
from spiffe._proto import workload_pb2 as pb
from spiffe._proto import workload_pb2_grpc as pb_grpc

from krypton.pki.certs import Certificate, PrivateKey, issue_leaf
from krypton.pki.dev import LOOPBACK_DNS, LOOPBACK_IPS

HEADER = ("workload.spiffe.io", "true")
_DER = serialization.Encoding.DER


class _Servicer(pb_grpc.SpiffeWorkloadAPIServicer):
    def __init__(self, api: WorkloadAPI) -> None:
        self.api = api

    def FetchX509SVID(self, request: pb.X509SVIDRequest, context: grpc.ServicerContext
                      ) -> Iterator[pb.X509SVIDResponse]:
        if HEADER not in tuple(context.invocation_metadata() or ()):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "security header missing")
        api = self.api
        sent = -1
        with api.changed:
            api.streams += 1
        try:
            while context.is_active():
                with api.changed:
                    api.changed.wait_for(api.news(sent), 0.2)
                    if api.failing:
                        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "told to fail")
                    if api.version == sent:
                        continue
                    sent, response = api.version, api.response
                yield response
        finally:
            with api.changed:
                api.streams -= 1


class WorkloadAPI:
    """The stand-in server (see the module docstring); a context manager."""

    def __init__(self, socket: Path, ca: tuple[Certificate, PrivateKey], spiffe_id: str, *,
                 bundle: Sequence[Certificate] | None = None, lifetime: int = 3600) -> None:
        self.socket = socket
        self.ca = ca
        self.spiffe_id = spiffe_id
        self.bundle = list(bundle) if bundle is not None else [ca[0]]
        self.lifetime = lifetime
        self.changed = threading.Condition()
        self.version = 0
        self.streams = 0
        self.failing = False
        self.serial = 0
        self.response = pb.X509SVIDResponse()
        self._server: grpc.Server | None = None
        self.rotate()

    def news(self, sent: int) -> Callable[[], bool]:
        """Whether there is something for a stream that last sent version ``sent``."""
        return lambda: self.version != sent or self.failing

    @property
    def address(self) -> str:
        return f"unix://{self.socket}"

    def rotate(self, *, bundle: Sequence[Certificate] | None = None) -> int:
        """Issue a new SVID (and, if given, a new bundle) and push it; its serial."""
        cert, key = issue_leaf(self.ca[0], self.ca[1], common_name="svid",
                               spiffe_id=self.spiffe_id, dns=LOOPBACK_DNS, ips=LOOPBACK_IPS,
                               server=True, client=True, seconds=self.lifetime)
        if bundle is not None:
            self.bundle = list(bundle)
        svid = pb.X509SVID(
            spiffe_id=self.spiffe_id,
            x509_svid=cert.public_bytes(_DER),
            x509_svid_key=key.private_bytes(_DER, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()),
            bundle=b"".join(c.public_bytes(_DER) for c in self.bundle),
        )
        with self.changed:
            self.response = pb.X509SVIDResponse(svids=[svid])
            self.serial = cert.serial_number
            self.version += 1
            self.changed.notify_all()
        return self.serial

    def fail_streams(self) -> None:
        """End the open streams with INVALID_ARGUMENT (py-spiffe closes its source)."""
        with self.changed:
            self.failing = True
            self.changed.notify_all()

    def heal(self) -> None:
        with self.changed:
            self.failing = False
            self.changed.notify_all()

    def start(self) -> WorkloadAPI:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        pb_grpc.add_SpiffeWorkloadAPIServicer_to_server(  # type: ignore[no-untyped-call]
            _Servicer(self), server)
        server.add_insecure_port(f"unix:{self.socket}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(0).wait(5)
            self._server = None

    def __enter__(self) -> WorkloadAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
