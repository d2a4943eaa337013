"""Block-device ioctls: a device's size, and discarding a range of it.

Discarding a thin device's blocks before it is deleted hands them back to the
pool and, with discard passdown (thin-provisioning.rst), to the data device: a
sparse file behind a loop device gets holes where the blocks were.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os

from dmioctl.errors import InvalidArgument, IoctlError
from dmioctl.uapi.fs import BlockIoctl, blk_range, blk_size64

log = logging.getLogger(__name__)


def size(device: str) -> int:
    """BLKGETSIZE64: the size of block device ``device`` in bytes."""
    buffer = bytearray(blk_size64.sizeof())
    _ioctl(device, os.O_RDONLY, BlockIoctl.BLKGETSIZE64, buffer)
    return int(blk_size64.parse(buffer).bytes)


def discard(device: str, start: int = 0, length: int | None = None) -> None:
    """BLKDISCARD: tell ``device`` that bytes ``start`` to ``start + length`` hold nothing.

    ``length`` defaults to the rest of the device; both must be multiples of 512.
    Their content reads back as zeroes or as before, as the device decides.

    Raises:
        InvalidArgument: the range is not aligned or lies outside the device.
        IoctlError: EOPNOTSUPP when the device cannot discard, or another errno.
    """
    total = size(device)
    if length is None:
        length = total - start
    if start < 0 or length < 0 or start % 512 or length % 512 or start + length > total:
        raise InvalidArgument(
            f"discard range {start}+{length} of {device} is not 512-byte aligned "
            f"within its {total} bytes"
        )
    if length:
        arg = bytearray(blk_range.build({"start": start, "length": length}))
        _ioctl(device, os.O_WRONLY, BlockIoctl.BLKDISCARD, arg)


def _ioctl(device: str, mode: int, command: BlockIoctl, arg: bytearray) -> None:
    log.debug("%s %s", command.name, device)
    fd = os.open(device, mode | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, command, arg, True)
    except OSError as exc:
        err = exc.errno if exc.errno is not None else errno.EIO
        raise IoctlError(command.name, device, err) from exc
    finally:
        os.close(fd)
