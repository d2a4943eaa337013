"""The dmioctl command against an in-memory DeviceMapper: exact output and exit codes."""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from dmioctl import cli
from dmioctl.control import (
    DeviceInfo,
    ListedDevice,
    TargetVersion,
    validate_name,
    validate_uuid,
)
from dmioctl.errors import DeviceBusy, DeviceExists, DMError, InvalidArgument, NoSuchDevice
from dmioctl.names import Mangling, default_mangling, mangle, unmangle
from dmioctl.table import Target, validate
from dmioctl.uapi.dm import DMFlag

# Fake kernel


@dataclass
class FakeDevice:
    name: str
    minor: int
    uuid: str = ""
    live: list[Target] | None = None
    inactive: list[Target] | None = None
    suspended: bool = False
    read_only: bool = False
    open_count: int = 0
    event_nr: int = 0
    deps: list[tuple[int, int]] = field(default_factory=list)
    status: dict[str, str] = field(default_factory=dict)


class FakeDM:
    """Just enough of DeviceMapper for the CLI, keeping state and a log of changes."""

    def __init__(self) -> None:
        self.devices: dict[str, FakeDevice] = {}
        self.calls: list[str] = []
        self.busy_removes = 0
        self.refuse_load = False
        self.replies: dict[str, str | None] = {}
        self.events: list[int] = []

    def __enter__(self) -> FakeDM:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def add(self, name: str, targets: list[Target] | None = None, **kw: object) -> FakeDevice:
        device = FakeDevice(name, minor=len(self.devices), live=targets, **kw)  # type: ignore[arg-type]
        self.devices[name] = device
        return device

    def _get(self, command: str, name: str, uuid: str = "") -> FakeDevice:
        """The device by name or (as the kernel, in preference) by uuid."""
        if uuid:
            validate_uuid(uuid)
            found = [d for d in self.devices.values() if d.uuid == uuid]
            if not found:
                raise NoSuchDevice(command, f"uuid {uuid}", errno.ENXIO)
            return found[0]
        validate_name(name)
        if name not in self.devices:
            raise NoSuchDevice(command, name, errno.ENXIO)
        return self.devices[name]

    def _info(self, d: FakeDevice) -> DeviceInfo:
        flags = DMFlag(0)
        for on, flag in (
            (d.suspended, DMFlag.DM_SUSPEND_FLAG),
            (d.read_only, DMFlag.DM_READONLY_FLAG),
            (d.live is not None, DMFlag.DM_ACTIVE_PRESENT_FLAG),
            (d.inactive is not None, DMFlag.DM_INACTIVE_PRESENT_FLAG),
        ):
            if on:
                flags |= flag
        count = len(d.live or [])
        return DeviceInfo(d.name, d.uuid, 254, d.minor, d.open_count, d.event_nr, count, flags)

    # Reads

    def version(self) -> tuple[int, int, int]:
        return (4, 47, 0)

    def list_versions(self) -> list[TargetVersion]:
        return [TargetVersion("zero", (1, 1, 0)), TargetVersion("thin-pool", (1, 22, 0))]

    def list_devices(self) -> list[ListedDevice]:
        return [
            ListedDevice(d.name, 254, d.minor, d.event_nr, d.uuid) for d in self.devices.values()
        ]

    def info(self, name: str = "", *, uuid: str = "") -> DeviceInfo:
        return self._info(self._get("DM_DEV_STATUS", name, uuid))

    def table(self, name: str = "", *, uuid: str = "", inactive: bool = False) -> list[Target]:
        d = self._get("DM_TABLE_STATUS", name, uuid)
        return list((d.inactive if inactive else d.live) or [])

    def status(
        self, name: str = "", *, uuid: str = "", inactive: bool = False, noflush: bool = False
    ) -> list[Target]:
        d = self._get("DM_TABLE_STATUS", name, uuid)
        self.calls.append(f"status {d.name} noflush={noflush}")
        return [
            Target(t.start, t.length, t.target_type, d.status.get(t.params, ""))
            for t in self.table(d.name, inactive=inactive)
        ]

    def deps(self, name: str = "", *, uuid: str = "") -> list[tuple[int, int]]:
        device = self._get("DM_TABLE_DEPS", name, uuid)
        # As the kernel: no live table, no dependencies reported.
        return list(device.deps) if device.live is not None else []

    # Changes

    def create(self, name: str, *, uuid: str = "", read_only: bool = False) -> DeviceInfo:
        validate_name(name)
        if name in self.devices:
            raise DeviceExists("DM_DEV_CREATE", name, errno.EBUSY)
        self.calls.append(f"create {name} uuid={uuid!r} ro={read_only}")
        return self._info(self.add(name, uuid=uuid))

    def load_table(
        self,
        name: str = "",
        targets: Sequence[Target] = (),
        *,
        uuid: str = "",
        read_only: bool = False,
    ) -> DeviceInfo:
        d = self._get("DM_TABLE_LOAD", name, uuid)
        validate(targets)
        if self.refuse_load:
            raise DMError(f"DM_TABLE_LOAD on {name!r} failed: EINVAL (Invalid argument)")
        self.calls.append(f"load {d.name} {[t.line() for t in targets]} ro={read_only}")
        d.inactive = list(targets)
        return self._info(d)

    def resume(self, name: str = "", *, uuid: str = "") -> DeviceInfo:
        d = self._get("DM_DEV_SUSPEND", name, uuid)
        self.calls.append(f"resume {d.name}")
        if d.inactive is not None:
            d.live, d.inactive = d.inactive, None
        d.suspended = False
        return self._info(d)

    def suspend(
        self,
        name: str = "",
        *,
        uuid: str = "",
        noflush: bool = False,
        skip_lockfs: bool = False,
    ) -> None:
        d = self._get("DM_DEV_SUSPEND", name, uuid)
        d.suspended = True
        self.calls.append(f"suspend {d.name} noflush={noflush} skip_lockfs={skip_lockfs}")

    def remove(
        self,
        name: str = "",
        *,
        uuid: str = "",
        deferred: bool = False,
        retries: int = 0,
        retry_delay: float = 0.2,
    ) -> None:
        d = self._get("DM_DEV_REMOVE", name, uuid)
        self.calls.append(f"remove {d.name} deferred={deferred} retries={retries}")
        if self.busy_removes > retries:
            raise DeviceBusy("DM_DEV_REMOVE", d.name, errno.EBUSY)
        del self.devices[d.name]

    def remove_all(self, *, deferred: bool = False) -> None:
        self.calls.append(f"remove_all deferred={deferred}")
        self.devices = {n: d for n, d in self.devices.items() if d.open_count}

    def rename(
        self, name: str = "", *, uuid: str = "", new_name: str = "", new_uuid: str = ""
    ) -> None:
        d = self._get("DM_DEV_RENAME", name, uuid)
        self.calls.append(f"rename {d.name} new_name={new_name!r} new_uuid={new_uuid!r}")
        if new_name:
            validate_name(new_name)
            self.devices[new_name] = self.devices.pop(d.name)
            d.name = new_name
        else:
            d.uuid = new_uuid

    def clear_table(self, name: str = "", *, uuid: str = "") -> None:
        d = self._get("DM_TABLE_CLEAR", name, uuid)
        d.inactive = None
        self.calls.append(f"clear {d.name}")

    def target_message(
        self, name: str = "", message: str = "", *, uuid: str = "", sector: int = 0
    ) -> str | None:
        d = self._get("DM_TARGET_MSG", name, uuid)
        if sector < 0:
            raise InvalidArgument(f"message sector {sector} must not be negative")
        self.calls.append(f"message {d.name} {sector} {message!r}")
        return self.replies.get(message)

    def wait(self, name: str = "", *, uuid: str = "", event_nr: int = 0) -> None:
        d = self._get("DM_DEV_WAIT", name, uuid)
        self.calls.append(f"wait {d.name} {event_nr}")

    def arm_poll(self) -> None:
        self.calls.append("arm_poll")

    def poll(self, timeout: float | None = None) -> bool:
        if not self.events:
            return False
        self.devices["pool"].event_nr = self.events.pop(0)
        return True


