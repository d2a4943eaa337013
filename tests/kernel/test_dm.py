"""Every device-mapper ioctl against the real kernel."""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from dmioctl import (
    DeviceBusy,
    DeviceExists,
    DeviceMapper,
    InvalidArgument,
    IoctlError,
    NoSuchDevice,
    Target,
    ioctl,
    loop,
)
from dmioctl.nodes import node_path
from dmioctl.uapi.dm import DMCommand
from tests.kernel.support import require, sparse_file

pytestmark = pytest.mark.kernel

MiB = 2048  # sectors


def make_zero(dm: DeviceMapper, name: str, sectors: int = MiB, **create: str) -> None:
    dm.create(name, **create)  # type: ignore[arg-type]
    dm.load_table(name, [Target(0, sectors, "zero")])
    dm.resume(name)


def test_version(dm: DeviceMapper) -> None:
    major, minor, _patch = dm.version()
    assert major == 4
    assert minor >= 27


def test_life_cycle(dm: DeviceMapper, prefix: str) -> None:
    name = prefix + "life"
    created = dm.create(name, uuid=prefix + "uuid")
    assert created.name == name
    assert created.uuid == prefix + "uuid"
    assert not created.active_table and not created.inactive_table
    node = os.stat(node_path(name))
    assert stat.S_ISBLK(node.st_mode)
    assert (os.major(node.st_rdev), os.minor(node.st_rdev)) == (created.major, created.minor)

    loaded = dm.load_table(name, [Target(0, MiB, "zero")])
    assert loaded.inactive_table and not loaded.active_table

    resumed = dm.resume(name)
    assert resumed.active_table and not resumed.inactive_table
    assert not resumed.suspended
    with open(node_path(name), "rb") as device:
        assert device.read(4096) == bytes(4096)

    suspended = dm.suspend(name, noflush=True, skip_lockfs=True)
    assert suspended.suspended
    assert dm.info(name).suspended
    dm.resume(name)
    assert not dm.info(name).suspended

    removed = dm.remove(name)
    assert removed.name == name
    assert not os.path.lexists(node_path(name))
    with pytest.raises(NoSuchDevice):
        dm.info(name)


def test_read_only(dm: DeviceMapper, prefix: str) -> None:
    name = prefix + "ro"
    dm.create(name, read_only=True)
    dm.load_table(name, [Target(0, MiB, "zero")], read_only=True)
    assert dm.resume(name).read_only
    assert dm.info(name).read_only
    with pytest.raises(OSError) as caught:
        fd = os.open(node_path(name), os.O_WRONLY)
        try:
            os.write(fd, bytes(4096))
        finally:
            os.close(fd)
    assert caught.value.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO)


def test_table_and_status_readback(dm: DeviceMapper, prefix: str) -> None:
    name = prefix + "multi"
    targets = [Target(0, MiB, "zero"), Target(MiB, MiB, "error"), Target(2 * MiB, 8, "zero")]
    dm.create(name)
    dm.load_table(name, targets)
    assert dm.table(name, inactive=True) == targets
    assert dm.table(name) == []
    dm.resume(name)
    assert dm.table(name) == targets
    assert [(t.start, t.length, t.target_type) for t in dm.status(name)] == [
        (t.start, t.length, t.target_type) for t in targets
    ]
    assert dm.info(name).target_count == 3


def test_clear_table(dm: DeviceMapper, prefix: str) -> None:
    name = prefix + "clear"
    make_zero(dm, name)
    assert dm.load_table(name, [Target(0, 2 * MiB, "zero")]).inactive_table
    cleared = dm.clear_table(name)
    assert not cleared.inactive_table
    assert cleared.active_table
    dm.resume(name)
    assert dm.table(name) == [Target(0, MiB, "zero")]


def test_list_devices(dm: DeviceMapper, prefix: str) -> None:
    make_zero(dm, prefix + "a", uuid=prefix + "uuid-a")
    make_zero(dm, prefix + "b")
    listed = {d.name: d for d in dm.list_devices() if d.name.startswith(prefix)}
    assert set(listed) == {prefix + "a", prefix + "b"}
    info_a = dm.info(prefix + "a")
    assert (listed[prefix + "a"].major, listed[prefix + "a"].minor) == (info_a.major, info_a.minor)
    assert listed[prefix + "a"].uuid == prefix + "uuid-a"
    assert listed[prefix + "b"].uuid == ""
    assert listed[prefix + "a"].event_nr == info_a.event_nr


