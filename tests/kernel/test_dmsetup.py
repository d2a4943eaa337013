"""Cross-check with the real dmsetup: each reads what the other made, identically."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from dmioctl import DeviceInfo, DeviceMapper, Target, loop
from dmioctl.cli import main
from dmioctl.loop import LoopDevice
from dmioctl.nodes import node_path
from tests.kernel.support import require, sparse_file

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


def dmioctl(*args: str) -> str:
    """The dmioctl command, in-process like dmsetup off a terminal: stdout is not a tty."""
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result.stdout


@pytest.fixture
def backing(tmp_path: Path) -> Iterator[LoopDevice]:
    """A loop device on a sparse 8 MiB file: a device that is not a device-mapper device."""
    device = loop.attach(sparse_file(tmp_path / "backing", 8 << 20))
    yield device
    loop.detach(device)


@pytest.fixture
def stacked(dm: DeviceMapper, prefix: str, backing: LoopDevice) -> list[str]:
    """Devices using each other and the loop, in every state the tree decorates.

    base uses the loop; mid and other use base; top uses mid and the loop; a
    name long enough that its tree line is cut; a suspended one with a uuid, a
    read-only one, one without a table.
    """
    loop_dev = f"{backing.major}:{backing.minor}"
    long_name = prefix + "l" * (100 - len(prefix))
    tables = {
        prefix + "base": [Target(0, 4096, "linear", f"{loop_dev} 0")],
        prefix + "mid": [Target(0, 2048, "linear", f"{node_path(prefix + 'base')} 0")],
        prefix + "other": [Target(0, 1024, "linear", f"{node_path(prefix + 'base')} 2048")],
        prefix + "top": [
            Target(0, 1024, "linear", f"{node_path(prefix + 'mid')} 0"),
            Target(1024, 1024, "linear", f"{loop_dev} 8192"),
        ],
        long_name: [Target(0, 1024, "linear", f"{node_path(prefix + 'top')} 0")],
        prefix + "susp": [Target(0, 1024, "zero")],
        prefix + "ro": [Target(0, 1024, "error")],
    }
    for name, targets in tables.items():
        dm.create(name, uuid=prefix + "U-susp" if name.endswith("susp") else "")
        dm.load_table(name, targets, read_only=name.endswith("ro"))
        dm.resume(name)
    dm.suspend(prefix + "susp")
    dm.create(prefix + "empty")
    return [*tables, prefix + "empty"]


def test_deps_and_ls_name_devices_as_dmsetup(stacked: list[str]) -> None:
    for naming in ("devno", "devname", "blkdevname", "blk"):
        for name in stacked:
            command = ["deps", "-o", naming, name]
            assert dmioctl(*command) == dmsetup(*command), command
        assert dmioctl("deps", "-o", naming) == dmsetup("deps", "-o", naming), naming
        assert dmioctl("ls", "-o", naming) == dmsetup("ls", "-o", naming), naming
    # What the names look like: a dm device's name, else the kernel's.
    top = stacked[3]
    assert dmioctl("deps", "-o", "devname", top).startswith("2 dependencies\t: (")
    assert f"({stacked[1]})" in dmioctl("deps", "-o", "devname", top)
    assert "(loop" in dmioctl("deps", "-o", "devname", top)
    assert "(dm-" in dmioctl("deps", "-o", "blkdevname", top)


@pytest.mark.parametrize(
    "options",
    [
        [],
        ["-o", "ascii"],
        ["-o", "utf"],
        ["-o", "vt100"],
        ["-o", "inverted"],
        ["-o", "ascii,inverted"],
        ["-o", "compact"],
        ["-o", "ascii,compact,inverted"],
        ["-o", "active,open,rw,uuid"],
        ["-o", "ascii,inverted,rw,open"],
        ["-o", "ascii,blkdevname"],
        ["-o", "blkdevname,nodevice"],
        ["-o", "ascii,nodevice"],
        ["-o", "notrunc"],
        ["-o", "inv,comp,as"],
    ],
)
def test_ls_tree_draws_as_dmsetup(stacked: list[str], options: list[str]) -> None:
    assert dmioctl("ls", "--tree", *options) == dmsetup("ls", "--tree", *options)


def test_ls_tree_cuts_long_lines_as_dmsetup(stacked: list[str]) -> None:
    long_name = stacked[4]
    cut = [line for line in dmsetup("ls", "--tree").splitlines() if line.endswith("...")]
    assert cut, "no tree line was long enough to be cut"
    assert long_name not in dmioctl("ls", "--tree")
    assert long_name in dmioctl("ls", "--tree", "-o", "notrunc")


def test_read_commands_by_uuid_as_dmsetup(dm: DeviceMapper, prefix: str) -> None:
    name, uuid = prefix + "byuuid", prefix + "UUID-1"
    dm.create(name, uuid=uuid)
    dm.load_table(name, TARGETS)
    dm.resume(name)
    for command in (["info"], ["info", "-c"], ["table"], ["status"], ["deps"]):
        assert dmioctl(*command, "-u", uuid) == dmsetup(*command, "-u", uuid), command
        assert dmioctl(*command, "-u", uuid) == dmioctl(*command, name), command


def test_names_are_mangled_as_dmsetup_mangles_them(dm: DeviceMapper, prefix: str) -> None:
    """dmsetup stores "a b" as a\\x20b and shows "a b"; dmioctl finds and shows it so too."""
    theirs, ours = prefix + "a b", prefix + "c d"
    dmsetup("create", theirs, "--table", "0 8 zero")
    # The kernel's name is mangled; the prefix is not, so the fixture still cleans up.
    assert prefix + "a\\x20b" in {d.name for d in dm.list_devices()}
    assert dmioctl("info", theirs) == dmsetup("info", theirs)
    assert dmioctl("info", "-c", theirs) == dmsetup("info", "-c", theirs)
    assert f"{theirs}\t(" in dmioctl("ls")
    assert dmioctl("table", theirs) == dmsetup("table", theirs)

    dmioctl("create", ours, "--table", "0 8 zero")
    assert prefix + "c\\x20d" in {d.name for d in dm.list_devices()}
    assert info_fields(dmsetup("info", ours))["Name"] == ours
    assert dmioctl("info", ours) == dmsetup("info", ours)
    for command in (["ls"], ["info", "-c"], ["table"], ["status"], ["deps", "-o", "devname"]):
        ours_only = [line for line in dmioctl(*command).splitlines() if prefix in line]
        assert ours_only == [line for line in dmsetup(*command).splitlines() if prefix in line]
    assert dmioctl("ls", "--target", "zero") == dmsetup("ls", "--target", "zero")
    assert dmioctl("--manglename", "none", "ls") == dmsetup("--manglename", "none", "ls")


def test_uuids_are_mangled_as_dmsetup_mangles_them(dm: DeviceMapper, prefix: str) -> None:
    theirs, ours = prefix + "u", prefix + "v"
    dmsetup("create", theirs, "--uuid", prefix + "U V", "--table", "0 8 zero")
    assert dm.info(theirs).uuid == prefix + "U\\x20V"
    assert dmioctl("info", "-u", prefix + "U V") == dmsetup("info", "-u", prefix + "U V")

    dmioctl("create", ours, "-u", prefix + "W X", "--table", "0 8 zero")
    assert dm.info(ours).uuid == prefix + "W\\x20X"
    assert dmioctl("info", "-c", ours) == dmsetup("info", "-c", ours)
    assert dmioctl("info", "-u", prefix + "W X") == dmsetup("info", "-u", prefix + "W X")
