"""Every form of the thin-pool status line, produced by a real kernel and parsed.

The metadata device of each pool here is a dm ``linear`` device of the test's
own over a loop device, so that a test can swap the table under the pool: an
``error`` target fails all metadata I/O, a ``flakey`` target with
``error_writes`` fails the writes and lets the reads through.

What the kernel does when a metadata operation fails (dm-thin.c
metadata_operation_failed): it aborts the transaction, re-reading the metadata
from the device, and sets the pool's needs_check flag.  If the re-read works
the pool drops to read-only (``ro ... needs_check``); if it fails the pool goes
to fail mode and its status is the one word ``Fail``.

``Error`` is not produced here.  pool_status prints it when a metadata read
for the status itself fails while the pool still works; the candidate is the
held root, read from the superblock through dm-bufio.  On the 6.1 VM kernel,
with the metadata device swapped to ``error``, dm-bufio's retain_bytes at 0
and drop_caches=2 (dm-bufio then held no buffers at all), a noflush status
still gave the normal line and the kernel logged no error, so there is no
honest way to reach ``Error`` from this suite; unit tests cover its parsing.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from dmioctl import DeviceMapper, IoctlError, Target, loop
from dmioctl.loop import LoopDevice
from dmioctl.nodes import node_path
from dmioctl.targets import thin_pool
from dmioctl.targets.error import Error
from dmioctl.targets.flakey import Flakey
from dmioctl.targets.linear import Linear
from dmioctl.targets.thin import Thin
from dmioctl.targets.thin_pool import (
    PoolMode,
    PoolState,
    ThinPool,
    ThinPoolReadOnly,
    ThinPoolStatus,
    ThinPoolUnavailable,
)
from tests.kernel.support import sparse_file

pytestmark = pytest.mark.kernel

MiB_BYTES = 1024 * 1024
META_SECTORS = 16 * MiB_BYTES // 512
DATA_SECTORS = 64 * MiB_BYTES // 512
BLOCK = 128  # sectors: 64 KiB data blocks


@dataclass
class Stack:
    """A pool whose metadata device is a linear dm device that a test may swap out."""

    pool: str
    builder: ThinPool
    device: str  # major:minor of the pool
    meta: str  # name of the dm device under the pool's metadata
    meta_linear: Target  # the metadata device's working table


def number(major: int, minor: int) -> str:
    return f"{major}:{minor}"


def activate(dm: DeviceMapper, name: str, targets: list[Target]) -> str:
    """Create, load and resume a device; return its major:minor."""
    info = dm.create(name)
    dm.load_table(name, targets)
    dm.resume(name)
    return number(info.major, info.minor)


def swap_table(dm: DeviceMapper, name: str, target: Target) -> None:
    """Replace a device's table under whatever holds it: suspend, load, resume."""
    with dm.suspended(name):
        dm.load_table(name, [target])


@pytest.fixture
def loops(tmp_path: Path) -> Iterator[tuple[LoopDevice, LoopDevice]]:
    """Loop devices for the metadata (16 MiB) and the data (64 MiB), over sparse files."""
    meta = loop.attach(sparse_file(tmp_path / "meta", META_SECTORS * 512))
    try:
        data = loop.attach(sparse_file(tmp_path / "data", DATA_SECTORS * 512))
        try:
            yield meta, data
        finally:
            # A loop still held by a table is only marked for autoclear.
            loop.detach(data)
    finally:
        loop.detach(meta)


@pytest.fixture
def stack(dm: DeviceMapper, prefix: str, loops: tuple[LoopDevice, LoopDevice]) -> Iterator[Stack]:
    """A working pool over ``<prefix>meta`` (linear) and the data loop device.

    Afterwards the metadata device gets its linear table back and runs, whatever
    the test left it as, so that removing the pool can never wait on a
    suspended device; the prefix fixture then removes the thin devices, the
    pool and the metadata device, in that order as each frees the next.
    """
    meta_loop, data_loop = loops
    meta = prefix + "meta"
    meta_linear = Linear(number(meta_loop.major, meta_loop.minor)).target(0, META_SECTORS)
    meta_device = activate(dm, meta, [meta_linear])
    builder = ThinPool(meta_device, number(data_loop.major, data_loop.minor), BLOCK, 16)
    pool = prefix + "pool"
    try:
        device = activate(dm, pool, [builder.target(0, DATA_SECTORS)])
        yield Stack(pool, builder, device, meta, meta_linear)
    finally:
        if dm.table(meta, inactive=True):
            dm.clear_table(meta)
        if dm.table(meta) != [meta_linear]:
            dm.load_table(meta, [meta_linear])
        dm.resume(meta)


def status(dm: DeviceMapper, pool: str, *, noflush: bool = False) -> ThinPoolStatus:
    result = thin_pool.parse_status(raw_status(dm, pool, noflush=noflush))
    assert isinstance(result, ThinPoolStatus)
    return result


def raw_status(dm: DeviceMapper, pool: str, *, noflush: bool = False) -> str:
    (line,) = dm.status(pool, noflush=noflush)
    assert line.target_type == "thin-pool"
    return line.params


