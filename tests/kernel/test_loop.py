"""Loop devices against the real kernel: attach, query, resize, detach, and the failures.

Needs root and /dev/loop-control.  Each test detaches only devices it bound,
and only while they are still bound to its own files: other processes may use
loop devices at the same time.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dmioctl import loop
from dmioctl.errors import DeviceBusy, InvalidArgument, IoctlError, NoSuchDevice
from dmioctl.loop import LoopDevice, LoopInfo
from dmioctl.uapi.loop import (
    LO_FLAGS_AUTOCLEAR,
    LO_FLAGS_DIRECT_IO,
    LO_FLAGS_PARTSCAN,
    LO_FLAGS_READ_ONLY,
    LO_NAME_SIZE,
    LoopFlag,
    LoopIoctl,
)
from tests.kernel.support import require, sparse_file

pytestmark = pytest.mark.kernel

MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[2]


class Loops:
    """Backing files in a test's directory; afterwards, whatever is bound to them is detached.

    Cleanup looks devices up by backing file rather than remembering them, so it
    also catches a device left bound by a failed attach, and never touches a
    number that another process has bound meanwhile.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def file(self, name: str = "backing.img", size: int = 8 * MiB) -> Path:
        return sparse_file(self.directory / name, size)

    def cleanup(self) -> None:
        for path in self.directory.iterdir():
            if path.is_file():
                for status in loop.find(path):
                    with contextlib.suppress(NoSuchDevice):
                        loop.detach(status.path)


def bound_to(device: LoopDevice, *paths: Path) -> bool:
    """Whether ``device`` is bound to one of ``paths``, compared by device and inode."""
    try:
        status = loop.info(device)
    except NoSuchDevice:
        return False
    return any(
        (status.backing_dev, status.backing_inode) == (st.st_dev, st.st_ino)
        for st in (os.stat(path) for path in paths)
    )


def sectors(device: LoopDevice) -> int:
    """The device's size in 512-byte sectors, as the block layer reports it."""
    return int(Path(f"/sys/block/loop{device.number}/size").read_text())


def queue_value(device: LoopDevice, name: str) -> int:
    return int(Path(f"/sys/block/loop{device.number}/queue/{name}").read_text())


@pytest.fixture
def loops(tmp_path: Path) -> Iterator[Loops]:
    require(os.geteuid() == 0, "needs root")
    require(os.path.exists(loop.LOOP_CONTROL), f"{loop.LOOP_CONTROL} missing: no loop driver")
    made = Loops(tmp_path)
    yield made
    made.cleanup()


