"""Cross-check with the real dmsetup: each reads what the other made, identically."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from dmioctl import DeviceInfo, DeviceMapper, Target
from tests.kernel.support import require

pytestmark = pytest.mark.kernel

TARGETS = [
    Target(0, 2048, "zero"),
    Target(2048, 1024, "error"),
    Target(3072, 4096, "zero"),
]


def dmsetup(*args: str, stdin: str | None = None) -> str:
    require(shutil.which("dmsetup") is not None, "dmsetup is not installed")
    env = dict(os.environ, DM_DISABLE_UDEV="1")
    result = subprocess.run(
        ["dmsetup", *args], input=stdin, capture_output=True, text=True, env=env, check=True
    )
    return result.stdout


def info_fields(text: str) -> dict[str, str]:
    """``dmsetup info`` output as a dict of its 'Key: value' lines."""
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def expected_info(info: DeviceInfo) -> dict[str, str]:
    """What ``dmsetup info`` prints for a device in the fields dmioctl reports."""
    tables = [
        slot
        for slot, present in (("LIVE", info.active_table), ("INACTIVE", info.inactive_table))
        if present
    ]
    state = "SUSPENDED" if info.suspended else "ACTIVE"
    if info.read_only:
        state += " (READ-ONLY)"
    fields = {
        "Name": info.name,
        "State": state,
        "Tables present": " & ".join(tables) or "None",
        "Open count": str(info.open_count),
        "Event number": str(info.event_nr),
        "Major, minor": f"{info.major}, {info.minor}",
        "Number of targets": str(info.target_count),
    }
    if info.uuid:
        fields["UUID"] = info.uuid
    return fields


def stripped(output: str) -> list[str]:
    return [line.rstrip() for line in output.splitlines()]


def lines(targets: list[Target]) -> list[str]:
    return [t.line() for t in targets]


def test_dmsetup_reads_what_dmioctl_made(dm: DeviceMapper, prefix: str) -> None:
    name = prefix + "ours"
    dm.create(name, uuid=prefix + "uuid")
    dm.load_table(name, TARGETS)
    dm.resume(name)

    # dmsetup ends a line with no parameters with a space; compare without it.
    assert stripped(dmsetup("table", name)) == lines(dm.table(name))
    assert stripped(dmsetup("status", name)) == lines(dm.status(name))
    fields = info_fields(dmsetup("info", name))
    for key, value in expected_info(dm.info(name)).items():
        assert fields[key] == value, key


def test_dmioctl_reads_what_dmsetup_made(dm: DeviceMapper, prefix: str) -> None:
    name = prefix + "theirs"
    table = "\n".join(lines(TARGETS)) + "\n"
    dmsetup("create", name, "--uuid", prefix + "uuid-theirs", stdin=table)
    try:
        assert lines(dm.table(name)) == table.splitlines()
        assert lines(dm.status(name)) == stripped(dmsetup("status", name))
        fields = info_fields(dmsetup("info", name))
        for key, value in expected_info(dm.info(name)).items():
            assert fields[key] == value, key
        listed = {d.name: d for d in dm.list_devices()}
        assert listed[name].uuid == prefix + "uuid-theirs"

        dmsetup("suspend", name)
        assert dm.info(name).suspended
        assert info_fields(dmsetup("info", name))["State"] == "SUSPENDED"
        dm.resume(name)
        assert info_fields(dmsetup("info", name))["State"] == "ACTIVE"
    finally:
        dmsetup("remove", name)
    assert name not in {d.name for d in dm.list_devices()}