def test_list_devices_regrows_buffer(
    dm: DeviceMapper,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 150 records of ~260 bytes each fill about 39 KiB: the 1 KiB first buffer
    # doubles six times, and the next listing starts at the size that held it.
    monkeypatch.setattr(ioctl, "_fitted_size", {})
    names = [f"{prefix}{i:03d}-".ljust(120, "x") for i in range(150)]
    for i, name in enumerate(names):
        dm.create(name, uuid=f"{prefix}uuid-{i:03d}-".ljust(120, "u"))
    with caplog.at_level(logging.DEBUG, logger="dmioctl.ioctl"):
        listed = {d.name: d.uuid for d in dm.list_devices()}
        assert caplog.text.count("did not fit") == 6
        caplog.clear()
        assert {d.name for d in dm.list_devices()} == set(listed)
        assert "did not fit" not in caplog.text
    assert ioctl._fitted_size[DMCommand.DM_LIST_DEVICES_CMD] == 64 * 1024
    for i, name in enumerate(names):
        assert listed[name] == f"{prefix}uuid-{i:03d}-".ljust(120, "u")


def test_rename_and_set_uuid(dm: DeviceMapper, prefix: str) -> None:
    old, new = prefix + "old", prefix + "new"
    make_zero(dm, old)
    info = dm.rename(old, new_name=new)
    assert info.name == new
    assert not os.path.lexists(node_path(old))
    assert os.path.exists(node_path(new))
    with pytest.raises(NoSuchDevice):
        dm.info(old)

    assert dm.rename(new, new_uuid=prefix + "set").uuid == prefix + "set"
    assert dm.info(uuid=prefix + "set").name == new
    with pytest.raises(IoctlError):
        dm.rename(new, new_uuid=prefix + "again")  # a uuid cannot change once set

    # Named by uuid: the kernel renames by name only, so the name is looked up.
    by_uuid = prefix + "byuuid"
    assert dm.rename(uuid=prefix + "set", new_name=by_uuid).name == by_uuid
    assert os.path.exists(node_path(by_uuid)) and not os.path.lexists(node_path(new))


def test_a_name_that_is_not_utf8(dm: DeviceMapper, prefix: str) -> None:
    name = prefix + b"x\xffy".decode("utf-8", "surrogateescape")
    make_zero(dm, name)
    assert name in {d.name for d in dm.list_devices()}
    assert dm.info(name).name == name
    assert os.path.exists(node_path(name))
    dm.remove(name)
    assert not os.path.lexists(node_path(name))


def test_deps(dm: DeviceMapper, prefix: str) -> None:
    lower = prefix + "lower"
    make_zero(dm, lower)
    info = dm.info(lower)
    upper = prefix + "upper"
    dm.create(upper)
    dm.load_table(upper, [Target(0, MiB, "linear", f"{info.major}:{info.minor} 0")])
    dm.resume(upper)
    assert dm.deps(upper) == [(info.major, info.minor)]
    assert dm.deps(lower) == []
    dm.create(prefix + "empty")
    assert dm.deps(prefix + "empty") == []


def test_busy_device(dm: DeviceMapper, prefix: str) -> None:
    name = prefix + "busy"
    make_zero(dm, name)
    fd = os.open(node_path(name), os.O_RDONLY)
    try:
        assert dm.info(name).open_count == 1
        with pytest.raises(DeviceBusy) as caught:
            dm.remove(name, retries=1, retry_delay=0.01)
        assert str(caught.value) == (
            f"DM_DEV_REMOVE on {name!r} failed: EBUSY (Device or resource busy)"
        )
        assert dm.remove(name, deferred=True).deferred_remove
        assert dm.info(name).deferred_remove
        # Nothing would unlink it at the last close: it goes now, the holder reads on.
        assert not os.path.lexists(node_path(name))
        assert len(os.pread(fd, 512, 0)) == 512
    finally:
        os.close(fd)
    # The kernel removes it from a work queue after the last close.
    deadline = time.monotonic() + 10
    while name in {d.name for d in dm.list_devices()}:
        assert time.monotonic() < deadline, "deferred removal did not happen"
        time.sleep(0.05)
    with pytest.raises(NoSuchDevice):
        dm.info(name)
    # The next device may get the number; no node under the old name points at it.
    make_zero(dm, prefix + "next")
    assert not os.path.lexists(node_path(name))


def test_errors(dm: DeviceMapper, prefix: str) -> None:
    name = prefix + "err"
    with pytest.raises(NoSuchDevice) as missing:
        dm.remove(name)
    assert (
        str(missing.value)
        == f"DM_DEV_REMOVE on {name!r} failed: ENXIO (No such device or address)"
    )

    dm.create(name)
    with pytest.raises(DeviceExists) as exists:
        dm.create(name)
    assert "exists already" in str(exists.value)

    with pytest.raises(IoctlError) as invalid:
        dm.load_table(name, [Target(0, MiB, "linear", "/nonexistent/device 0")])
    assert invalid.value.errno in (errno.EINVAL, errno.ENODEV, errno.ENOENT)
    assert "DM_TABLE_LOAD" in str(invalid.value)

    with pytest.raises(IoctlError) as unknown:
        dm.load_table(name, [Target(0, MiB, "no-such-target")])
    assert unknown.value.errno == errno.EINVAL
    assert "kernel log" in str(unknown.value)
    assert not dm.info(name).inactive_table


def test_bad_input_touches_nothing(dm: DeviceMapper, prefix: str) -> None:
    before = dm.list_devices()
    for bad in ("", "a/b", "x" * 128, ".", ".."):
        with pytest.raises(InvalidArgument):
            dm.create(bad)
    with pytest.raises(InvalidArgument):
        dm.create(prefix + "u", uuid="u" * 129)
    with pytest.raises(InvalidArgument):
        dm.load_table(prefix + "gap", [Target(0, 8, "zero"), Target(16, 8, "zero")])
    with pytest.raises(InvalidArgument):
        dm.load_table(prefix + "type", [Target(0, 8, "x" * 16)])
    with pytest.raises(InvalidArgument):
        dm.rename(prefix + "r", new_name="a", new_uuid="b")
    assert dm.list_devices() == before


def test_message_and_geometry(dm: DeviceMapper, prefix: str) -> None:
    name = prefix + "msg"
    make_zero(dm, name)
    # The zero target has no message handler: the kernel refuses with EINVAL.
    with pytest.raises(IoctlError) as caught:
        dm.target_message(name, "hello")
    assert caught.value.errno == errno.EINVAL
    # Statistics messages answer with text through DM_DATA_OUT_FLAG.
    created = dm.target_message(name, "@stats_create - /1")
    assert created is not None and created.strip().isdigit()
    listed = dm.target_message(name, "@stats_list")
    assert listed is not None and "0+" in listed
    assert dm.target_message(name, f"@stats_delete {created.strip()}") is None

    dm.set_geometry(name, 1, 2, 4, 0)
    for bad in [(-1, 2, 4, 0), (65536, 2, 4, 0), (1, 256, 4, 0), (1, 2, 256, 0), (1, 2, 4, -1)]:
        with pytest.raises(InvalidArgument):
            dm.set_geometry(name, *bad)
    dm.set_geometry(name, 65535, 255, 255, 0)  # the kernel's largest


def test_list_versions_and_target_version(dm: DeviceMapper) -> None:
    versions = {v.name: v.version for v in dm.list_versions()}
    for builtin in ("linear", "striped", "error", "zero"):
        assert builtin in versions
    assert dm.get_target_version("linear") == versions["linear"]
    thin_pool = dm.get_target_version("thin-pool")
    assert thin_pool[0] >= 1
    with pytest.raises(IoctlError):
        dm.get_target_version("no-such-target")


def test_wait_returns_at_once_for_a_past_event(dm: DeviceMapper, prefix: str) -> None:
    name = prefix + "wait"
    make_zero(dm, name)
    current = dm.info(name).event_nr
    info, status = dm.wait(name, event_nr=current + 1)
    assert info.event_nr == current
    assert [t.target_type for t in status] == ["zero"]

    dm.arm_poll()
    assert dm.poll(timeout=0.2) is False


def test_wait_and_poll_see_a_thin_pool_event(
    dm: DeviceMapper, prefix: str, tmp_path: Path
) -> None:
    """A thin-pool whose low-water mark equals its size raises an event on the first write."""
    pool_bytes = 64 * 1024 * 1024
    meta = loop.attach(sparse_file(tmp_path / "meta", 16 * 1024 * 1024))
    data = loop.attach(sparse_file(tmp_path / "data", pool_bytes))
    try:
        pool, thin = prefix + "pool", prefix + "thin"
        blocks = pool_bytes // (64 * 1024)
        dm.create(pool)
        params = f"{meta.path} {data.path} 128 {blocks}"
        dm.load_table(pool, [Target(0, pool_bytes // 512, "thin-pool", params)])
        dm.resume(pool)
        dm.target_message(pool, "create_thin 0")
        dm.create(thin)
        dm.load_table(thin, [Target(0, MiB, "thin", f"{node_path(pool)} 0")])
        dm.resume(thin)

        start = dm.info(pool).event_nr
        seen: list[int] = []

        def wait_in_thread() -> None:
            with DeviceMapper() as other:
                seen.append(other.wait(pool, event_nr=start)[0].event_nr)

        waiter = threading.Thread(target=wait_in_thread)
        waiter.start()
        dm.arm_poll()
        fd = os.open(node_path(thin), os.O_WRONLY)
        try:
            os.write(fd, b"x" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
        waiter.join(timeout=30)
        assert not waiter.is_alive()
        assert seen and seen[0] > start
        assert dm.poll(timeout=10) is True
        dm.remove(thin)
        dm.remove(pool)
    finally:
        loop.detach(data)
        loop.detach(meta)


def test_remove_all(dm: DeviceMapper, prefix: str) -> None:
    others = [d.name for d in dm.list_devices() if not d.name.startswith(prefix)]
    require(not others, f"other devices exist, which remove_all would remove: {others}")
    make_zero(dm, prefix + "x")
    make_zero(dm, prefix + "y")
    dm.remove_all()
    assert dm.list_devices() == []
    assert not os.path.lexists(node_path(prefix + "x"))
