"""Layouts and constants of ``include/uapi/linux/loop.h``, in header order.

A loop device is configured with one :data:`loop_config` (``LOOP_CONFIGURE``,
Linux 5.8 and later) or, on older kernels, with ``LOOP_SET_FD`` followed by one
:data:`loop_info64` (``LOOP_SET_STATUS64``); ``LOOP_GET_STATUS64`` answers with a
:data:`loop_info64`.  ``/dev/loop-control`` takes the ``LOOP_CTL_*`` commands,
whose argument and result are plain device numbers.  Integers are in the
machine's byte order, as the kernel reads them; ``tests/unit/test_loop_layout.py``
holds these declarations against the C header compiled on the spot.

Not mirrored: ``struct loop_info`` (the pre-2.6 status layout, whose field sizes
depend on the architecture) and the ``LO_CRYPT_*`` transfer types, which current
kernels ignore.  Their ioctl numbers are kept so that the table of commands is
complete.
"""

from __future__ import annotations

import enum

from construct import Array, Bytes, Default, Int32un, Int64un, Padding, Struct

from dmioctl.uapi import flag_words

LO_NAME_SIZE = 64
LO_KEY_SIZE = 32


class LoopFlag(enum.IntFlag):
    """Bits of ``loop_info64.lo_flags``; the comment on each says how it is set."""

    LO_FLAGS_READ_ONLY = 1  # out; set by LOOP_CONFIGURE, or by a read-only backing fd
    LO_FLAGS_AUTOCLEAR = 4  # in/out: detach on the last close
    LO_FLAGS_PARTSCAN = 8  # in/out: scan the device for a partition table
    LO_FLAGS_DIRECT_IO = 16  # in/out: O_DIRECT on the backing file

    def words(self) -> str:
        """The set flags as ``READ_ONLY|AUTOCLEAR`` for log lines; ``-`` when none is set."""
        return flag_words(self, "LO_FLAGS_")


LO_FLAGS_READ_ONLY = LoopFlag.LO_FLAGS_READ_ONLY
LO_FLAGS_AUTOCLEAR = LoopFlag.LO_FLAGS_AUTOCLEAR
LO_FLAGS_PARTSCAN = LoopFlag.LO_FLAGS_PARTSCAN
LO_FLAGS_DIRECT_IO = LoopFlag.LO_FLAGS_DIRECT_IO

#: Flags that LOOP_SET_STATUS64 may set.
LOOP_SET_STATUS_SETTABLE_FLAGS = LO_FLAGS_AUTOCLEAR | LO_FLAGS_PARTSCAN
#: Flags that LOOP_SET_STATUS64 may clear.
LOOP_SET_STATUS_CLEARABLE_FLAGS = LO_FLAGS_AUTOCLEAR
#: Flags that LOOP_CONFIGURE accepts; it fails with EINVAL on any other.
LOOP_CONFIGURE_SETTABLE_FLAGS = (
    LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR | LO_FLAGS_PARTSCAN | LO_FLAGS_DIRECT_IO
)

#: struct loop_info64: the status of a bound device.  The layout is naturally
#: aligned (five u64, four u32, three byte arrays whose sizes are multiples of 8),
#: so there is no padding.  Fields the caller does not set default to zero.
loop_info64 = Struct(
    "lo_device" / Default(Int64un, 0),  # out: st_dev of the backing file
    "lo_inode" / Default(Int64un, 0),  # out: st_ino of the backing file
    "lo_rdevice" / Default(Int64un, 0),  # out: st_rdev of the backing file
    "lo_offset" / Int64un,  # in/out: bytes into the backing file where the device starts
    "lo_sizelimit" / Int64un,  # in/out: bytes, 0 == up to the end of the backing file
    "lo_number" / Default(Int32un, 0),  # out: N of /dev/loopN
    "lo_encrypt_type" / Default(Int32un, 0),  # in: 0 (LO_CRYPT_NONE), others are refused
    "lo_encrypt_key_size" / Default(Int32un, 0),  # in: obsolete, at most LO_KEY_SIZE
    "lo_flags" / Int32un,  # in/out: LoopFlag
    "lo_file_name" / Bytes(LO_NAME_SIZE),  # in/out: NUL-terminated, stored as given
    "lo_crypt_name" / Default(Bytes(LO_NAME_SIZE), bytes(LO_NAME_SIZE)),  # in/out: unused
    "lo_encrypt_key" / Default(Bytes(LO_KEY_SIZE), bytes(LO_KEY_SIZE)),  # in: obsolete
    "lo_init" / Default(Array(2, Int64un), [0, 0]),  # in/out: unused
)

