#!/usr/bin/env python3
"""Outbox drain after a partition: how fast a gateway's backlog reaches the Core.

    .venv/bin/python scripts/scale_drain.py --keys 50000
    .venv/bin/python scripts/scale_drain.py --keys 50000 --registry postgresql://...

Lays out a Core and one gateway as separate processes in a fresh directory
(``tests/helpers/cluster.py``, the same layout the end-to-end tests use; the
Core's registry is SQLite unless ``--registry`` names a PostgreSQL URL), starts
both, kills the Core, makes ``--keys`` keys at the gateway with
``krypton bench --op create`` (16 connections) while it is away, starts the
Core again and polls the gateway's vault (read-only) until its outbox is
empty. Prints the drain rate (keys sent from the first one acknowledged to
the last, over that time) and the CPU each process used meanwhile (from the
first acknowledgement on: the Core's start-up is left out), per second and
per key. With ``--py-spy PATH`` both processes are recorded by py-spy while
they drain (raw collapsed stacks in ``--profiles``/runN/{core,gateway}.txt).
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.helpers.cluster: the processes, as the e2e tests run them

from tests.helpers.cluster import make_cluster  # noqa: E402

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_times(pid: int) -> tuple[float, float]:
    """The process's user and system CPU seconds so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK  # utime, stime


def cpu_seconds(pid: int) -> float:
    return sum(cpu_times(pid))


def waiting(vault: Path) -> int:
    conn = sqlite3.connect(f"file:{vault}?mode=ro", uri=True, timeout=5.0)
    try:
        return int(conn.execute("SELECT count(*) FROM keys WHERE synced = 0").fetchone()[0])
    finally:
        conn.close()


def make_keys(pki: Path, port: int, keys: int) -> None:
    cmd = [sys.executable, "-m", "krypton.cli.main", "bench", "--pki", str(pki),
           "--port", str(port), "--op", "create", "-c", "16", "--count", str(keys), "--quiet"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def drain(root: Path, keys: int, registry: str | None, timeout: float,
          spy: tuple[str, Path, str] | None = None) -> dict[str, float]:
    cluster = make_cluster(root, registry=registry)
    try:
        cluster.start_core()
        (gateway,) = cluster.start_gateways()
        spec = next(iter(cluster.gateways.values()))
        cluster.kill_core()
        made = time.monotonic()
        make_keys(cluster.layout.pki, spec.port, keys)
        backlog = waiting(spec.vault)
        print(f"{backlog:,} keys waiting ({time.monotonic() - made:.1f} s to make them)",
              file=sys.stderr)
        healed = time.monotonic()
        core = cluster.start_core()
        pids = (core.proc.pid, gateway.proc.pid)
        names = ("core", "gateway")
        spies = [_spy(spy, pid, n) for pid, n in zip(pids, names, strict=True)] if spy else []
        cpu0 = [cpu_seconds(pid) for pid in pids]
        sys0 = cpu_times(gateway.proc.pid)[1]
        first = left_at_first = 0.0
        deadline = healed + timeout
        while (left := waiting(spec.vault)) > 0:
            if not first and left < backlog:
                first, left_at_first = time.monotonic(), left
                cpu0 = [cpu_seconds(pid) for pid in pids]  # the Core's start-up left out
                sys0 = cpu_times(gateway.proc.pid)[1]
            if time.monotonic() > deadline:
                raise SystemExit(f"outbox not empty after {timeout:g} s ({left:,} left)")
            time.sleep(0.005)
        done = time.monotonic()
        cpu1 = [cpu_seconds(pid) for pid in pids]
        sys1 = cpu_times(gateway.proc.pid)[1]
        load = os.getloadavg()[0]
        for proc in spies:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
        if not first:  # drained between two polls
            first, left_at_first = healed, backlog
        took = max(done - first, 1e-6)
        return {
            "keys": backlog, "rate": left_at_first / took, "drain_s": done - first,
            "heal_to_first_s": first - healed,
            "core_cpu": (cpu1[0] - cpu0[0]) / took, "gateway_cpu": (cpu1[1] - cpu0[1]) / took,
            "core_us": (cpu1[0] - cpu0[0]) / max(left_at_first, 1) * 1e6,
            "gateway_us": (cpu1[1] - cpu0[1]) / max(left_at_first, 1) * 1e6,
            "gateway_sys_us": (sys1 - sys0) / max(left_at_first, 1) * 1e6, "load": load,
        }  # fmt: skip
    finally:
        cluster.stop()


def _spy(spy: tuple[str, Path, str], pid: int, name: str) -> subprocess.Popen[bytes]:
    """py-spy recording ``pid`` (every thread; ``mode``: "--idle" waits too, "--gil"
    only the thread holding the GIL) to a raw profile."""
    exe, out, mode = spy
    out.mkdir(parents=True, exist_ok=True)
    cmd = [exe, "record", "--pid", str(pid), "--rate", "250", "--format", "raw",
           "--output", str(out / f"{name}.txt"), *([mode] if mode else [])]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keys", type=int, default=50_000)
    ap.add_argument("--registry", default=None, help="PostgreSQL URL (default: SQLite)")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir)")
    ap.add_argument("--py-spy", default=None, help="py-spy executable: record both processes")
    ap.add_argument("--profiles", type=Path, default=Path("drain-profiles"),
                    help="where py-spy's raw profiles go (run N: a subdirectory)")
    ap.add_argument("--idle", action="store_true", help="py-spy samples waiting threads too")
    ap.add_argument("--gil", action="store_true",
                    help="py-spy samples only the thread holding the GIL")
    args = ap.parse_args(argv)
    for n in range(args.runs):
        spy = (None if args.py_spy is None
               else (args.py_spy, args.profiles / f"run{n + 1}",
                     "--idle" if args.idle else "--gil" if args.gil else ""))
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            r = drain(Path(tmp), args.keys, args.registry, args.timeout, spy)
        print(f"run {n + 1}: {r['keys']:,} keys drained at {r['rate']:,.0f} keys/s "
              f"({r['drain_s']:.2f} s from the first acknowledged; first after "
              f"{r['heal_to_first_s']:.2f} s); CPU meanwhile: Core {r['core_cpu']:.2f}, "
              f"gateway {r['gateway_cpu']:.2f} cores; per key: Core {r['core_us']:.0f} µs, "
              f"gateway {r['gateway_us']:.0f} µs (system {r['gateway_sys_us']:.0f}); "
              f"load average {r['load']:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
