"""Layouts and constants of ``include/uapi/linux/dm-ioctl.h``, in header order.

Every device-mapper ioctl passes one buffer: a :data:`dm_ioctl` header, then at
``data_start`` a command-specific payload (target specs, a message, a name
list...).  The structures below are the single description of that wire format;
``tests/unit/test_dm_layout.py`` holds them against the C header compiled on the
spot.  Integers are in the machine's byte order, as the kernel reads them.

:func:`flat_codec` derives a precompiled :class:`struct.Struct` from a fixed-size
layout, for the header that is packed and unpacked on every call.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from construct import (
    Adapter,
    Array,
    Bytes,
    Construct,
    FormatField,
    GreedyBytes,
    Int32sn,
    Int32un,
    Int64un,
    NullTerminated,
    PaddedString,
    Padding,
    Struct,
)
from construct.core import Padded, Renamed, StringEncoded

from dmioctl.uapi import flag_words

DM_DIR = "mapper"
DM_CONTROL_NODE = "control"
DM_MAX_TYPE_NAME = 16
DM_NAME_LEN = 128
DM_UUID_LEN = 129

#: struct dm_ioctl: the header at the start of every ioctl buffer.
dm_ioctl = Struct(
    "version" / Array(3, Int32un),  # in/out: interface version, major.minor.patch
    "data_size" / Int32un,  # in: total buffer size, this header included
    "data_start" / Int32un,  # in/out: offset of the payload from the header's start
    "target_count" / Int32un,  # in/out
    "open_count" / Int32sn,  # out
    "flags" / Int32un,  # in/out: DMFlag
    "event_nr" / Int32un,  # in/out: event number, or udev cookie on input
    "padding" / Padding(4),
    "dev" / Int64un,  # in/out: kernel dev_t encoding (huge_encode_dev)
    "name" / PaddedString(DM_NAME_LEN, "utf8"),  # in/out: device name
    "uuid" / PaddedString(DM_UUID_LEN, "utf8"),  # in/out: unique identifier
    "data" / Padding(7),  # padding up to the 8-byte aligned size
)

#: struct dm_target_spec: one target of a table; its parameter string follows it.
dm_target_spec = Struct(
    "sector_start" / Int64un,  # in/out
    "length" / Int64un,  # in/out
    "status" / Int32sn,  # out: used when reading from the kernel only
    # in/out: DM_TABLE_LOAD counts from this spec, DM_TABLE_STATUS from the first
    "next" / Int32un,
    "target_type" / PaddedString(DM_MAX_TYPE_NAME, "utf8"),  # in/out
)

#: struct dm_target_deps: devices the active table uses.
dm_target_deps = Struct(
    "count" / Int32un,  # out: array size
    "padding" / Padding(4),
    "dev" / Array(lambda this: this.count, Int64un),  # out
)


def kernel_bytes(text: str) -> bytes:
    """``text`` as the kernel gets it: UTF-8, with surrogate escapes back to their bytes."""
    return text.encode("utf-8", "surrogateescape")


def kernel_text(raw: bytes) -> str:
    """Bytes from the kernel as text: UTF-8, with any other byte as a surrogate escape."""
    return raw.decode("utf-8", "surrogateescape")


class _KernelText(Adapter):  # type: ignore[misc]
    """A NUL-terminated string as the kernel keeps it: bytes, UTF-8 only by convention.

    Bytes that are not UTF-8 (a name dmsetup made with ``--manglename none``) decode
    to surrogate escapes and encode back to the same bytes.
    """

    def _decode(self, obj: bytes, context: object, path: str) -> str:
        return kernel_text(obj)

    def _encode(self, obj: str, context: object, path: str) -> bytes:
        return kernel_bytes(obj)


#: A NUL-terminated kernel string (names, uuids, target types, messages).
KernelCString = _KernelText(NullTerminated(GreedyBytes))

#: struct dm_name_list: one device of DM_LIST_DEVICES.  Newer kernels follow the
#: name, aligned to 8 bytes, with :data:`dm_name_list_trailer` and the uuid.
dm_name_list = Struct(
    "dev" / Int64un,  # out
    "next" / Int32un,  # out: offset of the next record from the start of this one
    "name" / KernelCString,  # out
)

#: The fields after a dm_name_list's name, at the next 8-byte boundary.
dm_name_list_trailer = Struct(
    "event_nr" / Int32un,  # out
    "flags" / Int32un,  # out: DM_NAME_LIST_FLAG_*
)

DM_NAME_LIST_FLAG_HAS_UUID = 1
DM_NAME_LIST_FLAG_DOESNT_HAVE_UUID = 2

#: struct dm_target_versions: one target type of DM_LIST_VERSIONS.
dm_target_versions = Struct(
    "next" / Int32un,  # out: offset of the next record from the start of this one
    "version" / Array(3, Int32un),  # out
    "name" / KernelCString,  # in/out
)

#: struct dm_target_msg: a message for the target covering ``sector``.
dm_target_msg = Struct(
    "sector" / Int64un,  # in
    "message" / KernelCString,  # in
)


class DMCommand(enum.IntEnum):
    """The ioctl command numbers; see dm-ioctl.c lookup_ioctl()."""

    DM_VERSION_CMD = 0
    DM_REMOVE_ALL_CMD = 1
    DM_LIST_DEVICES_CMD = 2
    DM_DEV_CREATE_CMD = 3
    DM_DEV_REMOVE_CMD = 4
    DM_DEV_RENAME_CMD = 5
    DM_DEV_SUSPEND_CMD = 6
    DM_DEV_STATUS_CMD = 7
    DM_DEV_WAIT_CMD = 8
    DM_TABLE_LOAD_CMD = 9
    DM_TABLE_CLEAR_CMD = 10
    DM_TABLE_DEPS_CMD = 11
    DM_TABLE_STATUS_CMD = 12
    DM_LIST_VERSIONS_CMD = 13
    DM_TARGET_MSG_CMD = 14
    DM_DEV_SET_GEOMETRY_CMD = 15
    DM_DEV_ARM_POLL_CMD = 16
    DM_GET_TARGET_VERSION_CMD = 17

    @property
    def kernel_name(self) -> str:
        """The ioctl's name without the ``_CMD`` suffix, e.g. ``DM_DEV_REMOVE``."""
        return self.name.removesuffix("_CMD")

    @property
    def request(self) -> int:
        """The ioctl request number, ``_IOWR(DM_IOCTL, cmd, struct dm_ioctl)``."""
        return _REQUESTS[self]