#: struct loop_config: everything LOOP_CONFIGURE binds in one step.
loop_config = Struct(
    "fd" / Int32un,  # in: descriptor of the backing file
    "block_size" / Int32un,  # in: logical block size in bytes; 0 keeps the default
    "info" / loop_info64,  # in
    "__reserved" / Padding(8 * 8),  # in: __u64 __reserved[8], zero
)


class LoopIoctl(enum.IntEnum):
    """ioctl request numbers: ``LOOP_*`` on /dev/loopN, ``LOOP_CTL_*`` on the control."""

    LOOP_SET_FD = 0x4C00  # arg: backing file descriptor
    LOOP_CLR_FD = 0x4C01  # no arg; detach now, or on the last close if still open
    LOOP_SET_STATUS = 0x4C02  # arg: struct loop_info (not mirrored)
    LOOP_GET_STATUS = 0x4C03  # arg: struct loop_info (not mirrored)
    LOOP_SET_STATUS64 = 0x4C04  # arg: struct loop_info64, in
    LOOP_GET_STATUS64 = 0x4C05  # arg: struct loop_info64, out
    LOOP_CHANGE_FD = 0x4C06  # arg: new backing descriptor; read-only devices only
    LOOP_SET_CAPACITY = 0x4C07  # no arg; re-read the backing file's size
    LOOP_SET_DIRECT_IO = 0x4C08  # arg: 0 or 1
    LOOP_SET_BLOCK_SIZE = 0x4C09  # arg: logical block size in bytes
    LOOP_CONFIGURE = 0x4C0A  # arg: struct loop_config, in; Linux 5.8+

    LOOP_CTL_ADD = 0x4C80  # arg: number wanted; returns the number added
    LOOP_CTL_REMOVE = 0x4C81  # arg: number of an unbound device to delete
    LOOP_CTL_GET_FREE = 0x4C82  # no arg; returns the number of an unbound device


LOOP_SET_FD = LoopIoctl.LOOP_SET_FD
LOOP_CLR_FD = LoopIoctl.LOOP_CLR_FD
LOOP_SET_STATUS = LoopIoctl.LOOP_SET_STATUS
LOOP_GET_STATUS = LoopIoctl.LOOP_GET_STATUS
LOOP_SET_STATUS64 = LoopIoctl.LOOP_SET_STATUS64
LOOP_GET_STATUS64 = LoopIoctl.LOOP_GET_STATUS64
LOOP_CHANGE_FD = LoopIoctl.LOOP_CHANGE_FD
LOOP_SET_CAPACITY = LoopIoctl.LOOP_SET_CAPACITY
LOOP_SET_DIRECT_IO = LoopIoctl.LOOP_SET_DIRECT_IO
LOOP_SET_BLOCK_SIZE = LoopIoctl.LOOP_SET_BLOCK_SIZE
LOOP_CONFIGURE = LoopIoctl.LOOP_CONFIGURE

LOOP_CTL_ADD = LoopIoctl.LOOP_CTL_ADD
LOOP_CTL_REMOVE = LoopIoctl.LOOP_CTL_REMOVE
LOOP_CTL_GET_FREE = LoopIoctl.LOOP_CTL_GET_FREE
