"""thin-pool and thin targets against the real kernel, and the pool's messages.

Behaviour as thin-provisioning.rst documents it: duplicate ids, missing ids,
compare-and-swap of the transaction id, the origin suspended around create_snap,
metadata snapshots, and growing the pool after its data device grew.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from dmioctl import DeviceMapper, InvalidArgument, IoctlError, NoSuchDevice, loop
from dmioctl.loop import LoopDevice
from dmioctl.nodes import node_path
from dmioctl.targets import from_target, thin_pool
from dmioctl.targets import thin as thin_target
from dmioctl.targets.thin import Thin, ThinStatus
from dmioctl.targets.thin_pool import (
    DiscardMode,
    NoSpacePolicy,
    NoSuchThinId,
    PoolMode,
    ThinIdInUse,
    ThinPool,
    ThinPoolBusy,
    ThinPoolReadOnly,
    ThinPoolRefused,
    ThinPoolStatus,
)
from tests.kernel.support import sparse_file

pytestmark = pytest.mark.kernel

MiB_BYTES = 1024 * 1024
DATA_BYTES = 64 * MiB_BYTES
BLOCK = 128  # sectors: 64 KiB data blocks


@dataclass
class Pool:
    name: str
    builder: ThinPool
    length: int
    data_file: Path
    data: LoopDevice
    device: str  # major:minor of the pool device


def number(device: LoopDevice) -> str:
    return f"{device.major}:{device.minor}"


@dataclass
class Disks:
    meta: LoopDevice
    data: LoopDevice
    data_file: Path


@pytest.fixture
def disks(tmp_path: Path) -> Iterator[Disks]:
    """Loop devices for a pool's metadata (16 MiB) and data (64 MiB), over sparse files."""
    meta = loop.attach(sparse_file(tmp_path / "meta", 16 * MiB_BYTES))
    try:
        data_file = sparse_file(tmp_path / "data", DATA_BYTES)
        data = loop.attach(data_file)
        try:
            yield Disks(meta, data, data_file)
        finally:
            # A loop still held by a table is only marked for autoclear.
            loop.detach(data)
    finally:
        loop.detach(meta)


def start_pool(dm: DeviceMapper, name: str, builder: ThinPool, length: int) -> str:
    """Create and resume a pool device; return its major:minor."""
    info = dm.create(name)
    dm.load_table(name, [builder.target(0, length)])
    dm.resume(name)
    return f"{info.major}:{info.minor}"


@pytest.fixture
def pool(dm: DeviceMapper, prefix: str, disks: Disks) -> Iterator[Pool]:
    """An active thin-pool of 64 MiB data in 64 KiB blocks.

    On the way out the test's thin devices are removed before the pool, which
    they hold open.
    """
    name = prefix + "pool"
    builder = ThinPool(number(disks.meta), number(disks.data), BLOCK, 16)
    length = DATA_BYTES // 512
    device = start_pool(dm, name, builder, length)
    try:
        yield Pool(name, builder, length, disks.data_file, disks.data, device)
    finally:
        for listed in dm.list_devices():
            if listed.name.startswith(prefix) and listed.name != name:
                with contextlib.suppress(NoSuchDevice):
                    dm.remove(listed.name, retries=5)
        with contextlib.suppress(NoSuchDevice):
            dm.remove(name, retries=5)


def pool_status(dm: DeviceMapper, name: str) -> ThinPoolStatus:
    (line,) = dm.status(name)
    status = thin_pool.parse_status(line.params)
    assert isinstance(status, ThinPoolStatus)
    return status


def activate_thin(dm: DeviceMapper, name: str, builder: Thin, sectors: int = 8192) -> None:
    dm.create(name)
    dm.load_table(name, [builder.target(0, sectors)])
    dm.resume(name)


