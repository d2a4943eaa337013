"""Exceptions raised by dmioctl.

Every error derives from :class:`DMError`.  Errors that come from an ioctl carry
the kernel's name for the command, the device it was about, and the errno, and
read like ``DM_DEV_REMOVE on 'img-3' failed: EBUSY (Device or resource busy)``.
"""

from __future__ import annotations

import errno as _errno
import os


class DMError(Exception):
    """Base class of every dmioctl error."""


class InvalidArgument(DMError, ValueError):
    """A name, uuid, size, flag or table given by the caller is not acceptable.

    Raised before anything is sent to the kernel.
    """


class IoctlError(DMError, OSError):
    """An ioctl failed.

    Attributes:
        command: kernel name of the ioctl, e.g. ``"DM_DEV_REMOVE"``.
        device: name of the device it was about, or ``None``.
        errno: the error number the kernel returned.
    """

    def __init__(self, command: str, device: str | None, err: int, hint: str = "") -> None:
        self.command = command
        self.device = device
        name = _errno.errorcode.get(err, f"errno {err}")
        target = f" on {device!r}" if device is not None else ""
        message = f"{command}{target} failed: {name} ({os.strerror(err)})"
        if hint:
            message += f"; {hint}"
        super().__init__(err, message)

    def __str__(self) -> str:
        return str(self.strerror)


class NoSuchDevice(IoctlError):
    """The device named in the ioctl does not exist (ENXIO)."""


class DeviceExists(IoctlError):
    """A device with that name or uuid exists already (EEXIST, or EBUSY on create and rename)."""


class DeviceBusy(IoctlError):
    """The device is open or otherwise in use (EBUSY)."""
