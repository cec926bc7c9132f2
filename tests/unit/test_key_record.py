"""The one key record (krypton.model.record.KeyRecord): its conversions to and from
the Core registry's ObjectRecord and the uplink's protobuf message lose nothing,
absent values included (0 / b"" in a KeyRecord, None in an ObjectRecord)."""

from __future__ import annotations

import dataclasses

import pytest

from krypton.model import KeyRecord, ObjectRecord
from krypton.ttlv.enums import CryptographicAlgorithm, ObjectType, State
from krypton.uplink import convert
from krypton.uplink.v1 import uplink_pb2 as pb

FULL = KeyRecord(
    uid="k-1", tenant="demo", object_type=ObjectType.SYMMETRIC_KEY,
    algorithm=CryptographicAlgorithm.AES, length=256, state=State.ACTIVE, l3_version=3,
    wrapped=b"\x01wrapped", attributes=b"\x42\x00\x01", created=1_700_000_000, synced=True,
    mac=b"\x07" * 32,
)
# No algorithm, length or L3 version known, no material (destroyed), no attributes.
ABSENT = KeyRecord(
    uid="k-2", tenant="other", object_type=ObjectType.SECRET_DATA, algorithm=0, length=0,
    state=State.DESTROYED, l3_version=0, wrapped=b"", attributes=b"", created=5, synced=True,
)


@pytest.mark.parametrize("record", [FULL, ABSENT], ids=["full", "absent"])
def test_key_record_to_object_and_back(record: KeyRecord) -> None:
    obj = record.to_object(origin="spiffe://krypton.dev/gateway/gw-a", names=("n",),
                           groups=("g",), custom=(("x-a", "1"),))
    assert (obj.uid, obj.tenant, obj.object_type, obj.state, obj.created, obj.attributes) == (
        record.uid, record.tenant, record.object_type, record.state, record.created,
        record.attributes,
    )
    assert (obj.origin, obj.names, obj.groups, obj.custom) == (
        "spiffe://krypton.dev/gateway/gw-a", ("n",), ("g",), (("x-a", "1"),)
    )
    assert KeyRecord.from_object(obj) == record
    assert KeyRecord.from_object(obj, synced=False) == dataclasses.replace(record, synced=False)


def test_absent_values_are_none_in_the_registry_and_zero_in_the_record() -> None:
    obj = ABSENT.to_object(origin="core")
    assert (obj.algorithm, obj.length, obj.l3_version, obj.sealed) == (None, None, None, None)
    assert obj.mac is None and KeyRecord.from_object(obj).mac == b""
    full = FULL.to_object(origin="core")
    assert (full.algorithm, full.length, full.l3_version, full.sealed) == (
        CryptographicAlgorithm.AES, 256, 3, b"\x01wrapped"
    )


def test_object_record_to_key_record_and_back() -> None:
    """The registry's side of the round trip, for the fields a KeyRecord carries."""
    for obj in (
        ObjectRecord("u", "t", ObjectType.SYMMETRIC_KEY, State.ACTIVE, 9, 3, 128, 2, b"s",
                     b"\x42", origin="gw", mac=b"\x09" * 32),
        ObjectRecord("u", "t", ObjectType.SECRET_DATA, State.DESTROYED, 9, origin="gw"),
    ):
        assert KeyRecord.from_object(obj).to_object(origin="gw") == obj


@pytest.mark.parametrize("record", [FULL, ABSENT], ids=["full", "absent"])
def test_the_uplink_message_round_trips(record: KeyRecord) -> None:
    wire = convert.key_to_pb(record).SerializeToString()
    assert convert.key_from_pb(pb.WrappedKey.FromString(wire)) == record


def test_the_record_mac_travels_in_its_own_field() -> None:
    """WrappedKey.mac (field 11) carries the record MAC both ways, byte for byte."""
    msg = convert.key_to_pb(FULL)
    assert msg.mac == FULL.mac
    assert convert.key_from_pb(pb.WrappedKey.FromString(msg.SerializeToString())).mac == FULL.mac
    assert pb.WrappedKey.DESCRIPTOR.fields_by_name["mac"].number == 11


def test_the_outbox_flag_does_not_travel() -> None:
    """A record read off the uplink is held by the Core: synced, whatever the sender had."""
    unsent = dataclasses.replace(FULL, synced=False)
    assert convert.key_from_pb(convert.key_to_pb(unsent)) == FULL


def test_no_key_material_in_the_reprs() -> None:
    obj = FULL.to_object(origin="core")
    for text in (repr(FULL), repr(obj)):
        assert "x01" not in text and "<8 bytes>" in text
