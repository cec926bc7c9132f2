"""The conformance runner's matcher and case driver, on hand-built trees (sans-I/O).

Trees are written in the OASIS XML format itself; a "server" here is a
function from request bytes to response bytes, so ``run_case`` is exercised
without a socket (the real servers are in tests/e2e/test_conformance.py).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from krypton.conformance.cases import case_of, discover, select
from krypton.conformance.cli import line, summary, summary_line
from krypton.conformance.diff import redacted
from krypton.conformance.match import CaseError, Session, literal_times
from krypton.conformance.runner import Options, TransportError, run_case, steps_of
from krypton.ttlv.codec import Placeholder, decode, encode
from krypton.ttlv.enums import Operation
from krypton.ttlv.item import Item, ItemType
from krypton.ttlv.tags import Tag
from krypton.ttlv.xml import item_from_xml, item_to_xml, map_placeholders

NOW = 1_700_000_000.0
STAMP = "2023-11-14T22:13:20+00:00"  # NOW as XML


def x(text: str) -> Item:
    return item_from_xml(ET.fromstring(text))


def response(*batch_items: str, header: str = "", count: int | None = None) -> Item:
    n = len(batch_items) if count is None else count
    return x(
        "<ResponseMessage><ResponseHeader><ProtocolVersion>"
        '<ProtocolVersionMajor type="Integer" value="1"/>'
        '<ProtocolVersionMinor type="Integer" value="4"/></ProtocolVersion>'
        f'<TimeStamp type="DateTime" value="{STAMP}"/>{header}'
        f'<BatchCount type="Integer" value="{n}"/></ResponseHeader>'
        + "".join(batch_items)
        + "</ResponseMessage>"
    )


def request(*batch_items: str) -> Item:
    return x(
        "<RequestMessage><RequestHeader><ProtocolVersion>"
        '<ProtocolVersionMajor type="Integer" value="1"/>'
        '<ProtocolVersionMinor type="Integer" value="4"/></ProtocolVersion>'
        f'<BatchCount type="Integer" value="{len(batch_items)}"/></RequestHeader>'
        + "".join(batch_items)
        + "</RequestMessage>"
    )


def ok(op: str, payload: str = "") -> str:
    return (
        f'<BatchItem><Operation type="Enumeration" value="{op}"/>'
        '<ResultStatus type="Enumeration" value="Success"/>'
        f"<ResponsePayload>{payload}</ResponsePayload></BatchItem>"
    )


def item(op: str, payload: str = "") -> str:
    return (
        f'<BatchItem><Operation type="Enumeration" value="{op}"/>'
        f"<RequestPayload>{payload}</RequestPayload></BatchItem>"
    )


def uid(value: str) -> str:
    return f'<UniqueIdentifier type="TextString" value="{value}"/>'


def attr(name: str, value: str, kind: str = "Enumeration") -> str:
    return (
        f'<Attribute><AttributeName type="TextString" value="{name}"/>'
        f'<AttributeValue type="{kind}" value="{value}"/></Attribute>'
    )


def compare(
    expected: Item, actual: Item, session: Session | None = None, request: Item | None = None
) -> str:
    diff = (session or Session()).compare(expected, actual, request, NOW)
    return "" if diff is None else str(diff)


# -- placeholders: capture, reuse, substitution ------------------------------------------
def test_placeholder_captures_then_must_match_and_is_substituted() -> None:
    s = Session()
    assert (
        compare(
            response(ok("Create", uid("$UNIQUE_IDENTIFIER_0"))),
            response(ok("Create", uid("k-1"))),
            s,
        )
        == ""
    )
    assert s.bindings["$UNIQUE_IDENTIFIER_0"].value == "k-1"
    req = s.substitute(request(item("Get", uid("$UNIQUE_IDENTIFIER_0"))), NOW)
    assert req == request(item("Get", uid("k-1")))
    diff = compare(
        response(ok("Get", uid("$UNIQUE_IDENTIFIER_0"))), response(ok("Get", uid("k-2"))), s
    )
    assert diff == (
        "ResponseMessage/BatchItem/ResponsePayload/UniqueIdentifier: "
        'expected $UNIQUE_IDENTIFIER_0 = "k-1", got "k-2"'
    )


def test_captures_are_committed_only_when_the_whole_response_matched() -> None:
    s = Session()
    expected = response(ok("Create", uid("$UNIQUE_IDENTIFIER_0") + uid("$UNIQUE_IDENTIFIER_1")))
    actual = response(ok("Create", uid("a") + '<ObjectType type="Enumeration" value="1"/>'))
    assert compare(expected, actual, s).startswith("ResponseMessage/BatchItem/ResponsePayload")
    assert s.bindings == {}


def test_a_placeholder_of_another_item_type_does_not_capture() -> None:
    diff = compare(
        response(ok("Create", uid("$UNIQUE_IDENTIFIER_0"))),
        response(ok("Create", '<UniqueIdentifier type="Integer" value="7"/>')),
    )
    assert diff.endswith("expected TextString $UNIQUE_IDENTIFIER_0, got Integer 7")


def test_unbound_placeholder_in_a_request_is_a_case_error() -> None:
    with pytest.raises(CaseError, match=r"\$UNIQUE_IDENTIFIER_3 before any response"):
        Session().substitute(request(item("Get", uid("$UNIQUE_IDENTIFIER_3"))), NOW)


def test_now_with_offset_in_a_request_is_the_current_time() -> None:
    req = request(item("Create", '<ActivationDate type="DateTime" value="$NOW-3600"/>'))
    filled = Session().substitute(req, NOW)
    date = filled.find(Tag.BATCH_ITEM).find(Tag.REQUEST_PAYLOAD).find(Tag.ACTIVATION_DATE)  # type: ignore[union-attr]
    assert date is not None and date.value == NOW - 3600
    assert decode(encode(filled)) == filled


# -- time stamps ------------------------------------------------------------------------
def _stamped(value: str) -> Item:
    return x(
        "<ResponseMessage><ResponseHeader><ProtocolVersion>"
        '<ProtocolVersionMajor type="Integer" value="1"/>'
        '<ProtocolVersionMinor type="Integer" value="4"/></ProtocolVersion>'
        f'<TimeStamp type="DateTime" value="{value}"/>'
        '<BatchCount type="Integer" value="0"/></ResponseHeader></ResponseMessage>'
    )


def test_now_matches_within_the_tolerance_only() -> None:
    assert compare(_stamped("$NOW"), _stamped("2023-11-15T20:00:00+00:00")) == ""  # +22 h
    diff = compare(_stamped("$NOW"), _stamped("2023-11-16T00:00:00+00:00"))  # +26 h
    assert diff.startswith("ResponseMessage/ResponseHeader/TimeStamp: expected $NOW within 86400 s")
    assert (
        compare(_stamped("$NOW"), _stamped("2023-11-14T22:20:00+00:00"), Session(tolerance=60))
        != ""
    )
    assert (
        compare(_stamped("$NOW+3600"), _stamped("2023-11-14T23:13:20+00:00"), Session(tolerance=60))
        == ""
    )


def test_literal_times_of_old_cases_read_as_now_unless_a_request_sent_them() -> None:
    old = _stamped("2012-04-27T08:12:24+00:00")
    assert compare(old, _stamped(STAMP)) == ""
    sent = literal_times(
        [
            request(
                item(
                    "Revoke",
                    '<CompromiseOccurrenceDate type="DateTime" value="2012-04-27T08:12:24+00:00"/>',
                )
            )
        ]
    )
    assert compare(old, _stamped(STAMP), Session(client_times=sent)).endswith(
        "expected DateTime 2012-04-27T08:12:24+00:00, got 2023-11-14T22:13:20+00:00"
    )


# -- first-difference paths and messages ------------------------------------------------
def test_path_names_the_first_difference_with_xml_names_and_indices() -> None:
    expected = response(
        ok("Get"),
        ok(
            "GetAttributes",
            uid("k")
            + attr("Object Type", "SymmetricKey")
            + attr("Cryptographic Length", "128", "Integer")
            + attr("Name", "n", "TextString")
            + attr("State", "Active"),
        ),
    )
    actual = response(
        ok("Get"),
        ok(
            "GetAttributes",
            uid("k")
            + attr("Object Type", "SymmetricKey")
            + attr("Cryptographic Length", "128", "Integer")
            + attr("Name", "n", "TextString")
            + attr("State", "PreActive"),
        ),
    )
    assert compare(expected, actual, Session(strict=True)) == (
        "ResponseMessage/BatchItem[1]/ResponsePayload/Attribute[3]/AttributeValue: "
        "expected Enumeration Active, got PreActive"
    )


def test_missing_unexpected_and_type_mismatch_messages() -> None:
    base = response(
        ok("Create", uid("k") + '<ObjectType type="Enumeration" value="SymmetricKey"/>')
    )
    short = response(ok("Create", uid("k")))
    assert compare(base, short).endswith(
        "ResponsePayload/ObjectType: missing Enumeration SymmetricKey"
    )
    assert compare(short, base).endswith(
        "ResponsePayload/ObjectType: unexpected Enumeration SymmetricKey"
    )
    other = response(ok("Create", '<UniqueIdentifier type="ByteString" value="00"/>'))
    assert compare(short, other).endswith(
        'UniqueIdentifier: expected TextString "k", got ByteString [1 bytes sha256:6e340b9c]'
    )


def test_failed_status_names_reason_and_message_and_beats_batch_count() -> None:
    expected = response(ok("Create", uid("$UNIQUE_IDENTIFIER_0")), ok("Get", uid("x")))
    failed = (
        '<BatchItem><Operation type="Enumeration" value="Create"/>'
        '<ResultStatus type="Enumeration" value="OperationFailed"/>'
        '<ResultReason type="Enumeration" value="InvalidField"/>'
        '<ResultMessage type="TextString" value="no such algorithm"/></BatchItem>'
    )
    diff = compare(expected, response(failed))
    assert diff == (
        "ResponseMessage/BatchItem[0]/ResultStatus: expected Enumeration Success, got "
        'OperationFailed (InvalidField "no such algorithm") '
        "(and BatchCount: expected Integer 2, got 1)"
    )


def test_key_material_is_never_shown() -> None:
    key = "00112233445566778899aabbccddeeff"
    block = (
        f'<SymmetricKey><KeyBlock><KeyValue><KeyMaterial type="ByteString" value="{key}"/>'
        "</KeyValue></KeyBlock></SymmetricKey>"
    )
    diff = compare(
        response(ok("Get", uid("k") + block.replace(key, "ff" * 16))),
        response(ok("Get", uid("k") + block)),
        Session(registered={"k"}),
    )
    assert "KeyMaterial: expected ByteString [16 bytes sha256:" in diff
    assert key not in diff and "ff" * 16 not in diff
    shown = item_to_xml(redacted(response(ok("Get", uid("k") + block))))
    assert key not in shown and "[16 bytes sha256:" in shown


# -- server-generated secrets -----------------------------------------------------------
def test_material_of_a_generated_key_is_compared_by_length_only() -> None:
    def get(material: str) -> Item:
        return response(
            ok(
                "Get",
                uid("k") + "<SymmetricKey><KeyBlock><KeyValue>"
                f'<KeyMaterial type="ByteString" value="{material}"/>'
                "</KeyValue></KeyBlock></SymmetricKey>",
            )
        )

    created = Session()
    created.compare(
        response(ok("Create", uid("$UNIQUE_IDENTIFIER_0"))),
        response(ok("Create", uid("k"))),
        None,
        NOW,
    )
    assert compare(get("aa" * 16), get("bb" * 16), created) == ""
    assert compare(get("aa" * 16), get("bb" * 32), created).endswith(
        "expected a ByteString of 16 bytes (server-generated), got 32"
    )
    registered = Session()
    registered.compare(
        response(ok("Register", uid("$UNIQUE_IDENTIFIER_0"))),
        response(ok("Register", uid("k"))),
        None,
        NOW,
    )
    assert registered.registered == {"k"}
    assert compare(get("aa" * 16), get("bb" * 16), registered) != ""


# -- leniencies and --strict -----------------------------------------------------------
def test_result_message_and_server_correlation_are_ignored_unless_strict() -> None:
    def failed(message: str) -> str:
        return (
            '<BatchItem><Operation type="Enumeration" value="Decrypt"/>'
            '<ResultStatus type="Enumeration" value="OperationFailed"/>'
            '<ResultReason type="Enumeration" value="InvalidMessage"/>'
            f'<ResultMessage type="TextString" value="{message}"/></BatchItem>'
        )

    corr = '<ServerCorrelationValue type="TextString" value="A5E8-4"/>'
    expected = response(failed("missing-iv"), header=corr)
    actual = response(failed("Decrypt: the IV is missing"))
    assert compare(expected, actual) == ""
    assert "ServerCorrelationValue: missing" in compare(expected, actual, Session(strict=True))
    assert "ResultMessage" in compare(
        response(failed("a")), response(failed("b")), Session(strict=True)
    )


def test_get_attributes_in_any_order_and_more_only_when_all_were_asked() -> None:
    two = attr("State", "Active") + attr("Object Type", "SymmetricKey")
    swapped = attr("Object Type", "SymmetricKey") + attr("State", "Active")
    extra = swapped + attr("Cryptographic Length", "128", "Integer")
    named = request(
        item(
            "GetAttributes",
            uid("k") + '<AttributeName type="TextString" '
            'value="State"/><AttributeName type="TextString" value="Object Type"/>',
        )
    )
    every = request(item("GetAttributes", uid("k")))
    exp = response(ok("GetAttributes", uid("k") + two))
    assert compare(exp, response(ok("GetAttributes", uid("k") + swapped)), request=named) == ""
    assert (
        compare(
            exp,
            response(ok("GetAttributes", uid("k") + swapped)),
            Session(strict=True),
            request=named,
        )
        != ""
    )
    assert compare(exp, response(ok("GetAttributes", uid("k") + extra)), request=every) == ""
    assert compare(exp, response(ok("GetAttributes", uid("k") + extra)), request=named).endswith(
        'ResponsePayload/Attribute[2]: unexpected Attribute "Cryptographic Length"'
    )
    wrong = attr("Object Type", "SymmetricKey") + attr("State", "PreActive")
    assert compare(exp, response(ok("GetAttributes", uid("k") + wrong)), request=named) == (
        "ResponseMessage/BatchItem/ResponsePayload/Attribute[0]/AttributeValue: "
        "expected Enumeration Active, got PreActive"
    )


def test_query_lists_may_be_larger_and_server_information_is_free() -> None:
    def ops(*names: str) -> str:
        return "".join(f'<Operation type="Enumeration" value="{n}"/>' for n in names)

    vendor = '<VendorIdentification type="TextString" value="{}"/>'
    exp = response(ok("Query", ops("Get", "Locate") + vendor.format("Cryptsoft")))
    act = response(ok("Query", ops("Locate", "Create", "Get") + vendor.format("Krypton")))
    assert compare(exp, act) == ""
    assert compare(exp, response(ok("Query", ops("Get") + vendor.format("K")))).endswith(
        "ResponsePayload/Operation[1]: missing Enumeration Locate"
    )
    three = response(ok("Query", ops("Get", "Locate", "Check", "Revoke")))
    assert compare(three, response(ok("Query", ops("Get")))).endswith(
        "ResponsePayload/Operation[1]: missing Enumeration Locate (also missing: Check, Revoke)"
    )


def test_ignore_drops_a_tag_on_both_sides() -> None:
    echo = '<ClientCorrelationValue type="TextString" value="step=0"/>'
    exp, act = response(ok("Get", uid("k"))), response(ok("Get", uid("k")), header=echo)
    assert "ClientCorrelationValue: unexpected" in compare(exp, act)
    assert compare(exp, act, Session(ignore=frozenset({Tag.CLIENT_CORRELATION_VALUE}))) == ""


# -- case files: repairs, driving a server, clean-up -------------------------------------
def _case(tmp_path: Path, *messages: Item, name: str = "SKLC-M-1-14") -> Path:
    path = tmp_path / f"{name}.xml"
    path.write_text("<KMIP>" + "".join(item_to_xml(m) for m in messages) + "</KMIP>")
    return path


def test_repairs_spaced_attribute_names_and_late_placeholders() -> None:
    steps = steps_of(
        [
            (
                "request",
                request(
                    item(
                        "GetAttributes",
                        '<AttributeName type="TextString" value="Cryptographic   Usage Mask"/>',
                    )
                ),
            ),
            ("response", response(ok("Encrypt", '<Data type="ByteString" value="0102"/>'))),
            ("request", request(item("Decrypt", '<Data type="ByteString" value="$DATA_0"/>'))),
            ("response", response(ok("Decrypt"))),
        ]
    )
    assert 'value="Cryptographic Usage Mask"' in item_to_xml(steps[0][0])
    assert 'value="$DATA_0"' in item_to_xml(steps[0][1])


class Scripted:
    """A fake server: answers each request with the next response, placeholders filled."""

    def __init__(self, answers: list[Item]) -> None:
        self.answers = answers
        self.seen: list[Item] = []

    def roundtrip(self, data: bytes) -> bytes:
        self.seen.append(decode(data))
        if not self.answers:
            raise TransportError("connection closed")
        return encode(map_placeholders(self.answers.pop(0), _concrete))


def _concrete(item: Item) -> Item:
    if item.type is ItemType.DATE_TIME:
        return Item(item.tag, item.type, int(NOW))
    return Item(item.tag, item.type, str(item.value).lower().strip("$"))


def test_run_case_passes_and_substitutes_captured_values(tmp_path: Path) -> None:
    create = response(ok("Create", uid("$UNIQUE_IDENTIFIER_0")))
    create = map_placeholders(
        create,
        lambda i: i if "UNIQUE" in str(i.value) else Item(i.tag, i.type, Placeholder("$NOW")),
    )
    destroy = response(ok("Destroy", uid("$UNIQUE_IDENTIFIER_0")))
    path = _case(
        tmp_path,
        request(item("Create")),
        create,
        request(item("Destroy", uid("$UNIQUE_IDENTIFIER_0"))),
        destroy,
    )
    server = Scripted([create, destroy])
    result = run_case(path, server, clock=lambda: NOW)
    assert result.passed and result.steps == 2 and line(result) == "PASS SKLC-M-1-14"
    sent = server.seen[1].find(Tag.BATCH_ITEM).find(Tag.REQUEST_PAYLOAD)  # type: ignore[union-attr]
    assert sent is not None and sent.find(Tag.UNIQUE_IDENTIFIER) == Item.text(
        Tag.UNIQUE_IDENTIFIER, "unique_identifier_0"
    )


def test_run_case_fails_at_the_first_difference_and_cleans_up(tmp_path: Path) -> None:
    create = response(ok("Create", uid("$UNIQUE_IDENTIFIER_0")))
    wrong = response(ok("Get", uid("$UNIQUE_IDENTIFIER_0") + attr("State", "Active")))
    path = _case(
        tmp_path,
        request(item("Create")),
        create,
        request(item("Get", uid("$UNIQUE_IDENTIFIER_0"))),
        response(ok("Get", uid("$UNIQUE_IDENTIFIER_0"))),
        request(item("Destroy", uid("$UNIQUE_IDENTIFIER_0"))),
        response(ok("Destroy")),
    )
    cleanup = [response(ok("Revoke")), response(ok("Destroy"))]
    server = Scripted([create, wrong, *cleanup])
    result = run_case(path, server, clock=lambda: NOW)
    assert not result.passed and result.failed_step == 1
    assert line(result) == (
        "FAIL SKLC-M-1-14: step 1: ResponseMessage/BatchItem/ResponsePayload/Attribute: "
        'unexpected Attribute "State"'
    )
    assert result.expected is not None and result.actual is not None
    ops = [m.find(Tag.BATCH_ITEM).find(Tag.OPERATION).value for m in server.seen]  # type: ignore[union-attr]
    assert ops == [Operation.CREATE, Operation.GET, Operation.REVOKE, Operation.DESTROY]
    assert len(server.seen) == 4
    quiet = Scripted([create, wrong])
    run_case(path, quiet, Options(cleanup=False), clock=lambda: NOW)
    assert len(quiet.seen) == 2


def test_run_case_reports_transport_and_case_errors(tmp_path: Path) -> None:
    path = _case(tmp_path, request(item("Get", uid("$UNIQUE_IDENTIFIER_0"))), response(ok("Get")))
    assert run_case(path, Scripted([])).difference == (
        "case error: request uses $UNIQUE_IDENTIFIER_0 before any response returned it"
    )
    path = _case(tmp_path, request(item("Query")), response(ok("Query")))
    assert run_case(path, Scripted([])).difference == "no response: connection closed"
    bad = tmp_path / "BL-M-1-21.xml"
    bad.write_text("<KMIP><RequestMessage>")
    assert run_case(bad, Scripted([])).difference.startswith("cannot read the case")  # type: ignore[union-attr]


# -- case selection and the summary -----------------------------------------------------
def test_case_names_profiles_versions_and_selection(tmp_path: Path) -> None:
    for folder, names in {
        "v1.0/XML/mandatory": ["SKLC-M-2-10", "SKLC-M-10-10"],
        "v1.4/XML/mandatory": ["CS-BC-M-GCM-1-14", "AKLC-O-1-14"],
        "v2.1/XML/optional": ["SKLC-O-1-21"],
    }.items():
        (tmp_path / folder).mkdir(parents=True)
        for name in names:
            (tmp_path / folder / f"{name}.xml").write_text("<KMIP/>")
    cases = discover([tmp_path])
    assert [c.name for c in cases] == [
        "SKLC-M-2-10",
        "SKLC-M-10-10",
        "AKLC-O-1-14",
        "CS-BC-M-GCM-1-14",
        "SKLC-O-1-21",
    ]
    gcm = case_of(tmp_path / "v1.4/XML/mandatory/CS-BC-M-GCM-1-14.xml")
    assert (gcm.profile, gcm.suite, gcm.mandatory, gcm.version_dir, gcm.protocol) == (
        "CS-BC",
        "CS-BC-M-GCM",
        True,
        "v1.4",
        "1.4",
    )
    assert [
        c.name
        for c in select(cases, mandatory=True, profiles=["SKLC", "CS-BC"], version_dirs=["v1.4"])
    ] == ["CS-BC-M-GCM-1-14"]
    assert [c.name for c in select(cases, profiles=["SKLC"])] == [
        "SKLC-M-2-10",
        "SKLC-M-10-10",
        "SKLC-O-1-21",
    ]
    with pytest.raises(FileNotFoundError):
        discover([tmp_path / "nowhere"])


def test_summary_counts_per_version_and_profile(tmp_path: Path) -> None:
    path = _case(tmp_path, request(item("Query")), response(ok("Query")), name="QS-M-1-21")
    result = run_case(path, Scripted([response(ok("Query"))]), clock=lambda: NOW)
    failed = run_case(path, Scripted([]))
    case = case_of(path)
    report = summary([(case, result), (case, failed)])
    assert (report["passed"], report["failed"]) == (1, 1)
    assert report["by_version"] == {"-": {"QS": {"passed": 1, "failed": 1}}}
    assert summary_line(report) == "1 passed, 1 failed"
