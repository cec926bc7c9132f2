"""A :class:`~krypton.metrics.meter.KmipMeter` as families, with the spec's names.

``operation`` is the operation's name as KMIP writes it ("Create", "Get
Attributes"), or ``none`` for a message refused whole (undecodable, invalid:
it has no operation); ``result`` is ``success``, the Result Reason's name
("Item Not Found", "Permission Denied"), ``Operation Undone`` for an item of
a failed Undo batch, or ``failure`` for a failure without a reason.
"""

from __future__ import annotations

from krypton.kmip.names import operation_name, reason_name
from krypton.metrics.meter import (
    FAILED,
    NO_OPERATION,
    SUCCESS,
    UNDONE,
    Family,
    KmipMeter,
    counter,
    histogram,
)

_RESULTS = {SUCCESS: "success", FAILED: "failure", UNDONE: "Operation Undone"}


def result_label(code: int) -> str:
    return _RESULTS.get(code) or reason_name(code)


def operation_label(code: int) -> str:
    return "none" if code == NO_OPERATION else operation_name(code)


def kmip_families(meter: KmipMeter, total: str, duration: str, what: str) -> list[Family]:
    """``total{operation,result}`` (a counter) and ``duration{operation}`` (a histogram);
    ``what`` says what was counted (for the help text)."""
    counts = meter.counted()
    timed = meter.timed()
    return [
        counter(
            total, f"{what} by operation and result (per batch item)",
            ("operation", "result"),
            (((operation_label(op), result_label(res)), float(n))
             for (op, res), n in sorted(counts.items())),
        ),
        histogram(
            duration, f"Time to answer {what}, by operation",
            meter.buckets, ("operation",),
            (((operation_label(op),), c, s) for op, (c, s) in sorted(timed.items())),
        ),
    ]  # fmt: skip
