"""The flakey target: a linear mapping that misbehaves periodically (see dm-flakey.rst).

Table parameters::

    <dev path> <offset> <up interval> <down interval> [<num_features> [<feature args>]]

The device works for ``up interval`` seconds, then misbehaves for ``down
interval`` seconds, and so on.  While down, with no features every I/O fails;
the features change that (Linux 6.1's dm-flakey.c parse_features):

``drop_writes``
    writes are silently dropped, reads work.
``error_writes``
    writes fail, reads work.
``corrupt_bio_byte <Nth byte> <direction> <value> <flags>``
    the Nth byte (from 1) of each read (``r``) or write (``w``) bio whose flags
    include ``flags`` is set to ``value``.

``drop_writes`` and ``error_writes`` exclude each other and a write corruption.
(``error_reads`` and ``random_read_corrupt``/``random_write_corrupt`` came with
Linux 6.5 and are not offered here.)  The status line is empty.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar, Self

from dmioctl.errors import InvalidArgument
from dmioctl.table import (
    MAX_SECTORS,
    MAX_UINT32,
    FieldReader,
    TargetBuilder,
    check_device,
    check_uint,
    expect_empty,
)


class Direction(enum.Enum):
    """Which bios corrupt_bio_byte corrupts."""

    READ = "r"
    WRITE = "w"


@dataclass(frozen=True)
class CorruptBioByte:
    """``corrupt_bio_byte <nth_byte> <direction> <value> <flags>``."""

    nth_byte: int
    direction: Direction
    value: int
    flags: int = 0

    def __post_init__(self) -> None:
        check_uint("flakey", "corrupt_bio_byte Nth byte", self.nth_byte, MAX_UINT32)
        if self.nth_byte == 0:
            raise InvalidArgument("flakey: corrupt_bio_byte counts bytes from 1")
        if not isinstance(self.direction, Direction):
            raise InvalidArgument(f"flakey: direction must be a Direction, not {self.direction!r}")
        check_uint("flakey", "corrupt_bio_byte value", self.value, 255)
        check_uint("flakey", "corrupt_bio_byte flags", self.flags, MAX_UINT32)

    def args(self) -> list[str]:
        """The feature and its four arguments, as table fields."""
        return [
            "corrupt_bio_byte",
            str(self.nth_byte),
            self.direction.value,
            str(self.value),
            str(self.flags),
        ]


@dataclass(frozen=True)
class Flakey(TargetBuilder):
    """``flakey``: ``device`` from ``offset_sectors``, up and down in turns.

    Example::

        >>> Flakey("7:0", 0, 5, 1, drop_writes=True).params()
        '7:0 0 5 1 1 drop_writes'
    """

    target_type: ClassVar[str] = "flakey"

    device: str
    offset_sectors: int
    up_interval_seconds: int
    down_interval_seconds: int
    drop_writes: bool = False
    error_writes: bool = False
    corrupt_bio_byte: CorruptBioByte | None = None

    def __post_init__(self) -> None:
        check_device(self.target_type, "device", self.device)
        check_uint(self.target_type, "offset", self.offset_sectors, MAX_SECTORS)
        check_uint(self.target_type, "up interval", self.up_interval_seconds, MAX_UINT32)
        check_uint(self.target_type, "down interval", self.down_interval_seconds, MAX_UINT32)
        total = self.up_interval_seconds + self.down_interval_seconds
        if total == 0 or total > MAX_UINT32:
            raise InvalidArgument(
                "flakey: up + down interval must be between 1 and 2**32 - 1 seconds"
            )
        if self.drop_writes and self.error_writes:
            raise InvalidArgument("flakey: drop_writes and error_writes exclude each other")
        corrupt = self.corrupt_bio_byte
        if corrupt is not None and not isinstance(corrupt, CorruptBioByte):
            raise InvalidArgument("flakey: corrupt_bio_byte must be a CorruptBioByte")
        if (
            corrupt is not None
            and corrupt.direction is Direction.WRITE
            and (self.drop_writes or self.error_writes)
        ):
            raise InvalidArgument(
                "flakey: drop_writes and error_writes exclude corrupt_bio_byte on writes"
            )

    def features(self) -> list[str]:
        """The feature arguments, without their count."""
        args: list[str] = []
        if self.drop_writes:
            args.append("drop_writes")
        if self.error_writes:
            args.append("error_writes")
        if self.corrupt_bio_byte is not None:
            args += self.corrupt_bio_byte.args()
        return args

    def params(self) -> str:
        base = (
            f"{self.device} {self.offset_sectors} "
            f"{self.up_interval_seconds} {self.down_interval_seconds}"
        )
        features = self.features()
        if not features:
            return base
        return f"{base} {len(features)} {' '.join(features)}"

    @classmethod
    def from_params(cls, params: str) -> Self:
        fields = FieldReader("flakey table", params)
        device = fields.device("device")
        offset = fields.uint("offset", MAX_SECTORS)
        up = fields.uint("up interval", MAX_UINT32)
        down = fields.uint("down interval", MAX_UINT32)
        flags: dict[str, bool] = {"drop_writes": False, "error_writes": False}
        corrupt: CorruptBioByte | None = None
        fields.feature_count(6)
        while fields.remaining():
            name = fields.word("feature")
            if name in flags and not flags[name]:
                flags[name] = True
            elif name == "corrupt_bio_byte" and corrupt is None:
                corrupt = _read_corruption(fields)
            else:
                raise fields.error("feature", f"{name!r} is unknown or repeated")
        try:
            return cls(device, offset, up, down, corrupt_bio_byte=corrupt, **flags)
        except InvalidArgument as exc:
            raise fields.error("features", str(exc)) from exc


def _read_corruption(fields: FieldReader) -> CorruptBioByte:
    nth = fields.uint("corrupt_bio_byte Nth byte", MAX_UINT32)
    direction = fields.choice("corrupt_bio_byte direction", Direction)
    value = fields.uint("corrupt_bio_byte value", 255)
    flags = fields.uint("corrupt_bio_byte flags", MAX_UINT32)
    try:
        return CorruptBioByte(nth, direction, value, flags)
    except InvalidArgument as exc:
        raise fields.error("corrupt_bio_byte", str(exc)) from exc


@dataclass(frozen=True)
class FlakeyStatus:
    """The status of a flakey target, which reports nothing."""


def parse_status(text: str) -> FlakeyStatus:
    """Parse a flakey status line, which is empty (dm-flakey.c flakey_status).

    Raises:
        ParseError: the line is not empty.
    """
    expect_empty("flakey status", text)
    return FlakeyStatus()
