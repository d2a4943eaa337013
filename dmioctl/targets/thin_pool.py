"""The thin-pool target and the messages that manage its thin devices.

See thin-provisioning.rst.  A pool keeps its mappings on a metadata device and
its blocks on a data device.  Table parameters::

    <metadata dev> <data dev> <data block size> <low water mark>
        [<number of feature args> [<arg>]*]

The data block size is in sectors, 128 (64 KiB) to 2097152 (1 GiB), a multiple
of 128; the low water mark is in data blocks: when fewer are free the pool
raises an event.  Features (at most four, dm-thin.c parse_pool_features):
``skip_block_zeroing``, ``ignore_discard``, ``no_discard_passdown``,
``read_only``, ``error_if_no_space``.

Status (dm-thin.c pool_status)::

    <transaction id> <used metadata blocks>/<total metadata blocks>
    <used data blocks>/<total data blocks> <held metadata root>
    ro|rw|out_of_data_space [no_]discard_passdown|ignore_discard
    [error|queue]_if_no_space needs_check|- [<metadata low watermark>]

or ``Fail`` when the pool has failed, or ``Error`` when reading the metadata for
the status failed.  The metadata low watermark came with Linux 4.19.

Thin devices are managed by messages to the pool (``create_thin``,
``create_snap``, ``delete``, ``set_transaction_id``, ``reserve_metadata_snap``,
``release_metadata_snap``); the functions at the end of this module send them
and turn the kernel's errno into an error that says what to do.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import logging
from dataclasses import dataclass
from typing import ClassVar, Self

from dmioctl.control import DeviceMapper
from dmioctl.errors import InvalidArgument, IoctlError
from dmioctl.table import (
    MAX_UINT64,
    FieldReader,
    TargetBuilder,
    check_device,
    check_uint,
    state_word,
)
from dmioctl.targets.thin import MAX_DEV_ID, check_dev_id

log = logging.getLogger(__name__)

#: Smallest data block size in sectors (64 KiB, dm-thin.c DATA_DEV_BLOCK_SIZE_MIN_SECTORS).
DATA_BLOCK_SIZE_MIN_SECTORS = 128
#: Largest data block size in sectors (1 GiB, DATA_DEV_BLOCK_SIZE_MAX_SECTORS).
DATA_BLOCK_SIZE_MAX_SECTORS = 2097152
#: Most feature arguments a pool table may carry (dm-thin.c parse_pool_features).
MAX_FEATURES = 4

# Feature names in the order the kernel prints them (dm-thin.c emit_flags).
_FEATURES = (
    "skip_block_zeroing",
    "ignore_discard",
    "no_discard_passdown",
    "read_only",
    "error_if_no_space",
)


@dataclass(frozen=True)
class ThinPool(TargetBuilder):
    """``thin-pool``: a pool of data blocks shared by thin devices.

    Example::

        >>> ThinPool("7:1", "7:0", 128, 0, skip_block_zeroing=True).params()
        '7:1 7:0 128 0 1 skip_block_zeroing'
    """

    target_type: ClassVar[str] = "thin-pool"

    metadata_device: str
    data_device: str
    data_block_size_sectors: int
    low_water_mark_blocks: int
    skip_block_zeroing: bool = False
    ignore_discard: bool = False
    no_discard_passdown: bool = False
    read_only: bool = False
    error_if_no_space: bool = False

    def __post_init__(self) -> None:
        what = self.target_type
        check_device(what, "metadata device", self.metadata_device)
        check_device(what, "data device", self.data_device)
        size = self.data_block_size_sectors
        check_uint(what, "data block size", size, MAX_UINT64)
        if (
            not DATA_BLOCK_SIZE_MIN_SECTORS <= size <= DATA_BLOCK_SIZE_MAX_SECTORS
            or size % DATA_BLOCK_SIZE_MIN_SECTORS
        ):
            raise InvalidArgument(
                f"{what}: data block size {size} sectors is not a multiple of "
                f"{DATA_BLOCK_SIZE_MIN_SECTORS} between {DATA_BLOCK_SIZE_MIN_SECTORS} "
                f"and {DATA_BLOCK_SIZE_MAX_SECTORS}"
            )
        check_uint(what, "low water mark", self.low_water_mark_blocks, MAX_UINT64)
        features = self.features()
        if len(features) > MAX_FEATURES:
            raise InvalidArgument(
                f"{what}: at most {MAX_FEATURES} features, got {len(features)}: "
                + " ".join(features)
            )

    def features(self) -> list[str]:
        """The feature arguments that are set, in the kernel's order."""
        return [name for name in _FEATURES if getattr(self, name)]

    def check_length(self, length: int) -> None:
        blocks = length // self.data_block_size_sectors
        if blocks == 0:
            raise InvalidArgument(
                f"thin-pool: length {length} is less than one data block "
                f"({self.data_block_size_sectors} sectors)"
            )
        if self.low_water_mark_blocks > blocks:
            raise InvalidArgument(
                f"thin-pool: low water mark {self.low_water_mark_blocks} blocks is more "
                f"than the pool's {blocks} data blocks"
            )

    def params(self) -> str:
        base = (
            f"{self.metadata_device} {self.data_device} "
            f"{self.data_block_size_sectors} {self.low_water_mark_blocks}"
        )
        features = self.features()
        return f"{base} {len(features)} {' '.join(features)}" if features else base

    @classmethod
    def from_params(cls, params: str) -> Self:
        fields = FieldReader("thin-pool table", params)
        metadata = fields.device("metadata device")
        data = fields.device("data device")
        block_size = fields.uint("data block size", MAX_UINT64)
        low_water = fields.uint("low water mark", MAX_UINT64)
        fields.feature_count(MAX_FEATURES)
        flags = fields.flags(_FEATURES)
        try:
            return cls(metadata, data, block_size, low_water, **flags)
        except InvalidArgument as exc:
            raise fields.error("parameters", str(exc)) from exc


