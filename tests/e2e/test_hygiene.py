"""Issue 13, findings 6 and 7: no core dumps of a server process, private files.

Measured on the real processes (``krypton dev``, ``--workers``, a separate
``krypton core`` and ``krypton gateway``):

* ``/proc/PID/limits``: "Max core file size 0 0" (before: 0 / unlimited, so any
  process could raise it back and dump).
* The dumpable flag, read off ``/proc/PID/mem``'s owner: the kernel gives the
  files of a process that is not dumpable to root (uid and gid 0) instead of
  the process's effective uid and gid. The test starts the servers with an
  effective gid other than 0, so the observable works when the tests run as
  root too.
* The key ring's L3 keys sit on an anonymous page marked "dd" (left out of
  core dumps) and "lo" (locked) in ``/proc/PID/smaps``, holding non-zero bytes
  (before: no such mapping; the keys were on the ordinary heap).
* The dev directory's databases, their ``-wal`` and ``-shm`` files, the master
  key and the private keys are 0600, their folders 0700, even under umask 0
  (before: 0644 and a 0755 folder).
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.helpers.fixtures import Clusters, DevStacks

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

NOBODY_GID = 65534


@contextlib.contextmanager
def _spawned_with_other_gid() -> Iterator[None]:
    """Children started in the block run with a gid that is not 0 (as root:
    65534), so that /proc shows whether they cleared their dumpable flag. Real and
    effective gid both: an exec with them different makes a process non-dumpable
    by itself."""
    if os.getegid() != 0:
        yield
        return
    os.setresgid(NOBODY_GID, NOBODY_GID, 0)
    try:
        yield
    finally:
        os.setresgid(0, 0, 0)


def _core_limit(pid: int) -> tuple[str, str]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max core file size"):
            soft, hard = line.split()[4:6]
            return soft, hard
    raise AssertionError(f"no core limit in /proc/{pid}/limits")


def _dumpable(pid: int) -> bool:
    """False when the kernel hides the process's memory behind root's ownership."""
    st = os.stat(f"/proc/{pid}/mem")
    ids = Path(f"/proc/{pid}/status").read_text().splitlines()
    euid = int(next(x for x in ids if x.startswith("Uid:")).split()[2])
    egid = int(next(x for x in ids if x.startswith("Gid:")).split()[2])
    assert (euid, egid) != (0, 0), "the observable needs a non-root uid or gid"
    return (st.st_uid, st.st_gid) == (euid, egid)


def _no_dump_pages(pid: int) -> list[tuple[int, int, set[str]]]:
    """(start, end, flags) of the anonymous read-write mappings marked "dd"."""
    found = []
    text = Path(f"/proc/{pid}/smaps").read_text()
    for block in re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", text):
        head = block.split("\n", 1)[0].split()
        found_flags = re.search(r"VmFlags:(.*)", block)
        flags = set(found_flags.group(1).split()) if found_flags is not None else set()
        if len(head) == 5 and head[1].startswith("rw") and "dd" in flags:
            lo, hi = (int(x, 16) for x in head[0].split("-"))
            found.append((lo, hi, flags))
    return found


def _holds_keys_on_no_dump_pages(pid: int) -> bool:
    pages = _no_dump_pages(pid)
    if not pages or not all("lo" in flags for _, _, flags in pages):
        return False
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:  # root may: the test's uid
        for lo, hi, _ in pages:
            mem.seek(lo)
            if any(mem.read(hi - lo)):
                return True
    return False


def _children(pid: int) -> list[int]:
    cmd = ["ps", "-o", "pid=", "--ppid", str(pid)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_dev_stack_cannot_dump_core(start_dev: DevStacks) -> None:
    with _spawned_with_other_gid():
        srv = start_dev()
    pid = srv.proc.pid
    assert _core_limit(pid) == ("0", "0")
    assert not _dumpable(pid)
    with srv.connect() as sock:  # still serving
        sock.getpeercert()
    if os.geteuid() == 0:  # only root reads a non-dumpable process's memory
        assert _holds_keys_on_no_dump_pages(pid)
    else:
        assert _no_dump_pages(pid)


def test_every_worker_and_the_core_process_cannot_dump_core(start_dev: DevStacks) -> None:
    with _spawned_with_other_gid():
        srv = start_dev(args=("--workers", "2"))
    pids = [srv.proc.pid, *_children(srv.proc.pid)]
    assert len(pids) == 4  # the supervisor, the Core and two gateways
    assert [_core_limit(p) for p in pids] == [("0", "0")] * 4
    assert [_dumpable(p) for p in pids] == [False] * 4


def test_separate_core_and_gateway_cannot_dump_core(start_cluster: Clusters) -> None:
    with _spawned_with_other_gid():
        cluster = start_cluster()
    assert cluster.core is not None
    procs = [cluster.core, *cluster.running.values()]
    assert len(procs) == 2
    for p in procs:
        assert _core_limit(p.proc.pid) == ("0", "0"), p.name
        assert not _dumpable(p.proc.pid), p.name
        assert _no_dump_pages(p.proc.pid), p.name  # its key ring's page


def test_core_dumps_allowed_for_debugging_say_so(start_dev: DevStacks) -> None:
    with _spawned_with_other_gid():
        srv = start_dev(env={"KRYPTON_GATEWAY_ALLOW_CORE_DUMPS": "true"})
    assert _core_limit(srv.proc.pid)[1] != "0"
    assert _dumpable(srv.proc.pid)
    assert "WARNING" in srv.log() and "core dumps ALLOWED" in srv.log()


def test_databases_keys_and_folders_private_under_any_umask(start_dev: DevStacks) -> None:
    old = os.umask(0)
    try:
        srv = start_dev()
    finally:
        os.umask(old)
    with srv.connect() as sock:  # a request so that both stores have written their WAL
        sock.getpeercert()
    root = srv.layout.root
    private = [
        root / name
        for db in ("gateway.db", "core.db")
        for name in (db, f"{db}-wal", f"{db}-shm")
    ]
    private += [root / "master.key", *sorted(srv.pki.glob("*-key.pem"))]
    assert all(p.exists() for p in private), [p for p in private if not p.exists()]
    assert {str(p.relative_to(root)): oct(_mode(p)) for p in private} == {
        str(p.relative_to(root)): "0o600" for p in private
    }
    assert {oct(_mode(root)), oct(_mode(srv.pki))} == {"0o700"}
