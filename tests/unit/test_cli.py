"""The dmioctl command against an in-memory DeviceMapper: exact output and exit codes."""

from __future__ import annotations

import errno
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from dmioctl import cli
from dmioctl.control import DeviceInfo, ListedDevice, TargetVersion, validate_name
from dmioctl.errors import DeviceBusy, DeviceExists, DMError, InvalidArgument, NoSuchDevice
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

    def _get(self, command: str, name: str) -> FakeDevice:
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

    def info(self, name: str) -> DeviceInfo:
        return self._info(self._get("DM_DEV_STATUS", name))

    def table(self, name: str, *, inactive: bool = False) -> list[Target]:
        d = self._get("DM_TABLE_STATUS", name)
        return list((d.inactive if inactive else d.live) or [])

    def status(self, name: str, *, inactive: bool = False, noflush: bool = False) -> list[Target]:
        self.calls.append(f"status {name} noflush={noflush}")
        return [
            Target(t.start, t.length, t.target_type, self._get("", name).status.get(t.params, ""))
            for t in self.table(name, inactive=inactive)
        ]

    def deps(self, name: str) -> list[tuple[int, int]]:
        device = self._get("DM_TABLE_DEPS", name)
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
        self, name: str, targets: list[Target], *, read_only: bool = False
    ) -> DeviceInfo:
        d = self._get("DM_TABLE_LOAD", name)
        validate(targets)
        if self.refuse_load:
            raise DMError(f"DM_TABLE_LOAD on {name!r} failed: EINVAL (Invalid argument)")
        self.calls.append(f"load {name} {[t.line() for t in targets]} ro={read_only}")
        d.inactive = list(targets)
        return self._info(d)

    def resume(self, name: str) -> DeviceInfo:
        d = self._get("DM_DEV_SUSPEND", name)
        self.calls.append(f"resume {name}")
        if d.inactive is not None:
            d.live, d.inactive = d.inactive, None
        d.suspended = False
        return self._info(d)

    def suspend(self, name: str, *, noflush: bool = False, skip_lockfs: bool = False) -> None:
        self._get("DM_DEV_SUSPEND", name).suspended = True
        self.calls.append(f"suspend {name} noflush={noflush} skip_lockfs={skip_lockfs}")

    def remove(
        self, name: str, *, deferred: bool = False, retries: int = 0, retry_delay: float = 0.2
    ) -> None:
        self._get("DM_DEV_REMOVE", name)
        self.calls.append(f"remove {name} deferred={deferred} retries={retries}")
        if self.busy_removes > retries:
            raise DeviceBusy("DM_DEV_REMOVE", name, errno.EBUSY)
        del self.devices[name]

    def remove_all(self, *, deferred: bool = False) -> None:
        self.calls.append(f"remove_all deferred={deferred}")
        self.devices = {n: d for n, d in self.devices.items() if d.open_count}

    def rename(self, name: str, *, new_name: str = "", new_uuid: str = "") -> None:
        d = self._get("DM_DEV_RENAME", name)
        self.calls.append(f"rename {name} new_name={new_name!r} new_uuid={new_uuid!r}")
        if new_name:
            validate_name(new_name)
            d.name = new_name
            self.devices[new_name] = self.devices.pop(name)
        else:
            d.uuid = new_uuid

    def clear_table(self, name: str) -> None:
        self._get("DM_TABLE_CLEAR", name).inactive = None
        self.calls.append(f"clear {name}")

    def target_message(self, name: str, message: str, *, sector: int = 0) -> str | None:
        self._get("DM_TARGET_MSG", name)
        if sector < 0:
            raise InvalidArgument(f"message sector {sector} must not be negative")
        self.calls.append(f"message {name} {sector} {message!r}")
        return self.replies.get(message)

    def wait(self, name: str, *, event_nr: int = 0) -> None:
        self.calls.append(f"wait {name} {event_nr}")

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


def run(fake: FakeDM, *args: str, stdin: str | None = None, read_ahead: int = 256) -> Result:
    env = cli.Environment(
        open_control=lambda: fake,  # type: ignore[arg-type,return-value]
        read_ahead=lambda major, minor: read_ahead if read_ahead else None,
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


def test_ls_tree_branches(fake: FakeDM) -> None:
    table = [Target(0, 8, "linear", "7:0 0")]
    fake.add("a", table, deps=[(7, 0), (7, 1)])
    fake.add("b", table, deps=[(254, 0), (254, 2)])
    fake.add("c", table, deps=[(7, 2)])
    fake.add("d", deps=[(7, 3)])  # no live table: no dependencies
    assert ok(run(fake, "ls", "--tree", "-o", "ascii")) == (
        "b (254:1)\n"
        " |-a (254:0)\n"
        " |  |- (7:0)\n"
        " |  `- (7:1)\n"
        " `-c (254:2)\n"
        "    `- (7:2)\n"
        "d (254:3)\n"
    )


def test_ls_tree_bad_option(fake: FakeDM) -> None:
    result = run(fake, "ls", "--tree", "-o", "vt100")
    assert result.exit_code == 2
    assert "the tree options are ascii and utf" in result.stderr


def test_ls_json(stack: FakeDM) -> None:
    data = json.loads(ok(run(stack, "ls", "--json")))
    assert data[1] == {"name": "mid", "major": 254, "minor": 0, "uuid": "", "event_nr": 0}
    assert [d["name"] for d in data] == ["a-empty", "mid", "top", "zero"]
    tree = json.loads(ok(run(stack, "ls", "--tree", "--json")))
    assert tree[1] == {
        "name": "top",
        "major": 254,
        "minor": 1,
        "children": [
            {
                "name": "mid",
                "major": 254,
                "minor": 0,
                "children": [{"name": None, "major": 7, "minor": 0, "children": []}],
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
        {"name": "top", "deps": [{"major": 254, "minor": 0}]}
    ]


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
    ],
)
def test_create_bad_table_changes_nothing(fake: FakeDM, table: str, message: str) -> None:
    line = fails(run(fake, "create", "d", "--table", table))
    assert message in line
    assert fake.calls == []
    assert fake.devices == {}


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