DM_IOCTL = 0xFD

_IOC_WRITE = 1
_IOC_READ = 2


def _IOWR(kind: int, nr: int, size: int) -> int:
    """The request number of an ioctl that both reads and writes, as asm-generic/ioctl.h."""
    return ((_IOC_READ | _IOC_WRITE) << 30) | (size << 16) | (kind << 8) | nr


_REQUESTS = {command: _IOWR(DM_IOCTL, command, dm_ioctl.sizeof()) for command in DMCommand}

DM_VERSION = DMCommand.DM_VERSION_CMD.request
DM_REMOVE_ALL = DMCommand.DM_REMOVE_ALL_CMD.request
DM_LIST_DEVICES = DMCommand.DM_LIST_DEVICES_CMD.request
DM_DEV_CREATE = DMCommand.DM_DEV_CREATE_CMD.request
DM_DEV_REMOVE = DMCommand.DM_DEV_REMOVE_CMD.request
DM_DEV_RENAME = DMCommand.DM_DEV_RENAME_CMD.request
DM_DEV_SUSPEND = DMCommand.DM_DEV_SUSPEND_CMD.request
DM_DEV_STATUS = DMCommand.DM_DEV_STATUS_CMD.request
DM_DEV_WAIT = DMCommand.DM_DEV_WAIT_CMD.request
DM_DEV_ARM_POLL = DMCommand.DM_DEV_ARM_POLL_CMD.request
DM_TABLE_LOAD = DMCommand.DM_TABLE_LOAD_CMD.request
DM_TABLE_CLEAR = DMCommand.DM_TABLE_CLEAR_CMD.request
DM_TABLE_DEPS = DMCommand.DM_TABLE_DEPS_CMD.request
DM_TABLE_STATUS = DMCommand.DM_TABLE_STATUS_CMD.request
DM_LIST_VERSIONS = DMCommand.DM_LIST_VERSIONS_CMD.request
DM_GET_TARGET_VERSION = DMCommand.DM_GET_TARGET_VERSION_CMD.request
DM_TARGET_MSG = DMCommand.DM_TARGET_MSG_CMD.request
DM_DEV_SET_GEOMETRY = DMCommand.DM_DEV_SET_GEOMETRY_CMD.request

#: The interface version these layouts were written against.
DM_VERSION_MAJOR = 4
DM_VERSION_MINOR = 47
DM_VERSION_PATCHLEVEL = 0


