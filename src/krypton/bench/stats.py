"""Figures from a bench run: percentiles, KPI fractions, CPU per op; the report and JSON."""

from __future__ import annotations

import math
import os
from bisect import bisect_right
from collections.abc import Sequence
from typing import Any

from krypton.bench.runner import Outcome
from krypton.bench.wire import error_name

KPI_MS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
PERCENTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p99_9", 0.999))


def percentile(ordered: Sequence[int], q: float) -> int:
    """Nearest-rank percentile of an ascending sequence (0 when empty)."""
    if not ordered:
        return 0
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def latency_ms(ordered: Sequence[int]) -> dict[str, float]:
    if not ordered:
        return {}
    out = {"min": ordered[0] / 1e6, "mean": sum(ordered) / len(ordered) / 1e6}
    for name, q in PERCENTILES:
        out[name] = percentile(ordered, q) / 1e6
    out["max"] = ordered[-1] / 1e6
    return {k: round(v, 4) for k, v in out.items()}


def kpi_fractions(ordered: Sequence[int], buckets: Sequence[float] = KPI_MS) -> dict[str, float]:
    """Fraction of samples at or under each bucket (milliseconds)."""
    n = len(ordered)
    return {
        f"{b:g}": round(bisect_right(ordered, int(b * 1e6)) / n, 6) if n else 0.0 for b in buckets
    }


def _reasons(errors: dict[int, int]) -> dict[str, int]:
    return {error_name(code): k for code, k in sorted(errors.items(), key=lambda kv: -kv[1])}


def _per(value: float | None, ops: int, scale: float = 1e6) -> float | None:
    return round(value / ops * scale, 2) if value is not None and ops else None


def _cores(value: float | None, wall: float, min_wall: float = 0.5) -> float | None:
    """Cores used; None over windows too short for /proc's 10 ms clock ticks."""
    return round(value / wall, 3) if value is not None and wall > 0 and wall >= min_wall else None


def summarize(o: Outcome) -> dict[str, Any]:
    cfg = o.config
    ordered = sorted(o.samples)
    ops = len(ordered)
    errors = sum(o.errors.values())
    t = cfg.target
    tls: dict[str, Any] = dict(o.tls)
    if cfg.op == "connect":
        tls.update(resume=cfg.resume, resumed=o.resumed, full_handshakes=o.full)
    summary: dict[str, Any] = {
        "tool": "krypton bench",
        "target": f"{t.host}:{t.port}",
        "op": cfg.op,
        "ratio": f"{cfg.ratio[0]}:{cfg.ratio[1]}" if cfg.op == "mixed" else None,
        "kmip_version": str(cfg.version),
        "connections": cfg.connections,
        "procs": max(1, min(cfg.procs, cfg.connections)),
        "count": cfg.count,
        "duration_s": cfg.duration if cfg.count is None else None,
        "warmup_s": cfg.warmup,
        "check": "full" if cfg.full_check else "status",
        "tls": tls,
        "keys_file": None if cfg.keys_file is None else str(cfg.keys_file),
        "keys": o.keys if cfg.op == "get" else len(o.created),  # drawn from / recorded
        "ops": ops,
        "errors": errors,
        "error_reasons": _reasons(o.errors),
        "warmup_ops": o.warm_ops,
        "warmup_errors": sum(o.warm_errors.values()),
        "warmup_error_reasons": _reasons(o.warm_errors),
        "elapsed_s": round(o.elapsed, 4),
        "throughput_ops_s": round(ops / o.elapsed, 1) if o.elapsed > 0 else 0.0,
        "latency_ms": latency_ms(ordered),
        "kpi_under_ms": kpi_fractions(ordered),
        "cpu": {
            "generator_s": round(o.generator_cpu, 4),
            "generator_us_per_op": _per(o.generator_cpu, ops),
            "generator_cores": _cores(o.generator_cpu, o.elapsed, 0.0),
            "parent_s": round(o.parent_cpu, 4),
            "server_s": round(o.server_cpu, 4) if o.server_cpu is not None else None,
            "server_us_per_op": _per(o.server_cpu if o.window >= 0.5 else None, ops),
            "server_cores": _cores(o.server_cpu, o.window),
            "host_busy_cores": _cores(o.host_busy, o.window),
            "host_cores": os.cpu_count(),
        },
    }
    if cfg.op == "mixed" and len(o.kinds) == len(o.samples):
        by: dict[str, list[int]] = {"get": [], "create": []}
        names = ("get", "create")
        for kind, ns in zip(o.kinds, o.samples, strict=True):
            by[names[kind]].append(ns)
        summary["by_op"] = {
            name: {"ops": len(v), "latency_ms": latency_ms(sorted(v))} for name, v in by.items()
        }
    return summary


def _f(value: object, fmt: str, unit: str = "") -> str:
    return "-" if value is None else f"{value:{fmt}}{unit}"


def format_report(s: dict[str, Any]) -> str:
    lat, cpu, tls = s["latency_ms"], s["cpu"], s["tls"]
    op = s["op"] + (f" {s['ratio']}" if s["ratio"] else "")
    if s["op"] == "connect":
        op += " (resume)" if tls.get("resume") else " (no resume)"
    lines = [
        f"krypton bench: {op} against {s['target']}, KMIP {s['kmip_version']}, "
        f"{tls.get('version', '?')} {tls.get('cipher', '')}".rstrip()
        + f", {s['connections']} connection(s), {s['procs']} process(es)",
        f"  ops        {s['ops']:,} in {s['elapsed_s']:.2f} s = "
        f"{s['throughput_ops_s']:,.0f} ops/s   errors {s['errors']:,}"
        + (f"   (warmup: {s['warmup_ops']:,} ops, {s['warmup_errors']:,} errors)"
           if s["warmup_ops"] else ""),
    ]  # fmt: skip
    if s.get("keys_file"):
        how = "random Get over" if s["op"] == "get" else "appended"
        lines.append(f"  keys       {how} {s['keys']:,} identifiers ({s['keys_file']})")
    for name, k in s["error_reasons"].items():
        lines.append(f"    error    {k:,} x {name}")
    for name, k in s["warmup_error_reasons"].items():
        lines.append(f"    warmup   {k:,} x {name}")
    if lat:
        lines.append(
            "  latency    "
            + "  ".join(f"{n.replace('_', '.')} {lat[n]:.3f}" for n in ("p50", "p90", "p99"))
            + f"  p99.9 {lat['p99_9']:.3f}  max {lat['max']:.3f}  mean {lat['mean']:.3f} ms"
        )
        lines.append(
            "  under      "
            + "  ".join(f"{b} ms {f * 100:.1f}%" for b, f in s["kpi_under_ms"].items())
        )
    for name, v in s.get("by_op", {}).items():
        bl = v["latency_ms"]
        if bl:
            lines.append(
                f"  {name:<10} {v['ops']:,} ops  p50 {bl['p50']:.3f}  p99 {bl['p99']:.3f} ms"
            )
    if s["op"] == "connect":
        resumed, full = tls.get("resumed", 0), tls.get("full_handshakes", 0)
        lines.append(f"  handshakes {resumed:,} resumed, {full:,} full")
    lines.append(
        f"  CPU        generator {_f(cpu['generator_us_per_op'], '.1f', ' us/op')} "
        f"({_f(cpu['generator_cores'], '.2f')} cores)   server "
        f"{_f(cpu['server_us_per_op'], '.1f', ' us/op')} ({_f(cpu['server_cores'], '.2f')} cores)"
        f"   host busy {_f(cpu['host_busy_cores'], '.2f')} of {cpu['host_cores']} cores"
    )
    return "\n".join(lines)
