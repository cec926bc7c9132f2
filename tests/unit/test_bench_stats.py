"""krypton bench's figures, report, PNG, flags and /proc readings."""

from __future__ import annotations

import argparse
import json
import os
import struct
import zlib
from array import array
from pathlib import Path

import pytest

from krypton.bench import plot
from krypton.bench.cli import config_from_args, register
from krypton.bench.runner import (
    BenchConfig,
    Outcome,
    host_cpu,
    process_tree_cpu,
    split,
    worker_specs,
)
from krypton.bench.stats import (
    KPI_MS,
    format_report,
    kpi_fractions,
    latency_ms,
    percentile,
    summarize,
)
from krypton.bench.wire import CONN_LOST
from krypton.bench.worker import Target
from krypton.errors import ConfigError
from krypton.ttlv.enums import ResultReason

TARGET = Target("127.0.0.1", 5696, "localhost", "ca.pem", "c.pem", "k.pem")
MS = 1_000_000


def test_percentile_is_nearest_rank() -> None:
    data = list(range(1, 101))
    assert percentile(data, 0.5) == 50
    assert percentile(data, 0.99) == 99
    assert percentile(data, 0.999) == 100
    assert percentile(data, 0.0) == 1
    assert percentile([7], 0.99) == 7
    assert percentile([], 0.5) == 0


def test_latency_and_kpi_buckets() -> None:
    ordered = sorted([int(0.1 * MS), int(0.2 * MS), int(1 * MS), int(3 * MS)])
    lat = latency_ms(ordered)
    assert lat["min"] == 0.1 and lat["max"] == 3.0 and lat["p50"] == 0.2
    fr = kpi_fractions(ordered)
    assert list(fr) == [f"{b:g}" for b in KPI_MS]
    assert fr["0.1"] == 0.25  # a sample exactly on a bucket counts as under it
    assert fr["0.25"] == 0.5 and fr["1"] == 0.75 and fr["2.5"] == 0.75 and fr["5"] == 1.0
    assert kpi_fractions([]) == dict.fromkeys(fr, 0.0)