# --------------------------------------------------------------------- status


class PoolMode(enum.Enum):
    """The pool's metadata mode in its status."""

    READ_WRITE = "rw"
    READ_ONLY = "ro"
    OUT_OF_DATA_SPACE = "out_of_data_space"


class DiscardMode(enum.Enum):
    """How the pool handles discards, as its status reports it."""

    PASSDOWN = "discard_passdown"
    NO_PASSDOWN = "no_discard_passdown"
    #: Printed by the kernel when the table has ``ignore_discard``.
    IGNORE = "ignore_discard"


class NoSpacePolicy(enum.Enum):
    """What I/O does when the data device is full."""

    QUEUE = "queue_if_no_space"
    ERROR = "error_if_no_space"


class PoolState(enum.Enum):
    """A pool status that is one word instead of figures."""

    #: ``Fail``: the pool is in failure mode; only reloading it can help.
    FAIL = "Fail"
    #: ``Error``: the kernel could not read the metadata to report the status.
    ERROR = "Error"


@dataclass(frozen=True)
class ThinPoolStatus:
    """The parsed status of a working thin pool.

    Metadata blocks are 4 KiB; data blocks are the pool's data block size.
    ``held_metadata_root`` is the block of the reserved metadata snapshot, or
    None (``-``).  ``metadata_low_watermark_blocks`` is None on kernels before 4.19.
    """

    transaction_id: int
    used_metadata_blocks: int
    total_metadata_blocks: int
    used_data_blocks: int
    total_data_blocks: int
    held_metadata_root: int | None
    mode: PoolMode
    discard: DiscardMode
    no_space_policy: NoSpacePolicy
    needs_check: bool
    metadata_low_watermark_blocks: int | None


@dataclass(frozen=True)
class ThinPoolUnavailable:
    """A pool whose status is ``Fail`` or ``Error``."""

    state: PoolState


def parse_status(text: str) -> ThinPoolStatus | ThinPoolUnavailable:
    """Parse a thin-pool status line (dm-thin.c pool_status, thin-provisioning.rst).

    Raises:
        ParseError: naming the field and the raw text.
    """
    state = state_word(text, PoolState)
    if state is not None:
        return ThinPoolUnavailable(state)
    fields = FieldReader("thin-pool status", text)
    transaction_id = fields.uint("transaction id")
    used_metadata, total_metadata = fields.ratio("used/total metadata blocks")
    used_data, total_data = fields.ratio("used/total data blocks")
    held_root = fields.uint_or_dash("held metadata root")
    mode = fields.choice("mode", PoolMode)
    discard = fields.choice("discard", DiscardMode)
    no_space = fields.choice("no space policy", NoSpacePolicy)
    check = fields.word("needs_check")
    if check not in ("needs_check", "-"):
        raise fields.error("needs_check", f"{check!r} is neither 'needs_check' nor '-'")
    low_watermark = fields.uint("metadata low watermark") if fields.remaining() else None
    fields.end()
    return ThinPoolStatus(
        transaction_id,
        used_metadata,
        total_metadata,
        used_data,
        total_data,
        held_root,
        mode,
        discard,
        no_space,
        check == "needs_check",
        low_watermark,
    )


