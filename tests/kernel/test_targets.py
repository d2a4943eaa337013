"""Typed targets against the real kernel: tables round-trip and statuses parse.

Each test loads a table made by a builder, reads it back with ``dm.table`` and
parses it into an equal builder, then parses the target's status.  Devices are
given as ``major:minor``, the form in which the kernel prints them.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dmioctl import DeviceMapper, InvalidArgument, loop
from dmioctl.loop import LoopDevice
from dmioctl.nodes import node_path
from dmioctl.table import Target, TargetBuilder
from dmioctl.targets import delay as delay_target
from dmioctl.targets import error as error_target
from dmioctl.targets import flakey as flakey_target
from dmioctl.targets import from_target
from dmioctl.targets import linear as linear_target
from dmioctl.targets import snapshot as snapshot_target
from dmioctl.targets import striped as striped_target
from dmioctl.targets import zero as zero_target
from dmioctl.targets.delay import Delay, DelayClass, DelayStatus
from dmioctl.targets.error import Error
from dmioctl.targets.flakey import CorruptBioByte, Direction, Flakey
from dmioctl.targets.linear import Linear
from dmioctl.targets.snapshot import (
    Persistence,
    Snapshot,
    SnapshotMerge,
    SnapshotOrigin,
    SnapshotStatus,
)
from dmioctl.targets.striped import Stripe, Striped, StripedStatus, StripeState
from dmioctl.targets.zero import Zero
from tests.kernel.support import sparse_file

pytestmark = pytest.mark.kernel

MiB = 2048  # sectors
LOOP_BYTES = 32 * 1024 * 1024

Loops = Callable[[int], list[LoopDevice]]


@pytest.fixture
def loops(dm: DeviceMapper, tmp_path: Path) -> Iterator[Loops]:
    """A factory of loop devices over sparse files in tmp_path, detached afterwards."""
    attached: list[LoopDevice] = []

    def make(count: int) -> list[LoopDevice]:
        new = [
            loop.attach(sparse_file(tmp_path / f"disk{len(attached) + i}", LOOP_BYTES))
            for i in range(count)
        ]
        attached.extend(new)
        return new

    yield make
    # A loop still held by a table is only marked for autoclear by the kernel.
    for device in attached:
        loop.detach(device)


def number(device: LoopDevice) -> str:
    """``major:minor`` of a loop device, as tables print it."""
    return f"{device.major}:{device.minor}"


def activate(dm: DeviceMapper, name: str, targets: list[Target]) -> None:
    dm.create(name)
    dm.load_table(name, targets)
    dm.resume(name)


def assert_round_trip(dm: DeviceMapper, name: str, built: list[Target]) -> list[TargetBuilder]:
    """The kernel's table has the same lines, and parses back to equal builders."""
    table = dm.table(name)
    assert [(t.start, t.length, t.target_type) for t in table] == [
        (t.start, t.length, t.target_type) for t in built
    ]
    parsed = [from_target(t) for t in table]
    assert parsed == [from_target(t) for t in built]
    return parsed


def status_text(dm: DeviceMapper, name: str) -> str:
    (line,) = dm.status(name)
    return line.params


def test_linear(dm: DeviceMapper, prefix: str, loops: Loops) -> None:
    (disk,) = loops(1)
    builder = Linear(number(disk), 8)
    activate(dm, prefix + "lin", [builder.target(0, MiB)])
    assert assert_round_trip(dm, prefix + "lin", [builder.target(0, MiB)]) == [builder]
    assert linear_target.parse_status(status_text(dm, prefix + "lin")) == (
        linear_target.LinearStatus()
    )


def test_linear_by_path_reads_back_as_number(dm: DeviceMapper, prefix: str, loops: Loops) -> None:
    (disk,) = loops(1)
    activate(dm, prefix + "lin", [Linear(disk.path, 0).target(0, MiB)])
    assert from_target(dm.table(prefix + "lin")[0]) == Linear(number(disk), 0)


