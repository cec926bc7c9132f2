"""The admin endpoint: a small HTTP(S) server on a thread of its own.

How this works
--------------
One :class:`AdminServer` per process (per gateway worker) serves

* ``GET /healthz`` — 200 while the process works (this thread answering is it);
* ``GET /readyz`` — 200 when every readiness check (:mod:`krypton.admin.checks`)
  finds nothing missing, else 503; a JSON body names what is missing;
* ``GET /metrics`` — the Prometheus text format (:mod:`krypton.metrics.export`);
* ``GET /`` — a status page for people (:mod:`krypton.admin.page`) that polls
  ``GET /status.json``.

It runs on its own thread with the standard library's ``HTTPServer``, one
request at a time (nothing here needs more, and its reads of the vault use
one connection), never on the event loop that serves KMIP: a scrape costs
the hot path only the GIL time its reading of counters takes. What it reads
comes from a :class:`Source`, which the gateway and the Core implement. With
``cert`` and ``key`` it speaks HTTPS (the TLS handshake runs on this thread,
bounded by ``TIMEOUT``). With a :class:`~krypton.admin.peers.WorkerSlot` it
answers for every worker of its gateway (:mod:`krypton.admin.peers`).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from krypton.admin.checks import Check, evaluate, missing
from krypton.admin.page import PAGE
from krypton.admin.peers import PeerServer, WorkerSlot, gather
from krypton.config import AdminConfig
from krypton.errors import ConfigError
from krypton.metrics.export import CONTENT_TYPE, render
from krypton.metrics.meter import Family, merge

log = logging.getLogger("krypton.admin")

TIMEOUT = 5.0  # seconds a client has to send its request (and finish a TLS handshake)


class Source(Protocol):
    """What a process shows on its admin endpoint (called on the admin thread)."""

    def families(self) -> list[Family]: ...

    def status(self) -> dict[str, Any]: ...

    @property
    def checks(self) -> Sequence[Check]: ...


def _json(value: Any) -> bytes:
    return (json.dumps(value, indent=1, sort_keys=True) + "\n").encode()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _HTTPServer
    timeout = TIMEOUT
    protocol_version = "HTTP/1.0"
    server_version = "krypton-admin"
    sys_version = ""

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, *, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        route = _ROUTES.get(path)
        if route is None:
            self._send(404, "text/plain; charset=utf-8", b"not found\n", body)
            return
        try:
            code, ctype, content = route(self.server.admin)
        except Exception:
            log.exception("admin: %s failed", path)
            code, ctype, content = 500, "text/plain; charset=utf-8", b"internal error\n"
        self._send(code, ctype, content, body)

    def _send(self, code: int, ctype: str, content: bytes, body: bool) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(content)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if body:
            self.wfile.write(content)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("admin: " + format, *args)


class _HTTPServer(http.server.HTTPServer):
    def __init__(self, admin: AdminServer, family: socket.AddressFamily,
                 address: tuple[str, int], tls: ssl.SSLContext | None, reuse_port: bool) -> None:
        self.admin = admin
        self.tls = tls
        self.address_family = family
        self.allow_reuse_port = reuse_port
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(TIMEOUT)
        if self.tls is not None:
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError) as exc:
                log.debug("admin: TLS handshake with %s failed: %r", client_address, exc)
                return
        try:
            super().finish_request(request, client_address)
        finally:
            if self.tls is not None:
                with contextlib.suppress(OSError):
                    request.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("admin: request from %s failed", client_address, exc_info=True)


class AdminServer:
    """The admin endpoint of one process (``setting`` names its config, for errors)."""

    def __init__(self, config: AdminConfig, source: Source, *, setting: str,
                 slot: WorkerSlot | None = None) -> None:
        address = config.address
        assert address is not None, "the admin endpoint is off"
        self.config = config
        self.source = source
        self.setting = setting
        self.slot = slot
        self._address = address
        self._http: _HTTPServer | None = None
        self._peer: PeerServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind (a ConfigError naming the setting if that fails) and serve."""
        host, port = self._address
        tls = None
        if self.config.cert is not None and self.config.key is not None:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            try:
                tls.load_cert_chain(self.config.cert, self.config.key)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"{self.setting}.cert: cannot load it with its key: "
                                  f"{exc.__class__.__name__}") from None
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            self._http = _HTTPServer(self, family, (host, port), tls,
                                     reuse_port=self.slot is not None)
        except OSError as exc:
            raise ConfigError(f"{self.setting}.listen: cannot listen on {self.config.listen}: "
                              f"{exc.strerror or exc}") from None
        if self.slot is not None:
            self._peer = PeerServer(self.slot, {
                "families": lambda: [f.to_json() for f in self.source.families()],
                "status": self.source.status,
                "ready": lambda: evaluate(self.source.checks),
            })  # fmt: skip
            self._peer.start()
        self._thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.25},
            name="admin", daemon=True,
        )  # fmt: skip
        self._thread.start()
        log.info("admin endpoint on %s://%s:%d", "https" if tls else "http", host, self.port)

    @property
    def port(self) -> int:
        assert self._http is not None
        return int(self._http.server_address[1])

    def close(self) -> None:
        """Stop serving (blocks up to a poll interval: call it off the event loop)."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._peer is not None:
            self._peer.close()
            self._peer = None

    # -- what the routes answer (on the admin thread) --------------------------------
    def families(self) -> list[Family]:
        own = self.source.families()
        if self.slot is None:
            return own
        parts = [(self.slot.index, own)]
        parts += [(i, [Family.from_json(f) for f in fs]) for i, fs in gather(self.slot, "families")]
        return merge(f.labelled("worker", str(i)) for i, fs in sorted(parts) for f in fs)

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        own = evaluate(self.source.checks)
        if self.slot is None:
            lacking = missing(own)
            return not lacking, {"ready": not lacking, "missing": lacking, "checks": own}
        workers = {str(self.slot.index): own}
        workers.update((str(i), r) for i, r in gather(self.slot, "ready"))
        for n in range(self.slot.count):
            workers.setdefault(str(n), {"worker": ["it did not answer"]})
        lacking = [f"worker {w}: {p}" for w, r in sorted(workers.items()) for p in missing(r)]
        return not lacking, {"ready": not lacking, "missing": lacking, "workers": workers}

    def statuses(self) -> list[dict[str, Any]]:
        own = self.source.status()
        if self.slot is None:
            return [own]
        return [own, *(s for _, s in sorted(gather(self.slot, "status")))]


Answer = tuple[int, str, bytes]
_JSON = "application/json"


def _healthz(admin: AdminServer) -> Answer:
    return 200, _JSON, _json({"status": "ok"})


def _readyz(admin: AdminServer) -> Answer:
    ready, body = admin.readiness()
    return (200 if ready else 503), _JSON, _json(body)


def _metrics(admin: AdminServer) -> Answer:
    return 200, CONTENT_TYPE, render(admin.families)


def _status(admin: AdminServer) -> Answer:
    return 200, _JSON, _json({"workers": admin.statuses()})


def _page(admin: AdminServer) -> Answer:
    return 200, "text/html; charset=utf-8", PAGE


_ROUTES: dict[str, Callable[[AdminServer], Answer]] = {
    "/healthz": _healthz,
    "/readyz": _readyz,
    "/metrics": _metrics,
    "/status.json": _status,
    "/": _page,
}
