"""Parsers against replies recorded from a real kernel (tools/capture_golden.py, Linux 6.1)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from dmioctl import Target
from dmioctl.control import _parse_deps, _parse_name_list, _parse_targets, _parse_versions
from dmioctl.ioctl import Reply
from dmioctl.uapi.dm import DMFlag

GOLDEN = json.loads((Path(__file__).parent / "golden" / "replies.json").read_text())


def recorded(key: str) -> Reply:
    entry: dict[str, Any] = GOLDEN[key]
    buffer = base64.b64decode(entry["buffer"])
    return Reply.build(
        buffer,
        data_start=entry["data_start"],
        target_count=entry["target_count"],
        flags=DMFlag(entry["flags"]),
    )


def test_list_devices() -> None:
    listed = {d.name: d for d in _parse_name_list(recorded("list_devices"))}
    assert set(listed) == {*GOLDEN["devices"], "golden-upper"}
    for name, device in GOLDEN["devices"].items():
        assert (listed[name].major, listed[name].minor) == tuple(device["dev"])
        assert listed[name].uuid == device["uuid"]
        assert listed[name].event_nr == 0
    assert listed["golden-upper"].uuid == ""


def test_table() -> None:
    expected = [Target(*line) for line in GOLDEN["devices"]["golden-a"]["table"]]
    assert _parse_targets(recorded("table_a")) == expected


def test_status() -> None:
    # zero and error targets report an empty status.
    expected = [Target(*line) for line in GOLDEN["devices"]["golden-a"]["table"]]
    assert _parse_targets(recorded("status_a")) == expected


def test_deps() -> None:
    assert _parse_deps(recorded("deps_upper")) == [tuple(GOLDEN["deps_of_upper"])]


@pytest.mark.parametrize("builtin", ["linear", "striped", "zero", "error"])
def test_list_versions(builtin: str) -> None:
    versions = {v.name: v.version for v in _parse_versions(recorded("list_versions"))}
    assert builtin in versions
    assert all(len(version) == 3 and version[0] >= 1 for version in versions.values())
