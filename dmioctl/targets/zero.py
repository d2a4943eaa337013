"""The zero target: reads return zeroes, writes are discarded (see zero.rst).

It takes no table parameters and reports an empty status.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from dmioctl.table import ParameterlessBuilder, expect_empty


@dataclass(frozen=True)
class Zero(ParameterlessBuilder):
    """``zero``: a source of zeroes and a sink for writes."""

    target_type: ClassVar[str] = "zero"


@dataclass(frozen=True)
class ZeroStatus:
    """The status of a zero target, which reports nothing."""


def parse_status(text: str) -> ZeroStatus:
    """Parse a zero status line, which is empty."""
    expect_empty("zero status", text)
    return ZeroStatus()
