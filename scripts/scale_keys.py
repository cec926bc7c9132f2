#!/usr/bin/env python3
"""What a million keys cost the gateway: Get, start-up, memory and the Create rate.

    .venv/bin/python scripts/scale_keys.py --dir /tmp/scale-keys --keys 1000000 load
    .venv/bin/python scripts/scale_keys.py --dir /tmp/scale-keys measure --rounds 2
    .venv/bin/python scripts/scale_keys.py --dir /tmp/scale-keys create --rounds 2

A Core and one gateway as separate processes (``tests/helpers/cluster.py``,
the end-to-end tests' layout, SQLite on both sides, default configuration)
in ``--dir``, kept between the phases so the load is made once:

``load``
    starts both, makes ``--small`` keys (``small.txt``) and then ``--keys``
    keys (``big.txt``) with ``krypton bench --op create -c 16 --keys-file``,
    prints the Create rate of each, and waits for the outbox to drain (every
    key is at the Core too). ``hot.txt`` is ``--hot`` identifiers drawn from
    ``big.txt``: a hot set inside the big vault.
``measure``
    per round: restarts the gateway (a cold cache), prints how long it took
    to serve (``KMIP on``) and to finish its cache warm-up, then runs Get at
    16 connections for ``--duration`` seconds over ``small.txt``, ``big.txt``
    (uniform over every key) and ``hot.txt``, each id drawn at random per
    request, with the gateway's resident memory after each.
``create``
    per round: Create at 16 connections for ``--duration`` seconds against
    this stack (``--keys`` keys held) and against a fresh, empty stack in
    ``--dir``/empty, alternating, each once its cache warm-up is done; the
    ratio is the Create rate at N keys against the rate at 0.

Benchmark figures, not a test: the machine's load changes them; the report
prints the load average with each line.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.helpers.cluster: the processes, as the e2e tests run them

from tests.helpers.cluster import Cluster, Proc, make_cluster  # noqa: E402

from scale_drain import waiting  # noqa: E402  (this folder: the outbox's size)

WARMED = re.compile(r"warm-up done, ([\d,]+) records cached in ([\d.]+) s")


def load_average() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_warm(gateway: Proc, deadline: float) -> re.Match[str] | None:
    """The gateway's "warm-up done" line, once it is logged (None: not by ``deadline``)."""
    while time.monotonic() < deadline:
        if m := WARMED.search(gateway.log()):
            return m
        time.sleep(0.1)
    return None


def cluster_in(root: Path) -> Cluster:
    """The stack laid out in ``root``, made (and the Core initialised) the first time."""
    root.mkdir(parents=True, exist_ok=True)
    return make_cluster(root, init=not (root / "core.db").exists())


def bench(c: Cluster, op: str, *extra: str) -> dict[str, object]:
    spec = next(iter(c.gateways.values()))
    cmd = [sys.executable, "-m", "krypton.cli.main", "bench", "--pki", str(c.layout.pki),
           "--port", str(spec.port), "--op", op, "-c", "16", "--json", "--quiet", *extra]
    gateway = c.running.get(spec.name)
    if gateway is not None:
        cmd += ["--server-pid", str(gateway.proc.pid)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def line(label: str, r: dict[str, object]) -> str:
    lat = r.get("latency_ms", {})
    assert isinstance(lat, dict)
    cpu = r.get("cpu", {})
    server = cpu.get("server_us_per_op") if isinstance(cpu, dict) else None
    return (f"{label}: {float(str(r['throughput_ops_s'])):,.0f}/s  p50 {lat.get('p50', 0):.2f}"
            f" p99 {lat.get('p99', 0):.2f} ms  errors {r.get('errors', 0)}"
            + (f"  server {server:.0f} µs/op" if server else "")
            + f"  (load {load_average()})")


def load(args: argparse.Namespace) -> None:
    c = cluster_in(args.dir)
    spec = next(iter(c.gateways.values()))
    try:
        c.start_core()
        c.start_gateways()
        for name, count in (("small", args.small), ("big", args.keys)):
            keys = args.dir / f"{name}.txt"
            keys.unlink(missing_ok=True)
            began = time.monotonic()
            r = bench(c, "create", "--count", str(count), "--keys-file", str(keys))
            print(line(f"load {name}: {count:,} keys in {time.monotonic() - began:.0f} s", r),
                  flush=True)
        while (left := waiting(spec.vault)) > 0:
            print(f"outbox: {left:,} keys not yet at the Core", flush=True)
            time.sleep(5)
        ids = (args.dir / "big.txt").read_text().split()
        hot = random.Random(16).sample(ids, min(args.hot, len(ids)))
        (args.dir / "hot.txt").write_text("\n".join(hot) + "\n")
    finally:
        c.stop()


def measure(args: argparse.Namespace) -> None:
    c = cluster_in(args.dir)
    try:
        c.start_core()
        for n in range(args.rounds):
            began = time.monotonic()
            (gateway,) = c.start_gateways(serving=False)
            serving = time.monotonic() - began
            warmed = wait_warm(gateway, began + args.warm_timeout)
            warm = ("not done" if warmed is None
                    else f"{warmed.group(1)} records cached in {warmed.group(2)} s")
            print(f"round {n + 1}: gateway serving after {serving:.2f} s; warm-up {warm};"
                  f" RSS {rss_mib(gateway.proc.pid):,.0f} MiB", flush=True)
            for name in ("small", "big", "hot"):
                r = bench(c, "get", "--duration", str(args.duration), "--warmup", "2",
                          "--keys-file", str(args.dir / f"{name}.txt"))
                print(line(f"  get {name}", r)
                      + f"  RSS {rss_mib(gateway.proc.pid):,.0f} MiB", flush=True)
            gateway.stop()
            c.running.clear()
    finally:
        c.stop()


def create(args: argparse.Namespace) -> None:
    stacks = {"N keys": cluster_in(args.dir), "0 keys": cluster_in(args.dir / "empty")}
    try:
        for stack in stacks.values():  # each measured once its cache warm-up is done
            stack.start_core()
            (gateway,) = stack.start_gateways()
            wait_warm(gateway, time.monotonic() + args.warm_timeout)
        for n in range(args.rounds):
            rates = {}
            for label, stack in stacks.items():
                r = bench(stack, "create", "--duration", str(args.duration), "--warmup", "2")
                rates[label] = float(str(r["throughput_ops_s"]))
                print(line(f"round {n + 1}: create at {label}", r), flush=True)
            print(f"round {n + 1}: N keys / 0 keys = {rates['N keys'] / rates['0 keys']:.2f}",
                  flush=True)
    finally:
        for stack in stacks.values():
            stack.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("phase", choices=("load", "measure", "create"))
    ap.add_argument("--dir", type=Path, required=True, help="the stack's folder (kept)")
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--small", type=int, default=1_000)
    ap.add_argument("--hot", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--warm-timeout", type=float, default=600.0)
    args = ap.parse_args(argv)
    {"load": load, "measure": measure, "create": create}[args.phase](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
