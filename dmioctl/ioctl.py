"""The one place that issues a device-mapper ioctl.

:func:`issue` packs a ``struct dm_ioctl`` header and an optional payload into one
buffer, calls the ioctl on the control file, regrows the buffer while the kernel
answers ``DM_BUFFER_FULL_FLAG``, turns a failure into a typed
:class:`~dmioctl.errors.IoctlError`, and logs one DEBUG line per call.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import logging
import os
from typing import Any, NamedTuple

from dmioctl.errors import DeviceBusy, DeviceExists, DMError, IoctlError, NoSuchDevice
from dmioctl.uapi.dm import (
    DM_VERSION_MAJOR,
    DMCommand,
    DMFlag,
    dm_ioctl,
    flat_codec,
    kernel_bytes,
    kernel_text,
)

log = logging.getLogger(__name__)

_HEADER = flat_codec(dm_ioctl).struct
#: The payload starts right after the header, which is already 8-byte aligned.
DATA_START = _HEADER.size

#: Buffer size a command starts with: the header and about 700 bytes of payload,
#: which most replies need at most.  The kernel copies the whole buffer in on
#: every call, so a status with a 16 KiB buffer took a third longer under TCG.
INITIAL_BUFFER_SIZE = 1024
#: The buffer is doubled while the kernel says the reply did not fit, up to this.
MAX_BUFFER_SIZE = 64 * 1024 * 1024

#: The interface version sent: the kernel accepts any minor up to its own, and
#: nothing here depends on a feature newer than 4.0.
_REQUEST_VERSION = (DM_VERSION_MAJOR, 0, 0)

NO_FLAGS = DMFlag(0)

# Positions of the header fields in the unpacked tuple.
_FIELDS = flat_codec(dm_ioctl).fields
_VERSION, _DATA_SIZE, _DATA_START, _TARGET_COUNT, _OPEN_COUNT = (
    _FIELDS.index(field)
    for field in ("version", "data_size", "data_start", "target_count", "open_count")
)
_FLAGS, _EVENT_NR, _DEV, _NAME, _UUID = (
    _FIELDS.index(field) for field in ("flags", "event_nr", "dev", "name", "uuid")
)
# Plain ints for the checks made on every call (enum flag operations are slow).
_BUFFER_FULL = int(DMFlag.DM_BUFFER_FULL_FLAG)
_SECURE = int(DMFlag.DM_SECURE_DATA_FLAG)

#: Commands that wait in the kernel for something else to happen.
_BLOCKING_COMMANDS = (DMCommand.DM_DEV_WAIT_CMD,)
_libc = ctypes.CDLL(None, use_errno=True)

#: For each command whose reply once needed more than INITIAL_BUFFER_SIZE, the
#: size that held it: later calls start there instead of regrowing again.
_fitted_size: dict[DMCommand, int] = {}

_NAMING_COMMANDS = (DMCommand.DM_DEV_CREATE_CMD, DMCommand.DM_DEV_RENAME_CMD)

_ERRNO_CLASSES: dict[int, type[IoctlError]] = {
    errno.ENXIO: NoSuchDevice,
    errno.EEXIST: DeviceExists,
    errno.EBUSY: DeviceBusy,
}


class Reply(NamedTuple):
    """The kernel's answer: the returned header fields and the whole buffer.

    ``header`` holds the unpacked ``struct dm_ioctl`` fields in layout order;
    the properties decode them when asked, since most callers read two or three
    of them and a status call is meant to cost little more than the ioctl.
    Payload offsets (``data_start`` and the records after it) are relative to
    the start of ``buffer``, as the kernel computed them.
    """

    header: tuple[Any, ...]
    buffer: bytes | bytearray

    @classmethod
    def build(
        cls,
        buffer: bytes | bytearray,
        *,
        data_start: int = 0,
        data_size: int | None = None,
        target_count: int = 0,
        open_count: int = 0,
        flags: DMFlag = NO_FLAGS,
        event_nr: int = 0,
        dev: int = 0,
        name: str = "",
        uuid: str = "",
        version: tuple[int, int, int] = (DM_VERSION_MAJOR, 0, 0),
    ) -> Reply:
        """A reply from its field values, as tests and recorded replies make them."""
        size = len(buffer) if data_size is None else data_size
        fields = (*version, size, data_start, target_count, open_count, int(flags), event_nr, dev)
        return cls((*fields, kernel_bytes(name), kernel_bytes(uuid)), buffer)

    @property
    def version(self) -> tuple[int, int, int]:
        """The interface version the kernel answered with."""
        major, minor, patch = self.header[_VERSION : _VERSION + 3]
        return (major, minor, patch)

    @property
    def data_size(self) -> int:
        """End of the payload, counted from the buffer's start (never past its end)."""
        return min(int(self.header[_DATA_SIZE]), len(self.buffer))

    @property
    def data_start(self) -> int:
        return int(self.header[_DATA_START])

    @property
    def target_count(self) -> int:
        return int(self.header[_TARGET_COUNT])

    @property
    def open_count(self) -> int:
        return int(self.header[_OPEN_COUNT])

    @property
    def flags(self) -> DMFlag:
        return _as_flags(self.header[_FLAGS])

    @property
    def event_nr(self) -> int:
        return int(self.header[_EVENT_NR])

    @property
    def dev(self) -> int:
        return int(self.header[_DEV])

    @property
    def name(self) -> str:
        return cstring(self.header[_NAME])

    @property
    def uuid(self) -> str:
        return cstring(self.header[_UUID])

    @property
    def data(self) -> bytes:
        """The payload the kernel wrote, from ``data_start`` to ``data_size``."""
        return bytes(self.buffer[self.data_start : self.data_size])