# --------------------------------------------------------------------- operations


class ThinPoolError(IoctlError):
    """A message to a thin pool failed; the subclass says why.

    ``command`` is ``"DM_TARGET_MSG"``, ``device`` the pool, ``errno`` the kernel's.
    """


class ThinIdInUse(ThinPoolError):
    """EEXIST: the pool already has a thin device with that id."""


class NoSuchThinId(ThinPoolError):
    """ENODATA: the pool has no thin device with that id."""


class ThinPoolBusy(ThinPoolError):
    """EBUSY: the thin device is open, or a metadata snapshot is already held."""


class ThinPoolRefused(ThinPoolError):
    """EINVAL: the pool refused the message (a wrong transaction id, no metadata snapshot...)."""


class ThinPoolReadOnly(ThinPoolError):
    """EOPNOTSUPP: the pool is read-only or failed and takes no messages."""


_ERRORS: dict[int, type[ThinPoolError]] = {
    errno.EEXIST: ThinIdInUse,
    errno.ENODATA: NoSuchThinId,
    errno.EBUSY: ThinPoolBusy,
    errno.EINVAL: ThinPoolRefused,
    errno.EOPNOTSUPP: ThinPoolReadOnly,
}

_READ_ONLY_HINT = (
    "the pool is read-only or failed (see its status); check the metadata "
    "(thin_check) and reload the pool read-write"
)


def _send(dm: DeviceMapper, pool: str, message: str, hints: dict[int, str]) -> None:
    """Send ``message`` to the pool's target; map its errno to a ThinPoolError with a hint."""
    try:
        dm.target_message(pool, message)
    except IoctlError as exc:
        err = exc.errno or 0
        cls = _ERRORS.get(err)
        if cls is None:
            raise
        hint = hints.get(err, "")
        if err == errno.EOPNOTSUPP:
            hint = _READ_ONLY_HINT
        elif err == errno.EINVAL and not hint:
            hint = f"the pool refused {message!r}; the kernel log (dmesg) says why"
        raise cls("DM_TARGET_MSG", pool, err, hint) from exc


def create_thin(dm: DeviceMapper, pool: str, dev_id: int) -> None:
    """Message ``create_thin <dev_id>``: a new, empty thin device in the pool.

    Activate it afterwards with a ``thin`` table (:class:`~dmioctl.targets.thin.Thin`).

    Raises:
        InvalidArgument: ``dev_id`` is not below 2**24.
        ThinIdInUse: the id exists already.
        ThinPoolReadOnly: the pool takes no messages.
    """
    check_dev_id("create_thin", "device id", dev_id)
    _send(
        dm,
        pool,
        f"create_thin {dev_id}",
        {errno.EEXIST: f"thin id {dev_id} is in use; choose another id or delete it first"},
    )


def create_snap(
    dm: DeviceMapper, pool: str, dev_id: int, origin_id: int, *, origin: str | None = None
) -> None:
    """Message ``create_snap <dev_id> <origin_id>``: a thin snapshot of another thin device.

    When the origin is active, name its device in ``origin``: it is suspended
    for the message, so that its in-flight writes are in the snapshot, and
    always resumed afterwards, also when the snapshot fails
    (thin-provisioning.rst: "you must suspend the origin device before creating
    the snapshot").

    Raises:
        InvalidArgument: an id is not below 2**24.
        ThinIdInUse: ``dev_id`` exists already.
        NoSuchThinId: ``origin_id`` does not exist.
        ThinPoolReadOnly: the pool takes no messages.
    """
    check_dev_id("create_snap", "device id", dev_id)
    check_dev_id("create_snap", "origin id", origin_id)
    message = f"create_snap {dev_id} {origin_id}"
    hints = {
        errno.EEXIST: f"thin id {dev_id} is in use; choose another id for the snapshot",
        errno.ENODATA: f"the origin thin id {origin_id} does not exist in the pool",
    }
    if origin is None:
        _send(dm, pool, message, hints)
        return
    with dm.suspended(origin):
        _send(dm, pool, message, hints)