def test_two_linear_targets_and_zero(dm: DeviceMapper, prefix: str, loops: Loops) -> None:
    first, second = loops(2)
    built = [
        Linear(number(first), 0).target(0, MiB),
        Zero().target(MiB, MiB),
        Linear(number(second), 16).target(2 * MiB, MiB),
    ]
    activate(dm, prefix + "multi", built)
    assert assert_round_trip(dm, prefix + "multi", built) == [
        Linear(number(first), 0),
        Zero(),
        Linear(number(second), 16),
    ]


def test_striped(dm: DeviceMapper, prefix: str, loops: Loops) -> None:
    first, second = loops(2)
    builder = Striped((Stripe(number(first), 0), Stripe(number(second), 128)), 128)
    activate(dm, prefix + "stripe", [builder.target(0, 4 * MiB)])
    assert assert_round_trip(dm, prefix + "stripe", [builder.target(0, 4 * MiB)]) == [builder]
    status = striped_target.parse_status(status_text(dm, prefix + "stripe"))
    assert status == StripedStatus(
        (number(first), number(second)), (StripeState.ALIVE, StripeState.ALIVE)
    )


def test_striped_length_refused_before_the_kernel(dm: DeviceMapper, loops: Loops) -> None:
    first, second = loops(2)
    builder = Striped((Stripe(number(first)), Stripe(number(second))), 128)
    with pytest.raises(InvalidArgument, match="stripes"):
        builder.target(0, 3 * 128)


def test_zero(dm: DeviceMapper, prefix: str) -> None:
    activate(dm, prefix + "zero", [Zero().target(0, MiB)])
    assert assert_round_trip(dm, prefix + "zero", [Zero().target(0, MiB)]) == [Zero()]
    assert zero_target.parse_status(status_text(dm, prefix + "zero")) == zero_target.ZeroStatus()


def test_error(dm: DeviceMapper, prefix: str) -> None:
    activate(dm, prefix + "err", [Error().target(0, MiB)])
    assert assert_round_trip(dm, prefix + "err", [Error().target(0, MiB)]) == [Error()]
    status = error_target.parse_status(status_text(dm, prefix + "err"))
    assert status == error_target.ErrorStatus()
    fd = os.open(node_path(prefix + "err"), os.O_RDONLY)
    try:
        with pytest.raises(OSError):
            os.pread(fd, 512, 0)
    finally:
        os.close(fd)


FLAKEY_FEATURES: list[dict[str, object]] = [
    {},
    {"drop_writes": True},
    {"error_writes": True},
    {"corrupt_bio_byte": CorruptBioByte(32, Direction.READ, 1, 0)},
    {"corrupt_bio_byte": CorruptBioByte(224, Direction.WRITE, 0, 1)},
    {"drop_writes": True, "corrupt_bio_byte": CorruptBioByte(1, Direction.READ, 255, 0)},
]


@pytest.mark.parametrize("features", FLAKEY_FEATURES, ids=str)
def test_flakey(dm: DeviceMapper, prefix: str, loops: Loops, features: dict[str, object]) -> None:
    (disk,) = loops(1)
    builder = Flakey(number(disk), 0, 5, 1, **features)  # type: ignore[arg-type]
    activate(dm, prefix + "flakey", [builder.target(0, MiB)])
    assert assert_round_trip(dm, prefix + "flakey", [builder.target(0, MiB)]) == [builder]
    status = flakey_target.parse_status(status_text(dm, prefix + "flakey"))
    assert status == flakey_target.FlakeyStatus()


def test_flakey_drop_writes_while_down(dm: DeviceMapper, prefix: str, loops: Loops) -> None:
    """Always down (up 0 s) with drop_writes: a write succeeds but leaves the disk as it was."""
    (disk,) = loops(1)
    activate(
        dm, prefix + "flakey", [Flakey(number(disk), 0, 0, 60, drop_writes=True).target(0, MiB)]
    )
    fd = os.open(node_path(prefix + "flakey"), os.O_RDWR | os.O_DIRECT)
    try:
        block = mmap.mmap(-1, 4096)
        block.write(b"x" * 4096)
        assert os.pwrite(fd, block, 0) == 4096
        os.fsync(fd)
        block.seek(0)
        os.preadv(fd, [block], 0)
        assert bytes(block) == bytes(4096)
    finally:
        os.close(fd)