def write(name: str, offset: int, nbytes: int) -> None:
    fd = os.open(node_path(name), os.O_WRONLY)
    try:
        os.pwrite(fd, b"\x5a" * nbytes, offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def test_pool_table_and_status(dm: DeviceMapper, pool: Pool) -> None:
    (line,) = dm.table(pool.name)
    assert (line.start, line.length) == (0, pool.length)
    assert from_target(line) == pool.builder

    status = pool_status(dm, pool.name)
    assert status.transaction_id == 0
    assert status.total_data_blocks == pool.length // BLOCK
    assert status.used_data_blocks == 0
    assert 0 < status.used_metadata_blocks < status.total_metadata_blocks
    assert status.held_metadata_root is None
    assert status.mode is PoolMode.READ_WRITE
    assert status.discard is DiscardMode.PASSDOWN
    assert status.no_space_policy is NoSpacePolicy.QUEUE
    assert status.needs_check is False
    assert status.metadata_low_watermark_blocks is not None


@pytest.mark.parametrize(
    ("features", "discard", "no_space"),
    [
        ({"skip_block_zeroing": True}, DiscardMode.PASSDOWN, NoSpacePolicy.QUEUE),
        ({"ignore_discard": True}, DiscardMode.IGNORE, NoSpacePolicy.QUEUE),
        ({"no_discard_passdown": True}, DiscardMode.NO_PASSDOWN, NoSpacePolicy.QUEUE),
        ({"error_if_no_space": True}, DiscardMode.PASSDOWN, NoSpacePolicy.ERROR),
        (
            {
                "skip_block_zeroing": True,
                "ignore_discard": True,
                "no_discard_passdown": True,
                "error_if_no_space": True,
            },
            DiscardMode.IGNORE,
            NoSpacePolicy.ERROR,
        ),
    ],
    ids=["skip_block_zeroing", "ignore_discard", "no_discard_passdown", "error", "four"],
)
def test_pool_features_round_trip(
    dm: DeviceMapper,
    prefix: str,
    disks: Disks,
    features: dict[str, bool],
    discard: DiscardMode,
    no_space: NoSpacePolicy,
) -> None:
    """Each feature set at creation: ignore_discard cannot be turned on by a reload."""
    builder = ThinPool(number(disks.meta), number(disks.data), BLOCK, 0, **features)
    start_pool(dm, prefix + "pool", builder, DATA_BYTES // 512)
    assert from_target(dm.table(prefix + "pool")[0]) == builder
    status = pool_status(dm, prefix + "pool")
    assert (status.discard, status.no_space_policy) == (discard, no_space)


def test_discard_cannot_be_disabled_by_reload(dm: DeviceMapper, pool: Pool) -> None:
    """dm-thin.c pool_ctr refuses a reload that turns ignore_discard on (EINVAL)."""
    with pytest.raises(IoctlError) as caught:
        dm.load_table(
            pool.name, [replace(pool.builder, ignore_discard=True).target(0, pool.length)]
        )
    assert caught.value.errno == errno.EINVAL
    assert from_target(dm.table(pool.name)[0]) == pool.builder


def test_read_only_pool_refuses_messages(dm: DeviceMapper, pool: Pool) -> None:
    builder = replace(pool.builder, read_only=True)
    dm.load_table(pool.name, [builder.target(0, pool.length)])
    dm.resume(pool.name)
    assert from_target(dm.table(pool.name)[0]) == builder
    assert pool_status(dm, pool.name).mode is PoolMode.READ_ONLY
    with pytest.raises(ThinPoolReadOnly) as caught:
        thin_pool.create_thin(dm, pool.name, 1)
    assert caught.value.errno == errno.EOPNOTSUPP
    assert "read-only" in str(caught.value)


def test_thin_round_trip_and_status(dm: DeviceMapper, prefix: str, pool: Pool) -> None:
    thin_pool.create_thin(dm, pool.name, 1)
    builder = Thin(pool.device, 1)
    activate_thin(dm, prefix + "thin", builder)
    assert from_target(dm.table(prefix + "thin")[0]) == builder
    (line,) = dm.status(prefix + "thin")
    assert thin_target.parse_status(line.params) == ThinStatus(0, None)

    write(prefix + "thin", 0, 64 * 1024)
    (line,) = dm.status(prefix + "thin")
    assert thin_target.parse_status(line.params) == ThinStatus(BLOCK, BLOCK - 1)
    assert pool_status(dm, pool.name).used_data_blocks == 1


def test_thin_with_external_origin(
    dm: DeviceMapper, prefix: str, pool: Pool, tmp_path: Path
) -> None:
    origin = loop.attach(sparse_file(tmp_path / "origin", 4 * MiB_BYTES), read_only=True)
    try:
        thin_pool.create_thin(dm, pool.name, 2)
        builder = Thin(pool.device, 2, number(origin))
        activate_thin(dm, prefix + "ext", builder)
        assert from_target(dm.table(prefix + "ext")[0]) == builder
        (line,) = dm.status(prefix + "ext")
        assert thin_target.parse_status(line.params) == ThinStatus(0, None)
        dm.remove(prefix + "ext")
    finally:
        loop.detach(origin)


def test_create_thin_twice_is_id_in_use(dm: DeviceMapper, pool: Pool) -> None:
    thin_pool.create_thin(dm, pool.name, 7)
    with pytest.raises(ThinIdInUse) as caught:
        thin_pool.create_thin(dm, pool.name, 7)
    assert caught.value.errno == errno.EEXIST
    assert caught.value.device == pool.name
    assert "thin id 7 is in use" in str(caught.value)
    assert isinstance(caught.value.__cause__, IoctlError)


def test_delete_missing_id(dm: DeviceMapper, pool: Pool) -> None:
    with pytest.raises(NoSuchThinId) as caught:
        thin_pool.delete(dm, pool.name, 42)
    assert caught.value.errno == errno.ENODATA
    assert "thin id 42 does not exist" in str(caught.value)


def test_delete_active_thin_is_busy(dm: DeviceMapper, prefix: str, pool: Pool) -> None:
    thin_pool.create_thin(dm, pool.name, 3)
    activate_thin(dm, prefix + "thin", Thin(pool.device, 3))
    with pytest.raises(ThinPoolBusy) as caught:
        thin_pool.delete(dm, pool.name, 3)
    assert caught.value.errno == errno.EBUSY
    dm.remove(prefix + "thin")
    thin_pool.delete(dm, pool.name, 3)
    thin_pool.create_thin(dm, pool.name, 3)  # the id is free again


def test_ids_checked_before_the_kernel(dm: DeviceMapper, pool: Pool) -> None:
    with pytest.raises(InvalidArgument):
        thin_pool.create_thin(dm, pool.name, 2**24)
    with pytest.raises(InvalidArgument):
        thin_pool.create_snap(dm, pool.name, 1, -1)


def test_set_transaction_id_compare_and_swap(dm: DeviceMapper, pool: Pool) -> None:
    thin_pool.set_transaction_id(dm, pool.name, 0, 1)
    assert pool_status(dm, pool.name).transaction_id == 1
    with pytest.raises(ThinPoolRefused) as caught:
        thin_pool.set_transaction_id(dm, pool.name, 0, 2)
    assert caught.value.errno == errno.EINVAL
    assert "transaction id is not 0" in str(caught.value)
    assert pool_status(dm, pool.name).transaction_id == 1


def test_create_snap_of_active_origin(dm: DeviceMapper, prefix: str, pool: Pool) -> None:
    origin = prefix + "origin"
    thin_pool.create_thin(dm, pool.name, 1)
    activate_thin(dm, origin, Thin(pool.device, 1))
    write(origin, 0, 64 * 1024)

    thin_pool.create_snap(dm, pool.name, 2, 1, origin=origin)
    assert not dm.info(origin).suspended
    activate_thin(dm, prefix + "snap", Thin(pool.device, 2))
    (line,) = dm.status(prefix + "snap")
    assert thin_target.parse_status(line.params) == ThinStatus(BLOCK, BLOCK - 1)


def test_create_snap_failure_still_resumes_origin(
    dm: DeviceMapper, prefix: str, pool: Pool
) -> None:
    origin = prefix + "origin"
    thin_pool.create_thin(dm, pool.name, 1)
    thin_pool.create_thin(dm, pool.name, 2)
    activate_thin(dm, origin, Thin(pool.device, 1))
    with pytest.raises(ThinIdInUse):
        thin_pool.create_snap(dm, pool.name, 2, 1, origin=origin)
    assert not dm.info(origin).suspended
    with pytest.raises(NoSuchThinId):
        thin_pool.create_snap(dm, pool.name, 5, 9, origin=origin)
    assert not dm.info(origin).suspended
    write(origin, 0, 4096)  # I/O flows: the origin is really resumed


def test_metadata_snap_reserve_and_release(dm: DeviceMapper, pool: Pool) -> None:
    thin_pool.reserve_metadata_snap(dm, pool.name)
    held = pool_status(dm, pool.name).held_metadata_root
    assert isinstance(held, int) and held > 0
    with pytest.raises(ThinPoolBusy) as busy:
        thin_pool.reserve_metadata_snap(dm, pool.name)
    assert "release it first" in str(busy.value)

    thin_pool.release_metadata_snap(dm, pool.name)
    assert pool_status(dm, pool.name).held_metadata_root is None
    with pytest.raises(ThinPoolRefused) as refused:
        thin_pool.release_metadata_snap(dm, pool.name)
    assert "nothing to release" in str(refused.value)


def test_grow_after_the_data_device_grew(dm: DeviceMapper, pool: Pool) -> None:
    with pool.data_file.open("r+b") as f:
        f.truncate(2 * DATA_BYTES)
    loop.refresh_capacity(pool.data)
    thin_pool.grow(dm, pool.name, 2 * pool.length)

    (line,) = dm.table(pool.name)
    assert line.length == 2 * pool.length
    assert from_target(line) == pool.builder
    assert pool_status(dm, pool.name).total_data_blocks == 2 * pool.length // BLOCK


def test_grow_refuses_to_shrink_and_beyond_the_device(dm: DeviceMapper, pool: Pool) -> None:
    with pytest.raises(InvalidArgument, match="cannot shrink"):
        thin_pool.grow(dm, pool.name, pool.length - BLOCK)
    with pytest.raises(IoctlError) as caught:
        thin_pool.grow(dm, pool.name, 2 * pool.length)  # the data device did not grow
    assert caught.value.errno == errno.EINVAL
    assert pool_status(dm, pool.name).total_data_blocks == pool.length // BLOCK


def test_grow_with_same_length_reloads(dm: DeviceMapper, pool: Pool) -> None:
    thin_pool.grow(dm, pool.name)
    assert dm.table(pool.name)[0].length == pool.length
    assert not dm.info(pool.name).inactive_table


def test_full_pool_reports_out_of_data_space(dm: DeviceMapper, prefix: str, disks: Disks) -> None:
    """With error_if_no_space, filling the pool puts it in out_of_data_space mode."""
    name = prefix + "pool"
    builder = ThinPool(number(disks.meta), number(disks.data), BLOCK, 0, error_if_no_space=True)
    device = start_pool(dm, name, builder, 4 * MiB_BYTES // 512)  # 64 blocks
    thin_pool.create_thin(dm, name, 1)
    activate_thin(dm, prefix + "thin", Thin(device, 1), sectors=16 * MiB_BYTES // 512)
    with pytest.raises(OSError):
        write(prefix + "thin", 0, 8 * MiB_BYTES)
    status = pool_status(dm, name)
    assert status.mode is PoolMode.OUT_OF_DATA_SPACE
    assert status.used_data_blocks == status.total_data_blocks == 64
    assert status.no_space_policy is NoSpacePolicy.ERROR
    dm.remove(prefix + "thin")