@pytest.fixture
def fake() -> FakeDM:
    return FakeDM()


def fake_block_names(fake: FakeDM, major: int, minor: int) -> cli.BlockNames:
    """sysfs as it would be: dm devices are dm-N on major 254, loops loopN on 7; else unknown."""
    if major == 254:
        names = [d.name for d in fake.devices.values() if d.minor == minor]
        return cli.BlockNames(f"dm-{minor}", names[0] if names else None)
    if major == 7:
        return cli.BlockNames(f"loop{minor}", None)
    return cli.BlockNames(None, None)


def run(
    fake: FakeDM,
    *args: str,
    stdin: str | None = None,
    read_ahead: int = 256,
    columns: int | None = None,
    utf8: bool = True,
) -> Result:
    env = cli.Environment(
        open_control=lambda: fake,  # type: ignore[arg-type,return-value]
        read_ahead=lambda major, minor: read_ahead if read_ahead else None,
        block_names=lambda major, minor: fake_block_names(fake, major, minor),
        terminal_columns=lambda: columns,
        utf8=lambda: utf8,
    )
    return CliRunner().invoke(cli.main, list(args), obj=env, input=stdin)


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.stderr == ""
    return result.stdout


def fails(result: Result) -> str:
    """The one line of a failed command, checked to be the only output."""
    assert result.exit_code == 1, (result.output, result.exception)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dmioctl: ")
    return lines[0]


@pytest.fixture
def stack(fake: FakeDM) -> FakeDM:
    """Devices like those of a thin setup: top -> mid -> (7:0); an empty and a suspended one."""
    fake.add("mid", [Target(0, 8192, "linear", "7:0 0")], deps=[(7, 0)], open_count=1)
    fake.add(
        "top",
        [Target(0, 4096, "linear", "254:0 0"), Target(4096, 4096, "linear", "254:0 4096")],
        uuid="UUID-TOP",
        deps=[(254, 0)],
    )
    fake.add("a-empty")
    fake.add("zero", [Target(0, 2048, "zero")], suspended=True, event_nr=3)
    return fake


# Help


@pytest.mark.parametrize("command", sorted(cli.main.commands))
def test_every_command_has_help_with_an_example(fake: FakeDM, command: str) -> None:
    out = ok(run(fake, command, "--help"))
    assert "Example:\n      dmioctl " in out


def test_main_help_has_an_example(fake: FakeDM) -> None:
    assert "Example:\n      dmioctl " in ok(run(fake, "--help"))


# Read commands


def test_version(fake: FakeDM) -> None:
    out = ok(run(fake, "version")).splitlines()
    assert out[0].startswith("Library version:   dmioctl ")
    assert out[1:] == ["Driver version:    4.47.0"]
    data = json.loads(ok(run(fake, "version", "--json")))
    assert data["driver"] == [4, 47, 0]
    assert set(data) == {"library", "driver"}


def test_targets(fake: FakeDM) -> None:
    assert ok(run(fake, "targets")) == "zero             v1.1.0\nthin-pool        v1.22.0\n"
    assert json.loads(ok(run(fake, "targets", "--json"))) == [
        {"name": "zero", "version": [1, 1, 0]},
        {"name": "thin-pool", "version": [1, 22, 0]},
    ]


def test_ls_sorted_by_name(stack: FakeDM) -> None:
    assert ok(run(stack, "ls")) == (
        "a-empty\t(254:2)\nmid\t(254:0)\ntop\t(254:1)\nzero\t(254:3)\n"
    )


def test_ls_without_devices(fake: FakeDM) -> None:
    assert ok(run(fake, "ls")) == "No devices found\n"
    assert ok(run(fake, "ls", "--tree")) == "No devices found\n"
    assert ok(run(fake, "info")) == "No devices found\n"
    assert ok(run(fake, "info", "-c")) == "No devices found\n"
    assert ok(run(fake, "table")) == "No devices found\n"
    assert ok(run(fake, "deps")) == "No devices found\n"
    assert json.loads(ok(run(fake, "ls", "--json"))) == []


def test_ls_target_uses_dmsetups_comma_format(stack: FakeDM) -> None:
    assert ok(run(stack, "ls", "--target", "linear")) == "mid\t(254, 0)\ntop\t(254, 1)\n"
    assert ok(run(stack, "ls", "--target", "thin")) == ""


def test_ls_target_without_devices_says_so_as_dmsetup(fake: FakeDM) -> None:
    assert ok(run(fake, "ls", "--target", "zero")) == "No devices found\n"


def test_ls_tree(stack: FakeDM) -> None:
    assert ok(run(stack, "ls", "--tree")) == (
        "a-empty (254:2)\n"
        "top (254:1)\n"
        " \u2514\u2500mid (254:0)\n"
        "    \u2514\u2500 (7:0)\n"
        "zero (254:3)\n"
    )
    assert ok(run(stack, "ls", "--tree", "-o", "ascii")) == (
        "a-empty (254:2)\ntop (254:1)\n `-mid (254:0)\n    `- (7:0)\nzero (254:3)\n"
    )


def test_ls_tree_bad_option(fake: FakeDM) -> None:
    result = run(fake, "ls", "--tree", "-o", "ascii,vt200")
    assert result.exit_code == 2
    assert "unknown tree option 'vt200'; known: device, blkdevname, nodevice," in result.stderr
    # Words dmsetup accepts but draws nothing for are refused rather than ignored.
    assert run(fake, "ls", "--tree", "-o", "table").exit_code == 2


@pytest.fixture
def branches(fake: FakeDM) -> FakeDM:
    """b uses a and c; a uses two loops, c one; d has no table (so uses nothing)."""
    table = [Target(0, 8, "linear", "7:0 0")]
    fake.add("a", table, deps=[(7, 0), (7, 1)], open_count=1)
    fake.add("b", table, deps=[(254, 0), (254, 2)], uuid="B-1")
    fake.add("c", table, deps=[(7, 2)], suspended=True, read_only=True)
    fake.add("d", deps=[(7, 3)])  # no live table: no dependencies
    return fake


