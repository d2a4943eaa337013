"""The block-device ioctls of ``include/uapi/linux/fs.h`` that dmioctl uses.

``tests/unit/test_block_layout.py`` holds them against the C header.
"""

from __future__ import annotations

import enum

from construct import Int64un, Struct

#: The range argument of BLKDISCARD: ``uint64_t range[2]``, bytes.
blk_range = Struct(
    "start" / Int64un,  # in: first byte, a multiple of the logical block size
    "length" / Int64un,  # in: bytes, a multiple of the logical block size
)

#: The argument of BLKGETSIZE64: one u64, bytes.
blk_size64 = Struct("bytes" / Int64un)  # out


class BlockIoctl(enum.IntEnum):
    """ioctl request numbers on a block device node."""

    BLKGETSIZE64 = 0x80081272  # _IOR(0x12, 114, size_t): the size in bytes
    BLKDISCARD = 0x1277  # _IO(0x12, 119): discard a byte range


BLKGETSIZE64 = BlockIoctl.BLKGETSIZE64
BLKDISCARD = BlockIoctl.BLKDISCARD
