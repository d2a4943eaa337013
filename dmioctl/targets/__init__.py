"""Typed targets: one module per target type, each a builder and a strict status parser.

Every builder is a frozen dataclass derived from
:class:`~dmioctl.table.TargetBuilder`: creating one checks the parameters,
``.target(start, length)`` gives the :class:`~dmioctl.table.Target` to load, and
``from_params`` reads a table's parameters back.  Each module's
``parse_status`` turns the target's status text into a frozen dataclass.

Example::

    from dmioctl.targets.linear import Linear

    dm.load_table("lin", [Linear("/dev/loop0", 0).target(0, 2048)])

:func:`from_target` finds the builder for a table line read from the kernel.
"""

from __future__ import annotations

from dmioctl.errors import InvalidArgument
from dmioctl.table import Target, TargetBuilder
from dmioctl.targets.delay import Delay
from dmioctl.targets.error import Error
from dmioctl.targets.flakey import Flakey
from dmioctl.targets.linear import Linear
from dmioctl.targets.snapshot import Snapshot, SnapshotMerge, SnapshotOrigin
from dmioctl.targets.striped import Striped
from dmioctl.targets.thin import Thin
from dmioctl.targets.thin_pool import ThinPool
from dmioctl.targets.zero import Zero

#: The builder class of each target type this package knows.
BUILDERS: dict[str, type[TargetBuilder]] = {
    cls.target_type: cls
    for cls in (
        Delay,
        Error,
        Flakey,
        Linear,
        Snapshot,
        SnapshotMerge,
        SnapshotOrigin,
        Striped,
        Thin,
        ThinPool,
        Zero,
    )
}


def from_target(target: Target) -> TargetBuilder:
    """The builder whose table line is ``target`` (e.g. one of ``dm.table(name)``).

    Raises:
        InvalidArgument: the target type has no builder here.
        ParseError: its parameters do not parse.
    """
    cls = BUILDERS.get(target.target_type)
    if cls is None:
        raise InvalidArgument(f"no typed builder for target type {target.target_type!r}")
    return cls.from_params(target.params)


__all__ = [
    "BUILDERS",
    "Delay",
    "Error",
    "Flakey",
    "Linear",
    "Snapshot",
    "SnapshotMerge",
    "SnapshotOrigin",
    "Striped",
    "Thin",
    "ThinPool",
    "Zero",
    "from_target",
]
