"""The thin-pool that holds every layer, and its thin devices.

A pool lives in a root directory.  By default it needs no set-up: a sparse data
file and a sparse metadata file under ``<root>/pool/`` are attached as loop
devices and a thin-pool is started on them.  Given block devices can stand in
for the files.  Device-mapper names carry a tag derived from the root's path,
so pools of different roots never meet: ``dmsnap-<tag>-pool`` for the pool and
``dmsnap-<tag>-<thin id>`` for an active thin device.

Sizes here are in bytes; the conversion to sectors happens at the edge, where a
table is built.  Nothing in this module keeps state beyond the kernel's and the
files': the caller (the layer graph) records the configuration in the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

from dmioctl import DeviceInfo, DeviceMapper, NoSuchDevice, block, loop
from dmioctl.nodes import node_path
from dmioctl.table import SECTOR_SIZE
from dmioctl.targets import thin_pool
from dmioctl.targets.thin import Thin
from dmioctl.targets.thin_pool import ThinPool, ThinPoolStatus, parse_status
from layering.errors import InvalidInput, LayeringError

log = logging.getLogger(__name__)

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

#: Where a store lives unless told otherwise (option ``--root``, or this variable).
DEFAULT_ROOT = Path("/var/lib/dmsnap")
ROOT_ENV = "DMSNAP_ROOT"

#: Metadata blocks of a thin-pool are 4 KiB (thin-provisioning.rst).
METADATA_BLOCK_BYTES = 4 * KiB
#: The kernel's bounds on a pool's metadata device: 2 MiB to about 16 GiB.
METADATA_MIN_BYTES = 2 * MiB
METADATA_MAX_BYTES = 16 * GiB


class PoolError(LayeringError):
    """The pool is missing, foreign, failed, or out of space."""


class OutOfSpace(PoolError):
    """The pool has less free space than the gate allows."""


@dataclass(frozen=True)
class PoolConfig:
    """How a pool is laid out.  Files are used unless both devices are given."""

    data_bytes: int = 100 * GiB
    metadata_bytes: int = 2 * GiB
    block_bytes: int = 64 * KiB
    data_device: str | None = None
    metadata_device: str | None = None

    def __post_init__(self) -> None:
        if (self.data_device is None) != (self.metadata_device is None):
            raise InvalidInput("give both a data and a metadata device, or neither")
        block_sectors, rest = divmod(self.block_bytes, SECTOR_SIZE)
        if rest or not (128 <= block_sectors <= 2097152) or block_sectors % 128:
            raise InvalidInput(
                f"block size {self.block_bytes} bytes must be a multiple of 64 KiB "
                "between 64 KiB and 1 GiB"
            )
        if self.data_bytes < self.block_bytes:
            raise InvalidInput(f"data size {self.data_bytes} bytes is below one block")
        if not METADATA_MIN_BYTES <= self.metadata_bytes <= METADATA_MAX_BYTES:
            raise InvalidInput(
                f"metadata size {self.metadata_bytes} bytes must be between 2 MiB and 16 GiB"
            )

    @property
    def block_sectors(self) -> int:
        return self.block_bytes // SECTOR_SIZE


@dataclass(frozen=True)
class Usage:
    """Space used and available in the pool, in bytes."""

    data_used: int
    data_total: int
    metadata_used: int
    metadata_total: int
    transaction_id: int

    @property
    def data_free_fraction(self) -> float:
        return 1 - self.data_used / self.data_total if self.data_total else 0.0

    @property
    def metadata_free_fraction(self) -> float:
        return 1 - self.metadata_used / self.metadata_total if self.metadata_total else 0.0


def root_tag(root: Path) -> str:
    """Eight hex digits naming this root among the device-mapper devices."""
    return hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]


class Pool:
    """The thin-pool of one root directory."""

    def __init__(self, root: Path, dm: DeviceMapper, config: PoolConfig) -> None:
        self.root = root
        self.dm = dm
        self.config = config
        tag = root_tag(root)
        self.prefix = f"dmsnap-{tag}-"
        self.name = self.prefix + "pool"

    # Files and loop devices

    @property
    def data_file(self) -> Path:
        return self.root / "pool" / "data"

    @property
    def metadata_file(self) -> Path:
        return self.root / "pool" / "metadata"

    def backing(self) -> tuple[str, str]:
        """The metadata and data block devices, attaching the files when needed."""
        if self.config.metadata_device and self.config.data_device:
            return self.config.metadata_device, self.config.data_device
        return self._loop_for(self.metadata_file), self._loop_for(self.data_file)

    @staticmethod
    def _loop_for(path: Path) -> str:
        attached = loop.find(path)
        if attached:
            return attached[0].path
        return loop.attach(path).path

    # Life cycle

    def exists(self) -> bool:
        """Whether the pool's device is active in the kernel."""
        try:
            self.dm.info(self.name)
        except NoSuchDevice:
            return False
        return True

    def refuse_existing(self) -> None:
        """Raise :class:`PoolError` if this root has a pool already, or the metadata device data.

        Checks what :meth:`create` would otherwise overwrite or adopt, before anything is made.
        """
        if self.exists():
            raise PoolError(f"pool {self.name} is active already")
        if self.config.metadata_device is None:
            for path in (self.metadata_file, self.data_file):
                if path.exists():
                    raise PoolError(f"{path} exists: the root holds a pool already")
        else:
            _require_blank(self.config.metadata_device)

    def create(self) -> None:
        """Make the files (if used), attach them, and start a new, empty pool.

        What it made is removed again when a step fails.

        Raises:
            PoolError: as :meth:`refuse_existing`; or a file cannot be made that large.
        """
        self.refuse_existing()
        try:
            if self.config.metadata_device is None:
                (self.root / "pool").mkdir(parents=True, exist_ok=True)
                for path, size in (
                    (self.metadata_file, self.config.metadata_bytes),
                    (self.data_file, self.config.data_bytes),
                ):
                    with path.open("xb") as f:
                        try:
                            f.truncate(size)
                        except OSError as exc:
                            raise PoolError(
                                f"cannot make {path} {size} bytes long: {exc.strerror}"
                            ) from exc
            self.activate()
        except BaseException:
            self.destroy()
            raise

    def activate(self) -> None:
        """Start the pool on its devices unless it runs: after a reboot, loops and table come back.

        An active device of our name is adopted only when its table uses our devices.
        """
        metadata, data = self.backing()
        builder = self._builder(metadata, data)
        if self.exists():
            table = self.dm.table(self.name)
            if len(table) != 1 or table[0].target_type != "thin-pool":
                raise PoolError(f"{self.name} exists and is not a thin-pool")
            running = ThinPool.from_params(table[0].params)
            ours = [_dev_name(path) for path in (metadata, data)]
            if [running.metadata_device, running.data_device] != ours:
                raise PoolError(
                    f"{self.name} runs on {running.metadata_device} and {running.data_device}, "
                    f"not on this root's {ours[0]} and {ours[1]}"
                )
            return
        self.dm.create(self.name)
        try:
            self.dm.load_table(self.name, [builder.target(0, self._length(data))])
            self.dm.resume(self.name)
        except BaseException:
            self.dm.remove(self.name)
            raise
        log.debug("pool %s active on %s and %s", self.name, metadata, data)

    def _builder(self, metadata: str, data: str) -> ThinPool:
        blocks = self._data_bytes(data) // self.config.block_bytes
        return ThinPool(
            metadata,
            data,
            self.config.block_sectors,
            # An event when a tenth of the blocks are left (events.watch can report it).
            max(1, blocks // 10),
        )

    def _length(self, data: str) -> int:
        """The pool's table length in sectors: the data device in whole blocks."""
        sectors = self._data_bytes(data) // SECTOR_SIZE
        return sectors - sectors % self.config.block_sectors

    def _data_bytes(self, data: str) -> int:
        with open(data, "rb") as device:
            return device.seek(0, os.SEEK_END)

    def teardown(self) -> None:
        """Deactivate every thin device of this root, the pool, and the loop devices."""
        for device in self.dm.list_devices():
            if device.name.startswith(self.prefix) and device.name != self.name:
                self.dm.remove(device.name, retries=5)
        with contextlib.suppress(NoSuchDevice):
            self.dm.remove(self.name, retries=5)
        if self.config.metadata_device is None:
            for path in (self.data_file, self.metadata_file):
                if path.exists():
                    for info in loop.find(path):
                        loop.detach(info.path)

    def resume_suspended(self) -> None:
        """Resume every thin device of this root that is suspended.

        Only a crash leaves one so: create_snap suspends an active origin for the
        message and resumes it even when the message fails.
        """
        for device in self.dm.list_devices():
            if not device.name.startswith(self.prefix) or device.name == self.name:
                continue
            if self.dm.info(device.name).suspended:
                log.warning("%s was left suspended: resuming it", device.name)
                self.dm.resume(device.name)

    def destroy(self) -> None:
        """Tear down and delete the pool's files: every layer is gone."""
        self.teardown()
        if self.config.metadata_device is None:
            for path in (self.data_file, self.metadata_file):
                path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                (self.root / "pool").rmdir()

    # Space

    def status(self) -> ThinPoolStatus:
        """The pool's parsed status, as it is in core.

        Read with DM_NOFLUSH_FLAG: the counts and the transaction id come from
        memory either way, and without it the kernel first commits the metadata,
        a write and a flush that the operation's own messages make anyway.

        Raises:
            PoolError: the pool reports Fail or Error.
        """
        line = self.dm.status(self.name, noflush=True)[0].params
        parsed = parse_status(line)
        if not isinstance(parsed, ThinPoolStatus):
            raise PoolError(f"pool {self.name} is unusable: {parsed.state.name}; run fsck")
        return parsed

    def usage(self) -> Usage:
        status = self.status()
        return Usage(
            data_used=status.used_data_blocks * self.config.block_bytes,
            data_total=status.total_data_blocks * self.config.block_bytes,
            metadata_used=status.used_metadata_blocks * METADATA_BLOCK_BYTES,
            metadata_total=status.total_metadata_blocks * METADATA_BLOCK_BYTES,
            transaction_id=status.transaction_id,
        )

    def check_free(self, min_free: float) -> Usage:
        """Refuse with :class:`OutOfSpace` when less than ``min_free`` of either space is free."""
        usage = self.usage()
        for what, free in (
            ("data", usage.data_free_fraction),
            ("metadata", usage.metadata_free_fraction),
        ):
            if free < min_free:
                raise OutOfSpace(
                    f"pool {what} is {free:.1%} free, below the {min_free:.0%} minimum; "
                    "remove layers or grow the pool"
                )
        return usage

    def grow(self, *, data_bytes: int | None = None, metadata_bytes: int | None = None) -> None:
        """Grow the data and/or metadata files, then the pool, while it stays online."""
        if self.config.metadata_device is not None:
            raise PoolError("the pool is on given devices: grow them, then run grow again")
        # The new sizes meet the limits a pool is opened with, or nothing is changed.
        replace(
            self.config,
            data_bytes=data_bytes or self.config.data_bytes,
            metadata_bytes=metadata_bytes or self.config.metadata_bytes,
        )
        for path, size in ((self.data_file, data_bytes), (self.metadata_file, metadata_bytes)):
            if size is None:
                continue
            current = path.stat().st_size
            if size < current:
                raise InvalidInput(f"{path.name} is {current} bytes; it can only grow")
            with path.open("r+b") as f:
                f.truncate(size)
            for info in loop.find(path):
                loop.refresh_capacity(info.path)
        metadata, data = self.backing()
        # The low water mark is a tenth of the blocks again, of the grown pool.
        low_water = self._builder(metadata, data).low_water_mark_blocks
        thin_pool.grow(self.dm, self.name, self._length(data), low_water_mark_blocks=low_water)

    # Thin devices

    def thin_name(self, thin_id: int) -> str:
        return f"{self.prefix}{thin_id}"

    def create_thin(self, thin_id: int) -> None:
        thin_pool.create_thin(self.dm, self.name, thin_id)

    def create_snap(self, thin_id: int, origin_id: int) -> None:
        """Snapshot thin ``origin_id`` as ``thin_id``, suspending the origin if it is active."""
        origin = self.thin_name(origin_id)
        active = self.is_active(origin_id)
        thin_pool.create_snap(
            self.dm, self.name, thin_id, origin_id, origin=origin if active else None
        )

    def delete_thin(self, thin_id: int) -> None:
        thin_pool.delete(self.dm, self.name, thin_id)

    def set_transaction_id(self, old: int, new: int) -> None:
        thin_pool.set_transaction_id(self.dm, self.name, old, new)

    def thin_info(self, thin_id: int) -> DeviceInfo | None:
        """The device of thin ``thin_id`` as the kernel has it, or None while it is inactive."""
        try:
            return self.dm.info(self.thin_name(thin_id))
        except NoSuchDevice:
            return None

    def is_active(self, thin_id: int) -> bool:
        return self.thin_info(thin_id) is not None

    def activate_thin(self, thin_id: int, size_bytes: int) -> str:
        """Activate thin ``thin_id`` with ``size_bytes`` (or reload it bigger); return its node."""
        name = self.thin_name(thin_id)
        pool = self.dm.info(self.name)
        # major:minor, as the kernel prints the table back, so a reload is needed only
        # when something changed.
        pool_device = f"{pool.major}:{pool.minor}"
        target = Thin(pool_device, thin_id).target(0, size_bytes // SECTOR_SIZE)
        active = self.thin_info(thin_id)
        if active is not None and active.deferred_remove:
            raise PoolError(
                f"{name} is being removed: it goes when its last user closes it; close that first"
            )
        if active is not None:
            if self.dm.table(name) != [target]:
                self.dm.load_table(name, [target])
                self.dm.resume(name)
            return node_path(name)
        self.dm.create(name)
        try:
            self.dm.load_table(name, [target])
            self.dm.resume(name)
        except BaseException:
            self.dm.remove(name)
            raise
        return node_path(name)

    def discard_thin(self, thin_id: int, size_bytes: int) -> None:
        """Discard all of a thin device, so that its own blocks go back to the data file.

        Blocks it shares with snapshots stay mapped for them; the pool passes the
        discard of the others down to the data device.  Leaves the device inactive.
        """
        device = self.activate_thin(thin_id, size_bytes)
        try:
            block.discard(device)
        finally:
            self.deactivate_thin(thin_id)

    def deactivate_thin(self, thin_id: int, *, deferred: bool = False) -> None:
        with contextlib.suppress(NoSuchDevice):
            self.dm.remove(self.thin_name(thin_id), deferred=deferred, retries=5)


def _dev_name(path: str) -> str:
    """``major:minor`` of a block device, as tables read back from the kernel name it."""
    rdev = os.stat(path).st_rdev
    return f"{os.major(rdev)}:{os.minor(rdev)}"


def _require_blank(device: str) -> None:
    """Refuse a metadata device whose superblock area holds data: it may be someone's pool."""
    with open(device, "rb") as f:
        head = f.read(METADATA_BLOCK_BYTES)
    if head.strip(b"\0"):
        raise PoolError(
            f"{device} is not blank: it may hold another pool's metadata; "
            "zero its first 4 KiB to use it"
        )
