#!/usr/bin/env python3
"""Outbox drain after a partition: how fast a gateway's backlog reaches the Core.

    .venv/bin/python scripts/scale_drain.py --keys 50000
    .venv/bin/python scripts/scale_drain.py --keys 50000 --registry postgresql://...
    .venv/bin/python scripts/scale_drain.py --keys 50000 --registry postgresql  # throw-away
    .venv/bin/python scripts/scale_drain.py --keys 12500 --gateways 4   # four drain at once

Lays out a Core and one gateway as separate processes in a fresh directory
(``tests/helpers/cluster.py``, the same layout the end-to-end tests use; the
Core's registry is SQLite unless ``--registry`` names a PostgreSQL URL), starts
both, kills the Core, makes ``--keys`` keys at the gateway with
``krypton bench --op create`` (16 connections) while it is away, starts the
Core again and polls the gateway's vault (read-only) until its outbox is
empty. Prints the drain rate (keys sent from the first one acknowledged to
the last, over that time) and the CPU each process used meanwhile (from the
first acknowledgement on: the Core's start-up is left out), per second and
per key. With ``--gateways N``, N gateways each make ``--keys`` keys and
drain into the Core together (the Core's SyncKeys ingest with N streams; the
gateways' CPU is their sum). With ``--py-spy PATH`` the processes are recorded by py-spy while
they drain (raw collapsed stacks in ``--profiles``/runN/{core,gateway}.txt).
"""

from __future__ import annotations

import argparse
import contextlib
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

from krypton.pki.dev import GATEWAY_NAME  # noqa: E402

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


def drain(root: Path, keys: int, registry: str | None, timeout: float, *,
          spy: tuple[str, Path, str] | None = None, gateways: int = 1) -> dict[str, float]:
    """``keys`` made at each of ``gateways`` gateways while the Core is away, then
    drained into it together; the gateways' CPU is their sum."""
    names = (GATEWAY_NAME, *(f"gw-{n}" for n in range(2, gateways + 1)))
    cluster = make_cluster(root, registry=registry, gateways=names)
    try:
        cluster.start_core()
        procs = cluster.start_gateways()
        specs = list(cluster.gateways.values())
        vaults = [spec.vault for spec in specs]
        cluster.kill_core()
        made = time.monotonic()
        for spec in specs:
            make_keys(cluster.layout.pki, spec.port, keys)
        backlog = sum(waiting(v) for v in vaults)
        print(f"{backlog:,} keys waiting at {gateways} gateway(s)"
              f" ({time.monotonic() - made:.1f} s to make them)", file=sys.stderr)
        healed = time.monotonic()
        core = cluster.start_core()
        pids = (core.proc.pid, *(p.proc.pid for p in procs))
        tags = ("core", *names)
        spies = [_spy(spy, pid, n) for pid, n in zip(pids, tags, strict=True)] if spy else []

        def sample() -> tuple[list[float], float]:
            return [cpu_seconds(pid) for pid in pids], sum(cpu_times(p)[1] for p in pids[1:])

        cpu0, sys0 = sample()
        first = left_at_first = 0.0
        deadline = healed + timeout
        while (left := sum(waiting(v) for v in vaults)) > 0:
            if not first and left < backlog:
                first, left_at_first = time.monotonic(), left
                cpu0, sys0 = sample()  # the Core's start-up left out
            if time.monotonic() > deadline:
                raise SystemExit(f"outbox not empty after {timeout:g} s ({left:,} left)")
            time.sleep(0.005)
        done = time.monotonic()
        cpu1, sys1 = sample()
        load = os.getloadavg()[0]
        for proc in spies:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
        if not first:  # drained between two polls
            first, left_at_first = healed, backlog
        took = max(done - first, 1e-6)
        core_s = cpu1[0] - cpu0[0]
        gateways_s = sum(cpu1[1:]) - sum(cpu0[1:])
        per_key = 1e6 / max(left_at_first, 1)
        return {
            "keys": backlog, "rate": left_at_first / took, "drain_s": done - first,
            "heal_to_first_s": first - healed,
            "core_cpu": core_s / took, "gateway_cpu": gateways_s / took,
            "core_us": core_s * per_key, "gateway_us": gateways_s * per_key,
            "gateway_sys_us": (sys1 - sys0) * per_key, "load": load,
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
    ap.add_argument("--registry", default=None,
                    help="PostgreSQL URL, or 'postgresql': a throw-away server (default: SQLite)")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--gateways", type=int, default=1,
                    help="gateways that each make --keys keys and drain into the Core together")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir)")
    ap.add_argument("--py-spy", default=None, help="py-spy executable: record both processes")
    ap.add_argument("--profiles", type=Path, default=Path("drain-profiles"),
                    help="where py-spy's raw profiles go (run N: a subdirectory)")
    ap.add_argument("--idle", action="store_true", help="py-spy samples waiting threads too")
    ap.add_argument("--gil", action="store_true",
                    help="py-spy samples only the thread holding the GIL")
    args = ap.parse_args(argv)
    with contextlib.ExitStack() as stack:
        server = None
        if args.registry == "postgresql":  # a throw-away server for these runs
            from tests.helpers.pg import postgres_server

            server = stack.enter_context(postgres_server())
        for n in range(args.runs):
            registry = (args.registry if server is None
                        else server.create_database(f"drain{n + 1}"))
            run(args, n, registry)
    return 0


def run(args: argparse.Namespace, n: int, registry: str | None) -> None:
    spy = (None if args.py_spy is None
           else (args.py_spy, args.profiles / f"run{n + 1}",
                 "--idle" if args.idle else "--gil" if args.gil else ""))
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        r = drain(Path(tmp), args.keys, registry, args.timeout, spy=spy,
                  gateways=args.gateways)
    print(f"run {n + 1}: {r['keys']:,} keys drained at {r['rate']:,.0f} keys/s "
          f"({r['drain_s']:.2f} s from the first acknowledged; first after "
          f"{r['heal_to_first_s']:.2f} s); CPU meanwhile: Core {r['core_cpu']:.2f}, "
          f"gateway(s) {r['gateway_cpu']:.2f} cores; per key: Core {r['core_us']:.0f} µs, "
          f"gateway(s) {r['gateway_us']:.0f} µs (system {r['gateway_sys_us']:.0f}); "
          f"load average {r['load']:.1f}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
