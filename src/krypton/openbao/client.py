"""A small, synchronous OpenBao HTTP API client: keep-alive connections, TLS,
a token or AppRole login.

How this works
--------------
:class:`OpenBaoClient` speaks OpenBao's JSON HTTP API (``/v1/<path>``) with
``http.client``. Connections are kept alive and reused: an idle pool of up to
``pool`` connections, taken by whichever thread sends a request (a request
never shares a connection with another in flight, so threads may call it
concurrently). A reused connection the server closed in the meantime fails on
its first use; the request is then sent once more on a fresh connection
(every call here is safe to repeat: reads, Transit encrypt/decrypt and KV
writes of one version).

Authentication is a token (``X-Vault-Token``) given as is, or an AppRole login
(``auth/<mount>/login`` with ``role_id`` and ``secret_id``) made on first use
and again when the token it gave is refused (403) or its lease is about to
end. Neither the token nor anything sent or received is ever logged or put
in an exception message.

Every failure is an :class:`~krypton.errors.OpenBaoError`: ``http_status`` is the
HTTP status, or None when OpenBao did not answer (refused connection, TLS,
timeout). Callers map it into their own errors (``krypton.roots`` into
``RootUnavailable`` / ``RootRefused``).
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from krypton.errors import OpenBaoError

DEFAULT_TIMEOUT = 5.0
DEFAULT_POOL = 8
_RELOGIN_BEFORE = 30.0  # seconds before an AppRole token's lease ends
_ERR_MAX = 300  # characters of OpenBao's error text kept in a message
_RETRYABLE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
              http.client.CannotSendRequest, http.client.BadStatusLine)

Json = dict[str, Any]


class OpenBaoClient:
    """One OpenBao server (``address``: ``http://host:port`` or ``https://...``)."""

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        role_id: str | None = None,
        secret_id: str | None = None,
        approle_mount: str = "approle",
        ca: Path | None = None,
        namespace: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        pool: int = DEFAULT_POOL,
    ) -> None:
        parts = urlsplit(address.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise OpenBaoError(f"OpenBao address {address!r}: expected http(s)://host:port")
        if token is None and not (role_id and secret_id):
            raise OpenBaoError("OpenBao: no token and no AppRole role_id/secret_id given")
        self.address = f"{parts.scheme}://{parts.netloc}"
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self._ssl = ssl.create_default_context(cafile=str(ca) if ca else None)
        self._token = token
        self._approle = (role_id, secret_id) if token is None else None
        self._approle_mount = approle_mount.strip("/")
        self._token_until = float("inf")
        self._namespace = namespace
        self.timeout = timeout
        self._pool_max = pool
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._login_lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"OpenBaoClient({self.address})"

    # -- the API -------------------------------------------------------------------
    def get(self, path: str) -> Json:
        return self.request("GET", path)

    def post(self, path: str, body: Mapping[str, Any] | None = None) -> Json:
        return self.request("POST", path, body)

    def delete(self, path: str) -> Json:
        return self.request("DELETE", path)

    def list(self, path: str) -> Json:
        return self.request("LIST", path)

    def request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Json:
        """``method /v1/<path>`` with a JSON ``body``; the JSON answer ({} if none)."""
        token = self._current_token()
        status, answer = self._send(method, path, body, token)
        if status == 403 and self._approle is not None:
            self._invalidate(token)  # an expired or revoked login: log in once more
            status, answer = self._send(method, path, body, self._current_token())
        if status >= 400:
            raise OpenBaoError(
                f"OpenBao {method} {path}: HTTP {status}{_errors_of(answer)}", status
            )
        return answer

    def health(self) -> Json:
        """``sys/health`` (no token needed); OpenBaoError if it does not answer 200."""
        status, answer = self._send("GET", "sys/health", None, None)
        if status != 200:
            raise OpenBaoError(f"OpenBao is not serving (sys/health: HTTP {status})", status)
        return answer

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # -- authentication ---------------------------------------------------------------
    def _current_token(self) -> str:
        token = self._token
        if token is not None and time.monotonic() < self._token_until:
            return token
        return self._login()

    def _invalidate(self, token: str) -> None:
        with self._login_lock:
            if self._token == token:
                self._token = None

    def _login(self) -> str:
        with self._login_lock:
            token = self._token
            if token is not None and time.monotonic() < self._token_until:
                return token
            if self._approle is None:
                raise OpenBaoError("OpenBao: the configured token was refused", 403)
            role_id, secret_id = self._approle
            path = f"auth/{self._approle_mount}/login"
            status, answer = self._send(
                "POST", path, {"role_id": role_id, "secret_id": secret_id}, None
            )
            auth = answer.get("auth") if status == 200 else None
            if not isinstance(auth, dict) or not isinstance(auth.get("client_token"), str):
                raise OpenBaoError(
                    f"OpenBao AppRole login ({path}) failed: HTTP {status}{_errors_of(answer)}",
                    status,
                )
            lease = auth.get("lease_duration") or 0
            self._token = token = str(auth["client_token"])
            self._token_until = (
                time.monotonic() + max(float(lease) - _RELOGIN_BEFORE, float(lease) / 2)
                if isinstance(lease, int | float) and lease > 0 else float("inf")
            )
            return token

    # -- connections -------------------------------------------------------------------
    def _connect(self) -> http.client.HTTPConnection:
        if self._ssl is not None:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout, context=self._ssl
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)

    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._closed:
                raise OpenBaoError("OpenBao client is closed")
            if self._idle:
                return self._idle.pop(), True
        return self._connect(), False

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self._pool_max:
                self._idle.append(conn)
                return
        conn.close()

    def _send(
        self, method: str, path: str, body: Mapping[str, Any] | None, token: str | None
    ) -> tuple[int, Json]:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        if token is not None:
            headers["X-Vault-Token"] = token
        if self._namespace:
            headers["X-Vault-Namespace"] = self._namespace
        url = "/v1/" + path.lstrip("/")
        for attempt in (0, 1):
            conn, reused = self._take()
            try:
                conn.request(method, url, body=payload, headers=headers)
                response = conn.getresponse()
                raw = response.read()
                status = response.status
            except _RETRYABLE:
                conn.close()
                if reused and attempt == 0:
                    continue  # the server closed an idle connection: once more, fresh
                raise OpenBaoError(
                    f"OpenBao at {self.address} closed the connection ({method} {path})"
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                raise OpenBaoError(
                    f"OpenBao at {self.address} is unreachable ({method} {path}): "
                    f"{type(exc).__name__}: {exc}"
                ) from None
            if response.will_close:
                conn.close()
            else:
                self._give_back(conn)
            return status, _parse(raw)
        raise AssertionError("unreachable")  # pragma: no cover


def _parse(raw: bytes) -> Json:
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return {"errors": ["(an answer that is not JSON)"]}
    return value if isinstance(value, dict) else {}


def _errors_of(answer: Json) -> str:
    errors = answer.get("errors")
    if not isinstance(errors, list) or not errors:
        return ""
    text = "; ".join(str(e) for e in errors)
    return ": " + (text if len(text) <= _ERR_MAX else text[:_ERR_MAX] + "…")