def test_ls_tree_branches(branches: FakeDM) -> None:
    assert ok(run(branches, "ls", "--tree", "-o", "ascii")) == (
        "b (254:1)\n"
        " |-a (254:0)\n"
        " |  |- (7:0)\n"
        " |  `- (7:1)\n"
        " `-c (254:2)\n"
        "    `- (7:2)\n"
        "d (254:3)\n"
    )


def test_ls_tree_inverted(branches: FakeDM) -> None:
    """Each device over its users; the devices that use none first, in the order met."""
    expected = (
        " (7:0)\n"
        " `-a (254:0)\n"
        "    `-b (254:1)\n"
        " (7:1)\n"
        " `-a (254:0)\n"
        "    `-b (254:1)\n"
        " (7:2)\n"
        " `-c (254:2)\n"
        "    `-b (254:1)\n"
        "d (254:3)\n"
    )
    assert ok(run(branches, "ls", "--tree", "-o", "ascii,inverted")) == expected
    assert ok(run(branches, "ls", "--tree", "-o", "as,inv")) == expected
    tree = json.loads(ok(run(branches, "ls", "--tree", "-o", "inverted", "--json")))
    assert [(t["name"], t["minor"]) for t in tree] == [(None, 0), (None, 1), (None, 2), ("d", 3)]
    assert tree[2]["children"] == [
        {
            "name": "c",
            "display_name": "c",
            "major": 254,
            "minor": 2,
            "children": [
                {"name": "b", "display_name": "b", "major": 254, "minor": 1, "children": []}
            ],
        }
    ]


def test_ls_tree_inverted_orders_users_as_met(fake: FakeDM) -> None:
    """Users of a device come in the order a name-ordered, depth-first walk meets them."""
    table = [Target(0, 8, "linear", "7:0 0")]
    fake.add("z-top", table, deps=[(254, 2), (7, 0)])
    fake.add("m-mid", table, deps=[(7, 0)])
    fake.add("a-low", table, deps=[(254, 1)])
    assert ok(run(fake, "ls", "--tree", "-o", "ascii,inverted")) == (
        " (7:0)\n |-m-mid (254:1)\n |  `-a-low (254:2)\n |     `-z-top (254:0)\n `-z-top (254:0)\n"
    )


def test_ls_tree_compact(branches: FakeDM) -> None:
    """A first child on its parent's line; later lines indented by what each level drew."""
    assert ok(run(branches, "ls", "--tree", "-o", "ascii,compact")) == (
        "b (254:1)-+-a (254:0)-+- (7:0)\n"
        "          | " + " " * 13 + "`- (7:1)\n"
        "          `-c (254:2)--- (7:2)\n"
        "d (254:3)\n"
    )
    assert ok(run(branches, "ls", "--tree", "-o", "compact")).splitlines()[0] == (
        "b (254:1)\u2500\u252c\u2500a (254:0)\u2500\u252c\u2500 (7:0)"
    )


def test_ls_tree_attributes(branches: FakeDM) -> None:
    """active, rw, open and uuid in dmsetup's order; none on a non-dm device; no compact."""
    out = ok(run(branches, "ls", "--tree", "-o", "ascii,uuid,open,rw,active,compact"))
    assert out == (
        "b (254:1) [ACTIVE, RW, 0, B-1]\n"
        " |-a (254:0) [ACTIVE, RW, 1, ]\n"
        " |  |- (7:0)\n"
        " |  `- (7:1)\n"
        " `-c (254:2) [SUSPENDED, RO, 0, ]\n"
        "    `- (7:2)\n"
        "d (254:3) [ACTIVE, RW, 0, ]\n"
    )
    assert ok(run(branches, "ls", "--tree", "-o", "ascii,uuid")).splitlines()[1] == (
        " |-a (254:0) []"
    )


def test_ls_tree_device_naming(branches: FakeDM) -> None:
    assert ok(run(branches, "ls", "--tree", "-o", "ascii,blkdevname")).splitlines()[:3] == [
        "b <dm-1> (254:1)",
        " |-a <dm-0> (254:0)",
        " |  |- <loop0> (7:0)",
    ]
    assert ok(run(branches, "ls", "--tree", "-o", "ascii,blkdevname,nodevice")).splitlines()[
        :3
    ] == ["b <dm-1>", " |-a <dm-0>", " |  |- <loop0>"]
    # With neither, a device that is not a dm device is left out; its siblings are
    # drawn as if it were there, as dmsetup draws them.
    assert ok(run(branches, "ls", "--tree", "-o", "ascii,nodevice")) == ("b\n |-a\n `-c\nd\n")


def test_ls_tree_character_sets(stack: FakeDM) -> None:
    assert ok(run(stack, "ls", "--tree", utf8=False)) == ok(
        run(stack, "ls", "--tree", "-o", "ascii")
    )
    assert ok(run(stack, "ls", "--tree", "-o", "ascii,utf", utf8=False)) == ok(
        run(stack, "ls", "--tree")
    )
    vt100 = ok(run(stack, "ls", "--tree", "-o", "vt100")).splitlines()
    assert vt100[2] == " \033(0\017mq\033(Bmid (254:0)"


def test_ls_tree_truncates_long_lines(fake: FakeDM) -> None:
    fake.add("x" * 90, [Target(0, 1, "zero")])
    fake.add("y" * 72, [Target(0, 1, "zero")])  # 72 + " (254:1)" = 80: fits
    fake.add("z" * 79 + "\u00e9", [Target(0, 1, "zero")])
    lines = ok(run(fake, "ls", "--tree")).splitlines()
    assert lines[0] == "x" * 79 + "..."
    assert lines[1] == "y" * 72 + " (254:1)"
    assert ok(run(fake, "ls", "--tree", "-o", "nodevice")).splitlines()[2] == "z" * 79 + "..."
    # On a terminal, 3 short of its width; vt100 drawing does not ask it.
    assert ok(run(fake, "ls", "--tree", columns=43)).splitlines()[1] == "y" * 39 + "..."
    assert ok(run(fake, "ls", "--tree", "-o", "vt100", columns=43)).splitlines()[1] == (
        "y" * 72 + " (254:1)"
    )
    assert ok(run(fake, "ls", "--tree", "-o", "notrunc")).splitlines()[0] == (
        "x" * 90 + " (254:0)"
    )


def test_ls_naming(stack: FakeDM) -> None:
    assert ok(run(stack, "ls", "-o", "blkdevname")) == (
        "a-empty\t(dm-2)\nmid\t(dm-0)\ntop\t(dm-1)\nzero\t(dm-3)\n"
    )
    assert ok(run(stack, "ls", "-o", "devname")).splitlines()[1] == "mid\t(mid)"
    assert ok(run(stack, "ls", "-o", "blkdevname,devno")) == ok(run(stack, "ls"))
    assert run(stack, "ls", "-o", "ascii").exit_code == 2


