"""The delay target: hold I/O back for a while before passing it on (see delay.rst).

Table parameters, 3, 6 or 9 of them::

    <device> <offset> <delay> [<write_device> <write_offset> <write_delay>
                               [<flush_device> <flush_offset> <flush_delay>]]

Delays are in milliseconds.  With the second group, writes go to their own device
with their own delay; with the third, so do flushes.  Status (dm-delay.c
delay_status): ``<reads> <writes> <flushes>``, the I/Os currently held back.
"""

from __future__ import annotations

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
)


@dataclass(frozen=True)
class DelayClass:
    """Where one class of I/O (reads, writes or flushes) goes, and how long it waits."""

    device: str
    offset_sectors: int = 0
    delay_ms: int = 0

    def __post_init__(self) -> None:
        check_device("delay", "device", self.device)
        check_uint("delay", "offset", self.offset_sectors, MAX_SECTORS)
        check_uint("delay", "delay", self.delay_ms, MAX_UINT32)

    def params(self) -> str:
        """The three table fields of this class."""
        return f"{self.device} {self.offset_sectors} {self.delay_ms}"


@dataclass(frozen=True)
class Delay(TargetBuilder):
    """``delay``: reads (and, without ``write``, all I/O) through ``read``.

    Example::

        >>> Delay(DelayClass("7:0", 0, 500)).params()
        '7:0 0 500'
    """

    target_type: ClassVar[str] = "delay"

    read: DelayClass
    write: DelayClass | None = None
    flush: DelayClass | None = None

    def __post_init__(self) -> None:
        for label, value in (("read", self.read), ("write", self.write), ("flush", self.flush)):
            if value is not None and not isinstance(value, DelayClass):
                raise InvalidArgument(f"delay: {label} must be a DelayClass, not {value!r}")
        if self.flush is not None and self.write is None:
            raise InvalidArgument("delay: a flush class needs a write class before it")

    def params(self) -> str:
        groups = [self.read, self.write, self.flush]
        return " ".join(group.params() for group in groups if group is not None)

    @classmethod
    def from_params(cls, params: str) -> Self:
        fields = FieldReader("delay table", params)
        if fields.remaining() not in (3, 6, 9):
            raise fields.error("arguments", "expected 3, 6 or 9 fields")
        read = _read_class(fields, "read")
        write = _read_class(fields, "write") if fields.remaining() else None
        flush = _read_class(fields, "flush") if fields.remaining() else None
        return cls(read, write, flush)


def _read_class(fields: FieldReader, label: str) -> DelayClass:
    return DelayClass(
        fields.device(f"{label} device"),
        fields.uint(f"{label} offset", MAX_SECTORS),
        fields.uint(f"{label} delay", MAX_UINT32),
    )


@dataclass(frozen=True)
class DelayStatus:
    """How many reads, writes and flushes the delay target is holding back now."""

    reads: int
    writes: int
    flushes: int


def parse_status(text: str) -> DelayStatus:
    """Parse ``<reads> <writes> <flushes>`` (dm-delay.c delay_status).

    Raises:
        ParseError: naming the field and the raw text.
    """
    fields = FieldReader("delay status", text)
    status = DelayStatus(
        fields.uint("reads", MAX_UINT32),
        fields.uint("writes", MAX_UINT32),
        fields.uint("flushes", MAX_UINT32),
    )
    fields.end()
    return status
