"""Fixtures for tests against a real device-mapper kernel.

They run where the kernel has device-mapper and we are root; elsewhere they skip
with the reason (see support.require).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from dmioctl import DeviceMapper, NoSuchDevice
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
    # Remove in reverse order of creation so stacked devices go first.
    for device in reversed(dm.list_devices()):
        if device.name.startswith(tag):
            with contextlib.suppress(NoSuchDevice):
                dm.remove(device.name, retries=5)
