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
)

log = logging.getLogger(__name__)

_HEADER = flat_codec(dm_ioctl).struct
#: The payload starts right after the header, which is already 8-byte aligned.
DATA_START = _HEADER.size

#: Buffer size for most commands, enough for a few dozen devices or targets.
DEFAULT_BUFFER_SIZE = 16 * 1024
#: The buffer is doubled while the kernel says the reply did not fit, up to this.
MAX_BUFFER_SIZE = 64 * 1024 * 1024

#: The interface version sent: the kernel accepts any minor up to its own, and
#: nothing here depends on a feature newer than 4.0.
_REQUEST_VERSION = (DM_VERSION_MAJOR, 0, 0)

NO_FLAGS = DMFlag(0)

# Plain ints for the checks made on every call (enum flag operations are slow).
_FLAGS_FIELD = flat_codec(dm_ioctl).fields.index("flags")
_BUFFER_FULL = int(DMFlag.DM_BUFFER_FULL_FLAG)
_SECURE = int(DMFlag.DM_SECURE_DATA_FLAG)

#: Commands that wait in the kernel for something else to happen.
_BLOCKING_COMMANDS = (DMCommand.DM_DEV_WAIT_CMD,)
_libc = ctypes.CDLL(None, use_errno=True)

_NAMING_COMMANDS = (DMCommand.DM_DEV_CREATE_CMD, DMCommand.DM_DEV_RENAME_CMD)

_ERRNO_CLASSES: dict[int, type[IoctlError]] = {
    errno.ENXIO: NoSuchDevice,
    errno.EEXIST: DeviceExists,
    errno.EBUSY: DeviceBusy,
}


class Reply(NamedTuple):
    """The kernel's answer: the returned header fields and the whole buffer.

    Payload offsets (``data_start`` and the records after it) are relative to
    the start of ``buffer``, as the kernel computed them.  (A named tuple rather
    than a dataclass: it is made on every call, and builds several times faster.)
    """

    version: tuple[int, int, int]
    data_size: int
    data_start: int
    target_count: int
    open_count: int
    flags: DMFlag
    event_nr: int
    dev: int
    name: str
    uuid: str
    buffer: bytes | bytearray

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
    buffer_size: int = DEFAULT_BUFFER_SIZE,
) -> Reply:
    """Issue ``command`` on the control file ``fd`` and return the kernel's reply.

    Names and uuids must have been validated by the caller.  A reply that does
    not fit is asked for again with a buffer twice as large, up to
    :data:`MAX_BUFFER_SIZE`.  With ``DM_SECURE_DATA_FLAG`` the buffer is wiped
    after use.

    Raises:
        NoSuchDevice: ENXIO, the device does not exist.
        DeviceExists: EEXIST.
        DeviceBusy: EBUSY.
        IoctlError: any other errno; on DM_TABLE_LOAD with EINVAL the message
            points at the kernel log, where the target says why.
        DMError: the reply does not fit in :data:`MAX_BUFFER_SIZE`.
    """
    name_bytes = name.encode()
    uuid_bytes = uuid.encode()
    secure = int(flags) & _SECURE
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
        if fields[_FLAGS_FIELD] & _BUFFER_FULL:
            if secure:
                _wipe(buffer)
            if size >= MAX_BUFFER_SIZE:
                raise DMError(
                    f"{command.kernel_name} reply does not fit in {MAX_BUFFER_SIZE} bytes"
                )
            size = min(size * 2, MAX_BUFFER_SIZE)
            log.debug("%s reply did not fit: retrying with %d bytes", command.kernel_name, size)
            continue
        reply = _reply(fields, buffer)
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


def _reply(fields: tuple[Any, ...], buffer: bytearray) -> Reply:
    """A Reply from the unpacked header ``fields`` and the buffer they came from."""
    (
        v0,
        v1,
        v2,
        data_size,
        data_start,
        target_count,
        open_count,
        flags,
        event_nr,
        dev,
        name,
        uuid,
    ) = fields
    return Reply(
        version=(v0, v1, v2),
        data_size=min(data_size, len(buffer)),
        data_start=data_start,
        target_count=target_count,
        open_count=open_count,
        flags=_as_flags(flags),
        event_nr=event_nr,
        dev=dev,
        name=cstring(name),
        uuid=cstring(uuid),
        buffer=buffer,
    )


#: DMFlag from an int, remembered: building an enum flag is costly and replies
#: repeat a handful of values.
_as_flags = functools.lru_cache(maxsize=256)(DMFlag)


def cstring(raw: bytes) -> str:
    """The text of a NUL-padded fixed-size field."""
    return raw.split(b"\0", 1)[0].decode(errors="surrogateescape")


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