def _outcome(op: str = "get") -> Outcome:
    cfg = BenchConfig(target=TARGET, op=op, connections=4, procs=2, count=8, warmup=0.0)
    o = Outcome(cfg, "uid")
    o.samples = array("q", [MS // 2] * 6 + [4 * MS, 9 * MS])
    o.kinds = array("B", [0] * 6 + [1, 1])
    o.errors = {int(ResultReason.ITEM_NOT_FOUND): 2, CONN_LOST: 1}
    o.elapsed, o.window, o.generator_cpu, o.server_cpu, o.host_busy = 2.0, 2.0, 0.001, 0.5, 1.5
    o.tls = {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"}
    return o


def test_summary_is_json_with_the_promised_keys() -> None:
    s = json.loads(json.dumps(summarize(_outcome())))
    for key in ("ops", "errors", "error_reasons", "throughput_ops_s", "latency_ms",
                "kpi_under_ms", "cpu", "tls", "connections", "procs", "op"):  # fmt: skip
        assert key in s
    assert s["ops"] == 8 and s["errors"] == 3 and s["throughput_ops_s"] == 4.0
    assert s["error_reasons"] == {"Item Not Found": 2, "connection lost": 1}
    assert set(s["latency_ms"]) == {"min", "mean", "p50", "p90", "p99", "p99_9", "max"}
    assert s["cpu"]["generator_us_per_op"] == 125.0
    assert s["cpu"]["server_us_per_op"] == 62500.0 and s["cpu"]["server_cores"] == 0.25
    assert "by_op" not in s
    text = format_report(s)
    assert "8 in 2.00 s" in text and "Item Not Found" in text and "generator 125.0 us/op" in text


def test_mixed_summary_splits_by_operation() -> None:
    s = summarize(_outcome("mixed"))
    assert s["by_op"]["get"]["ops"] == 6 and s["by_op"]["create"]["ops"] == 2
    assert s["by_op"]["create"]["latency_ms"]["min"] == 4.0
    assert "create" in format_report(s)


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    assert struct.unpack(">I", data[29:33])[0] == zlib.crc32(data[12:29])
    assert data[-8:-4] == b"IEND"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.skipif(not plot.available(), reason="matplotlib is not installed")
@pytest.mark.parametrize("samples", [[], [MS], [MS // 3, MS, 12 * MS] * 100])
def test_png_is_a_png(tmp_path: Path, samples: list[int]) -> None:
    out = tmp_path / "h.png"
    o = _outcome()
    o.samples = array("q", samples)
    o.kinds = array("B")
    plot.write_png(out, o.samples, summarize(o))
    width, height = _png_size(out.read_bytes())
    assert width > 100 and height > 100


# -- flags -------------------------------------------------------------------------
def _parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="krypton")
    register(p.add_subparsers(dest="command", required=True))
    return p.parse_args(["bench", *argv])


def test_flags_to_config(tmp_path: Path) -> None:
    argv = ["--pki", str(tmp_path), "--op", "mixed", "--ratio", "4:2", "-c", "8", "-p", "2"]
    argv += ["--count", "100", "--version", "2.0", "--resume", "--check", "full"]
    cfg = config_from_args(_parse(*argv, "--server-pid", "1", "--server-pid", "2"))
    assert cfg.op == "mixed" and cfg.ratio == (2, 1) and cfg.connections == 8 and cfg.procs == 2
    assert cfg.count == 100 and cfg.warmup == 0.0 and str(cfg.version) == "2.0"
    assert cfg.resume and cfg.full_check and cfg.server_pids == (1, 2)
    assert cfg.target.ca == str(tmp_path / "ca.pem")
    assert cfg.target.cert == str(tmp_path / "client.pem")
    assert cfg.target.key == str(tmp_path / "client-key.pem")
    d = config_from_args(_parse("--cert", "x.pem", "--key", "y.pem"))
    assert d.duration == 10.0 and d.count is None and d.warmup == 1.0 and not d.resume
    assert (d.target.cert, d.target.key) == ("x.pem", "y.pem")


@pytest.mark.parametrize(
    "argv",
    [
        ("--connections", "0"),
        ("--count", "0"),
        ("--ratio", "x"),
        ("--op", "mixed", "--ratio", "1:0"),
        ("--version", "one"),
        ("--duration", "-1"),
        ("--warmup", "-1"),
    ],
)
def test_bad_flags(argv: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError):
        config_from_args(_parse(*argv))


def test_count_and_duration_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parse("--count", "5", "--duration", "1")
    assert "not allowed" in capsys.readouterr().err


def test_work_is_split_over_processes_and_connections() -> None:
    assert split(10, 3) == [4, 3, 3] and split(2, 4) == [1, 1, 0, 0]
    cfg = BenchConfig(target=TARGET, op="create", connections=5, procs=2, count=11)
    specs = worker_specs(cfg, None)
    assert [s.connections for s in specs] == [3, 2]
    assert [s.first for s in specs] == [0, 3]
    quotas = [q for s in specs for q in s.quotas or ()]
    assert sum(quotas) == 11 and len(quotas) == 5
    assert all(s.duration is None for s in specs)
    many = worker_specs(BenchConfig(target=TARGET, connections=2, procs=8), "k")
    assert len(many) == 2 and many[0].quotas is None and many[0].duration == 10.0


def test_proc_readings() -> None:
    if not Path("/proc/self/stat").exists():
        pytest.skip("no /proc on this platform")
    sum(i * i for i in range(300_000))  # burn a little CPU so the tick counter moves
    mine = process_tree_cpu((os.getpid(),))
    assert mine is not None and mine > 0
    assert process_tree_cpu((2**22 + 12345,)) is None
    host = host_cpu()
    assert host is not None and 0 < host[0] <= host[1]