class DMFlag(enum.IntFlag):
    """Bits of ``dm_ioctl.flags``; the comment on each says which way it travels."""

    DM_READONLY_FLAG = 1 << 0  # in/out
    DM_SUSPEND_FLAG = 1 << 1  # in/out
    DM_PERSISTENT_DEV_FLAG = 1 << 3  # in
    DM_STATUS_TABLE_FLAG = 1 << 4  # in: table lines rather than status
    DM_ACTIVE_PRESENT_FLAG = 1 << 5  # out
    DM_INACTIVE_PRESENT_FLAG = 1 << 6  # out
    DM_BUFFER_FULL_FLAG = 1 << 8  # out: the reply did not fit
    DM_SKIP_BDGET_FLAG = 1 << 9  # in: ignored by current kernels
    DM_SKIP_LOCKFS_FLAG = 1 << 10  # in: do not freeze the filesystem on suspend
    DM_NOFLUSH_FLAG = 1 << 11  # in: suspend without flushing queued I/O
    DM_QUERY_INACTIVE_TABLE_FLAG = 1 << 12  # in
    DM_UEVENT_GENERATED_FLAG = 1 << 13  # out
    DM_UUID_FLAG = 1 << 14  # in: rename sets the uuid
    DM_SECURE_DATA_FLAG = 1 << 15  # in: wipe buffers after use
    DM_DATA_OUT_FLAG = 1 << 16  # out: a message produced output
    DM_DEFERRED_REMOVE = 1 << 17  # in/out
    DM_INTERNAL_SUSPEND_FLAG = 1 << 18  # out
    DM_IMA_MEASUREMENT_FLAG = 1 << 19  # in

    def words(self) -> str:
        """The set flags as ``READONLY|SUSPEND`` for log lines; ``-`` when none is set."""
        return flag_words(self, "DM_", "_FLAG")


DM_READONLY_FLAG = DMFlag.DM_READONLY_FLAG
DM_SUSPEND_FLAG = DMFlag.DM_SUSPEND_FLAG
DM_PERSISTENT_DEV_FLAG = DMFlag.DM_PERSISTENT_DEV_FLAG
DM_STATUS_TABLE_FLAG = DMFlag.DM_STATUS_TABLE_FLAG
DM_ACTIVE_PRESENT_FLAG = DMFlag.DM_ACTIVE_PRESENT_FLAG
DM_INACTIVE_PRESENT_FLAG = DMFlag.DM_INACTIVE_PRESENT_FLAG
DM_BUFFER_FULL_FLAG = DMFlag.DM_BUFFER_FULL_FLAG
DM_SKIP_BDGET_FLAG = DMFlag.DM_SKIP_BDGET_FLAG
DM_SKIP_LOCKFS_FLAG = DMFlag.DM_SKIP_LOCKFS_FLAG
DM_NOFLUSH_FLAG = DMFlag.DM_NOFLUSH_FLAG
DM_QUERY_INACTIVE_TABLE_FLAG = DMFlag.DM_QUERY_INACTIVE_TABLE_FLAG
DM_UEVENT_GENERATED_FLAG = DMFlag.DM_UEVENT_GENERATED_FLAG
DM_UUID_FLAG = DMFlag.DM_UUID_FLAG
DM_SECURE_DATA_FLAG = DMFlag.DM_SECURE_DATA_FLAG
DM_DATA_OUT_FLAG = DMFlag.DM_DATA_OUT_FLAG
DM_DEFERRED_REMOVE = DMFlag.DM_DEFERRED_REMOVE
DM_INTERNAL_SUSPEND_FLAG = DMFlag.DM_INTERNAL_SUSPEND_FLAG
DM_IMA_MEASUREMENT_FLAG = DMFlag.DM_IMA_MEASUREMENT_FLAG


@dataclass(frozen=True)
class FlatCodec:
    """A fixed-size layout flattened to one precompiled :class:`struct.Struct`.

    ``fields`` names the values in packing order; arrays count once per element
    under their own name (``version`` appears three times), padding not at all.
    """

    struct: struct.Struct
    fields: tuple[str, ...]


def flat_codec(layout: Struct) -> FlatCodec:
    """Derive a :class:`FlatCodec` from a construct layout of fixed-size fields.

    Supports what the header uses: integers, fixed arrays of integers, padded
    strings (packed as raw bytes: the caller encodes), fixed bytes and padding.
    """
    formats = ["="]
    fields: list[str] = []
    for sub in layout.subcons:
        name = sub.name
        inner: Construct = sub.subcon if isinstance(sub, Renamed) else sub
        if isinstance(inner, FormatField):
            formats.append(inner.fmtstr[1:])
            fields.append(name)
        elif isinstance(inner, Array) and isinstance(inner.subcon, FormatField):
            formats.append(inner.subcon.fmtstr[1:] * inner.count)
            fields.extend([name] * inner.count)
        elif isinstance(inner, StringEncoded | Bytes):
            formats.append(f"{inner.sizeof()}s")
            fields.append(name)
        elif isinstance(inner, Padded):
            formats.append(f"{inner.sizeof()}x")
        else:
            raise TypeError(f"flat_codec: field {name!r} is not of a fixed-size kind")
    codec = struct.Struct("".join(formats))
    if codec.size != layout.sizeof():
        raise TypeError(f"flat_codec: {codec.size} bytes flattened, layout has {layout.sizeof()}")
    return FlatCodec(codec, tuple(fields))