@pytest.mark.parametrize("groups", [1, 2, 3])
def test_delay(dm: DeviceMapper, prefix: str, loops: Loops, groups: int) -> None:
    disks = loops(groups)
    classes = [DelayClass(number(disk), 8 * i, 10 * (i + 1)) for i, disk in enumerate(disks)]
    builder = Delay(*classes)
    activate(dm, prefix + "delay", [builder.target(0, MiB)])
    assert assert_round_trip(dm, prefix + "delay", [builder.target(0, MiB)]) == [builder]
    status = delay_target.parse_status(status_text(dm, prefix + "delay"))
    assert status == DelayStatus(0, 0, 0)


@pytest.mark.parametrize("persistence", list(Persistence))
def test_snapshot_and_origin(
    dm: DeviceMapper, prefix: str, loops: Loops, persistence: Persistence
) -> None:
    base, cow = loops(2)
    size = LOOP_BYTES // 512
    origin_builder = SnapshotOrigin(number(base))
    snap_builder = Snapshot(number(base), number(cow), persistence, 16)
    activate(dm, prefix + "origin", [origin_builder.target(0, size)])
    activate(dm, prefix + "snap", [snap_builder.target(0, size)])
    assert assert_round_trip(dm, prefix + "origin", [origin_builder.target(0, size)]) == [
        origin_builder
    ]
    assert assert_round_trip(dm, prefix + "snap", [snap_builder.target(0, size)]) == [snap_builder]
    assert snapshot_target.parse_origin_status(status_text(dm, prefix + "origin")) == (
        snapshot_target.SnapshotOriginStatus()
    )

    before = snapshot_target.parse_status(status_text(dm, prefix + "snap"))
    assert isinstance(before, SnapshotStatus)
    assert before.total_sectors == size
    write_through(node_path(prefix + "origin"), 64 * 1024)
    after = snapshot_target.parse_status(status_text(dm, prefix + "snap"))
    assert isinstance(after, SnapshotStatus)
    assert after.sectors_allocated >= before.sectors_allocated + 128


def test_snapshot_discard_features(dm: DeviceMapper, prefix: str, loops: Loops) -> None:
    base, cow = loops(2)
    size = LOOP_BYTES // 512
    builder = Snapshot(
        number(base),
        number(cow),
        Persistence.PERSISTENT,
        16,
        discard_zeroes_cow=True,
        discard_passdown_origin=True,
    )
    activate(dm, prefix + "origin", [SnapshotOrigin(number(base)).target(0, size)])
    activate(dm, prefix + "snap", [builder.target(0, size)])
    assert assert_round_trip(dm, prefix + "snap", [builder.target(0, size)]) == [builder]


def test_snapshot_merge(dm: DeviceMapper, prefix: str, loops: Loops) -> None:
    """snapshot.rst's merge: the origin device takes a snapshot-merge table of the snapshot."""
    base, cow = loops(2)
    size = LOOP_BYTES // 512
    origin, snap = prefix + "origin", prefix + "snap"
    activate(dm, origin, [SnapshotOrigin(number(base)).target(0, size)])
    activate(
        dm, snap, [Snapshot(number(base), number(cow), Persistence.PERSISTENT, 16).target(0, size)]
    )
    write_through(node_path(snap), 64 * 1024)

    merge = SnapshotMerge(number(base), number(cow), Persistence.PERSISTENT, 16)
    with dm.suspended(origin):
        dm.suspend(snap)
        dm.remove(snap)
        dm.load_table(origin, [merge.target(0, size)])
    assert assert_round_trip(dm, origin, [merge.target(0, size)]) == [merge]
    status = snapshot_target.parse_status(status_text(dm, origin), "snapshot-merge")
    assert isinstance(status, SnapshotStatus)
    assert status.total_sectors == size


def write_through(node: str, nbytes: int) -> None:
    fd = os.open(node, os.O_WRONLY)
    try:
        os.pwrite(fd, b"\xa5" * nbytes, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
