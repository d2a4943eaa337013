"""Tables: the list of targets that maps a device's sectors.

A table covers sectors ``0 .. size-1`` without gaps; each :class:`Target` maps
``length`` sectors from ``start`` with a target type (``linear``, ``thin``...)
and that type's parameter string.  Sizes are in 512-byte sectors throughout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dmioctl.errors import InvalidArgument
from dmioctl.uapi.dm import DM_MAX_TYPE_NAME

#: Bytes per sector, the unit of every table.
SECTOR_SIZE = 512


@dataclass(frozen=True)
class Target:
    """One line of a table: ``start length target_type params``.

    ``start`` and ``length`` are in sectors.
    """

    start: int
    length: int
    target_type: str
    params: str = ""

    def line(self) -> str:
        """The line as ``dmsetup table`` prints it."""
        return f"{self.start} {self.length} {self.target_type} {self.params}".rstrip()


def validate(targets: Sequence[Target]) -> None:
    """Check that ``targets`` form a loadable table; raise :class:`InvalidArgument` if not.

    The kernel wants the targets in order, each starting where the previous one
    ended, the first at sector 0 (dm-table.c dm_table_add_target and
    dm_table_complete); a type name fits in ``DM_MAX_TYPE_NAME`` with its NUL.
    """
    expected = 0
    for index, target in enumerate(targets):
        where = f"target {index} ({target.target_type!r})"
        if target.start != expected:
            raise InvalidArgument(
                f"{where} starts at sector {target.start}, expected {expected}: "
                "targets must follow each other without gaps from sector 0"
            )
        if target.length <= 0:
            raise InvalidArgument(f"{where} has length {target.length}; it must be positive")
        encoded = target.target_type.encode()
        if not encoded or len(encoded) >= DM_MAX_TYPE_NAME or b"\0" in encoded:
            raise InvalidArgument(
                f"{where}: a target type is 1 to {DM_MAX_TYPE_NAME - 1} bytes without NUL"
            )
        if "\0" in target.params:
            raise InvalidArgument(f"{where}: parameters contain a NUL byte")
        expected += target.length