def test_ls_json(stack: FakeDM) -> None:
    data = json.loads(ok(run(stack, "ls", "--json")))
    assert data[1] == {
        "name": "mid",
        "display_name": "mid",
        "major": 254,
        "minor": 0,
        "uuid": "",
        "event_nr": 0,
    }
    assert [d["name"] for d in data] == ["a-empty", "mid", "top", "zero"]
    tree = json.loads(ok(run(stack, "ls", "--tree", "--json")))
    assert tree[1] == {
        "name": "top",
        "display_name": "top",
        "major": 254,
        "minor": 1,
        "children": [
            {
                "name": "mid",
                "display_name": "mid",
                "major": 254,
                "minor": 0,
                "children": [
                    {"name": None, "display_name": None, "major": 7, "minor": 0, "children": []}
                ],
            }
        ],
    }


def test_info_block(stack: FakeDM) -> None:
    assert ok(run(stack, "info", "top")) == (
        "Name:              top\n"
        "State:             ACTIVE\n"
        "Read Ahead:        256\n"
        "Tables present:    LIVE\n"
        "Open count:        0\n"
        "Event number:      0\n"
        "Major, minor:      254, 1\n"
        "Number of targets: 2\n"
        "UUID: UUID-TOP\n"
        "\n"
    )


def test_info_block_states(stack: FakeDM) -> None:
    stack.devices["zero"].read_only = True
    stack.devices["zero"].inactive = [Target(0, 1, "zero")]
    out = ok(run(stack, "info", "zero", read_ahead=0))
    assert out.splitlines()[1:3] == [
        "State:             SUSPENDED (READ-ONLY)",
        "Tables present:    LIVE & INACTIVE",
    ]
    assert "Tables present:    None\n" in ok(run(stack, "info", "a-empty"))


def test_info_columns(stack: FakeDM) -> None:
    assert ok(run(stack, "info", "-c")) == (
        "Name             Maj Min Stat Open Targ Event  UUID                            \n"
        "a-empty          254   2 ---w    0    0      0                                 \n"
        "mid              254   0 L--w    1    1      0                                 \n"
        "top              254   1 L--w    0    2      0 UUID-TOP                        \n"
        "zero             254   3 L-sw    0    1      3                                 \n"
    )


def test_info_columns_widen_for_long_values(fake: FakeDM) -> None:
    fake.add("a-rather-long-device-name", [Target(0, 1, "zero")])
    assert ok(run(fake, "info", "-c", "-o", "name,attr")) == (
        "Name                      Stat\na-rather-long-device-name L--w\n"
    )


def test_info_columns_noheadings_and_separator(stack: FakeDM) -> None:
    assert ok(run(stack, "info", "-c", "--noheadings", "top")) == (
        "top:254:1:L--w:0:2:0:UUID-TOP\n"
    )
    assert ok(run(stack, "info", "-c", "-o", "name,attr,segments", "--separator", ",")) == (
        "Name,Stat,Targ\na-empty,---w,0\nmid,L--w,1\ntop,L--w,2\nzero,L-sw,1\n"
    )


def test_info_columns_unknown_field(stack: FakeDM) -> None:
    result = run(stack, "info", "-c", "-o", "name,colour")
    assert result.exit_code == 2
    assert "unknown field 'colour'" in result.stderr


def test_info_json(stack: FakeDM) -> None:
    assert json.loads(ok(run(stack, "info", "--json", "zero", read_ahead=0))) == [
        {
            "name": "zero",
            "display_name": "zero",
            "uuid": "",
            "major": 254,
            "minor": 3,
            "open_count": 0,
            "event_nr": 3,
            "target_count": 1,
            "suspended": True,
            "read_only": False,
            "live_table": True,
            "inactive_table": False,
            "deferred_remove": False,
            "read_ahead": None,
        }
    ]


def test_table(stack: FakeDM) -> None:
    assert ok(run(stack, "table", "top")) == "0 4096 linear 254:0 0\n4096 4096 linear 254:0 4096\n"
    assert ok(run(stack, "table")) == (
        "a-empty: \n"
        "mid: 0 8192 linear 7:0 0\n"
        "top: 0 4096 linear 254:0 0\n"
        "top: 4096 4096 linear 254:0 4096\n"
        "zero: 0 2048 zero \n"
    )
    assert ok(run(stack, "table", "a-empty")) == "\n"
    assert ok(run(stack, "table", "--target", "zero")) == "zero: 0 2048 zero \n"


def test_table_inactive(stack: FakeDM) -> None:
    stack.devices["zero"].inactive = [Target(0, 4096, "error")]
    assert ok(run(stack, "table", "--inactive", "zero")) == "0 4096 error \n"


def test_table_hides_crypt_keys(fake: FakeDM) -> None:
    params = "aes-xts-plain64 00112233 0 7:0 0"
    fake.add("c", [Target(0, 8, "crypt", params)])
    fake.add("k", [Target(0, 8, "crypt", "aes-xts-plain64 :32:logon:my:key 0 7:0 0")])
    assert ok(run(fake, "table", "c")) == "0 8 crypt aes-xts-plain64 00000000 0 7:0 0\n"
    assert ok(run(fake, "table", "c", "--showkeys")) == f"0 8 crypt {params}\n"
    assert ok(run(fake, "table", "k")) == "0 8 crypt aes-xts-plain64 :32:logon:my:key 0 7:0 0\n"
    assert "00112233" not in ok(run(fake, "table", "--json"))


def test_table_json(stack: FakeDM) -> None:
    assert json.loads(ok(run(stack, "table", "--json", "mid"))) == [
        {
            "name": "mid",
            "display_name": "mid",
            "targets": [{"start": 0, "length": 8192, "type": "linear", "params": "7:0 0"}],
        }
    ]


def test_status(stack: FakeDM) -> None:
    stack.devices["mid"].status = {"7:0 0": ""}
    stack.devices["zero"].live = [Target(0, 2048, "thin-pool", "p")]
    stack.devices["zero"].status = {"p": "1 10/100 20/200 - rw discard_passdown"}
    assert ok(run(stack, "status", "--target", "thin-pool")) == (
        "zero: 0 2048 thin-pool 1 10/100 20/200 - rw discard_passdown\n"
    )
    assert ok(run(stack, "status", "mid")) == "0 8192 linear \n"
    assert ok(run(stack, "status", "--noflush", "mid"))
    assert "status mid noflush=True" in stack.calls
    assert json.loads(ok(run(stack, "status", "--json", "zero"))) == [
        {
            "name": "zero",
            "display_name": "zero",
            "targets": [
                {
                    "start": 0,
                    "length": 2048,
                    "type": "thin-pool",
                    "status": "1 10/100 20/200 - rw discard_passdown",
                }
            ],
        }
    ]


def test_deps(stack: FakeDM) -> None:
    assert ok(run(stack, "deps", "mid")) == "1 dependencies\t: (7, 0)\n"
    assert ok(run(stack, "deps")) == (
        "a-empty: 0 dependencies\t:\n"
        "mid: 1 dependencies\t: (7, 0)\n"
        "top: 1 dependencies\t: (254, 0)\n"
        "zero: 0 dependencies\t:\n"
    )
    assert json.loads(ok(run(stack, "deps", "--json", "top"))) == [
        {
            "name": "top",
            "display_name": "top",
            "deps": [
                {
                    "major": 254,
                    "minor": 0,
                    "name": "mid",
                    "display_name": "mid",
                    "kernel_name": "dm-0",
                }
            ],
        }
    ]
    assert json.loads(ok(run(stack, "deps", "--json", "mid")))[0]["deps"] == [
        {"major": 7, "minor": 0, "name": "loop0", "display_name": "loop0", "kernel_name": "loop0"}
    ]


