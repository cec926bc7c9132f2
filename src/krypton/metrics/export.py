"""Families into Prometheus' text format, through ``prometheus_client``.

A :class:`FamilyCollector` is a custom collector: ``prometheus_client`` asks it
for its metrics when a scrape renders the registry, and it asks its source
for the current :class:`~krypton.metrics.meter.Family` records then. Each admin
endpoint has a registry of its own (never the library's global one), so
several processes' worth of them can live in one test process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from krypton.metrics.meter import Family

__all__ = ["CONTENT_TYPE", "FamilyCollector", "render", "to_metric"]

CONTENT_TYPE = CONTENT_TYPE_LATEST


def _cumulative(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    running = 0
    for bound, n in zip((*bounds, float("inf")), counts, strict=False):
        running += n
        out.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(running)))
    return out


def to_metric(f: Family) -> Metric:
    labels = list(f.labels)
    if f.kind == "histogram":
        h = HistogramMetricFamily(f.name, f.help, labels=labels)
        for values, counts, total in f.histograms:
            h.add_metric(list(values), _cumulative(f.buckets, counts), total)
        return h
    m: CounterMetricFamily | GaugeMetricFamily
    if f.kind == "counter":
        m = CounterMetricFamily(f.name, f.help, labels=labels)
    else:
        m = GaugeMetricFamily(f.name, f.help, labels=labels)
    for values, value in f.values:
        m.add_metric(list(values), value)
    return m


class FamilyCollector(Collector):
    """Collects whatever ``source`` returns at scrape time."""

    def __init__(self, source: Callable[[], Iterable[Family]]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        for f in self._source():
            yield to_metric(f)


def render(source: Callable[[], Iterable[Family]]) -> bytes:
    """The text exposition of ``source``'s families (a registry of its own)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FamilyCollector(source))
    return generate_latest(registry)
