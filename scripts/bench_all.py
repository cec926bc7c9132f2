#!/usr/bin/env python3
"""Gateway vs ceiling vs PyKMIP, side by side: the matrix behind docs/performance.md.

    .venv/bin/python scripts/bench_all.py --dir /tmp/krypton-bench --out bench.md

Starts, one at a time, each server on a free loopback port with the same dev
PKI (``krypton dev init`` into ``--dir`` if needed):

* gateway  -- ``krypton dev --dir D`` (``KRYPTON_GATEWAY_LISTEN_PORT``)
* ceiling  -- ``krypton bench ceiling`` (the cheapest KMIP-shaped responder)
* pykmip   -- ``scripts/pykmip_server.py`` (PyKMIP 0.11's own server)
* gateway-openbao -- ``krypton dev --dir D --vault openbao`` (only when named in
  ``--servers``: the gateway vault on a local OpenBao server, side by side
  with the SQLite one)

and runs ``krypton bench --json --server-pid PID`` for every connection count
(default 1 and 16) and operation (get, create, createget, connect without
and with TLS resumption). It also measures the disk's limit for a durable
Create at one connection: ``fdatasync`` of a 4 KiB write in ``--dir`` (where
the gateway's vault is), back to back for 2 s, plus one round trip (the
ceiling's Get p50). Writes a markdown report (``--out``, default stdout) --
first the issue's targets, met or not, then every cell -- and every raw JSON
result (``--json-out``).

The figures are only as quiet as the machine: the report records the load
average and how busy the host was during each run (``host busy`` minus
generator minus server is someone else's work).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
OPS = {
    "get": ["--op", "get"],
    "create": ["--op", "create"],
    "createget": ["--op", "createget"],
    "connect": ["--op", "connect", "--no-resume"],
    "connect-resume": ["--op", "connect", "--resume"],
}
SERVERS = ("gateway", "ceiling", "pykmip", "gateway-openbao")
DEFAULT_SERVERS = SERVERS[:3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    name: str
    port: int
    proc: subprocess.Popen[bytes]


def _command(name: str, dev: Path, port: int, work: Path) -> tuple[list[str], dict[str, str], str]:
    env = dict(os.environ)
    if name in ("gateway", "gateway-openbao"):
        env["KRYPTON_GATEWAY_LISTEN_PORT"] = str(port)
        env.setdefault("KRYPTON_GATEWAY_LOG_LEVEL", "warning")
        # Not the default Core and admin ports: another stack may hold them.
        env.setdefault("KRYPTON_CORE_LISTEN_PORT", str(free_port()))
        env.setdefault("KRYPTON_GATEWAY_ADMIN_LISTEN", f"127.0.0.1:{free_port()}")
        env.setdefault("KRYPTON_CORE_ADMIN_LISTEN", f"127.0.0.1:{free_port()}")
        cmd = [PY, "-m", "krypton.cli.main", "dev", "--dir", str(dev)]
        if name == "gateway-openbao":  # the vault on a local OpenBao (Raft) in DIR/openbao
            cmd += ["--vault", "openbao"]
        return cmd, env, "Krypton dev stack is up"
    if name == "ceiling":
        cmd = [PY, "-m", "krypton.cli.main", "bench", "ceiling", "--port", str(port)]
        return [*cmd, "--pki", str(dev / "pki")], env, "KMIP-shaped responder on"
    if name == "pykmip":
        cmd = [PY, str(ROOT / "scripts" / "pykmip_server.py"), "--port", str(port)]
        cmd += ["--pki", str(dev / "pki"), "--workdir", str(work / "pykmip")]
        return cmd, env, "PyKMIP server ready on"
    raise SystemExit(f"unknown server {name!r}")


@contextmanager
def running(name: str, dev: Path, work: Path) -> Iterator[Server]:
    port = free_port()
    cmd, env, ready = _command(name, dev, port, work)
    log_path = work / f"{name}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while ready not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{name} did not start:\n{log_path.read_text()}")
            time.sleep(0.1)
        _wait_tls(port, dev / "pki")
        yield Server(name, port, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_tls(port: int, pki: Path) -> None:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(str(pki / "client.pem"), str(pki / "client-key.pem"))
    for _ in range(100):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
                ctx.wrap_socket(raw, server_hostname="localhost").close()
            return
        except OSError:
            time.sleep(0.1)


def bench(server: Server, dev: Path, op: str, conns: int, args: argparse.Namespace) -> Any:
    cmd = [PY, "-m", "krypton.cli.main", "bench", "--port", str(server.port)]
    cmd += ["--pki", str(dev / "pki"), "--json", "--quiet", "-c", str(conns)]
    cmd += ["--procs", str(min(args.procs, conns)), "--server-pid", str(server.proc.pid)]
    cmd += ["--warmup", str(args.warmup), "--duration", str(args.duration), *OPS[op]]
    print(f"  {server.name:<8} {op:<15} {conns:>3} conn ...", end="", file=sys.stderr, flush=True)
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    try:
        result: dict[str, Any] = json.loads(done.stdout)
    except json.JSONDecodeError:
        result = {"failed": (done.stderr or done.stdout).strip()[-300:]}
    result.update(server=server.name, case=op)
    ops = result.get("throughput_ops_s")
    print(f" {ops} ops/s, errors {result.get('errors')}", file=sys.stderr, flush=True)
    return result


# -- the report -----------------------------------------------------------------------
def _cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return "-"
    if "failed" in r:
        return "failed"
    lat = r.get("latency_ms") or {}
    err = f", **{r['errors']} errors**" if r.get("errors") else ""
    p50, p99 = lat.get("p50", 0), lat.get("p99", 0)
    return f"{r['throughput_ops_s']:,.0f}/s · {p50:.2f} / {p99:.2f} ms{err}"


def _cpu_cell(r: dict[str, Any] | None) -> str:
    if r is None or "failed" in r:
        return "-"
    cpu = r["cpu"]
    server = cpu.get("server_us_per_op")
    server_text = f"{server:.0f}" if server is not None else "-"
    return f"{cpu['generator_us_per_op'] or 0:.0f} / {server_text}"


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> str:
    if not a or not b or "failed" in a or "failed" in b or not b.get("throughput_ops_s"):
        return "-"
    return f"{a['throughput_ops_s'] / b['throughput_ops_s'] * 100:.0f}%"


def disk_limit(folder: Path, seconds: float = 2.0) -> dict[str, float]:
    """``fdatasync`` of a 4 KiB write in ``folder``, back to back: syncs per second."""
    path = folder / ".krypton-disk-probe"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    block = os.urandom(4096)
    try:
        n, began = 0, time.perf_counter()
        while time.perf_counter() - began < seconds:
            os.pwrite(fd, block, 0)
            os.fdatasync(fd)
            n += 1
        took = time.perf_counter() - began
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)
    return {"syncs_per_s": n / took, "sync_ms": took / n * 1000}


# The first table: (figure, value from the results, target, met?)
Index = dict[tuple[str, str, int | None], Any]


def _ops(index: Index, server: str, op: str, conns: int) -> float:
    r = index.get((server, op, conns))
    return float(r["throughput_ops_s"]) if r and "throughput_ops_s" in r else 0.0


def _p50(index: Index, server: str, op: str, conns: int) -> float:
    r = index.get((server, op, conns))
    return float((r or {}).get("latency_ms", {}).get("p50", 0.0))


def targets(results: list[dict[str, Any]], disk: dict[str, float] | None
            ) -> list[tuple[str, str, str, bool | None]]:
    """The issue's first table from ``results``: figure, measured, target, met
    (None when a cell it needs is missing)."""
    index: Index = {(r["server"], r["case"], r.get("connections")): r for r in results}

    def ratio(a: float, b: float) -> float | None:
        return a / b if a and b else None

    rows: list[tuple[str, str, str, bool | None]] = []

    def row(name: str, value: float | None, target: float, fmt: str, extra: str = "") -> None:
        shown = "-" if value is None else fmt.format(value) + extra
        rows.append((name, shown, f"≥ {fmt.format(target)}",
                     None if value is None else value >= target))

    g1, c1 = _ops(index, "gateway", "get", 1), _ops(index, "ceiling", "get", 1)
    p_g, p_c = _p50(index, "gateway", "get", 1), _p50(index, "ceiling", "get", 1)
    row("get, 1 connection, vs ceiling", ratio(g1, c1), 0.85, "{:.2f}x",
        f" (p50 {p_g * 1000:.0f} vs {p_c * 1000:.0f} µs)" if p_g and p_c else "")
    p50_ratio = ratio(p_g, p_c)
    rows.append(("get, 1 connection, p50 vs the ceiling's",
                 "-" if p50_ratio is None else f"{p50_ratio:.2f}x", "≤ 1.15x",
                 None if p50_ratio is None else p50_ratio <= 1.15))
    g16 = _ops(index, "gateway", "get", 16)
    row("get, 16 connections, vs ceiling", ratio(g16, _ops(index, "ceiling", "get", 16)),
        0.5, "{:.2f}x")
    limit = None
    if disk and p_c:
        limit = 1000.0 / (disk["sync_ms"] + p_c)
    cr1 = _ops(index, "gateway", "create", 1)
    row("create, 1 connection, vs the disk's limit", ratio(cr1, limit or 0.0), 0.6, "{:.2f}x",
        f" ({cr1:,.0f} of {limit:,.0f}/s)" if limit else "")
    row("create, 16 connections, vs get at 16",
        ratio(_ops(index, "gateway", "create", 16), g16), 0.35, "{:.2f}x")
    row("createget, 16 connections, vs get at 16",
        ratio(_ops(index, "gateway", "createget", 16), g16), 0.3, "{:.2f}x")
    row("get, 16 connections, vs PyKMIP", ratio(g16, _ops(index, "pykmip", "get", 16)),
        30.0, "{:.0f}x")
    return rows


def report(results: list[dict[str, Any]], args: argparse.Namespace, env: dict[str, str],
           disk: dict[str, float] | None = None) -> str:
    index = {(r["server"], r["case"], r.get("connections")): r for r in results}
    servers = [s for s in SERVERS if s in args.servers]
    out = [
        "# Krypton bench: gateway vs ceiling vs PyKMIP",
        "",
        f"{env['when']} on {env['cpu']} ({env['cores']} cores), Python {env['python']}, "
        f"{env['openssl']}; load average before: {env['load']}.",
    ]
    if disk:
        out.append(f"Disk: {disk['syncs_per_s']:,.0f} fdatasync/s of a 4 KiB write "
                   f"({disk['sync_ms']:.2f} ms each) in the gateway's folder.")
    out += [
        "",
        "| figure (issue \"Speed\") | measured | target | met |",
        "| --- | --- | --- | --- |",
    ]
    for name, value, target, met in targets(results, disk):
        out.append(f"| {name} | {value} | {target} | "
                   f"{'-' if met is None else 'yes' if met else 'no'} |")
    out += [
        "",
        f"Each cell: `krypton bench --duration {args.duration} --warmup {args.warmup} "
        f"--procs {args.procs}` with KMIP 1.4 over mutual TLS on loopback, generator and "
        "server sharing the machine. The machine is shared with other work, so the "
        "figures are noisy: see `host busy` below.",
        "",
        "Throughput · p50 / p99 latency. `gw/ceiling` is the gateway's throughput as a "
        "fraction of the ceiling's.",
        "",
        "| op | conns | " + " | ".join(servers) + " | gw/ceiling |",
        "| --- | ---: | " + " | ".join("---" for _ in servers) + " | ---: |",
    ]
    for conns in args.connections:
        for op in args.ops:
            cells = [_cell(index.get((s, op, conns))) for s in servers]
            ratio = _ratio(index.get(("gateway", op, conns)), index.get(("ceiling", op, conns)))
            out.append(f"| {op} | {conns} | " + " | ".join(cells) + f" | {ratio} |")
    out += [
        "",
        "CPU per operation, µs: generator / server (server = its whole process tree, "
        "from /proc; 10 ms clock-tick resolution).",
        "",
        "| op | conns | " + " | ".join(servers) + " |",
        "| --- | ---: | " + " | ".join("---" for _ in servers) + " |",
    ]
    for conns in args.connections:
        for op in args.ops:
            cells = [_cpu_cell(index.get((s, op, conns))) for s in servers]
            out.append(f"| {op} | {conns} | " + " | ".join(cells) + " |")
    out += ["", "Host busy during each run (cores of " + env["cores"] + "):", ""]
    out += ["| op | conns | " + " | ".join(servers) + " |"]
    out += ["| --- | ---: | " + " | ".join("---" for _ in servers) + " |"]
    for conns in args.connections:
        for op in args.ops:
            cells = []
            for s in servers:
                r = index.get((s, op, conns))
                busy = r.get("cpu", {}).get("host_busy_cores") if r else None
                cells.append(f"{busy:.2f}" if busy is not None else "-")
            out.append(f"| {op} | {conns} | " + " | ".join(cells) + " |")
    failed = [r for r in results if "failed" in r]
    if failed:
        out += ["", "Failed runs:", ""]
        out += [f"- {r['server']} {r['case']}: {r['failed']}" for r in failed]
    return "\n".join(out) + "\n"


def _environment() -> dict[str, str]:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def _list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", type=Path, required=True, help="dev dir (PKI, gateway vault)")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--procs", type=int, default=1, help="generator processes (capped at conns)")
    p.add_argument("--connections", default="1,16", help="comma-separated")
    p.add_argument("--ops", default=",".join(OPS), help="comma-separated: " + ", ".join(OPS))
    p.add_argument("--servers", default=",".join(DEFAULT_SERVERS),
                   help="comma-separated, of: " + ", ".join(SERVERS))
    p.add_argument("--out", type=Path, default=None, help="markdown report (default stdout)")
    p.add_argument("--json-out", type=Path, default=None, help="all raw results")
    args = p.parse_args(argv)
    args.connections = [int(c) for c in _list(args.connections)]
    args.ops = _list(args.ops)
    args.servers = _list(args.servers)
    for op in args.ops:
        if op not in OPS:
            p.error(f"--ops: unknown {op!r}")
    for s in args.servers:
        if s not in SERVERS:
            p.error(f"--servers: unknown {s!r}")
    subprocess.run(
        [PY, "-m", "krypton.cli.main", "dev", "init", "--dir", str(args.dir)],
        check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    env = _environment()
    disk = disk_limit(args.dir)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="krypton-bench-") as tmp:
        for name in args.servers:
            print(f"{name}:", file=sys.stderr)
            with running(name, args.dir, Path(tmp)) as server:
                for conns in args.connections:
                    for op in args.ops:
                        results.append(bench(server, args.dir, op, conns, args))
    text = report(results, args, env, disk)
    if args.out is not None:
        args.out.write_text(text)
    else:
        print(text)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps({"environment": env, "disk": disk,
                                             "results": results}, indent=1))
    return 1 if any("failed" in r or r.get("errors") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