def test_deps_naming(stack: FakeDM) -> None:
    """devname: a dm device's name, another's kernel name; blkdevname: kernel names."""
    assert ok(run(stack, "deps", "-o", "devname", "top")) == "1 dependencies\t: (mid)\n"
    assert ok(run(stack, "deps", "-o", "devname", "mid")) == "1 dependencies\t: (loop0)\n"
    assert ok(run(stack, "deps", "-o", "blkdevname", "top")) == "1 dependencies\t: (dm-0)\n"
    assert ok(run(stack, "deps", "-o", "blk", "top")) == "1 dependencies\t: (dm-0)\n"
    assert ok(run(stack, "deps", "-o", "devname,devno", "top")) == "1 dependencies\t: (254, 0)\n"
    assert ok(run(stack, "deps", "-o", "devname")) == (
        "a-empty: 0 dependencies\t:\n"
        "mid: 1 dependencies\t: (loop0)\n"
        "top: 1 dependencies\t: (mid)\n"
        "zero: 0 dependencies\t:\n"
    )
    # A device sysfs does not know is shown by number.
    stack.devices["mid"].deps = [(8, 16)]
    assert ok(run(stack, "deps", "-o", "devname", "mid")) == "1 dependencies\t: (8, 16)\n"
    result = run(stack, "deps", "-o", "name", "mid")
    assert result.exit_code == 2
    assert "unknown option 'name'; known: devno, blkdevname, devname" in result.stderr


# Errors


def test_unknown_device_is_one_line(stack: FakeDM) -> None:
    for command in ("info", "table", "status", "deps", "resume", "remove", "clear"):
        line = fails(run(stack, command, "nosuch"))
        assert line == (
            f"dmioctl: {line.split()[1]} on 'nosuch' failed: ENXIO (No such device or address)"
        )


def test_control_file_that_cannot_be_opened(fake: FakeDM) -> None:
    def refuse() -> FakeDM:
        raise PermissionError(errno.EACCES, "Permission denied", "/dev/mapper/control")

    env = cli.Environment(open_control=refuse)  # type: ignore[arg-type]
    result = CliRunner().invoke(cli.main, ["ls"], obj=env)
    assert fails(result) == (
        "dmioctl: cannot open the device-mapper control file: Permission denied"
    )


def test_verbose_logs_debug_lines(fake: FakeDM, monkeypatch: pytest.MonkeyPatch) -> None:
    def version() -> tuple[int, int, int]:
        logging.getLogger("dmioctl.ioctl").debug("DM_VERSION flags=%s", "none")
        return (4, 47, 0)

    monkeypatch.setattr(fake, "version", version)
    assert run(fake, "version").stderr == ""
    result = run(fake, "-v", "version")
    assert result.exit_code == 0
    assert result.stderr == "dmioctl: dmioctl.ioctl: DM_VERSION flags=none\n"
    assert run(fake, "version").stderr == ""


# create and load


def test_create_from_option(fake: FakeDM) -> None:
    ok(run(fake, "create", "d", "-u", "U-1", "--table", "0 2048 zero"))
    assert fake.calls == [
        "create d uuid='U-1' ro=False",
        "load d ['0 2048 zero'] ro=False",
        "resume d",
    ]
    assert fake.devices["d"].live == [Target(0, 2048, "zero")]


def test_create_from_file_and_stdin(fake: FakeDM, tmp_path: Path) -> None:
    path = tmp_path / "t"
    path.write_text("# two\n0 10 zero\n10 20 error\n")
    ok(run(fake, "create", "f", str(path), "-r"))
    assert fake.devices["f"].live == [Target(0, 10, "zero"), Target(10, 20, "error")]
    assert "load f ['0 10 zero', '10 20 error'] ro=True" in fake.calls
    ok(run(fake, "create", "s", stdin="0 8 zero\n"))
    assert fake.devices["s"].live == [Target(0, 8, "zero")]


def test_create_notable(fake: FakeDM) -> None:
    ok(run(fake, "create", "n", "--notable"))
    assert fake.calls == ["create n uuid='' ro=False"]
    assert fake.devices["n"].live is None
    assert fails(run(fake, "create", "m", "--notable", "--table", "0 1 zero")) == (
        "dmioctl: --notable takes no table"
    )


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("0 2048 zero\n2048 x error\n", "table line 2: length:"),
        ("0 -5 zero", "table line 1: length:"),
        ("0 2048\n", "table line 1: target type: missing"),
        ("0 10 zero\n20 10 zero\n", "starts at sector 20, expected 10"),
        ("", "the table is empty"),
        ("0 8 thin-pool /dev/a /dev/b 100 0", "data block size 100 sectors is not a multiple"),
        (
            "0 8 thin-pool /dev/a /dev/b 128 0 5 read_only skip_block_zeroing ignore_discard "
            "no_discard_passdown error_if_no_space",
            "number of feature args: 5 is larger than 4",
        ),
        ("0 8 thin 253:0 16777216", "device id"),
        ("0 8 linear /dev/a", "offset: missing"),
    ],
)
def test_create_bad_table_changes_nothing(fake: FakeDM, table: str, message: str) -> None:
    line = fails(run(fake, "create", "d", "--table", table))
    assert message in line
    assert fake.calls == []
    assert fake.devices == {}


def test_create_keeps_unknown_target_types_verbatim(fake: FakeDM) -> None:
    run(fake, "create", "d", "--table", "0 8 someday-target any  params\n")
    assert fake.devices["d"].live == [Target(0, 8, "someday-target", "any  params")]


def test_create_name_too_long(fake: FakeDM) -> None:
    line = fails(run(fake, "create", "x" * 128, "--table", "0 1 zero"))
    assert line == f"dmioctl: device name {'x' * 128!r} must be 1 to 127 bytes, is 128"
    assert fake.devices == {}


def test_create_table_and_file_conflict(fake: FakeDM, tmp_path: Path) -> None:
    (tmp_path / "t").write_text("0 1 zero\n")
    line = fails(run(fake, "create", "d", str(tmp_path / "t"), "--table", "0 1 zero"))
    assert line == "dmioctl: give the table either with --table or as FILE, not both"


def test_create_refused_by_kernel_removes_the_device(fake: FakeDM) -> None:
    fake.refuse_load = True
    line = fails(run(fake, "create", "d", "--table", "0 1 linear /dev/nosuch 0"))
    assert line == "dmioctl: DM_TABLE_LOAD on 'd' failed: EINVAL (Invalid argument)"
    assert fake.calls == ["create d uuid='' ro=False", "remove d deferred=False retries=0"]
    assert fake.devices == {}


