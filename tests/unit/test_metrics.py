"""Metrics: hot-path counts, spec names, families rendered and parsed by prometheus_client."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.helpers.oasis import SPEC, needs_spec

from krypton.crypto.keyring import KeyRing, L3State
from krypton.crypto.secret import generate_key
from krypton.gateway.engine.dispatch import Dispatcher, Session
from krypton.gateway.engine.services import Services
from krypton.kmip import client_messages as cm
from krypton.kmip.names import OPERATION_SPEC_NAMES, REASON_SPEC_NAMES, operation_name
from krypton.kmip.versions import ProtocolVersion
from krypton.metrics.export import render
from krypton.metrics.kmip import kmip_families
from krypton.metrics.meter import (
    KPI_BUCKETS,
    NO_OPERATION,
    SUCCESS,
    Family,
    Histogram,
    KmipMeter,
    counter,
    gauge,
    merge,
)
from krypton.model.grant import Grant
from krypton.ttlv.codec import Limits, decode, encode
from krypton.ttlv.enums import (
    BatchErrorContinuationOption,
    Operation,
    ResultReason,
)
from krypton.vault.sqlite import Vault

V14 = ProtocolVersion(1, 4)


def parsed(text: bytes) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Sample name → (sorted labels) → value, as Prometheus' own parser reads it."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_a_value_on_a_bound_falls_in_that_bucket_as_le_says() -> None:
    h = Histogram((0.001, 0.01))
    for v in (0.001, 0.0005, 0.002, 5.0):
        h.observe(v)
    counts, total = h.read()
    assert counts == (2, 1, 1)
    assert total == pytest.approx(5.0035)


def test_meter_families_render_with_spec_names_and_cumulative_buckets() -> None:
    meter = KmipMeter()
    meter.done(Operation.GET, SUCCESS, 0.00005)
    meter.done(Operation.GET, SUCCESS, 0.0003)
    meter.done(Operation.GET, ResultReason.ITEM_NOT_FOUND, 0.02)
    meter.done(Operation.RE_KEY, ResultReason.PERMISSION_DENIED, 0.001)
    meter.done(NO_OPERATION, ResultReason.INVALID_MESSAGE, 0.0001)
    text = render(lambda: kmip_families(meter, "k_requests_total", "k_duration_seconds", "x"))
    m = parsed(text)
    assert m["k_requests_total"] == {
        (("operation", "Get"), ("result", "success")): 2.0,
        (("operation", "Get"), ("result", "Item Not Found")): 1.0,
        (("operation", "Re-key"), ("result", "Permission Denied")): 1.0,
        (("operation", "none"), ("result", "Invalid Message")): 1.0,
    }
    get = {dict(k)["le"]: v for k, v in m["k_duration_seconds_bucket"].items()
           if dict(k)["operation"] == "Get"}
    assert [float(b) for b in get if b != "+Inf"] == list(KPI_BUCKETS)
    assert get == {"0.0001": 1.0, "0.00025": 1.0, "0.0005": 2.0, "0.001": 2.0, "0.0025": 2.0,
                   "0.005": 2.0, "0.01": 2.0, "+Inf": 3.0}
    assert m["k_duration_seconds_count"][(("operation", "Get"),)] == 3.0
    assert m["k_duration_seconds_sum"][(("operation", "Get"),)] == pytest.approx(0.02035)


def test_families_travel_as_json_and_merge_by_worker() -> None:
    a = [counter("c_total", "c", ("op",), [(("Get",), 3.0)]), gauge("g", "g", values=[((), 1.0)])]
    b = [counter("c_total", "c", ("op",), [(("Get",), 4.0)]), gauge("g", "g", values=[((), 0.0)])]
    back = [Family.from_json(f.to_json()) for f in b]
    assert back == b
    merged = merge(f.labelled("worker", w) for w, fs in (("0", a), ("1", back)) for f in fs)
    m = parsed(render(lambda: merged))
    assert m["c_total"] == {(("op", "Get"), ("worker", "0")): 3.0,
                            (("op", "Get"), ("worker", "1")): 4.0}
    assert m["g"] == {(("worker", "0"),): 1.0, (("worker", "1"),): 0.0}


@needs_spec
def test_operation_and_reason_names_are_the_specifications() -> None:
    text = (SPEC / "kmip-spec-v2.1-os.txt").read_text(errors="replace")

    def table(heading: str) -> dict[int, str]:
        """The rows after the first mention of ``heading`` that has any (the others
        are in the lists of contents and of tables)."""
        for found in re.finditer(re.escape(heading), text):
            names: dict[int, str] = {}
            last = 0
            body = text[found.end():].split("| Extensions |", 1)[0]  # each table ends so
            rows = re.finditer(r"^\| ([^|]+?) \| ([0-9A-F]{8}) \|$", body, re.M)
            for row in rows:
                if row.start() - last > 300 or int(row[2], 16) in names:  # the next table
                    break
                names[int(row[2], 16)] = row[1]
                last = row.end()
            if names:
                return {v: n for v, n in names.items() if n != "(Reserved)"}
        raise AssertionError(f"no table under {heading!r}")

    operations = table("Operation Enumeration")
    reasons = table("Result Reason Encoding Descriptions")
    assert len(operations) >= 59 and len(reasons) >= 70
    assert {v: OPERATION_SPEC_NAMES[v] for v in operations} == operations
    assert {v: REASON_SPEC_NAMES[v] for v in reasons} == reasons
    assert operation_name(0x8000_0001) == "0x80000001"


# -- the dispatcher counts what it answers --------------------------------------------
@pytest.fixture
def metered(tmp_path: Path) -> Iterator[tuple[Dispatcher, KmipMeter, asyncio.AbstractEventLoop]]:
    loop = asyncio.new_event_loop()
    vault = Vault.open(tmp_path / "v.db")
    ring = KeyRing()
    ring.install("demo", 1, generate_key(256), L3State.ACTIVE, ring.lease_deadline(3600))
    meter = KmipMeter()
    d = Dispatcher(Services(store=vault, keyring=ring), Limits(max_batch_items=8), meter=meter)
    try:
        yield d, meter, loop
    finally:
        vault.close()
        loop.close()


def _send(env: tuple[Dispatcher, KmipMeter, asyncio.AbstractEventLoop], data: bytes,
          operations: frozenset[int] | None = None) -> bytes:
    """As the listener does: the fast answer if there is one, else the rest."""
    d, _, loop = env
    session = Session("spiffe://t/demo", Grant("demo", operations), 1)
    answered = d.answer_now(data, session)
    return answered or loop.run_until_complete(d.handle(data, session, fast=False))


def test_the_dispatcher_counts_each_answered_item_by_operation_and_result(
    metered: tuple[Dispatcher, KmipMeter, asyncio.AbstractEventLoop],
) -> None:
    _, meter, _ = metered
    create = cm.create_item(V14, cm.aes_attributes(256))
    made = cm.parse_response(decode(_send(metered, encode(cm.request_message(V14, [create])))))
    assert made.items[0].payload is not None
    uid = cm.unique_identifier(made.items[0].payload)  # the Create fast path
    _send(metered, encode(cm.request_message(V14, [cm.get_item(uid)])))  # the Get fast path
    _send(metered, encode(cm.request_message(V14, [create, cm.get_item(None)])))  # Create+Get
    stop = cm.request_message(V14, [cm.get_item("absent"), cm.get_item(uid)])
    _send(metered, encode(stop))  # Stop: the second item never runs
    go_on = cm.request_message(V14, [cm.get_item("absent"), cm.get_item(uid)],
                               continuation=BatchErrorContinuationOption.CONTINUE)
    _send(metered, encode(go_on))
    _send(metered, encode(cm.request_message(V14, [create])), frozenset({Operation.GET}))
    _send(metered, b"\x42\x00\x78\x01\x00\x00\x00\x00")  # an empty message: refused whole
    assert meter.counted() == {
        (Operation.CREATE, SUCCESS): 2,
        (Operation.GET, SUCCESS): 3,
        (Operation.GET, ResultReason.ITEM_NOT_FOUND): 2,
        (Operation.CREATE, ResultReason.PERMISSION_DENIED): 1,
        (NO_OPERATION, ResultReason.INVALID_MESSAGE): 1,
    }
    timed = meter.timed()
    assert sum(timed[Operation.GET][0]) == 5 and sum(timed[Operation.CREATE][0]) == 3
    assert all(s > 0 for _, s in timed.values())