def delete(dm: DeviceMapper, pool: str, dev_id: int) -> None:
    """Message ``delete <dev_id>``: remove a thin device and release its blocks.

    Raises:
        NoSuchThinId: no thin device has that id.
        ThinPoolBusy: the thin device is active; remove its dm device first.
        ThinPoolReadOnly: the pool takes no messages.
    """
    check_dev_id("delete", "device id", dev_id)
    _send(
        dm,
        pool,
        f"delete {dev_id}",
        {
            errno.ENODATA: f"thin id {dev_id} does not exist in the pool",
            errno.EBUSY: f"thin id {dev_id} is active; remove the device that maps it first",
        },
    )


def set_transaction_id(dm: DeviceMapper, pool: str, old: int, new: int) -> None:
    """Message ``set_transaction_id <old> <new>``: compare-and-swap of the pool's transaction id.

    Raises:
        ThinPoolRefused: the pool's transaction id is not ``old`` (EINVAL).
        ThinPoolReadOnly: the pool takes no messages.
    """
    check_uint("set_transaction_id", "old id", old)
    check_uint("set_transaction_id", "new id", new)
    _send(
        dm,
        pool,
        f"set_transaction_id {old} {new}",
        {
            errno.EINVAL: (
                f"the pool's transaction id is not {old}; read it from the pool's status"
            )
        },
    )


def reserve_metadata_snap(dm: DeviceMapper, pool: str) -> None:
    """Message ``reserve_metadata_snap``: hold a snapshot of the metadata for reading.

    The held root appears in the status; release it with :func:`release_metadata_snap`.

    Raises:
        ThinPoolBusy: a metadata snapshot is held already.
    """
    _send(
        dm,
        pool,
        "reserve_metadata_snap",
        {errno.EBUSY: "a metadata snapshot is held already; release it first"},
    )


def release_metadata_snap(dm: DeviceMapper, pool: str) -> None:
    """Message ``release_metadata_snap``: drop the held metadata snapshot.

    Raises:
        ThinPoolRefused: no metadata snapshot is held (EINVAL).
    """
    _send(
        dm,
        pool,
        "release_metadata_snap",
        {errno.EINVAL: "no metadata snapshot is held; nothing to release"},
    )


def grow(
    dm: DeviceMapper,
    pool: str,
    length: int | None = None,
    *,
    low_water_mark_blocks: int | None = None,
) -> None:
    """Reload the pool with its own parameters over ``length`` sectors, and resume it.

    Call it after the data device grew, with the new length, or after the
    metadata device grew, with no length (the pool notices a larger metadata
    device on resume).  ``low_water_mark_blocks`` replaces the pool's, which is
    otherwise kept.  The pool's table must be one thin-pool target; the
    read-only flag of the device is kept.

    Raises:
        InvalidArgument: the table is not one thin-pool target, or ``length`` is
            smaller than the current length (a pool cannot shrink).
        IoctlError: the kernel refused the table (EINVAL: e.g. the data device
            is smaller than ``length``; the kernel log says why).
    """
    table = dm.table(pool)
    if len(table) != 1 or table[0].target_type != ThinPool.target_type:
        raise InvalidArgument(f"grow: {pool!r} is not a device with one thin-pool target")
    current = table[0]
    new_length = current.length if length is None else length
    check_uint("grow", "length", new_length)
    if new_length < current.length:
        raise InvalidArgument(
            f"grow: {pool!r} has {current.length} sectors; a pool cannot shrink to {new_length}"
        )
    builder = ThinPool.from_params(current.params)
    if low_water_mark_blocks is not None:
        builder = dataclasses.replace(builder, low_water_mark_blocks=low_water_mark_blocks)
    target = builder.target(0, new_length)
    read_only = dm.info(pool).read_only
    log.debug("growing pool %s from %s to %s sectors", pool, current.length, new_length)
    dm.load_table(pool, [target], read_only=read_only)
    dm.resume(pool)


__all__ = [
    "DATA_BLOCK_SIZE_MAX_SECTORS",
    "DATA_BLOCK_SIZE_MIN_SECTORS",
    "MAX_DEV_ID",
    "MAX_FEATURES",
    "DiscardMode",
    "NoSpacePolicy",
    "NoSuchThinId",
    "PoolMode",
    "PoolState",
    "ThinIdInUse",
    "ThinPool",
    "ThinPoolBusy",
    "ThinPoolError",
    "ThinPoolReadOnly",
    "ThinPoolRefused",
    "ThinPoolStatus",
    "ThinPoolUnavailable",
    "create_snap",
    "create_thin",
    "delete",
    "grow",
    "parse_status",
    "release_metadata_snap",
    "reserve_metadata_snap",
    "set_transaction_id",
]
