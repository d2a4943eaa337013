"""The linear target: map a range of sectors onto another device (see linear.rst).

Table parameters: ``<dev path> <offset>``; the status line is empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Self

from dmioctl.table import (
    MAX_SECTORS,
    FieldReader,
    TargetBuilder,
    check_device,
    check_uint,
    expect_empty,
)


@dataclass(frozen=True)
class Linear(TargetBuilder):
    """``linear <device> <offset_sectors>``: sectors map to ``device`` from ``offset_sectors``.

    Example::

        >>> Linear("/dev/loop0", 0).target(0, 2048).line()
        '0 2048 linear /dev/loop0 0'
    """

    target_type: ClassVar[str] = "linear"

    device: str
    offset_sectors: int = 0

    def __post_init__(self) -> None:
        check_device(self.target_type, "device", self.device)
        check_uint(self.target_type, "offset", self.offset_sectors, MAX_SECTORS)

    def params(self) -> str:
        return f"{self.device} {self.offset_sectors}"

    @classmethod
    def from_params(cls, params: str) -> Self:
        fields = FieldReader("linear table", params)
        parsed = cls(fields.device("device"), fields.uint("offset", MAX_SECTORS))
        fields.end()
        return parsed


@dataclass(frozen=True)
class LinearStatus:
    """The status of a linear target, which reports nothing."""


def parse_status(text: str) -> LinearStatus:
    """Parse a linear status line, which is empty (dm-linear.c linear_status)."""
    expect_empty("linear status", text)
    return LinearStatus()
