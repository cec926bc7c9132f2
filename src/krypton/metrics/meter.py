"""What the hot path counts into (plain numbers), and the families a scrape reads.

One writer per object: a :class:`KmipMeter` belongs to one dispatcher (one
event loop), a commit :class:`Histogram` to one writer thread. Readers on the
admin thread take copies (``dict(...)``, ``list(...)`` are single steps under
the GIL), so nothing here locks. A reader may see a histogram's counts and
its sum from two instants a few nanoseconds apart; its ``_count`` is derived
from the counts it copied, so each scrape is self-consistent.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Literal

# The KPI: the hot path answers in well under a millisecond (DESIGN §1).
KPI_BUCKETS: Final = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01)
# The control path and the Core: a network hop and a database write.
CONTROL_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                          1.0, 2.5)
# One vault commit (one fsync of the WAL) and the records it carried.
COMMIT_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BATCH_BUCKETS: Final = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0, 4096.0)

# Result codes besides a KMIP Result Reason (which are all > 0).
SUCCESS: Final = 0
FAILED: Final = -1  # failed without a Result Reason
UNDONE: Final = -2  # Operation Undone (an Undo batch that failed)
# The operation of a message that was refused whole (undecodable, invalid).
NO_OPERATION: Final = -1


class Histogram:
    """Counts per bucket (not cumulative; the last one is +Inf) and the sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def read(self) -> tuple[tuple[int, ...], float]:
        return tuple(self.counts), self.total


class KmipMeter:
    """One dispatcher's KMIP counts: batch items by (operation, result code) and
    their latency by operation. ``done`` is the only call on the hot path."""

    __slots__ = ("buckets", "durations", "requests")

    def __init__(self, buckets: Sequence[float] = KPI_BUCKETS) -> None:
        self.buckets = tuple(buckets)
        self.requests: dict[tuple[int, int], int] = {}
        self.durations: dict[int, Histogram] = {}

    def done(self, operation: int, result: int, seconds: float) -> None:
        key = (operation, result)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        h = self.durations.get(operation)
        if h is None:
            h = self.durations[operation] = Histogram(self.buckets)
        h.counts[bisect_left(h.bounds, seconds)] += 1
        h.total += seconds

    def counted(self) -> dict[tuple[int, int], int]:
        return dict(self.requests)

    def timed(self) -> dict[int, tuple[tuple[int, ...], float]]:
        return {op: h.read() for op, h in list(self.durations.items())}


# -- what a scrape reads: plain data, JSON both ways ----------------------------------
Kind = Literal["counter", "gauge", "histogram"]
Labels = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Family:
    """One metric and its samples. ``values`` for a counter or gauge; ``histograms``
    (label values, per-bucket counts with +Inf last, sum) for a histogram."""

    name: str
    kind: Kind
    help: str
    labels: Labels = ()
    values: tuple[tuple[Labels, float], ...] = ()
    buckets: tuple[float, ...] = ()
    histograms: tuple[tuple[Labels, tuple[int, ...], float], ...] = ()

    def labelled(self, label: str, value: str) -> Family:
        """The same family with one more label (first), e.g. the worker."""
        return replace(
            self,
            labels=(label, *self.labels),
            values=tuple(((value, *k), v) for k, v in self.values),
            histograms=tuple(((value, *k), c, s) for k, c, s in self.histograms),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "help": self.help, "labels": self.labels,
            "values": self.values, "buckets": self.buckets, "histograms": self.histograms,
        }  # fmt: skip

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> Family:
        kind = str(d["kind"])
        if kind not in ("counter", "gauge", "histogram"):
            raise ValueError(f"metric family kind {kind!r}")
        return Family(
            str(d["name"]), kind, str(d["help"]), tuple(str(x) for x in d["labels"]),  # type: ignore[arg-type]
            tuple((tuple(str(x) for x in k), float(v)) for k, v in d["values"]),
            tuple(float(b) for b in d["buckets"]),
            tuple((tuple(str(x) for x in k), tuple(int(c) for c in cs), float(s))
                  for k, cs, s in d["histograms"]),
        )  # fmt: skip


def counter(name: str, help: str, labels: Labels = (),
            values: Iterable[tuple[Labels, float]] = ()) -> Family:
    return Family(name, "counter", help, labels, tuple(values))


def gauge(name: str, help: str, labels: Labels = (),
          values: Iterable[tuple[Labels, float]] = ()) -> Family:
    return Family(name, "gauge", help, labels, tuple(values))


def histogram(name: str, help: str, buckets: Sequence[float], labels: Labels = (),
              samples: Iterable[tuple[Labels, tuple[int, ...], float]] = ()) -> Family:
    return Family(name, "histogram", help, labels, (), tuple(buckets), tuple(samples))


def reload_failures(failures: int) -> Family:
    return counter("krypton_tls_reload_failures_total",
                   "TLS material that could not be loaded (the old stays in use)",
                   values=[((), float(failures))])


def merge(families: Iterable[Family]) -> list[Family]:
    """Families of one name (from several workers) as one, in first-seen order."""
    out: dict[str, Family] = {}
    for f in families:
        seen = out.get(f.name)
        if seen is None:
            out[f.name] = f
        else:
            out[f.name] = replace(seen, values=seen.values + f.values,
                                  histograms=seen.histograms + f.histograms)
    return list(out.values())
