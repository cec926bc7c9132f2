"""The latency histogram PNG (``--png``): log-scale, KPI buckets marked, a table of fractions.

matplotlib is optional (the ``test`` extra installs it); :func:`available`
lets the CLI refuse ``--png`` before a run rather than after it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from krypton.bench.stats import KPI_MS, kpi_fractions


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _bins(lo_ms: float, hi_ms: float, n: int = 80) -> list[float]:
    lo = math.log10(max(lo_ms, 1e-3) / 1.05)
    hi = math.log10(max(hi_ms * 1.05, lo_ms * 1.1, 1e-3 * 1.2))
    return [10 ** (lo + (hi - lo) * i / n) for i in range(n + 1)]


def write_png(path: Path, samples_ns: Sequence[int], summary: dict[str, Any]) -> None:
    """Draw the histogram of ``samples_ns`` with ``summary``'s title figures into ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    ordered = sorted(samples_ns)
    values = [v / 1e6 for v in ordered]
    fig = Figure(figsize=(10, 5.6), dpi=100)
    ax = fig.add_axes((0.07, 0.12, 0.62, 0.76))
    if values:
        ax.hist(values, bins=_bins(values[0], values[-1]), color="#4c72b0", edgecolor="none")
    ax.set_xscale("log")
    ax.set_xlim(
        min(values[0] / 1.2, KPI_MS[0] / 1.5) if values else KPI_MS[0] / 1.5,
        max(values[-1] * 1.2, KPI_MS[-1] * 1.5) if values else KPI_MS[-1] * 1.5,
    )
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("requests")
    lat = summary.get("latency_ms", {})
    op = summary.get("op", "?") + (f" {summary['ratio']}" if summary.get("ratio") else "")
    ax.set_title(
        f"{op} on {summary.get('target', '?')}: {summary.get('connections', '?')} conn, "
        f"{summary.get('throughput_ops_s', 0):,.0f} ops/s, "
        f"p50 {lat.get('p50', 0):.3f} ms, p99 {lat.get('p99', 0):.3f} ms",
        fontsize=10,
        pad=10,
    )
    fractions = kpi_fractions(ordered)
    colours = ("#2ca02c", "#55a630", "#a0c020", "#e0b000", "#f08000", "#e04000", "#c00000")
    for bucket, colour in zip(KPI_MS, colours, strict=True):
        ax.axvline(bucket, color=colour, linestyle="--", linewidth=1)
    ax.set_xticks(list(KPI_MS), [f"{b:g}" for b in KPI_MS])
    for label, colour in zip(ax.get_xticklabels(), colours, strict=True):
        label.set_color(colour)
    rows = [[f"<= {b} ms", f"{f * 100:.2f}%"] for b, f in fractions.items()]
    for name in ("p50", "p90", "p99", "p99_9", "max"):
        if name in lat:
            rows.append([name.replace("_", "."), f"{lat[name]:.3f} ms"])
    rows.append(["errors", f"{summary.get('errors', 0):,}"])
    side = fig.add_axes((0.73, 0.12, 0.25, 0.76))
    side.axis("off")
    table = side.table(
        cellText=rows, colLabels=["bucket", "requests"], loc="upper center", cellLoc="left"
    )
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1, 1.3)
    fig.savefig(str(path), format="png")