def test_create_existing(stack: FakeDM) -> None:
    line = fails(run(stack, "create", "mid", "--table", "0 1 zero"))
    assert line == "dmioctl: DM_DEV_CREATE on 'mid' failed: EBUSY (Device or resource busy)"
    assert stack.devices["mid"].live == [Target(0, 8192, "linear", "7:0 0")]


@pytest.mark.parametrize("verb", ["load", "reload"])
def test_load(stack: FakeDM, verb: str) -> None:
    ok(run(stack, verb, "zero", "--table", "0 4096 error"))
    assert stack.devices["zero"].inactive == [Target(0, 4096, "error")]
    assert stack.devices["zero"].live == [Target(0, 2048, "zero")]
    assert "table line 1: start" in fails(run(stack, verb, "zero", "--table", "x 1 zero"))


# Other changes


def test_suspend_resume(stack: FakeDM) -> None:
    ok(run(stack, "suspend", "--noflush", "--nolockfs", "mid"))
    assert stack.devices["mid"].suspended
    ok(run(stack, "suspend", "top"))
    assert stack.calls[-2:] == [
        "suspend mid noflush=True skip_lockfs=True",
        "suspend top noflush=False skip_lockfs=False",
    ]
    ok(run(stack, "resume", "mid"))
    assert not stack.devices["mid"].suspended


def test_remove(stack: FakeDM) -> None:
    ok(run(stack, "remove", "--deferred", "zero"))
    assert stack.calls == ["remove zero deferred=True retries=0"]
    assert "zero" not in stack.devices


def test_remove_retry(stack: FakeDM) -> None:
    stack.busy_removes = 3
    line = fails(run(stack, "remove", "top"))
    assert line == "dmioctl: DM_DEV_REMOVE on 'top' failed: EBUSY (Device or resource busy)"
    ok(run(stack, "remove", "--retry", "top"))
    assert stack.calls[-1] == f"remove top deferred=False retries={cli.REMOVE_RETRIES - 1}"


def test_remove_force_loads_error_target_first(stack: FakeDM) -> None:
    ok(run(stack, "remove", "-f", "top"))
    assert stack.calls == [
        "load top ['0 8192 error'] ro=False",
        "resume top",
        "remove top deferred=False retries=0",
    ]
    ok(run(stack, "remove", "-f", "a-empty"))
    assert stack.calls[-1] == "remove a-empty deferred=False retries=0"


def test_remove_all(stack: FakeDM) -> None:
    ok(run(stack, "remove_all", "--deferred"))
    assert stack.calls == ["remove_all deferred=True"]
    assert list(stack.devices) == ["mid"]


def test_rename(stack: FakeDM) -> None:
    ok(run(stack, "rename", "zero", "one"))
    assert "one" in stack.devices
    ok(run(stack, "rename", "one", "--setuuid", "U-1"))
    assert stack.devices["one"].uuid == "U-1"
    assert fails(run(stack, "rename", "one", "a/b")).startswith("dmioctl: device name 'a/b'")


def test_clear(stack: FakeDM) -> None:
    stack.devices["zero"].inactive = [Target(0, 1, "zero")]
    ok(run(stack, "clear", "zero"))
    assert stack.devices["zero"].inactive is None


def test_message(stack: FakeDM) -> None:
    stack.replies = {"stats": "3 4", "none": None, "nl": "a\nb\n"}
    assert ok(run(stack, "message", "zero", "0", "create_thin", "1")) == ""
    assert stack.calls[-1] == "message zero 0 'create_thin 1'"
    assert ok(run(stack, "message", "zero", "0", "stats")) == "3 4\n"
    assert ok(run(stack, "message", "zero", "0", "nl")) == "a\nb\n"
    assert fails(run(stack, "message", "zero", "-1", "x")) == (
        "dmioctl: message sector -1 must not be negative"
    )
    ok(run(stack, "message", "zero", "0", "--flag", "-x"))
    assert stack.calls[-1] == "message zero 0 '--flag -x'"


def test_wait(stack: FakeDM) -> None:
    ok(run(stack, "wait", "zero", "3"))
    assert stack.calls == ["wait zero 3"]


def test_wait_with_timeout(fake: FakeDM) -> None:
    fake.add("pool", event_nr=5)
    assert fails(run(fake, "wait", "pool", "5", "--timeout", "0.01")) == (
        "dmioctl: no event on 'pool' within 0.01 s"
    )
    fake.events = [5, 6]
    ok(run(fake, "wait", "pool", "5", "--timeout", "10"))
    assert fake.devices["pool"].event_nr == 6
    ok(run(fake, "wait", "pool", "--timeout", "0"))


