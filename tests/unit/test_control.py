"""Payload packing and reply parsing of DeviceMapper, on buffers laid out by hand.

The buffers here are written with :mod:`struct` from the C definitions, a second
description independent of the construct layouts under test.
"""

from __future__ import annotations

import os
import struct

import pytest

from dmioctl import DMError, InvalidArgument, Target
from dmioctl.control import (
    DeviceMapper,
    _pack_targets,
    _parse_name_list,
    _parse_targets,
    validate_name,
    validate_uuid,
)
from dmioctl.ioctl import DATA_START, Reply


def reply(payload: bytes, *, count: int = 0) -> Reply:
    buffer = bytes(DATA_START) + payload
    return Reply.build(buffer, data_start=DATA_START, target_count=count)


def name_record(dev: int, name: str, uuid: str | None, *, last: bool = False) -> bytes:
    """One dm_name_list record as list_devices() in dm-ioctl.c writes it (interface 4.46+)."""
    head = 12 + len(name) + 1
    record = struct.pack("=QI", dev, 0) + name.encode() + b"\0"
    record += bytes(-head % 8)
    flags = 1 if uuid is not None else 2
    record += struct.pack("=II", 5, flags)
    if uuid is not None:
        record += uuid.encode() + b"\0"
    record += bytes(-len(record) % 8)
    if not last:
        record = record[:8] + struct.pack("=I", len(record)) + record[12:]
    return record


def test_parse_name_list_with_uuids() -> None:
    payload = name_record(os.makedev(253, 0), "pool", "LVM-abc") + name_record(
        os.makedev(253, 1), "thin1", None, last=True
    )
    devices = _parse_name_list(reply(payload))
    assert [(d.name, d.major, d.minor, d.event_nr, d.uuid) for d in devices] == [
        ("pool", 253, 0, 5, "LVM-abc"),
        ("thin1", 253, 1, 5, ""),
    ]


def test_parse_name_list_before_uuids() -> None:
    # Interface 4.37 to 4.45: an event number after the name, the flags word zero.
    record = struct.pack("=QI", os.makedev(253, 7), 24) + b"old\0" + struct.pack("=II", 3, 0)
    record += struct.pack("=QI", os.makedev(253, 8), 0) + b"new\0" + struct.pack("=II", 4, 0)
    devices = _parse_name_list(reply(record))
    assert [(d.name, d.minor, d.event_nr, d.uuid) for d in devices] == [
        ("old", 7, None, None),
        ("new", 8, None, None),
    ]


def test_names_that_are_not_utf8_keep_their_bytes() -> None:
    # dmsetup --manglename none can make one; each byte comes back as a surrogate escape.
    name = b"x\xffy".decode("utf-8", "surrogateescape")
    record = struct.pack("=QI", os.makedev(253, 9), 0) + b"x\xffy\0"
    record += struct.pack("=II", 1, 2)
    (device,) = _parse_name_list(reply(record))
    assert device.name == name and device.uuid == ""
    validate_name(name)
    assert Reply.build(b"", name=name).name == name


def test_parse_empty_name_list() -> None:
    assert _parse_name_list(reply(bytes(16))) == []


def test_pack_targets_layout() -> None:
    payload = _pack_targets([Target(0, 8, "zero"), Target(8, 16, "linear", "7:0 2048")])
    # First spec: 40 bytes, params "" + NUL padded to 8 -> next = 48.
    start, length, status, nxt = struct.unpack_from("=QQiI", payload, 0)
    assert (start, length, status, nxt) == (0, 8, 0, 48)
    assert payload[24:40] == b"zero".ljust(16, b"\0")
    second = payload[48:]
    start, length, _status, nxt = struct.unpack_from("=QQiI", second, 0)
    assert (start, length, nxt) == (8, 16, 56)
    assert second[24:40] == b"linear".ljust(16, b"\0")
    assert second[40:49] == b"7:0 2048\0"
    assert len(payload) == 48 + 56
    assert len(payload) % 8 == 0


def test_parse_targets_counts_next_from_first_spec() -> None:
    first = struct.pack("=QQiI16s", 0, 8, 0, 48, b"zero") + b"\0".ljust(8, b"\0")
    second = struct.pack("=QQiI16s", 8, 8, 0, 0, b"error") + b"x y\0".ljust(8, b"\0")
    parsed = _parse_targets(reply(first + second, count=2))
    assert parsed == [Target(0, 8, "zero", ""), Target(8, 8, "error", "x y")]


@pytest.mark.parametrize("bad", ["", "a/b", "x" * 128, ".", "..", "nul\0"])
def test_bad_names(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="device name"):
        validate_name(bad)


def test_longest_name_and_uuid() -> None:
    validate_name("n" * 127)
    validate_uuid("u" * 128)
    with pytest.raises(InvalidArgument, match="uuid"):
        validate_uuid("u" * 129)


def test_device_ref_needs_exactly_one() -> None:
    with pytest.raises(InvalidArgument, match="exactly one"):
        DeviceMapper._check_ref("", "")
    with pytest.raises(InvalidArgument, match="exactly one"):
        DeviceMapper._check_ref("a", "b")


def test_missing_control_file() -> None:
    with pytest.raises(DMError, match="device-mapper is not available"):
        DeviceMapper(path="/nonexistent/control")
