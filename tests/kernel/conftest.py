"""Fixtures for tests against a real device-mapper kernel.

They run where the kernel has device-mapper and we are root; elsewhere they skip
with the reason (see support.require).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from dmioctl import DeviceBusy, DeviceMapper, NoSuchDevice
from dmioctl.control import available
from tests.kernel.support import require


@pytest.fixture
def dm() -> Iterator[DeviceMapper]:
    """A DeviceMapper on the real control file."""
    require(os.geteuid() == 0, "needs root")
    require(available(), "this kernel has no device-mapper")
    with DeviceMapper() as control:
        yield control


@pytest.fixture
def prefix(dm: DeviceMapper, request: pytest.FixtureRequest) -> Iterator[str]:
    """A name prefix unique to this test; its devices are removed afterwards."""
    tag = f"dmioctl-t{os.getpid()}-{request.node.name[:40]}-".replace("[", "_").replace("]", "_")
    yield tag
    # Stacked devices hold the ones below them open: remove whatever is free,
    # pass after pass, until nothing of ours is left or a pass frees nothing.
    ours = [d.name for d in dm.list_devices() if d.name.startswith(tag)]
    while ours:
        busy = []
        for name in ours:
            try:
                dm.remove(name)
            except DeviceBusy:
                busy.append(name)
            except NoSuchDevice:
                pass
        if len(busy) == len(ours):
            for name in busy:
                dm.remove(name, retries=5)
        ours = busy