def describe(name: str, uuid: str, dev: int) -> str | None:
    """How a device is named in messages: by name, else uuid, else number."""
    if name:
        return name
    if uuid:
        return f"uuid {uuid}"
    if dev:
        return f"dev {os.major(dev)}:{os.minor(dev)}"
    return None


def issue(
    fd: int,
    command: DMCommand,
    *,
    name: str = "",
    uuid: str = "",
    flags: DMFlag = NO_FLAGS,
    dev: int = 0,
    event_nr: int = 0,
    target_count: int = 0,
    payload: bytes = b"",
    buffer_size: int | None = None,
) -> Reply:
    """Issue ``command`` on the control file ``fd`` and return the kernel's reply.

    Names and uuids must have been validated by the caller.  The buffer holds
    ``buffer_size`` bytes, by default :data:`INITIAL_BUFFER_SIZE` or what the
    command's largest reply so far needed.  A reply that does not fit is asked
    for again with a buffer twice as large, up to :data:`MAX_BUFFER_SIZE`.  With
    ``DM_SECURE_DATA_FLAG`` the buffer is wiped after use.

    Raises:
        NoSuchDevice: ENXIO, the device does not exist.
        DeviceExists: EEXIST.
        DeviceBusy: EBUSY.
        IoctlError: any other errno; on DM_TABLE_LOAD with EINVAL the message
            points at the kernel log, where the target says why.
        DMError: the reply does not fit in :data:`MAX_BUFFER_SIZE`.
    """
    name_bytes = kernel_bytes(name)
    uuid_bytes = kernel_bytes(uuid)
    secure = int(flags) & _SECURE
    if buffer_size is None:
        buffer_size = _fitted_size.get(command, INITIAL_BUFFER_SIZE)
    size = max(buffer_size, DATA_START + len(payload))
    while True:
        buffer = bytearray(size)
        _HEADER.pack_into(
            buffer,
            0,
            *_REQUEST_VERSION,
            size,
            DATA_START,
            target_count,
            0,
            flags,
            event_nr,
            dev,
            name_bytes,
            uuid_bytes,
        )
        buffer[DATA_START : DATA_START + len(payload)] = payload
        try:
            if command in _BLOCKING_COMMANDS:
                _ioctl_releasing_gil(fd, command.request, buffer)
            else:
                fcntl.ioctl(fd, command.request, buffer)
        except OSError as exc:
            device = describe(name, uuid, dev)
            log.debug(
                "%s %s flags=%s -> %s",
                command.kernel_name,
                device or "-",
                flags.words(),
                errno.errorcode.get(exc.errno or 0, exc.errno),
            )
            if secure:
                _wipe(buffer)
            raise _error(command, device, exc.errno or errno.EIO) from exc
        fields = _HEADER.unpack_from(buffer)
        if fields[_FLAGS] & _BUFFER_FULL:
            if secure:
                _wipe(buffer)
            if size >= MAX_BUFFER_SIZE:
                raise DMError(
                    f"{command.kernel_name} reply does not fit in {MAX_BUFFER_SIZE} bytes"
                )
            size = min(size * 2, MAX_BUFFER_SIZE)
            log.debug("%s reply did not fit: retrying with %d bytes", command.kernel_name, size)
            if size > _fitted_size.get(command, 0):
                _fitted_size[command] = size
            continue
        reply = Reply(fields, buffer)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s %s flags=%s -> flags=%s event_nr=%d",
                command.kernel_name,
                describe(name, uuid, dev) or "-",
                flags.words(),
                reply.flags.words(),
                reply.event_nr,
            )
        if secure:
            reply = reply._replace(buffer=bytes(buffer))
            _wipe(buffer)
        return reply


def _ioctl_releasing_gil(fd: int, request: int, buffer: bytearray) -> None:
    """The ioctl through libc, letting other threads run while the kernel blocks.

    fcntl.ioctl keeps the interpreter lock during a call with a buffer longer
    than 1024 bytes, so a DM_DEV_WAIT there would stop every thread of the
    process, including one that would cause the awaited event.
    """
    view = (ctypes.c_char * len(buffer)).from_buffer(buffer)
    if _libc.ioctl(fd, ctypes.c_ulong(request), view) < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


#: DMFlag from an int, remembered: building an enum flag is costly and replies
#: repeat a handful of values.
_as_flags = functools.lru_cache(maxsize=256)(DMFlag)


def cstring(raw: bytes) -> str:
    """The text of a NUL-padded fixed-size field."""
    return kernel_text(raw.split(b"\0", 1)[0])


def _wipe(buffer: bytearray) -> None:
    buffer[:] = bytes(len(buffer))


def _error(command: DMCommand, device: str | None, err: int) -> IoctlError:
    hint = ""
    cls = _ERRNO_CLASSES.get(err, IoctlError)
    if command is DMCommand.DM_TABLE_LOAD_CMD and err == errno.EINVAL:
        hint = "the kernel log (dmesg) says why the table was refused"
    elif command in _NAMING_COMMANDS and err == errno.EBUSY:
        # dm-ioctl.c dm_hash_insert and dm_hash_rename answer a taken name or uuid so.
        hint = "a device with that name or uuid exists already"
        cls = DeviceExists
    return cls(command.kernel_name, device, err, hint)
