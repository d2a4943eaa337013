"""The dmioctl command on a real kernel, side by side with dmsetup on the same devices."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from dmioctl import DeviceMapper, NoSuchDevice, Target, loop
from dmioctl.cli import main
from dmioctl.loop import LoopDevice
from dmioctl.nodes import node_path
from tests.kernel.support import require, sparse_file

pytestmark = pytest.mark.kernel

MiB = 2048  # sectors


def dmioctl(*args: str, stdin: str | None = None, status: int = 0) -> str:
    """Run the command in-process against the real control file; return stdout."""
    result = CliRunner().invoke(main, list(args), input=stdin)
    assert result.exit_code == status, (args, result.output, result.exception)
    return result.stdout


def dmsetup(*args: str) -> str:
    require(shutil.which("dmsetup") is not None, "dmsetup is not installed")
    env = dict(os.environ, DM_DISABLE_UDEV="1")
    result = subprocess.run(
        ["dmsetup", *args], capture_output=True, text=True, env=env, check=True
    )
    return result.stdout


@pytest.fixture
def loops(tmp_path: Path) -> Iterator[list[LoopDevice]]:
    """Two loop devices on sparse files: 16 MiB metadata, 64 MiB data."""
    attached = [
        loop.attach(sparse_file(tmp_path / "meta", 16 << 20)),
        loop.attach(sparse_file(tmp_path / "data", 64 << 20)),
    ]
    yield attached
    for device in attached:
        loop.detach(device)


@pytest.fixture
def zoo(dm: DeviceMapper, prefix: str, loops: list[LoopDevice]) -> Iterator[list[str]]:
    """Devices in most states dmsetup shows, made through the CLI.

    A thin pool on the loops and a thin volume in it; a linear over the thin
    volume and one over two devices (for the tree); a suspended one, a
    read-only one with an inactive table, one with a uuid, one without a table.
    """
    meta, data = loops
    pool, thin = prefix + "pool", prefix + "thin"
    dmioctl("create", pool, "--table", f"0 {64 * MiB} thin-pool {meta.path} {data.path} 128 0")
    dmioctl("message", pool, "0", "create_thin", "0")
    dmioctl("create", thin, "--table", f"0 {8 * MiB} thin {node_path(pool)} 0")
    dmioctl(
        "create",
        prefix + "lin",
        "-u",
        prefix + "UUID",
        stdin=f"0 {MiB} linear {node_path(thin)} 0\n",
    )
    two = f"0 {MiB} linear {node_path(prefix + 'lin')} 0\n{MiB} {MiB} linear {meta.path} 0\n"
    dmioctl("create", prefix + "two", "--table", two)
    dmioctl("create", prefix + "susp", "--table", f"0 {MiB} zero")
    dmioctl("suspend", prefix + "susp")
    dmioctl("create", prefix + "ro", "-r", "--table", f"0 {MiB} error")
    dmioctl("load", prefix + "ro", "--table", f"0 {2 * MiB} zero")
    dmioctl("create", prefix + "empty", "--notable")
    names = [prefix + name for name in ("pool", "thin", "lin", "two", "susp", "ro", "empty")]
    yield names
    for name in reversed(names):
        with contextlib.suppress(NoSuchDevice):
            dm.remove(name, retries=5)


def test_read_commands_print_what_dmsetup_prints(zoo: list[str]) -> None:
    for name in zoo:
        for command in (
            ["table"],
            ["table", "--inactive"],
            ["status"],
            ["info"],
            ["info", "-c"],
            ["info", "-c", "--noheadings"],
            ["deps"],
            ["deps", "-o", "devname"],
            ["deps", "-o", "blkdevname"],
        ):
            assert dmioctl(*command, name) == dmsetup(*command, name), (command, name)
    for command in (
        ["ls"],
        ["ls", "--target", "thin"],
        ["ls", "--tree"],
        ["ls", "--tree", "-o", "ascii"],
        ["ls", "--tree", "-o", "ascii,inverted"],
        ["ls", "-o", "blkdevname"],
        ["table"],
        ["status"],
        ["status", "--target", "thin-pool"],
        ["info"],
        ["info", "-c"],
        ["info", "-c", "-o", "name,attr,segments", "--separator", ","],
        ["deps"],
        ["targets"],
    ):
        assert dmioctl(*command) == dmsetup(*command), command
    assert dmioctl("version").splitlines()[1] == dmsetup("version").splitlines()[1]


def test_dmsetup_sees_what_the_cli_changed(dm: DeviceMapper, prefix: str) -> None:
    name, renamed = prefix + "a", prefix + "b"
    dmioctl("create", name, "--table", f"0 {MiB} zero")
    assert dm.table(name) == [Target(0, MiB, "zero")]
    assert os.path.exists(node_path(name))

    dmioctl("suspend", "--noflush", "--nolockfs", name)
    assert dm.info(name).suspended
    dmioctl("reload", name, "--table", f"0 {2 * MiB} error")
    assert dm.table(name, inactive=True) == [Target(0, 2 * MiB, "error")]
    dmioctl("resume", name)
    info = dm.info(name)
    assert not info.suspended and not info.inactive_table
    assert dm.table(name) == [Target(0, 2 * MiB, "error")]

    dmioctl("load", name, "--table", f"0 {MiB} zero")
    dmioctl("clear", name)
    assert not dm.info(name).inactive_table

    dmioctl("rename", name, renamed)
    dmioctl("rename", renamed, "--setuuid", prefix + "U")
    assert dm.info(renamed).uuid == prefix + "U"
    assert os.path.exists(node_path(renamed)) and not os.path.exists(node_path(name))

    event_nr = dm.info(renamed).event_nr
    dmioctl("wait", renamed, str(event_nr + 1))
    dmioctl("wait", renamed, str(event_nr), "--timeout", "0.2", status=1)

    fd = os.open(node_path(renamed), os.O_RDONLY)
    try:
        dmioctl("remove", renamed, status=1)
        dmioctl("remove", "--force", "--deferred", renamed)
        assert dm.info(renamed).deferred_remove
        assert dm.table(renamed) == [Target(0, 2 * MiB, "error")]
        # Nothing would unlink the node at the last close: it goes at once.
        assert not os.path.lexists(node_path(renamed))
    finally:
        os.close(fd)
    # The kernel removes a deferred device from a work queue after the last close.
    deadline = time.monotonic() + 10
    while renamed in {d.name for d in dm.list_devices()}:
        assert time.monotonic() < deadline, "deferred remove did not happen"
        time.sleep(0.05)
    # mknodes removes a node that no device has (another tool left it, say).
    stale = node_path(prefix + "stale")
    os.mknod(stale, 0o600 | stat.S_IFBLK, os.makedev(254, 250))
    dmioctl("mknodes")
    assert not os.path.lexists(stale)


def test_mknodes_restores_a_node(dm: DeviceMapper, prefix: str) -> None:
    name = prefix + "n"
    dmioctl("create", name, "--table", f"0 {MiB} zero")
    os.unlink(node_path(name))
    dmioctl("mknodes", name)
    info = dm.info(name)
    assert os.stat(node_path(name)).st_rdev == os.makedev(info.major, info.minor)
    dmioctl("remove", name)


@pytest.mark.parametrize(
    ("args", "stdin"),
    [
        (["create", "{p}x", "--table", "0 2048 zero\n2048 x error"], None),
        (["create", "{p}x", "--table", "0 -1 zero"], None),
        (["create", "{p}x", "--table", "0 2048 zero\n4096 2048 zero"], None),
        (["create", "{p}x"], ""),
        (["create", "{p}" + "x" * 127, "--table", "0 2048 zero"], None),
        (["create", "{p}x", "--table", "0 2048 linear /dev/nonexistent 0"], None),
        (["create", "{p}x", "--table", "0 2048 no-such-target"], None),
        (["create", "{p}keep", "--table", "0 2048 zero"], None),
        (["load", "{p}keep", "--table", "0 2048 zero 1"], None),
        (["remove", "{p}nosuch"], None),
        (["table", "{p}nosuch"], None),
        (["resume", "{p}nosuch"], None),
        (["rename", "{p}keep", "{p}a/b"], None),
        (["message", "{p}keep", "0", "hello"], None),
        (["remove", "{p}keep", "-u", "{p}U"], None),
        (["rename", "{p}keep", "{p}new", "-u", "{p}U"], None),
        (["suspend"], None),
        (["remove", "-u", "{p}nosuch"], None),
        (["load", "-u", "{p}nosuch", "--table", "0 2048 zero"], None),
        (["info", "-u", ""], None),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    dm: DeviceMapper, prefix: str, args: list[str], stdin: str | None
) -> None:
    dmioctl("create", prefix + "keep", "--table", "0 2048 zero")
    before = dm.list_devices()
    tables = {d.name: (dm.info(d.name), dm.table(d.name)) for d in before}

    result = CliRunner().invoke(main, [a.format(p=prefix) for a in args], input=stdin)

    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("dmioctl: ")
    assert dm.list_devices() == before
    assert {d.name: (dm.info(d.name), dm.table(d.name)) for d in before} == tables