def test_mknodes(stack: FakeDM, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[tuple[str, int, int]] = []
    monkeypatch.setattr(cli.nodes, "created", lambda n, ma, mi: made.append((n, ma, mi)))
    monkeypatch.setattr(cli.nodes, "udev_running", lambda: True)
    ok(run(stack, "mknodes", "top"))
    assert made == [("top", 254, 1)]
    ok(run(stack, "mknodes"))
    assert len(made) == 5


def test_mknodes_removes_stale_nodes(
    fake: FakeDM, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake.add("live")
    for entry in ("control", "live", "gone"):
        (tmp_path / entry).symlink_to("/dev/null")
    (tmp_path / "not-a-node").write_text("")
    removed: list[str] = []
    monkeypatch.setattr(cli.nodes, "MAPPER_DIR", str(tmp_path))
    monkeypatch.setattr(cli.nodes, "created", lambda *a: None)
    monkeypatch.setattr(cli.nodes, "udev_running", lambda: False)
    monkeypatch.setattr(cli.nodes, "removed", removed.append)
    ok(run(fake, "mknodes"))
    assert removed == ["gone"]


def test_usage_error_is_click_status_2(fake: FakeDM) -> None:
    result = run(fake, "create")
    assert result.exit_code == 2
    assert "Missing argument 'NAME'" in result.stderr
    assert isinstance(cli.main, click.Group)


# Naming a device by uuid


def test_read_commands_by_uuid(stack: FakeDM) -> None:
    assert ok(run(stack, "info", "-u", "UUID-TOP")) == ok(run(stack, "info", "top"))
    assert ok(run(stack, "table", "--uuid", "UUID-TOP")) == ok(run(stack, "table", "top"))
    assert ok(run(stack, "status", "-u", "UUID-TOP")) == ok(run(stack, "status", "top"))
    assert ok(run(stack, "deps", "-u", "UUID-TOP", "-o", "devname")) == (
        "1 dependencies\t: (mid)\n"
    )
    for command in ("info", "table", "status", "deps"):
        by_uuid = json.loads(ok(run(stack, command, "--json", "-u", "UUID-TOP")))
        assert by_uuid == json.loads(ok(run(stack, command, "--json", "top"))), command
        assert by_uuid[0]["name"] == "top"


def test_changes_by_uuid(stack: FakeDM, tmp_path: Path) -> None:
    ok(run(stack, "suspend", "-u", "UUID-TOP", "--nolockfs"))
    ok(run(stack, "resume", "-u", "UUID-TOP"))
    (tmp_path / "t").write_text("0 16 zero\n")
    ok(run(stack, "load", "-u", "UUID-TOP", str(tmp_path / "t")))
    ok(run(stack, "clear", "-u", "UUID-TOP"))
    ok(run(stack, "reload", "-u", "UUID-TOP", "--table", "0 8 error"))
    ok(run(stack, "resume", "-u", "UUID-TOP"))
    ok(run(stack, "message", "-u", "UUID-TOP", "0", "hello", "-x"))
    ok(run(stack, "wait", "-u", "UUID-TOP", "3"))
    ok(run(stack, "rename", "-u", "UUID-TOP", "renamed"))
    assert stack.calls == [
        "suspend top noflush=False skip_lockfs=True",
        "resume top",
        "load top ['0 16 zero'] ro=False",
        "clear top",
        "load top ['0 8 error'] ro=False",
        "resume top",
        "message top 0 'hello -x'",
        "wait top 3",
        "rename top new_name='renamed' new_uuid=''",
    ]
    assert stack.devices["renamed"].live == [Target(0, 8, "error")]
    ok(run(stack, "remove", "-f", "-u", "UUID-TOP"))
    assert stack.calls[-3:] == [
        "load renamed ['0 8 error'] ro=False",
        "resume renamed",
        "remove renamed deferred=False retries=0",
    ]
    assert "renamed" not in stack.devices


def test_wait_timeout_by_uuid(stack: FakeDM) -> None:
    assert fails(run(stack, "wait", "-u", "UUID-TOP", "0", "--timeout", "0")) == (
        "dmioctl: no event on uuid 'UUID-TOP' within 0 s"
    )


def test_mknodes_by_uuid(stack: FakeDM, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[tuple[str, int, int]] = []
    monkeypatch.setattr(cli.nodes, "created", lambda n, ma, mi: made.append((n, ma, mi)))
    ok(run(stack, "mknodes", "-u", "UUID-TOP"))
    assert made == [("top", 254, 1)]


def test_create_uuid_is_the_new_devices(fake: FakeDM) -> None:
    ok(run(fake, "create", "d", "--uuid", "NEW-1", "--table", "0 1 zero"))
    assert fake.devices["d"].uuid == "NEW-1"


@pytest.mark.parametrize(
    "args",
    [
        ["info", "top", "-u", "UUID-TOP"],
        ["table", "-u", "UUID-TOP", "top"],
        ["suspend", "top", "-u", "UUID-TOP"],
        ["remove", "top", "--uuid", "UUID-TOP"],
        ["rename", "top", "new", "-u", "UUID-TOP"],
        ["wait", "top", "3", "-u", "UUID-TOP"],
        ["load", "top", "file", "-u", "UUID-TOP"],
    ],
)
def test_name_and_uuid_together_is_one_line(stack: FakeDM, args: list[str]) -> None:
    assert fails(run(stack, *args)) == ("dmioctl: name the device by NAME or by -u UUID, not both")
    assert stack.calls == []
    assert stack.devices["top"].live is not None


@pytest.mark.parametrize(
    "command", ["suspend", "resume", "remove", "clear", "load", "reload", "wait"]
)
def test_no_device_is_one_line(stack: FakeDM, command: str) -> None:
    assert fails(run(stack, command, stdin="0 1 zero\n")) == (
        "dmioctl: no device given: name it by NAME or by -u UUID"
    )
    assert stack.calls == []


def test_bad_or_unknown_uuid_is_one_line(stack: FakeDM) -> None:
    assert fails(run(stack, "info", "-u", "")).startswith("dmioctl: uuid '' must be 1 to 128")
    assert fails(run(stack, "remove", "-u", "NOSUCH")) == (
        "dmioctl: DM_DEV_REMOVE on 'uuid NOSUCH' failed: ENXIO (No such device or address)"
    )
    assert fails(run(stack, "info", "")).startswith("dmioctl: device name '' must be")
    assert stack.calls == []


def test_help_shows_name_or_uuid(fake: FakeDM) -> None:
    out = ok(run(fake, "rename", "--help"))
    assert "Usage: dmioctl rename [OPTIONS] NAME NEW" in out
    assert "-u, --uuid UUID" in out
    assert "Usage: dmioctl info [OPTIONS] [NAME]" in ok(run(fake, "info", "--help"))
    assert "the uuid" not in ok(run(fake, "create", "--help")).lower().split("-u, --uuid")[0]


# Name mangling (libdm-common.c mangle_string / unmangle_string)


@pytest.mark.parametrize(
    ("name", "auto", "hex_"),
    [
        ("plain-name_1.0:x=y@z#w+v", "plain-name_1.0:x=y@z#w+v", "plain-name_1.0:x=y@z#w+v"),
        ("a b", "a\\x20b", "a\\x20b"),
        ("a~b!", "a\\x7eb\\x21", "a\\x7eb\\x21"),
        ("x\\y", "x\\x5cy", "x\\x5cy"),
        ("a\\x20b", "a\\x20b", "a\\x5cx20b"),
        ("x\\xzz", "x\\xzz", "x\\x5cxzz"),
        ("\u00fc", "\\xc3\\xbc", "\\xc3\\xbc"),
        ("raw\udcff", "raw\\xff", "raw\\xff"),
        ("", "", ""),
    ],
)
def test_mangle_table(name: str, auto: str, hex_: str) -> None:
    assert mangle(name, Mangling.AUTO) == auto
    assert mangle(name, Mangling.HEX) == hex_
    assert mangle(name, Mangling.NONE) == name


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("e\\x20f g", "mixes mangled and unmangled"),
        ("e f\\x20g", "mixes mangled and unmangled"),
        ("x\\x2", "mixes mangled and unmangled"),
        ("h\\x5cxi", "mangled more than once"),
    ],
)
def test_mangle_auto_refuses_what_libdm_refuses(name: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        mangle(name, Mangling.AUTO)
    # hex mode mangles such a name whole; none leaves it.
    assert "\\x5c" in mangle(name, Mangling.HEX)
    assert mangle(name, Mangling.NONE) == name


@pytest.mark.parametrize(
    ("kernel", "shown"),
    [
        ("a\\x20b", "a b"),
        ("a\\x7Eb", "a~b"),
        ("\\xc3\\xbc", "\u00fc"),
        ("raw\\xff", "raw\udcff"),
        ("x\\x5cy", "x\\y"),
        ("plain", "plain"),
        # Not the result of mangling: shown as the kernel has it.
        ("n m", "n m"),
        ("x\\xzz", "x\\xzz"),
    ],
)
def test_unmangle_table(kernel: str, shown: str) -> None:
    assert unmangle(kernel, Mangling.AUTO) == shown
    assert unmangle(kernel, Mangling.HEX) == shown
    assert unmangle(kernel, Mangling.NONE) == kernel


def test_unmangle_auto_leaves_a_name_mangled_twice() -> None:
    assert unmangle("h\\x5cx41", Mangling.AUTO) == "h\\x5cx41"
    assert unmangle("h\\x5cx41", Mangling.HEX) == "h\\x41"


@pytest.mark.parametrize("name", ["a b", "x\\y", "tab\there", "\u00fc~", "raw\udcfe", "ok-1"])
def test_mangle_round_trips(name: str) -> None:
    for mode in Mangling:
        assert unmangle(mangle(name, mode), mode) == name
    # What auto made, auto takes back as it is.
    assert mangle(mangle(name, Mangling.AUTO), Mangling.AUTO) == mangle(name, Mangling.AUTO)


def test_default_mangling_from_the_environment() -> None:
    assert default_mangling({}) is Mangling.AUTO
    assert default_mangling({"DM_DEFAULT_NAME_MANGLING_MODE": "NONE"}) is Mangling.NONE
    assert default_mangling({"DM_DEFAULT_NAME_MANGLING_MODE": "hex"}) is Mangling.HEX
    # An unknown value is ignored, as libdevmapper ignores it.
    assert default_mangling({"DM_DEFAULT_NAME_MANGLING_MODE": "bogus"}) is Mangling.AUTO


@pytest.fixture
def mangled(fake: FakeDM) -> FakeDM:
    """Devices as dmsetup makes them: 'a b' stored as a\\x20b, 'c~d' using it."""
    fake.add("a\\x20b", [Target(0, 8, "zero")], uuid="U-AB")
    fake.add("c\\x7ed", [Target(0, 8, "linear", "254:0 0")], deps=[(254, 0)])
    return fake


def test_names_shown_unmangled(mangled: FakeDM) -> None:
    assert ok(run(mangled, "ls")) == "a b\t(254:0)\nc~d\t(254:1)\n"
    assert ok(run(mangled, "ls", "--target", "zero")) == "a b\t(254, 0)\n"
    assert ok(run(mangled, "ls", "-o", "devname")) == "a b\t(a b)\nc~d\t(c~d)\n"
    assert ok(run(mangled, "ls", "--tree", "-o", "ascii")) == "c~d (254:1)\n `-a b (254:0)\n"
    assert ok(run(mangled, "info", "a b")).startswith("Name:              a b\n")
    assert ok(run(mangled, "info", "-c", "-o", "name", "--noheadings")) == "a b\nc~d\n"
    assert ok(run(mangled, "info", "-u", "U-AB")).startswith("Name:              a b\n")
    assert ok(run(mangled, "table")) == "a b: 0 8 zero \nc~d: 0 8 linear 254:0 0\n"
    assert ok(run(mangled, "status", "--target", "zero")) == "a b: 0 8 zero \n"
    assert ok(run(mangled, "deps", "-o", "devname")) == (
        "a b: 0 dependencies\t:\nc~d: 1 dependencies\t: (a b)\n"
    )


def test_names_shown_raw_in_mode_none(mangled: FakeDM) -> None:
    assert ok(run(mangled, "--manglename", "none", "ls")) == "a\\x20b\t(254:0)\nc\\x7ed\t(254:1)\n"
    assert ok(run(mangled, "--manglename", "none", "info", "a\\x20b")).startswith(
        "Name:              a\\x20b\n"
    )
    assert "No such device" in fails(run(mangled, "--manglename", "none", "info", "a b"))


def test_json_carries_the_kernel_name_and_the_shown_one(mangled: FakeDM) -> None:
    for command in (["ls"], ["info"], ["table"], ["status"], ["deps"]):
        data = json.loads(ok(run(mangled, *command, "--json")))
        assert [(d["name"], d["display_name"]) for d in data] == [
            ("a\\x20b", "a b"),
            ("c\\x7ed", "c~d"),
        ], command
    deps = json.loads(ok(run(mangled, "deps", "--json", "c~d")))[0]["deps"]
    assert (deps[0]["name"], deps[0]["display_name"]) == ("a\\x20b", "a b")
    tree = json.loads(ok(run(mangled, "ls", "--tree", "--json")))
    assert (tree[0]["children"][0]["name"], tree[0]["children"][0]["display_name"]) == (
        "a\\x20b",
        "a b",
    )
    raw = json.loads(ok(run(mangled, "--manglename", "none", "ls", "--json")))
    assert raw[0]["display_name"] == "a\\x20b"


def test_uuids_are_mangled_as_names_are(fake: FakeDM) -> None:
    kernel = "U\\x20V"
    ok(run(fake, "create", "u", "-u", "U V", "--notable"))
    assert f"create u uuid={kernel!r} ro=False" in fake.calls
    assert "UUID: U V\n" in ok(run(fake, "info", "-u", "U V"))
    assert ok(run(fake, "info", "-c", "-o", "uuid", "--noheadings")) == "U V\n"
    assert ok(run(fake, "ls", "--tree", "-o", "ascii,uuid")) == "u (254:0) [U V]\n"
    assert json.loads(ok(run(fake, "info", "--json", "u")))[0]["uuid"] == kernel
    ok(run(fake, "create", "w", "--notable"))
    ok(run(fake, "rename", "w", "--setuuid", "W~X"))
    assert fake.devices["w"].uuid == "W\\x7eX"
    assert "mixes mangled and unmangled" in fails(run(fake, "info", "-u", "a\\x20b c"))


def test_names_sent_mangled(fake: FakeDM) -> None:
    ok(run(fake, "create", "e f", "--table", "0 8 zero"))
    assert "create e\\x20f uuid='' ro=False" in fake.calls
    ok(run(fake, "create", "g\\x20h", "--notable"))
    assert "g\\x20h" in fake.devices
    ok(run(fake, "rename", "e f", "e~g"))
    assert "e\\x7eg" in fake.devices
    ok(run(fake, "suspend", "e~g"))
    assert fake.devices["e\\x7eg"].suspended
    ok(run(fake, "--manglename", "hex", "create", "i\\x20j", "--notable"))
    assert "i\\x5cx20j" in fake.devices
    ok(run(fake, "--manglename", "NONE", "create", "k l", "--notable"))
    assert "k l" in fake.devices
    ok(run(fake, "--manglename", "none", "remove", "k l"))
    assert "k l" not in fake.devices


def test_manglename_from_the_environment(mangled: FakeDM, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DM_DEFAULT_NAME_MANGLING_MODE", "none")
    assert ok(run(mangled, "ls")).startswith("a\\x20b\t")
    # The option wins over the environment.
    assert ok(run(mangled, "--manglename", "auto", "ls")).startswith("a b\t")


def test_bad_names_for_mangling_are_one_line(fake: FakeDM) -> None:
    assert "mixes mangled and unmangled" in fails(
        run(fake, "create", "e\\x20f g", "--table", "0 8 zero")
    )
    assert "mangled more than once" in fails(run(fake, "info", "h\\x5cxi"))
    assert "mixes mangled" in fails(run(fake, "rename", "x", "a\\x2"))
    # '/' is refused, not mangled.
    assert fails(run(fake, "create", "a/b", "--notable")).startswith("dmioctl: device name 'a/b'")
    # A name that grows past the kernel's limit when mangled.
    assert "must be 1 to 127 bytes" in fails(run(fake, "create", " " * 40, "--notable"))
    assert fake.calls == []
    result = run(fake, "--manglename", "bogus", "ls")
    assert result.exit_code == 2
    assert "'bogus' is not one of 'none', 'auto', 'hex'" in result.stderr
