"""Linux device-mapper through its ioctl interface, in pure Python.

The model: a device is created empty, a table is loaded into its inactive slot,
and resuming the device makes that table active.  :class:`DeviceMapper` offers
one method per ioctl; :mod:`dmioctl.loop` attaches files as loop devices.
"""

from dmioctl.control import DeviceInfo, DeviceMapper, ListedDevice, TargetVersion
from dmioctl.errors import (
    DeviceBusy,
    DeviceExists,
    DMError,
    InvalidArgument,
    IoctlError,
    NoSuchDevice,
)
from dmioctl.table import Target

__all__ = [
    "DMError",
    "DeviceBusy",
    "DeviceExists",
    "DeviceInfo",
    "DeviceMapper",
    "InvalidArgument",
    "IoctlError",
    "ListedDevice",
    "NoSuchDevice",
    "Target",
    "TargetVersion",
]
