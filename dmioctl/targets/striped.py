"""The striped target: spread chunks round-robin over several devices (see striped.rst).

Table parameters: ``<num devs> <chunk size> [<dev path> <offset>]+``, the chunk size
in sectors.  The target's length must divide evenly into ``num devs`` stripes of
whole chunks (dm-stripe.c stripe_ctr).

Status: ``<num devs> <dev>... 1 <states>``, one state letter per device: ``A``
alive, ``D`` dead (an I/O error was seen on it).
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
)


@dataclass(frozen=True)
class Stripe:
    """One device of a striped target and the sector where its part starts."""

    device: str
    offset_sectors: int = 0

    def __post_init__(self) -> None:
        check_device("striped", "stripe device", self.device)
        check_uint("striped", "stripe offset", self.offset_sectors, MAX_SECTORS)


@dataclass(frozen=True)
class Striped(TargetBuilder):
    """``striped <n> <chunk_size_sectors> (<device> <offset>){n}``.

    Example::

        >>> Striped((Stripe("7:0"), Stripe("7:1")), 128).target(0, 1024).line()
        '0 1024 striped 2 128 7:0 0 7:1 0'
    """

    target_type: ClassVar[str] = "striped"

    stripes: tuple[Stripe, ...]
    chunk_size_sectors: int

    def __post_init__(self) -> None:
        if not isinstance(self.stripes, tuple) or not self.stripes:
            raise InvalidArgument("striped: stripes must be a non-empty tuple of Stripe")
        for stripe in self.stripes:
            if not isinstance(stripe, Stripe):
                raise InvalidArgument(f"striped: {stripe!r} is not a Stripe")
        check_uint(self.target_type, "chunk size", self.chunk_size_sectors, MAX_UINT32)
        if self.chunk_size_sectors == 0:
            raise InvalidArgument("striped: chunk size must be positive")

    def check_length(self, length: int) -> None:
        # dm-stripe.c stripe_ctr: the length splits into equal stripes of whole chunks.
        count = len(self.stripes)
        if length % count or (length // count) % self.chunk_size_sectors:
            raise InvalidArgument(
                f"striped: length {length} is not a multiple of {count} stripes "
                f"of whole {self.chunk_size_sectors}-sector chunks"
            )

    def params(self) -> str:
        pairs = " ".join(f"{stripe.device} {stripe.offset_sectors}" for stripe in self.stripes)
        return f"{len(self.stripes)} {self.chunk_size_sectors} {pairs}"

    @classmethod
    def from_params(cls, params: str) -> Self:
        fields = FieldReader("striped table", params)
        count = fields.uint("number of stripes", MAX_UINT32)
        chunk = fields.uint("chunk size", MAX_UINT32)
        if fields.remaining() != 2 * count:
            raise fields.error("stripes", f"expected {count} device/offset pairs")
        stripes = tuple(
            Stripe(fields.device("stripe device"), fields.uint("stripe offset", MAX_SECTORS))
            for _ in range(count)
        )
        try:
            return cls(stripes, chunk)
        except InvalidArgument as exc:
            raise fields.error("chunk size", str(exc)) from exc


class StripeState(enum.Enum):
    """The state letter of one stripe in the status line."""

    ALIVE = "A"
    DEAD = "D"


@dataclass(frozen=True)
class StripedStatus:
    """The parsed status of a striped target: each device and its state."""

    devices: tuple[str, ...]
    states: tuple[StripeState, ...]


def parse_status(text: str) -> StripedStatus:
    """Parse ``<n> <dev>{n} 1 <state letters>`` (dm-stripe.c stripe_status).

    Raises:
        ParseError: naming the field and the raw text.
    """
    fields = FieldReader("striped status", text)
    count = fields.uint("number of stripes", MAX_UINT32)
    devices = tuple(fields.device("stripe device") for _ in range(count))
    if fields.word("number of status fields") != "1":
        raise fields.error("number of status fields", "expected 1")
    letters = fields.word("stripe states")
    if len(letters) != count:
        raise fields.error("stripe states", f"expected {count} letters, got {letters!r}")
    states: list[StripeState] = []
    for letter in letters:
        try:
            states.append(StripeState(letter))
        except ValueError as exc:
            raise fields.error("stripe states", f"{letter!r} is not A or D") from exc
    fields.end()
    return StripedStatus(devices, tuple(states))
