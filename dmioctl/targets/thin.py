"""The thin target: one thin device of a thin-pool (see thin-provisioning.rst).

Table parameters: ``<pool dev> <dev id> [<external origin dev>]``.  The device id
names the thin device inside the pool (below 2**24, dm-thin.c MAX_DEV_ID); the
optional external origin is a read-only device that supplies the blocks the thin
device has not written yet.

Status: ``<nr mapped sectors> <highest mapped sector>``, where the highest sector
is ``-`` while nothing is mapped; or ``-`` when the thin device is not open; or
``Fail`` when the pool has failed; or ``Error`` when the metadata could not be read.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar, Self

from dmioctl.errors import InvalidArgument
from dmioctl.table import (
    MAX_SECTORS,
    FieldReader,
    TargetBuilder,
    check_device,
    check_uint,
    state_word,
)

#: Largest thin device id (dm-thin.c MAX_DEV_ID: ids are 24 bits).
MAX_DEV_ID = 2**24 - 1


def check_dev_id(what: str, field: str, dev_id: int) -> None:
    """Raise :class:`InvalidArgument` unless ``dev_id`` is a thin device id (0..2**24-1)."""
    check_uint(what, field, dev_id, MAX_DEV_ID)


@dataclass(frozen=True)
class Thin(TargetBuilder):
    """``thin <pool_device> <device_id> [<external_origin>]``.

    Example::

        >>> Thin("253:0", 1).target(0, 2048).line()
        '0 2048 thin 253:0 1'
    """

    target_type: ClassVar[str] = "thin"

    pool_device: str
    device_id: int
    external_origin: str | None = None

    def __post_init__(self) -> None:
        check_device(self.target_type, "pool device", self.pool_device)
        check_dev_id(self.target_type, "device id", self.device_id)
        if self.external_origin is not None:
            check_device(self.target_type, "external origin", self.external_origin)

    def params(self) -> str:
        base = f"{self.pool_device} {self.device_id}"
        return base if self.external_origin is None else f"{base} {self.external_origin}"

    @classmethod
    def from_params(cls, params: str) -> Self:
        fields = FieldReader("thin table", params)
        pool = fields.device("pool device")
        dev_id = fields.uint("device id", MAX_DEV_ID)
        origin = fields.device("external origin") if fields.remaining() else None
        fields.end()
        try:
            return cls(pool, dev_id, origin)
        except InvalidArgument as exc:
            raise fields.error("parameters", str(exc)) from exc


class ThinState(enum.Enum):
    """A thin status that is one word instead of figures."""

    #: ``-``: the thin device is not open in the pool.
    NOT_OPEN = "-"
    #: ``Fail``: the pool is in failure mode.
    FAIL = "Fail"
    #: ``Error``: reading the mapping counts from the metadata failed.
    ERROR = "Error"


@dataclass(frozen=True)
class ThinStatus:
    """Mapping of a thin device, in sectors.

    ``highest_mapped_sector`` is ``None`` while no block is mapped (the kernel's ``-``).
    """

    mapped_sectors: int
    highest_mapped_sector: int | None


@dataclass(frozen=True)
class ThinUnavailable:
    """A thin device whose status is one word (see :class:`ThinState`)."""

    state: ThinState


def parse_status(text: str) -> ThinStatus | ThinUnavailable:
    """Parse a thin status line (dm-thin.c thin_status).

    Raises:
        ParseError: naming the field and the raw text.
    """
    state = state_word(text, ThinState)
    if state is not None:
        return ThinUnavailable(state)
    fields = FieldReader("thin status", text)
    mapped = fields.uint("nr mapped sectors", MAX_SECTORS)
    highest = fields.uint_or_dash("highest mapped sector", MAX_SECTORS)
    fields.end()
    return ThinStatus(mapped, highest)
