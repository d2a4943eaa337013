"""Snapshot targets of the classic (non-thin) snapshot design (see snapshot.rst).

``snapshot-origin <origin>``
    the origin device as its users see it: writes copy old chunks to every snapshot.
``snapshot <origin> <COW device> <persistent?> <chunksize> [<# feature args> [<arg>]*]``
    a point-in-time view of the origin; changed chunks live on the COW device.
``snapshot-merge``
    the same parameters as ``snapshot``; takes the origin's place and merges the
    snapshot's chunks back into it.

``persistent?`` is ``P`` (kept across reboots), ``PO`` (persistent, and the
status may say ``Overflow``) or ``N`` (transient).  The chunk size is in sectors,
a power of two.  Features: ``discard_zeroes_cow`` and ``discard_passdown_origin``
(which needs the first).

Status of snapshot and snapshot-merge (dm-snap.c snapshot_status):
``<sectors_allocated>/<total_sectors> <metadata_sectors>``, or one of ``Invalid``,
``Merge failed``, ``Overflow``, ``Unknown``.  snapshot-origin reports nothing.
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
    state_word,
)


class Persistence(enum.Enum):
    """Whether the exception store survives a reboot (the ``persistent?`` field)."""

    PERSISTENT = "P"
    PERSISTENT_OVERFLOW = "PO"
    TRANSIENT = "N"


@dataclass(frozen=True)
class SnapshotOrigin(TargetBuilder):
    """``snapshot-origin <device>``: the origin, as seen by its users, while snapshots exist."""

    target_type: ClassVar[str] = "snapshot-origin"

    device: str

    def __post_init__(self) -> None:
        check_device(self.target_type, "origin", self.device)

    def params(self) -> str:
        return self.device

    @classmethod
    def from_params(cls, params: str) -> Self:
        fields = FieldReader("snapshot-origin table", params)
        parsed = cls(fields.device("origin"))
        fields.end()
        return parsed


@dataclass(frozen=True)
class Snapshot(TargetBuilder):
    """``snapshot``: a copy-on-write view of ``origin`` whose changes go to ``cow_device``.

    Example::

        >>> Snapshot("7:0", "7:1", Persistence.PERSISTENT, 16).params()
        '7:0 7:1 P 16'
    """

    target_type: ClassVar[str] = "snapshot"

    origin: str
    cow_device: str
    persistence: Persistence
    chunk_size_sectors: int
    discard_zeroes_cow: bool = False
    discard_passdown_origin: bool = False

    def __post_init__(self) -> None:
        what = self.target_type
        check_device(what, "origin", self.origin)
        check_device(what, "COW device", self.cow_device)
        if not isinstance(self.persistence, Persistence):
            raise InvalidArgument(f"{what}: persistence must be a Persistence")
        check_uint(what, "chunk size", self.chunk_size_sectors, MAX_UINT32)
        size = self.chunk_size_sectors
        # 0 lets a persistent store keep the chunk size its header has, or take the
        # default (dm-exception-store.c set_chunk_size, dm-snap-persistent.c read_header).
        if size == 0 and self.persistence is Persistence.TRANSIENT:
            raise InvalidArgument(f"{what}: chunk size 0 needs a persistent store (P or PO)")
        if size & (size - 1):
            raise InvalidArgument(f"{what}: chunk size {size} is not a power of two")
        if self.discard_passdown_origin and not self.discard_zeroes_cow:
            raise InvalidArgument(f"{what}: discard_passdown_origin needs discard_zeroes_cow")

    def params(self) -> str:
        base = (
            f"{self.origin} {self.cow_device} {self.persistence.value} {self.chunk_size_sectors}"
        )
        features = [
            name
            for name, on in (
                ("discard_zeroes_cow", self.discard_zeroes_cow),
                ("discard_passdown_origin", self.discard_passdown_origin),
            )
            if on
        ]
        return f"{base} {len(features)} {' '.join(features)}" if features else base

    @classmethod
    def from_params(cls, params: str) -> Self:
        fields = FieldReader(f"{cls.target_type} table", params)
        origin = fields.device("origin")
        cow = fields.device("COW device")
        persistence = fields.choice("persistent?", Persistence)
        chunk = fields.uint("chunk size", MAX_UINT32)
        fields.feature_count(2)
        features = fields.flags(("discard_zeroes_cow", "discard_passdown_origin"))
        try:
            return cls(origin, cow, persistence, chunk, **features)
        except InvalidArgument as exc:
            raise fields.error("parameters", str(exc)) from exc


@dataclass(frozen=True)
class SnapshotMerge(Snapshot):
    """``snapshot-merge``: the parameters of ``snapshot``; merges the COW back into the origin."""

    target_type: ClassVar[str] = "snapshot-merge"


class SnapshotState(enum.Enum):
    """A snapshot status that carries no usage figures."""

    INVALID = "Invalid"
    MERGE_FAILED = "Merge failed"
    OVERFLOW = "Overflow"
    UNKNOWN = "Unknown"


@dataclass(frozen=True)
class SnapshotStatus:
    """Usage of a valid snapshot's exception store, in sectors."""

    sectors_allocated: int
    total_sectors: int
    metadata_sectors: int


@dataclass(frozen=True)
class SnapshotUnusable:
    """A snapshot whose status is a word: invalid, merge failed, overflowed or unknown."""

    state: SnapshotState


def parse_status(text: str, target_type: str = "snapshot") -> SnapshotStatus | SnapshotUnusable:
    """Parse the status of a snapshot or snapshot-merge target (dm-snap.c snapshot_status).

    Raises:
        ParseError: naming the field and the raw text.
    """
    state = state_word(text, SnapshotState)
    if state is not None:
        return SnapshotUnusable(state)
    fields = FieldReader(f"{target_type} status", text)
    allocated, total = fields.ratio("sectors allocated/total")
    metadata = fields.uint("metadata sectors", MAX_SECTORS)
    fields.end()
    return SnapshotStatus(allocated, total, metadata)


@dataclass(frozen=True)
class SnapshotOriginStatus:
    """The status of a snapshot-origin target, which reports nothing."""


def parse_origin_status(text: str) -> SnapshotOriginStatus:
    """Parse a snapshot-origin status line, which is empty (dm-snap.c origin_status)."""
    expect_empty("snapshot-origin status", text)
    return SnapshotOriginStatus()