def write_and_sync(name: str, nbytes: int) -> None:
    fd = os.open(node_path(name), os.O_WRONLY)
    try:
        os.pwrite(fd, b"\xa5" * nbytes, 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def test_held_metadata_root(dm: DeviceMapper, stack: Stack) -> None:
    before = status(dm, stack.pool)
    assert before.held_metadata_root is None

    thin_pool.reserve_metadata_snap(dm, stack.pool)
    held = status(dm, stack.pool)
    assert isinstance(held.held_metadata_root, int)
    assert 0 < held.held_metadata_root < held.total_metadata_blocks
    assert held.mode is PoolMode.READ_WRITE

    thin_pool.release_metadata_snap(dm, stack.pool)
    assert status(dm, stack.pool) == before


def test_read_only_feature(dm: DeviceMapper, stack: Stack) -> None:
    """A pool reloaded with ``read_only`` reports ro and refuses messages (EOPNOTSUPP)."""
    before = status(dm, stack.pool)
    read_only = replace(stack.builder, read_only=True)
    dm.load_table(stack.pool, [read_only.target(0, DATA_SECTORS)])
    dm.resume(stack.pool)

    assert status(dm, stack.pool) == replace(before, mode=PoolMode.READ_ONLY)
    with pytest.raises(ThinPoolReadOnly) as caught:
        thin_pool.create_thin(dm, stack.pool, 1)
    assert caught.value.errno == errno.EOPNOTSUPP

    dm.load_table(stack.pool, [stack.builder.target(0, DATA_SECTORS)])
    dm.resume(stack.pool)
    assert status(dm, stack.pool) == before


@pytest.mark.parametrize("trigger", ["create_thin", "thin_write"])
def test_failed_metadata_write_is_read_only_and_needs_check(
    dm: DeviceMapper, prefix: str, stack: Stack, trigger: str
) -> None:
    """Writes to the metadata fail, reads work: the abort succeeds and the pool is ro."""
    if trigger == "thin_write":
        thin_pool.create_thin(dm, stack.pool, 1)
        activate(dm, prefix + "thin", [Thin(stack.device, 1).target(0, 8192)])
    before = status(dm, stack.pool)  # commits: the device then holds all of it

    meta_loop = Linear.from_params(stack.meta_linear.params).device
    flakey = Flakey(meta_loop, 0, 0, 3600, error_writes=True)  # down for an hour
    swap_table(dm, stack.meta, flakey.target(0, META_SECTORS))
    if trigger == "create_thin":
        thin_pool.create_thin(dm, stack.pool, 2)  # the commit after it fails
    else:
        with pytest.raises(OSError) as caught:
            write_and_sync(prefix + "thin", BLOCK * 512)  # the flush commits
        assert caught.value.errno == errno.EIO

    after = status(dm, stack.pool)
    # The aborted transaction took the new thin id or mapping with it.
    assert after == replace(before, mode=PoolMode.READ_ONLY, needs_check=True)
    with pytest.raises(ThinPoolReadOnly):
        thin_pool.create_thin(dm, stack.pool, 3)

    # With the metadata device healthy again, a reload asking for read-write
    # stays read-only: dm-thin.c set_pool_mode refuses write mode while
    # needs_check is set.
    swap_table(dm, stack.meta, stack.meta_linear)
    dm.load_table(stack.pool, [stack.builder.target(0, DATA_SECTORS)])
    dm.resume(stack.pool)
    assert status(dm, stack.pool) == after


@pytest.mark.parametrize("trigger", ["create_thin", "thin_write"])
def test_failed_metadata_device_is_fail(
    dm: DeviceMapper, prefix: str, stack: Stack, trigger: str
) -> None:
    """All metadata I/O fails: the abort cannot re-read the metadata and the pool fails."""
    if trigger == "thin_write":
        thin_pool.create_thin(dm, stack.pool, 1)
        activate(dm, prefix + "thin", [Thin(stack.device, 1).target(0, 8192)])
    status(dm, stack.pool)

    swap_table(dm, stack.meta, Error().target(0, META_SECTORS))
    if trigger == "create_thin":
        thin_pool.create_thin(dm, stack.pool, 2)
    else:
        with pytest.raises(OSError) as caught:
            write_and_sync(prefix + "thin", BLOCK * 512)
        assert caught.value.errno == errno.EIO

    line = raw_status(dm, stack.pool)
    assert line == "Fail"
    assert thin_pool.parse_status(line) == ThinPoolUnavailable(PoolState.FAIL)
    with pytest.raises(ThinPoolReadOnly):
        thin_pool.create_thin(dm, stack.pool, 3)

    # Fail mode is final (dm-thin.c set_pool_mode): with the metadata device
    # healthy again the pool still refuses a new table, whose constructor
    # cannot register the metadata threshold on failed metadata.
    swap_table(dm, stack.meta, stack.meta_linear)
    with pytest.raises(IoctlError) as refused:
        dm.load_table(stack.pool, [stack.builder.target(0, DATA_SECTORS)])
    assert refused.value.errno == errno.EINVAL
    assert raw_status(dm, stack.pool) == "Fail"
