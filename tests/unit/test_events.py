"""wait_for_event and watch against an in-memory model of the control file's events.

The model keeps what dm-ioctl.c keeps: one event counter per device and, per open
control file, whether an event happened since DM_DEV_ARM_POLL.  Each fake control
file has a pipe that is readable exactly then, so poll() behaves as on the kernel's
file.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest

from dmioctl import events
from dmioctl.control import DeviceInfo
from dmioctl.errors import InvalidArgument, NoSuchDevice
from dmioctl.events import Event, EventTimeout, wait_for_event, watch
from dmioctl.table import Target
from dmioctl.uapi.dm import DMFlag

SLACK = 0.5


class FakeKernel:
    def __init__(self) -> None:
        self.counters: dict[str, int] = {}
        self.controls: list[FakeControl] = []
        self.lock = threading.Lock()
        self.waits: list[tuple[str, int]] = []

    def add(self, name: str, event_nr: int = 0) -> None:
        with self.lock:
            self.counters[name] = event_nr
        self.global_event()

    def event(self, name: str) -> None:
        with self.lock:
            self.counters[name] += 1
        self.global_event()

    def remove(self, name: str) -> None:
        with self.lock:
            del self.counters[name]
        self.global_event()

    def global_event(self) -> None:
        for control in list(self.controls):
            if control.fd >= 0:
                os.write(control.write_end, b"e")

    def info(self, name: str) -> DeviceInfo:
        with self.lock:
            if name not in self.counters:
                raise NoSuchDevice("DM_DEV_STATUS", name, 6)
            event_nr = self.counters[name]
        return DeviceInfo(name, "", 254, 0, 0, event_nr, 1, DMFlag.DM_ACTIVE_PRESENT_FLAG)


class FakeControl:
    """Stands in for DeviceMapper(path, manage_nodes=False) in dmioctl.events."""

    kernel: FakeKernel

    def __init__(self, path: str, *, manage_nodes: bool = True) -> None:
        self.path = path
        self.fd, self.write_end = os.pipe()
        os.set_blocking(self.fd, False)
        self.kernel.controls.append(self)

    def __enter__(self) -> FakeControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            os.close(self.write_end)
            self.fd = -1
            self.kernel.controls.remove(self)

    def arm_poll(self) -> None:
        try:
            while os.read(self.fd, 4096):
                pass
        except BlockingIOError:
            pass

    def info(self, name: str) -> DeviceInfo:
        return self.kernel.info(name)

    def wait(self, name: str, *, event_nr: int = 0) -> tuple[DeviceInfo, list[Target]]:
        info = self.kernel.info(name)
        # The real DM_DEV_WAIT would block here: the code under test must not get here.
        assert info.event_nr != event_nr, "DM_DEV_WAIT issued before the counter moved"
        self.kernel.waits.append((name, event_nr))
        return info, [Target(0, 8, "zero", f"status of {name} at {info.event_nr}")]


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKernel]:
    model = FakeKernel()
    control = type("Control", (FakeControl,), {"kernel": model})
    monkeypatch.setattr(events, "DeviceMapper", control)
    yield model
    assert not model.controls, "a control file was left open"


def later(seconds: float, action: object, *args: str) -> threading.Timer:
    assert callable(action)
    timer = threading.Timer(seconds, action, args)
    timer.start()
    return timer


class Caller:
    path = "/dev/mapper/control"


def test_wait_returns_at_once_when_the_counter_moved(kernel: FakeKernel) -> None:
    kernel.add("pool", event_nr=3)
    event = wait_for_event(Caller(), "pool", 2, timeout=0)  # type: ignore[arg-type]
    assert event == Event("pool", 3, [Target(0, 8, "zero", "status of pool at 3")])


def test_wait_for_a_later_event(kernel: FakeKernel) -> None:
    kernel.add("pool")
    kernel.add("other")
    later(0.05, kernel.event, "other")  # a wake-up for someone else
    timer = later(0.15, kernel.event, "pool")
    started = time.monotonic()
    event = wait_for_event(Caller(), "pool", 0, timeout=5)  # type: ignore[arg-type]
    timer.join()
    assert (event.name, event.event_nr, event.gone) == ("pool", 1, False)
    assert 0.1 < time.monotonic() - started < 0.15 + SLACK
    assert kernel.waits == [("pool", 0)]


def test_wait_times_out(kernel: FakeKernel) -> None:
    kernel.add("pool")
    started = time.monotonic()
    with pytest.raises(EventTimeout, match="no event on device 'pool' after event 0"):
        wait_for_event(Caller(), "pool", 0, timeout=0.2)  # type: ignore[arg-type]
    assert 0.2 <= time.monotonic() - started < 0.2 + SLACK


def test_wait_for_a_missing_device(kernel: FakeKernel) -> None:
    with pytest.raises(NoSuchDevice):
        wait_for_event(Caller(), "nothing", 0, timeout=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout", [-1.0, float("nan")])
def test_bad_timeouts(kernel: FakeKernel, timeout: float) -> None:
    kernel.add("pool")
    with pytest.raises(InvalidArgument):
        wait_for_event(Caller(), "pool", 0, timeout=timeout)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        next(watch(["pool"], timeout))


def test_bad_event_number(kernel: FakeKernel) -> None:
    with pytest.raises(InvalidArgument):
        wait_for_event(Caller(), "pool", 1 << 32)  # type: ignore[arg-type]


def test_watch_attributes_events_to_their_device(kernel: FakeKernel) -> None:
    for name in ("a", "b", "c"):
        kernel.add(name)
    watcher = watch(["a", "b"], timeout=5)
    later(0.05, kernel.event, "c")
    later(0.1, kernel.event, "b")
    first = next(watcher)
    assert (first.name, first.event_nr) == ("b", 1)
    assert first.targets == [Target(0, 8, "zero", "status of b at 1")]

    kernel.event("a")
    kernel.event("a")
    second = next(watcher)
    assert (second.name, second.event_nr) == ("a", 2)  # two events seen at one look
    watcher.close()


def test_watch_reports_a_removed_device_once(kernel: FakeKernel) -> None:
    kernel.add("a")
    kernel.add("b")
    watcher = watch(["a", "b"], timeout=5)
    later(0.05, kernel.remove, "a")
    assert next(watcher) == Event("a", 0, [], gone=True)
    later(0.05, kernel.event, "b")
    assert next(watcher).name == "b"
    later(0.05, kernel.remove, "b")
    assert next(watcher) == Event("b", 1, [], gone=True)
    with pytest.raises(StopIteration):
        next(watcher)  # nothing left to watch


def test_watch_ends_after_a_quiet_timeout(kernel: FakeKernel) -> None:
    kernel.add("a")
    kernel.add("other")
    later(0.1, kernel.event, "other")  # wakes the watcher, is not ours
    started = time.monotonic()
    assert list(watch(["a"], timeout=0.3)) == []
    assert 0.3 <= time.monotonic() - started < 0.3 + SLACK


def test_watch_of_a_missing_device(kernel: FakeKernel) -> None:
    with pytest.raises(NoSuchDevice):
        next(watch(["nothing"], timeout=1))


def test_watch_rejects_a_bad_name(kernel: FakeKernel) -> None:
    with pytest.raises(InvalidArgument):
        next(watch(["a/b"]))
