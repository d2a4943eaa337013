"""The error target: every I/O fails (dm-target.c io_err_*).

It takes no table parameters and reports an empty status.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from dmioctl.table import ParameterlessBuilder, expect_empty


@dataclass(frozen=True)
class Error(ParameterlessBuilder):
    """``error``: fails every read and write, e.g. to punch a hole in a table."""

    target_type: ClassVar[str] = "error"


@dataclass(frozen=True)
class ErrorStatus:
    """The status of an error target, which reports nothing."""


def parse_status(text: str) -> ErrorStatus:
    """Parse an error status line, which is empty."""
    expect_empty("error status", text)
    return ErrorStatus()