@pytest.fixture
def no_ioctl(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything reaches the kernel."""

    def refuse(*args: object, **kwargs: object) -> int:
        raise AssertionError(f"ioctl issued: {args[1]!r}")

    monkeypatch.setattr(loop, "_ioctl", refuse)


def ioctl_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    names = tuple(command.name + " " for command in LoopIoctl)
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "dmioctl.loop" and record.getMessage().startswith(names)
    ]


def test_attach_reports_info(loops: Loops, caplog: pytest.LogCaptureFixture) -> None:
    path = loops.file(size=8 * MiB)
    caplog.set_level(logging.DEBUG, logger="dmioctl.loop")

    device = loop.attach(path)

    assert device.path == f"/dev/loop{device.number}"
    assert os.stat(device.path).st_rdev == device.dev
    assert sectors(device) == 8 * MiB // 512
    st = os.stat(path)
    status = loop.info(device)
    assert status == LoopInfo(
        path=device.path,
        number=device.number,
        file_name=str(path.resolve())[: LO_NAME_SIZE - 1],
        backing_dev=st.st_dev,
        backing_inode=st.st_ino,
        offset=0,
        sizelimit=0,
        flags=LoopFlag(0),
    )
    lines = ioctl_lines(caplog)
    assert lines[0] == "LOOP_CTL_GET_FREE /dev/loop-control"
    assert lines[1].startswith(f"LOOP_CONFIGURE {device.path} fd=")
    assert lines[1].endswith(" flags=- offset=0 sizelimit=0 block_size=0")
    assert lines[2] == f"LOOP_GET_STATUS64 {device.path}"
    assert len(lines) == 3


def test_offset_and_sizelimit_select_a_window(loops: Loops) -> None:
    path = loops.file(size=8 * MiB)
    pattern = b"window!\n" * 512
    with path.open("r+b") as f:
        f.seek(1 * MiB)
        f.write(pattern)

    device = loop.attach(path, offset=1 * MiB, sizelimit=2 * MiB)

    assert sectors(device) == 2 * MiB // 512
    status = loop.info(device)
    assert (status.offset, status.sizelimit) == (1 * MiB, 2 * MiB)
    with open(device, "rb") as f:
        assert f.read(len(pattern)) == pattern


def test_read_only(loops: Loops) -> None:
    path = loops.file()

    device = loop.attach(path, read_only=True)

    assert loop.info(device).flags == LO_FLAGS_READ_ONLY
    assert Path(f"/sys/block/loop{device.number}/ro").read_text().strip() == "1"
    with pytest.raises(OSError) as refused:
        fd = os.open(device.path, os.O_WRONLY)
        try:
            os.write(fd, b"\xff" * 512)
        finally:
            os.close(fd)
    assert refused.value.errno in (errno.EROFS, errno.EPERM, errno.EACCES)
    assert path.read_bytes()[:512] == bytes(512)


def test_partscan_flag(loops: Loops) -> None:
    device = loop.attach(loops.file(), partscan=True)

    assert loop.info(device).flags == LO_FLAGS_PARTSCAN


def test_attached_goes_away_on_leaving(loops: Loops) -> None:
    path = loops.file()

    with loop.attached(path) as device:
        assert loop.info(device).flags == LO_FLAGS_AUTOCLEAR
        assert bound_to(device, path)

    assert not bound_to(device, path)


def test_attached_stays_while_another_user_holds_it(loops: Loops) -> None:
    path = loops.file()

    with loop.attached(path) as device:
        holder = os.open(device.path, os.O_RDONLY)
    try:
        assert bound_to(device, path)
    finally:
        os.close(holder)

    assert not bound_to(device, path)


def test_direct_io(loops: Loops) -> None:
    path = loops.file()
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_DIRECT))
    except OSError as exc:
        require(exc.errno != errno.EINVAL, f"{path.parent} does not support O_DIRECT")
        raise

    device = loop.attach(path, direct_io=True)

    assert loop.info(device).flags == LO_FLAGS_DIRECT_IO
    assert Path(f"/sys/block/loop{device.number}/loop/dio").read_text().strip() == "1"
    loop.set_direct_io(device, False)
    assert loop.info(device).flags == LoopFlag(0)
    loop.set_direct_io(device, True)
    assert loop.info(device).flags == LO_FLAGS_DIRECT_IO


def test_block_size(loops: Loops) -> None:
    device = loop.attach(loops.file(), block_size=4096)

    assert queue_value(device, "logical_block_size") == 4096
    loop.set_block_size(device, 1024)
    assert queue_value(device, "logical_block_size") == 1024
    with pytest.raises(InvalidArgument, match="block_size"):
        loop.set_block_size(device, 0)


def test_detach(loops: Loops) -> None:
    path = loops.file()
    device = loop.attach(path)

    loop.detach(device)

    assert not bound_to(device, path)


def test_detach_unbound_device_raises_enxio(loops: Loops) -> None:
    # A device of its own, well above the numbers LOOP_CTL_GET_FREE hands out,
    # so that no other process binds it between the two calls.
    numbers = [int(p.name[4:]) for p in Path("/sys/block").glob("loop*") if p.name[4:].isdigit()]
    device = loop.add(max(numbers, default=0) + 64 + os.getpid() % 64)
    try:
        with pytest.raises(NoSuchDevice) as unbound:
            loop.detach(device)
        with pytest.raises(NoSuchDevice):
            loop.info(device)
    finally:
        loop.remove(device)

    assert unbound.value.errno == errno.ENXIO
    assert str(unbound.value) == (
        f"LOOP_CLR_FD on '{device.path}' failed: ENXIO (No such device or address)"
    )
    assert not os.path.exists(device.path)


def test_add_existing_number_and_remove_bound_device_fail(loops: Loops) -> None:
    device = loop.attach(loops.file())

    with pytest.raises(IoctlError) as exists:
        loop.add(device.number)
    with pytest.raises(DeviceBusy):
        loop.remove(device)

    assert exists.value.errno == errno.EEXIST
    assert bound_to(device, loops.directory / "backing.img")


def test_refresh_capacity_after_growth(loops: Loops) -> None:
    path = loops.file(size=4 * MiB)
    device = loop.attach(path)
    os.truncate(path, 12 * MiB)

    assert sectors(device) == 4 * MiB // 512
    loop.refresh_capacity(device)
    assert sectors(device) == 12 * MiB // 512


def test_find_returns_exactly_our_device(loops: Loops) -> None:
    first = loops.file("first.img")
    second = loops.file("second.img")
    device = loop.attach(first)
    other = loop.attach(second)

    found = loop.find(first)

    assert found == [loop.info(device)]
    assert [status.path for status in loop.find(second)] == [other.path]
    listed = {status.path for status in loop.list_attached()}
    assert {device.path, other.path} <= listed


def test_find_matches_a_long_path_by_inode(loops: Loops) -> None:
    path = loops.file("x" * 100 + ".img")
    device = loop.attach(path)

    status = loop.info(device)

    assert len(os.fsencode(status.file_name)) == LO_NAME_SIZE - 1
    assert str(path.resolve()).startswith(status.file_name)
    assert loop.find(path) == [status]


def test_find_unused_file_is_empty(loops: Loops) -> None:
    assert loop.find(loops.file()) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"offset": -512}, "offset must be a non-negative multiple of 512"),
        ({"offset": 1000}, "offset must be a non-negative multiple of 512"),
        ({"sizelimit": -1}, "sizelimit must be a non-negative multiple of 512"),
        ({"sizelimit": 2**63}, "sizelimit must be a non-negative multiple of 512"),
        ({"block_size": 3000}, "block_size must be one of 0, 512, 1024, 2048, 4096"),
        ({"block_size": 8192}, "block_size must be one of"),
    ],
)
def test_bad_geometry_is_refused_before_the_kernel(
    tmp_path: Path, no_ioctl: None, options: dict[str, Any], message: str
) -> None:
    path = sparse_file(tmp_path / "backing.img", MiB)

    with pytest.raises(InvalidArgument, match=message):
        loop.attach(path, **options)


def test_missing_file_is_refused_before_the_kernel(tmp_path: Path, no_ioctl: None) -> None:
    with pytest.raises(InvalidArgument, match="does not exist"):
        loop.attach(tmp_path / "missing.img")
    with pytest.raises(InvalidArgument, match="does not exist"):
        loop.find(tmp_path / "missing.img")


def test_directory_is_refused_before_the_kernel(tmp_path: Path, no_ioctl: None) -> None:
    with pytest.raises(InvalidArgument, match="is not a regular file or a block device"):
        loop.attach(tmp_path)


def test_device_that_is_not_a_block_device_is_refused(tmp_path: Path, no_ioctl: None) -> None:
    with pytest.raises(InvalidArgument, match="is not a block device"):
        loop.detach(sparse_file(tmp_path / "plain", 512).as_posix())
    with pytest.raises(InvalidArgument, match="does not exist"):
        loop.info(tmp_path / "loop999")


def _lose_races(monkeypatch: pytest.MonkeyPatch, taken: LoopDevice, times: int) -> list[LoopIoctl]:
    """Make LOOP_CTL_GET_FREE answer ``taken`` ``times`` times; return the commands issued."""
    real = loop._ioctl
    issued: list[LoopIoctl] = []

    def racing(fd: int, command: LoopIoctl, device: str, *rest: Any) -> int:
        issued.append(command)
        if command is LoopIoctl.LOOP_CTL_GET_FREE and issued.count(command) <= times:
            real(fd, command, device, *rest)
            return taken.number
        return real(fd, command, device, *rest)

    monkeypatch.setattr(loop, "_ioctl", racing)
    return issued


def test_attach_retries_when_the_free_device_is_taken(
    loops: Loops, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    first = loops.file("first.img")
    second = loops.file("second.img")
    taken = loop.attach(first)
    issued = _lose_races(monkeypatch, taken, times=2)
    caplog.set_level(logging.DEBUG, logger="dmioctl.loop")

    device = loop.attach(second)

    assert device.number != taken.number
    assert bound_to(device, second)
    assert bound_to(taken, first)
    assert issued.count(LoopIoctl.LOOP_CONFIGURE) == 3
    attempts = [r.getMessage() for r in caplog.records if "attempt" in r.getMessage()]
    assert attempts == [
        f"{taken.path} was bound by another process first, attempt 1/{loop.ATTACH_ATTEMPTS}",
        f"{taken.path} was bound by another process first, attempt 2/{loop.ATTACH_ATTEMPTS}",
    ]


def test_attach_gives_up_after_bounded_retries(
    loops: Loops, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = loops.file("first.img")
    second = loops.file("second.img")
    taken = loop.attach(first)
    issued = _lose_races(monkeypatch, taken, times=100)
    monkeypatch.setattr(loop, "_RETRY_PAUSE", 0.0)  # the count is what is tested here

    with pytest.raises(DeviceBusy, match="each free device first, 64 attempts") as busy:
        loop.attach(second)

    assert busy.value.command == "LOOP_CONFIGURE"
    assert issued.count(LoopIoctl.LOOP_CONFIGURE) == loop.ATTACH_ATTEMPTS
    assert loop.find(second) == []
    assert bound_to(taken, first)


def test_eight_processes_attaching_at_once_all_get_a_device(loops: Loops) -> None:
    files = [loops.file(f"racer{i}.img") for i in range(8)]
    code = (
        "import sys; from dmioctl import loop\n"
        "for _ in range(10):\n"
        "    with loop.attached(sys.argv[1]):\n"
        "        pass\n"
    )
    racers = [
        subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=ROOT, stderr=subprocess.PIPE)
        for path in files
    ]
    errors = [racer.communicate()[1].decode() for racer in racers]
    assert [racer.returncode for racer in racers] == [0] * 8, errors


def test_fallback_without_loop_configure(
    loops: Loops, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = loop._ioctl

    def old_kernel(fd: int, command: LoopIoctl, device: str, *rest: Any) -> int:
        if command is LoopIoctl.LOOP_CONFIGURE:
            raise IoctlError(command.name, device, errno.EINVAL)
        return real(fd, command, device, *rest)

    monkeypatch.setattr(loop, "_ioctl", old_kernel)
    caplog.set_level(logging.DEBUG, logger="dmioctl.loop")
    path = loops.file()

    device = loop.attach(
        path, read_only=True, direct_io=True, offset=MiB, sizelimit=4 * MiB, block_size=4096
    )

    status = loop.info(device)
    assert status.flags == LO_FLAGS_READ_ONLY | LO_FLAGS_DIRECT_IO
    assert (status.offset, status.sizelimit) == (MiB, 4 * MiB)
    assert status.file_name == str(path.resolve())[: LO_NAME_SIZE - 1]
    assert queue_value(device, "logical_block_size") == 4096
    assert sectors(device) == 4 * MiB // 512
    commands = [line.split()[0] for line in ioctl_lines(caplog)]
    assert commands == [
        "LOOP_CTL_GET_FREE",
        "LOOP_SET_FD",
        "LOOP_SET_STATUS64",
        "LOOP_SET_BLOCK_SIZE",
        "LOOP_SET_DIRECT_IO",
        "LOOP_GET_STATUS64",
    ]


def test_fallback_undoes_a_half_made_binding(
    loops: Loops, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = loop._ioctl
    bound: list[str] = []

    def failing_status(fd: int, command: LoopIoctl, device: str, *rest: Any) -> int:
        if command is LoopIoctl.LOOP_CONFIGURE:
            raise IoctlError(command.name, device, errno.ENOTTY)
        if command is LoopIoctl.LOOP_SET_STATUS64:
            bound.append(device)
            raise IoctlError(command.name, device, errno.EOVERFLOW)
        return real(fd, command, device, *rest)

    monkeypatch.setattr(loop, "_ioctl", failing_status)
    path = loops.file()

    with pytest.raises(IoctlError, match=r"LOOP_SET_STATUS64 on .* EOVERFLOW"):
        loop.attach(path)

    assert len(bound) == 1
    monkeypatch.setattr(loop, "_ioctl", real)
    assert loop.find(path) == []
