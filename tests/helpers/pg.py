"""A real, throw-away PostgreSQL server for tests.

How this works
--------------
:func:`postgres_server` finds the server binaries under
``/usr/lib/postgresql/<version>/bin`` (the newest version there; ``.ci/run``
installs the Debian ``postgresql`` package when they are missing), runs
``initdb`` into a fresh directory in ``/tmp`` and starts ``postgres`` on a
free 127.0.0.1 port with its Unix socket in that directory too. Durability
settings are off (``fsync``, ``synchronous_commit``, ``full_page_writes``):
the server is thrown away, and this keeps start-up at about a second.

PostgreSQL refuses to run as root. When the tests run as root (CI does),
both programs run as the ``postgres`` system user (the Debian package makes
it) through ``subprocess.Popen(user=..., group=...)``, which execs the
program itself, so the process we hold is the postmaster and a signal to it
stops the whole server. The directory is ``chown``-ed to that user; it lives
directly in ``/tmp`` because pytest's own temporary directories are private
to root.

Missing binaries or a missing ``postgres`` user are an error with a message
that says what to install, never a skip: the registry's PostgreSQL backend
must be tested wherever the suite runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from tests.helpers.servers import free_port

_PR_SET_PDEATHSIG = 1
PG_USER = "postgres"  # the database superuser initdb makes, and (as root) the OS user


class PostgresUnavailable(RuntimeError):
    """The machine cannot run a PostgreSQL server for the tests."""


def pg_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/*/bin`` that holds ``initdb`` and ``postgres``."""
    found = [
        Path(d)
        for d in glob.glob("/usr/lib/postgresql/*/bin")
        if (Path(d) / "initdb").exists() and (Path(d) / "postgres").exists()
    ]
    if not found:
        raise PostgresUnavailable(
            "PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin/initdb): "
            "install the Debian package 'postgresql' (.ci/run does this)"
        )
    return max(found, key=lambda p: _version_key(p.parent.name))


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(x) for x in name.split(".") if x.isdigit())


def _run_as() -> dict[str, Any]:
    """Popen arguments that drop root to the postgres user (nothing otherwise)."""
    if os.geteuid() != 0:
        return {}
    try:
        pw = pwd.getpwnam(PG_USER)
    except KeyError:
        raise PostgresUnavailable(
            f"running as root and there is no {PG_USER!r} user to run PostgreSQL as "
            "(the Debian 'postgresql' package creates it; .ci/run checks for it)"
        ) from None
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def _die_with_parent() -> None:
    """In the child, before exec: SIGQUIT (immediate shutdown) when pytest dies,
    so a killed test run leaves no server behind. Runs after the switch to the
    postgres user, which would otherwise clear the setting."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGQUIT)


@dataclass
class PgServer:
    """A running server; ``url(db)`` names a database on it."""

    bindir: Path
    root: Path
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path
    host: str = "127.0.0.1"
    startup_seconds: float = 0.0
    _created: list[str] = field(default_factory=list)
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{PG_USER}@{self.host}:{self.port}/{dbname}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; returns its URL."""
        name = f"{prefix}_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self._created.append(name)
        return self.url(name)

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then SIGKILL if it does not stop in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _check(cmd: list[str], what: str, *, cwd: Path, log: Path, timeout: float = 60) -> None:
    with log.open("ab") as out:
        rc = subprocess.run(  # noqa: PLW1510 (checked below, with the log in the message)
            cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, **_run_as()
        ).returncode
    if rc != 0:
        raise PostgresUnavailable(f"{what} failed (exit {rc}):\n{log.read_text(errors='replace')}")


@contextlib.contextmanager
def postgres_server(timeout: float = 30.0) -> Iterator[PgServer]:
    """Start a fresh server; stop it and delete its files on exit (kill it on failure)."""
    bindir = pg_bindir()
    run_as = _run_as()
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="krypton-pg-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        data = root / "data"
        log_path = root / "server.log"
        if run_as:
            os.chown(root, run_as["user"], run_as["group"])
        _check(
            [
                str(bindir / "initdb"), "-D", str(data), "-U", PG_USER, "-A", "trust",
                "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
            ],
            "initdb", cwd=root, log=log_path,
        )  # fmt: skip
        port = free_port()
        with log_path.open("ab") as out:
            proc = subprocess.Popen(
                [
                    str(bindir / "postgres"), "-D", str(data), "-p", str(port),
                    "-k", str(root), "-c", "listen_addresses=127.0.0.1",
                    "-c", "fsync=off", "-c", "synchronous_commit=off",
                    "-c", "full_page_writes=off", "-c", "max_connections=200",
                ],
                cwd=root, stdout=out, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509 (no threads of ours run here; it only calls prctl)
                **run_as,
            )  # fmt: skip
        server = PgServer(bindir, root, port, proc, log_path)
        _wait_ready(server, started + timeout)
        server.startup_seconds = time.monotonic() - started
        yield server
        server.stop()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


def _wait_ready(server: PgServer, deadline: float) -> None:
    isready = [
        str(server.bindir / "pg_isready"), "-q", "-h", server.host,
        "-p", str(server.port), "-U", PG_USER, "-d", "postgres",
    ]  # fmt: skip
    while True:
        if server.proc.poll() is not None:
            raise PostgresUnavailable(
                f"postgres exited with {server.proc.returncode} at start-up:\n{server.log()}"
            )
        if subprocess.run(isready, check=False).returncode == 0:
            return
        if time.monotonic() > deadline:
            raise PostgresUnavailable(f"postgres did not become ready in time:\n{server.log()}")
        time.sleep(0.05)
