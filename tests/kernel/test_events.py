"""Events from the real kernel: a thin pool falling to its low water mark.

dm-thin.c check_low_water_mark raises the pool's event once, when an allocation
leaves no more free data blocks than the low water mark (thin-provisioning.rst).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dmioctl import DeviceMapper, loop
from dmioctl.events import EventTimeout, wait_for_event, watch
from dmioctl.loop import LoopDevice
from dmioctl.nodes import node_path
from dmioctl.targets import thin_pool
from dmioctl.targets.thin import Thin
from dmioctl.targets.thin_pool import ThinPool, ThinPoolStatus
from dmioctl.targets.zero import Zero
from tests.kernel.support import sparse_file

pytestmark = pytest.mark.kernel

MiB_BYTES = 1024 * 1024
BLOCK = 128  # sectors: 64 KiB data blocks
DATA_BLOCKS = 512  # 32 MiB
#: Crossed once more than 12 blocks (768 KiB) are in use.
LOW_WATER = 500
#: Time to allow beyond a timeout: the guest is slow and noisy under TCG.
SLACK = 3.0
#: Long enough for any event here to arrive, short enough to fail a test quickly.
PATIENCE = 60.0


def number(device: LoopDevice) -> str:
    return f"{device.major}:{device.minor}"


MakePool = Callable[[str], tuple[str, str]]


@pytest.fixture
def make_pool(dm: DeviceMapper, prefix: str, tmp_path: Path) -> Iterator[MakePool]:
    """Make a pool (low water mark 500 of 512 blocks) with thin device 0 active on it.

    Returns the pool's name and the thin device's.  The prefix fixture removes
    the devices; the loop devices are detached here (autoclear while held).
    """
    loops: list[LoopDevice] = []

    def make(tag: str) -> tuple[str, str]:
        meta = loop.attach(sparse_file(tmp_path / f"{tag}-meta", 8 * MiB_BYTES))
        loops.append(meta)
        data = loop.attach(sparse_file(tmp_path / f"{tag}-data", DATA_BLOCKS * BLOCK * 512))
        loops.append(data)
        pool = prefix + tag
        length = DATA_BLOCKS * BLOCK
        info = dm.create(pool)
        dm.load_table(
            pool, [ThinPool(number(meta), number(data), BLOCK, LOW_WATER).target(0, length)]
        )
        dm.resume(pool)
        thin_pool.create_thin(dm, pool, 0)
        thin = pool + "-thin"
        dm.create(thin)
        dm.load_table(thin, [Thin(f"{info.major}:{info.minor}", 0).target(0, length)])
        dm.resume(thin)
        return pool, thin

    yield make
    for device in loops:
        loop.detach(device)


def write(name: str, nbytes: int) -> None:
    """Write ``nbytes`` at the start of the device and flush them to the pool."""
    fd = os.open(node_path(name), os.O_WRONLY)
    try:
        os.pwrite(fd, b"\xa5" * nbytes, 0)
        os.fsync(fd)
    finally:
        os.close(fd)


def later(delay: float, action: Callable[[], object]) -> threading.Thread:
    """Run ``action`` in a thread after ``delay`` seconds; join the thread returned."""

    def run() -> None:
        time.sleep(delay)
        action()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def write_later(name: str, nbytes: int, delay: float) -> threading.Thread:
    return later(delay, lambda: write(name, nbytes))


def free_blocks(status_params: str) -> int:
    status = thin_pool.parse_status(status_params)
    assert isinstance(status, ThinPoolStatus)
    return status.total_data_blocks - status.used_data_blocks


def test_low_water_mark_by_wait_for_event(dm: DeviceMapper, make_pool: MakePool) -> None:
    pool, thin = make_pool("pool")
    before = dm.info(pool)
    writer = write_later(thin, MiB_BYTES, 0.5)
    try:
        event = wait_for_event(dm, pool, before.event_nr, timeout=PATIENCE)
    finally:
        writer.join()
    assert event.name == pool and not event.gone
    assert event.event_nr > before.event_nr
    (line,) = event.targets
    assert line.target_type == "thin-pool"
    assert free_blocks(line.params) <= LOW_WATER


def test_low_water_mark_by_watch(dm: DeviceMapper, make_pool: MakePool) -> None:
    pool, thin = make_pool("pool")
    before = dm.info(pool)
    events = watch([pool], timeout=PATIENCE)
    writer = write_later(thin, MiB_BYTES, 1.0)  # after next() has read the counters
    try:
        event = next(events)
    finally:
        writer.join()
        events.close()
    assert (event.name, event.gone) == (pool, False)
    assert event.event_nr == dm.info(pool).event_nr > before.event_nr
    assert free_blocks(event.targets[0].params) <= LOW_WATER


def test_wait_for_event_times_out(dm: DeviceMapper, make_pool: MakePool) -> None:
    pool, _ = make_pool("pool")
    event_nr = dm.info(pool).event_nr
    started = time.monotonic()
    with pytest.raises(EventTimeout):
        wait_for_event(dm, pool, event_nr, timeout=1.0)
    assert 1.0 <= time.monotonic() - started < 1.0 + SLACK


def test_watch_ends_after_quiet_timeout(dm: DeviceMapper, make_pool: MakePool) -> None:
    pool, _ = make_pool("pool")
    started = time.monotonic()
    assert list(watch([pool], timeout=1.0)) == []
    assert 1.0 <= time.monotonic() - started < 1.0 + SLACK


def test_watch_attributes_the_event_to_the_second_device(
    dm: DeviceMapper, make_pool: MakePool
) -> None:
    first, _ = make_pool("a")
    second, second_thin = make_pool("b")
    first_nr = dm.info(first).event_nr
    events = watch([first, second], timeout=PATIENCE)
    writer = write_later(second_thin, MiB_BYTES, 1.0)
    try:
        event = next(events)
    finally:
        writer.join()
        events.close()
    assert event.name == second
    assert free_blocks(event.targets[0].params) <= LOW_WATER
    assert dm.info(first).event_nr == first_nr


def test_watch_reports_a_removed_device_once(
    dm: DeviceMapper, prefix: str, make_pool: MakePool
) -> None:
    pool, _ = make_pool("pool")
    zero = prefix + "zero"
    dm.create(zero)
    dm.load_table(zero, [Zero().target(0, 8)])
    dm.resume(zero)
    events = watch([pool, zero], timeout=PATIENCE)
    remover = later(1.0, lambda: dm.remove(zero))
    try:
        event = next(events)
    finally:
        remover.join()
    assert (event.name, event.gone, event.targets) == (zero, True, [])
    started = time.monotonic()
    assert list(watch([pool], timeout=0.5)) == []  # and the pool had no event
    assert time.monotonic() - started < 0.5 + SLACK
    events.close()
