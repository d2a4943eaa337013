"""The udev cookie on real SysV semaphores (no udevd needed), and its use by DeviceMapper.

The rules' part (``dmsetup udevcomplete``) is played by :func:`dmioctl.udev.complete`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dmioctl import DeviceMapper, control, nodes, udev
from dmioctl.ioctl import DATA_START, Reply
from dmioctl.uapi.dm import DMCommand, DMFlag
from dmioctl.udev import (
    DEFAULT_FLAGS,
    DM_COOKIE_MAGIC,
    Cookie,
    UdevFlag,
    UdevTimeout,
    cookie_flags,
    cookie_keys,
    semaphore_key,
)

SLACK = 0.5


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    before = set(cookie_keys())
    yield
    assert set(cookie_keys()) <= before, "a cookie semaphore was left behind"


def test_cookie_encoding() -> None:
    with Cookie.create() as cookie:
        assert cookie.key >> 16 == DM_COOKIE_MAGIC
        assert cookie.value & 0xFFFF == cookie.key & 0xFFFF != 0
        assert cookie.value >> 16 == DEFAULT_FLAGS
        assert semaphore_key(cookie.value) == cookie.key
        assert cookie_flags(cookie.value) == DEFAULT_FLAGS
        assert cookie.key in cookie_keys()
    assert cookie.key not in cookie_keys()


def test_flag_bits() -> None:
    assert int(UdevFlag.DM_UDEV_DISABLE_DM_RULES_FLAG) == 0x01
    assert int(UdevFlag.DM_UDEV_DISABLE_LIBRARY_FALLBACK_FLAG) == 0x20
    assert int(UdevFlag.DM_UDEV_PRIMARY_SOURCE_FLAG) == 0x40


@pytest.mark.skipif(shutil.which("dmsetup") is None, reason="dmsetup is not installed")
def test_flags_as_the_rules_decode_them() -> None:
    """55-dm.rules imports ``dmsetup udevflags $env{DM_COOKIE}``: it must read our flags."""
    with Cookie.create() as cookie:
        decoded = subprocess.run(
            ["dmsetup", "udevflags", str(cookie.value)], capture_output=True, text=True, check=True
        ).stdout.split()
    assert decoded == [
        "DM_UDEV_DISABLE_LIBRARY_FALLBACK_FLAG='1'",
        "DM_UDEV_PRIMARY_SOURCE_FLAG='1'",
    ]


def test_complete_then_wait() -> None:
    with Cookie.create() as cookie:
        assert cookie.count() == 1
        udev.complete(cookie.value)
        assert cookie.count() == 0
        cookie.wait(0)


def test_wait_for_a_completion_from_elsewhere() -> None:
    with Cookie.create() as cookie:
        timer = threading.Timer(0.1, cookie.complete)
        timer.start()
        started = time.monotonic()
        cookie.wait(5)
        timer.join()
        assert 0.1 <= time.monotonic() - started < 0.1 + SLACK


def test_timeout_raises_and_the_semaphore_goes() -> None:
    started = time.monotonic()
    with pytest.raises(UdevTimeout, match="did not complete cookie"), Cookie.create() as cookie:
        cookie.wait(0.2)
    assert 0.2 <= time.monotonic() - started < 0.2 + SLACK
    assert cookie.key not in cookie_keys()
    cookie.destroy()  # twice is fine


def test_flags_only_cookie_completes_nothing() -> None:
    udev.complete(DEFAULT_FLAGS << 16)


def test_complete_of_an_unknown_cookie() -> None:
    with Cookie.create() as cookie:
        value = cookie.value
    with pytest.raises(udev.UdevError, match="no semaphore"):
        udev.complete(value)


# ------------------------------------------------------------ DeviceMapper plumbing


class FakeIoctl:
    """Stands in for ioctl.issue in dmioctl.control; ``rules`` plays udev's part."""

    def __init__(self, *, uevent: bool, rules: bool) -> None:
        self.uevent = uevent
        self.rules = rules
        self.calls: list[tuple[DMCommand, int]] = []

    def __call__(self, fd: int, command: DMCommand, **kw: object) -> Reply:
        event_nr = kw.get("event_nr", 0)
        assert isinstance(event_nr, int)
        self.calls.append((command, event_nr))
        if event_nr:
            assert semaphore_key(event_nr) in cookie_keys()
        flags = DMFlag.DM_ACTIVE_PRESENT_FLAG
        if self.uevent:
            flags |= DMFlag.DM_UEVENT_GENERATED_FLAG
            if self.rules and event_nr:
                threading.Timer(0.05, udev.complete, (event_nr,)).start()
        name = str(kw.get("name", ""))
        buffer = bytes(DATA_START)
        return Reply.build(
            buffer,
            data_start=DATA_START,
            target_count=1,
            flags=flags,
            dev=os.makedev(254, 3),
            name=name,
            version=(4, 48, 0),
        )


@pytest.fixture
def node_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    monkeypatch.setattr(nodes, "created", lambda *a, **k: calls.append("created"))
    monkeypatch.setattr(nodes, "removed", lambda *a, **k: calls.append("removed"))
    return calls


def control_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **kw: float) -> DeviceMapper:
    (tmp_path / "control").touch()
    return DeviceMapper(str(tmp_path / "control"), **kw)  # type: ignore[arg-type]


def test_resume_waits_for_the_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, node_calls: list[str]
) -> None:
    monkeypatch.setattr(nodes, "udev_running", lambda: True)
    fake = FakeIoctl(uevent=True, rules=True)
    monkeypatch.setattr(control, "issue", fake)
    with control_file(tmp_path, monkeypatch) as dm:
        dm.resume("vol")
        dm.remove("vol")
    assert [command for command, _ in fake.calls] == [
        DMCommand.DM_DEV_SUSPEND_CMD,
        DMCommand.DM_DEV_REMOVE_CMD,
    ]
    assert all(cookie_flags(event_nr) == DEFAULT_FLAGS for _, event_nr in fake.calls)
    assert node_calls == []  # udev made the nodes


def test_no_uevent_no_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, node_calls: list[str]
) -> None:
    """A resume of a running device sends no uevent: nothing would complete the cookie."""
    monkeypatch.setattr(nodes, "udev_running", lambda: True)
    monkeypatch.setattr(control, "issue", FakeIoctl(uevent=False, rules=False))
    with control_file(tmp_path, monkeypatch, udev_timeout=30) as dm:
        started = time.monotonic()
        dm.resume("vol")
        assert time.monotonic() - started < SLACK
    assert node_calls == ["created"]


def test_rules_that_never_run_time_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, node_calls: list[str]
) -> None:
    monkeypatch.setattr(nodes, "udev_running", lambda: True)
    monkeypatch.setattr(control, "issue", FakeIoctl(uevent=True, rules=False))
    with control_file(tmp_path, monkeypatch, udev_timeout=0.2) as dm, pytest.raises(UdevTimeout):
        dm.remove("vol")
    assert node_calls == []


def test_without_udev_no_cookie(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, node_calls: list[str]
) -> None:
    monkeypatch.setattr(nodes, "udev_running", lambda: False)
    fake = FakeIoctl(uevent=True, rules=False)
    monkeypatch.setattr(control, "issue", fake)
    with control_file(tmp_path, monkeypatch) as dm:
        dm.resume("vol")
        dm.remove("vol")
    assert [event_nr for _, event_nr in fake.calls] == [0, 0]
    assert node_calls == ["created", "removed"]
