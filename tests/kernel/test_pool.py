"""The layering pool on sparse loop files, against the real kernel."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dmioctl import DeviceMapper, loop
from dmioctl.targets.thin_pool import ThinIdInUse, ThinPool
from layering import fs
from layering.errors import InvalidInput
from layering.pool import MiB, OutOfSpace, Pool, PoolConfig, PoolError
from tests.kernel.support import sparse_file

pytestmark = pytest.mark.kernel

SMALL = PoolConfig(data_bytes=512 * MiB, metadata_bytes=16 * MiB)


@pytest.fixture
def pool(dm: DeviceMapper, tmp_path: Path) -> Iterator[Pool]:
    made = Pool(tmp_path / "root", dm, SMALL)
    made.create()
    try:
        yield made
    finally:
        for mountpoint in (tmp_path / "mnt").glob("*"):
            if os.path.ismount(mountpoint):
                fs.umount(mountpoint)
        made.destroy()


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def test_new_pool_is_empty_and_sparse(pool: Pool) -> None:
    usage = pool.usage()
    assert usage.data_used == 0
    assert usage.data_total == 512 * MiB
    assert usage.transaction_id == 0
    assert allocated(pool.data_file) == 0
    assert pool.data_file.stat().st_size == 512 * MiB


def test_snapshot_sees_origin_and_stays_isolated(pool: Pool, tmp_path: Path) -> None:
    pool.create_thin(0)
    base = pool.activate_thin(0, 64 * MiB)
    fs.mkfs(base)
    fs.mount(base, tmp_path / "mnt" / "base")
    (tmp_path / "mnt" / "base" / "hello").write_text("from base\n")
    fs.umount(tmp_path / "mnt" / "base")

    pool.create_snap(1, 0)
    snap = pool.activate_thin(1, 64 * MiB)
    fs.mount(snap, tmp_path / "mnt" / "snap")
    assert (tmp_path / "mnt" / "snap" / "hello").read_text() == "from base\n"
    (tmp_path / "mnt" / "snap" / "hello").write_text("changed in snap\n")
    fs.umount(tmp_path / "mnt" / "snap")

    fs.mount(base, tmp_path / "mnt" / "base")
    assert (tmp_path / "mnt" / "base" / "hello").read_text() == "from base\n"
    rdev = os.stat(base).st_rdev
    assert fs.mounts_of(os.major(rdev), os.minor(rdev)) == [str(tmp_path / "mnt" / "base")]
    fs.umount(tmp_path / "mnt" / "base")


def test_snapshot_of_an_active_origin_resumes_it(pool: Pool) -> None:
    pool.create_thin(0)
    pool.activate_thin(0, 16 * MiB)
    pool.create_snap(1, 0)
    assert not pool.dm.info(pool.thin_name(0)).suspended
    with pytest.raises(ThinIdInUse):
        pool.create_snap(1, 0)
    assert not pool.dm.info(pool.thin_name(0)).suspended


def test_discard_returns_blocks_to_the_data_file(pool: Pool, tmp_path: Path) -> None:
    pool.create_thin(0)
    device = pool.activate_thin(0, 256 * MiB)
    fs.mkfs(device)
    mnt = tmp_path / "mnt" / "d"
    fs.mount(device, mnt)
    before = allocated(pool.data_file)
    (mnt / "big").write_bytes(os.urandom(64 * MiB))
    os.sync()
    grown = allocated(pool.data_file)
    assert grown - before >= 60 * MiB
    (mnt / "big").unlink()
    os.sync()
    # ext4 (6.1) sends online discards from a work item after the journal commit,
    # and drops the ones still pending at unmount: wait for them while mounted.
    deadline = time.monotonic() + 10
    while allocated(pool.data_file) > before + 4 * MiB:
        assert time.monotonic() < deadline, f"{allocated(pool.data_file)} bytes still held"
        time.sleep(0.1)
    fs.umount(mnt)


def test_teardown_and_activate_keep_everything(pool: Pool, tmp_path: Path) -> None:
    pool.create_thin(0)
    device = pool.activate_thin(0, 32 * MiB)
    fs.mkfs(device)
    fs.mount(device, tmp_path / "mnt" / "k")
    (tmp_path / "mnt" / "k" / "kept").write_text("kept\n")
    fs.umount(tmp_path / "mnt" / "k")
    pool.set_transaction_id(0, 1)

    pool.teardown()
    assert not pool.exists()
    pool.activate()
    assert pool.usage().transaction_id == 1
    with pytest.raises(ThinIdInUse):
        pool.create_thin(0)
    device = pool.activate_thin(0, 32 * MiB)
    fs.mount(device, tmp_path / "mnt" / "k")
    assert (tmp_path / "mnt" / "k" / "kept").read_text() == "kept\n"
    fs.umount(tmp_path / "mnt" / "k")


def test_free_space_gate(pool: Pool) -> None:
    assert pool.check_free(0.10).data_free_fraction == 1.0
    with pytest.raises(OutOfSpace, match="below the"):
        pool.check_free(1.01)


def test_grow_online(pool: Pool) -> None:
    pool.create_thin(0)
    pool.activate_thin(0, 16 * MiB)
    pool.grow(data_bytes=1024 * MiB)
    assert pool.usage().data_total == 1024 * MiB
    assert pool.is_active(0)
    # The low water mark is a tenth of the grown pool's blocks.
    (table,) = pool.dm.table(pool.name)
    blocks = 1024 * MiB // pool.config.block_bytes
    assert ThinPool.from_params(table.params).low_water_mark_blocks == blocks // 10
    with pytest.raises(InvalidInput, match="can only grow"):
        pool.grow(data_bytes=256 * MiB)
    # Past the limits a pool is opened with: refused, the file left as it was.
    size = pool.metadata_file.stat().st_size
    with pytest.raises(InvalidInput, match="between 2 MiB and 16 GiB"):
        pool.grow(metadata_bytes=20 * 1024 * MiB)
    assert pool.metadata_file.stat().st_size == size


def test_create_refuses_an_existing_root(pool: Pool, dm: DeviceMapper) -> None:
    with pytest.raises(PoolError, match="active already"):
        Pool(pool.root, dm, SMALL).create()


def test_pool_on_given_block_devices(dm: DeviceMapper, tmp_path: Path) -> None:
    meta = loop.attach(sparse_file(tmp_path / "meta.img", 16 * MiB))
    data = loop.attach(sparse_file(tmp_path / "data.img", 256 * MiB))
    try:
        config = PoolConfig(
            data_bytes=256 * MiB,
            metadata_bytes=16 * MiB,
            data_device=data.path,
            metadata_device=meta.path,
        )
        pool = Pool(tmp_path / "root", dm, config)
        pool.create()
        assert pool.usage().data_total == 256 * MiB
        assert not pool.data_file.exists()
        pool.create_thin(0)
        pool.teardown()
        pool.activate()
        with pytest.raises(ThinIdInUse):
            pool.create_thin(0)
        pool.teardown()

        # The metadata device now holds a pool: a new one there is refused.
        with pytest.raises(PoolError, match="not blank"):
            Pool(tmp_path / "other", dm, config).create()
    finally:
        loop.detach(data)
        loop.detach(meta)
