"""scripts/bench_all.py's targets table: the issue's ratios, computed from results."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_all", ROOT / "scripts" / "bench_all.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_all", module)
    spec.loader.exec_module(module)
    return module


def _r(server: str, case: str, conns: int, ops: float, p50_ms: float = 0.1) -> dict[str, Any]:
    return {"server": server, "case": case, "connections": conns,
            "throughput_ops_s": ops, "latency_ms": {"p50": p50_ms}}


def test_targets_are_the_issues_ratios() -> None:
    bench_all = _script()
    results = [
        _r("gateway", "get", 1, 9_000, 0.110), _r("ceiling", "get", 1, 10_000, 0.100),
        _r("gateway", "get", 16, 12_000), _r("ceiling", "get", 16, 30_000),
        _r("gateway", "create", 1, 2_000), _r("gateway", "create", 16, 4_800),
        _r("gateway", "createget", 16, 3_000), _r("pykmip", "get", 16, 100),
    ]
    disk = {"syncs_per_s": 5_000.0, "sync_ms": 0.15}  # limit: 1 / (0.15 + 0.10 ms) = 4,000/s
    rows = {name: (value, met) for name, value, _, met in bench_all.targets(results, disk)}
    assert rows["get, 1 connection, vs ceiling"] == ("0.90x (p50 110 vs 100 µs)", True)
    assert rows["get, 1 connection, p50 vs the ceiling's"] == ("1.10x", True)
    assert rows["get, 16 connections, vs ceiling"] == ("0.40x", False)
    assert rows["create, 1 connection, vs the disk's limit"] == ("0.50x (2,000 of 4,000/s)", False)
    assert rows["create, 16 connections, vs get at 16"] == ("0.40x", True)
    assert rows["createget, 16 connections, vs get at 16"] == ("0.25x", False)
    assert rows["get, 16 connections, vs PyKMIP"] == ("120x", True)


def test_a_missing_cell_is_not_a_verdict() -> None:
    rows = _script().targets([_r("gateway", "get", 1, 9_000)], None)
    assert all(met is None for _, _, _, met in rows)
