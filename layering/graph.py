"""The layer graph: a base, images and containers, each a thin device of the pool.

    base (thin 0, an empty file system)
      image = snapshot of its parent with a layer tarball applied
        image ...
          container = writable snapshot of an image, mounted at a path

Each operation runs under the store's exclusive lock and follows the store's
journal protocol (see :mod:`layering.store`): journal, kernel changes, then the
pool's transaction id as the commit point, then ``finish``.  Opening a graph
reconciles an operation a crash interrupted: completed when the pool's
transaction id says the kernel committed it, otherwise rolled back.

A thin device is active only while it is used: images while a tarball is
applied, containers while they exist.  For tests, the environment variable
``DMSNAP_CRASH_AT=<step>`` ends the process at that step of any operation,
as a crash would.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from xml.etree import ElementTree

from dmioctl import DeviceInfo, DeviceMapper, DMError
from dmioctl.targets import thin_pool
from dmioctl.targets.thin_pool import NoSuchThinId
from layering import fs, layers
from layering.errors import InvalidInput, LayeringError
from layering.pool import METADATA_MAX_BYTES, GiB, Pool, PoolConfig, Usage
from layering.store import (
    Busy,
    HasChildren,
    Layer,
    LayerKind,
    Operation,
    Outcome,
    PoolBacking,
    PoolRecord,
    Store,
    new_layer_id,
)

log = logging.getLogger(__name__)

DEFAULT_BASE_BYTES = 10 * GiB
#: New layers are refused below this fraction of free pool space (as Docker did).
DEFAULT_MIN_FREE = 0.10
CRASH_ENV = "DMSNAP_CRASH_AT"
_UNFINISHED_INIT = "{root}: an init that did not finish was cleaned up; run 'dmsnap init' again"
#: The kind of finding that says a check could not run (a tool is missing): not a mismatch.
SKIPPED = "skipped"


@dataclass(frozen=True)
class Finding:
    """One mismatch fsck found: what kind, about what, the details, and whether it was mended."""

    kind: str
    subject: str
    detail: str
    repaired: bool


@dataclass(frozen=True)
class LayerSpace:
    """Pool space one layer's thin device maps, and the part of it no other layer shares."""

    layer: Layer
    mapped_bytes: int
    exclusive_bytes: int


class NotInitialised(LayeringError):
    """The root holds no store: ``dmsnap init`` makes one."""


class Graph:
    """Base, images and containers of one root directory."""

    def __init__(self, store: Store, pool: Pool, *, min_free: float = DEFAULT_MIN_FREE) -> None:
        self.store = store
        self.pool = pool
        self.min_free = min_free
        self.root = store.root

    # Opening

    @classmethod
    def init(
        cls,
        root: Path,
        dm: DeviceMapper,
        config: PoolConfig,
        *,
        base_bytes: int = DEFAULT_BASE_BYTES,
        fstype: str = "ext4",
    ) -> Graph:
        """Make a store, a pool and the base device with an empty file system."""
        fs.check_fstype(fstype)
        if base_bytes <= 0 or base_bytes % 512:
            raise InvalidInput(f"base size {base_bytes} bytes must be a positive multiple of 512")
        root.mkdir(parents=True, exist_ok=True)
        store = Store.open(root)
        with store.exclusive():
            if store.pool() is not None:
                raise LayeringError(f"{root} holds a store already")
            pool = Pool(root, dm, config)
            pool.refuse_existing()
            files = config.metadata_device is None
            store.set_pool(
                PoolRecord(
                    device_name=pool.name,
                    backing=PoolBacking.FILES if files else PoolBacking.DEVICES,
                    data=pool.data_file if files else Path(str(config.data_device)),
                    metadata=pool.metadata_file if files else Path(str(config.metadata_device)),
                    data_block_size_sectors=config.block_sectors,
                )
            )
            graph = cls(store, pool)
            try:
                pool.create()
                base = Layer(new_layer_id(), LayerKind.BASE, None, 0, base_bytes, name="base")
                with graph._operation("init", {"fstype": fstype}, add=[base]) as op:
                    graph._step(op, "create_thin")
                    pool.create_thin(0)
                    with graph._active(base) as device:
                        fs.mkfs(device, fstype)
            except BaseException:
                log.debug("init of %s failed: removing what it made", root)
                graph._abandon()
                raise
        return graph

    @classmethod
    def open(cls, root: Path, dm: DeviceMapper) -> Graph:
        """Open the store of ``root``, bring its pool up, and reconcile a crashed operation."""
        if not (root / "metadata.db").exists():
            raise NotInitialised(f"{root} holds no store; run 'dmsnap init' first")
        store = Store.open(root)
        with store.exclusive():
            record = store.pool()
            if record is None:
                store.close()
                raise NotInitialised(f"{root} holds no pool; run 'dmsnap init' first")
            if not store.layers():
                # A crash cut init short before its journal entry: its pool may be half made.
                cls(store, Pool(root, dm, _leftover_config(record)))._abandon()
                raise NotInitialised(_UNFINISHED_INIT.format(root=root))
            pool = Pool(root, dm, _config(record))
            graph = cls(store, pool)
            pool.activate()
            graph._reconcile()
            if not store.layers(LayerKind.BASE):
                # The interrupted init was rolled back: only its empty pool is left.
                graph._abandon()
                raise NotInitialised(_UNFINISHED_INIT.format(root=root))
        return graph

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Graph:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Operations

    def import_layer(
        self,
        tarball: Path | IO[bytes],
        *,
        parent: str = "base",
        name: str | None = None,
        size_bytes: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> Layer:
        """A new image: snapshot ``parent``, apply the tarball, record it.

        A tarball the safety checks refuse leaves nothing behind.
        """
        with self.store.exclusive():
            base = self.store.get(parent)
            if base.kind is LayerKind.CONTAINER:
                raise InvalidInput(f"{parent} is a container; commit it to an image first")
            size = self._size(base, size_bytes)
            layer = Layer(
                new_layer_id(),
                LayerKind.IMAGE,
                base.id,
                self.store.next_thin_id(),
                size,
                name=name,
            )
            with self._operation("import", {"parent": base.id}, add=[layer], gate=True) as op:
                self._step(op, "create_snap")
                self.pool.create_snap(layer.thin_id, base.thin_id)
                with self._mounted(layer, grow_from=base.size_bytes) as where:
                    self._step(op, "apply")
                    layers.apply(tarball, where, progress=progress)
            return self.store.get(layer.id)

    def create_container(
        self,
        image: str,
        *,
        name: str | None = None,
        mount: Path | None = None,
        size_bytes: int | None = None,
    ) -> Layer:
        """A writable snapshot of ``image``, active and mounted (by default under the root)."""
        with self.store.exclusive():
            parent = self.store.get(image)
            if parent.kind is LayerKind.CONTAINER:
                raise InvalidInput(f"{image} is a container; commit it to an image first")
            size = self._size(parent, size_bytes)
            layer_id = new_layer_id()
            where = self._mount_point(mount) if mount else self.root / "containers" / layer_id
            layer = Layer(
                layer_id,
                LayerKind.CONTAINER,
                parent.id,
                self.store.next_thin_id(),
                size,
                name=name,
                mount=where,
            )
            with self._operation("create", {"image": parent.id}, add=[layer], gate=True) as op:
                self._step(op, "create_snap")
                self.pool.create_snap(layer.thin_id, parent.thin_id)
                self._step(op, "mount")
                device = self.pool.activate_thin(layer.thin_id, size)
                fs.mount(device, where)
                if size > parent.size_bytes:
                    fs.grow(device, where, fs.detect(device))
            return self.store.get(layer.id)

    def commit(self, container: str, *, name: str | None = None) -> Layer:
        """A new image from a container's current content (a snapshot; the container stays)."""
        with self.store.exclusive():
            source = self.store.get(container)
            if source.kind is not LayerKind.CONTAINER:
                raise InvalidInput(f"{container} is not a container")
            assert source.parent is not None
            layer = Layer(
                new_layer_id(),
                LayerKind.IMAGE,
                source.parent,
                self.store.next_thin_id(),
                source.size_bytes,
                name=name,
            )
            with self._operation("commit", {"container": source.id}, add=[layer], gate=True) as op:
                if source.mount is not None:
                    os.sync()
                self._step(op, "create_snap")
                self.pool.create_snap(layer.thin_id, source.thin_id)
            return self.store.get(layer.id)

    def mount(self, container: str) -> Layer:
        """Activate and mount a container that is unmounted (after ``umount`` or a reboot)."""
        with self.store.exclusive():
            layer = self._container(container)
            where = layer.mount or self.root / "containers" / layer.id
            device = self.pool.activate_thin(layer.thin_id, layer.size_bytes)
            rdev = os.stat(device).st_rdev
            if str(where) not in fs.mounts_of(os.major(rdev), os.minor(rdev)):
                fs.mount(device, where)
            return self.store.set_mount(layer.id, where)

    def umount(self, container: str) -> Layer:
        """Unmount a container and deactivate its device; its content stays."""
        with self.store.exclusive():
            layer = self._container(container)
            self._release(layer)
            return self.store.get(layer.id)

    def remove(self, ref: str, *, recursive: bool = False) -> list[Layer]:
        """Remove a layer (and, with ``recursive``, everything built on it).

        Raises:
            HasChildren: the layer has children and ``recursive`` is not set.
            Busy: the device is held open; the message says by whom.
        """
        with self.store.exclusive():
            layer = self.store.get(ref)
            if layer.kind is LayerKind.BASE:
                raise InvalidInput("the base layer goes only with 'destroy'")
            doomed = self._descendants(layer)
            if len(doomed) > 1 and not recursive:
                names = ", ".join(_label(child) for child in doomed[:-1])
                raise HasChildren(f"{_label(layer)} has children ({names}); use recursive")
            for victim in doomed:
                self._remove_one(victim)
            return doomed

    def fsck(self, *, repair: bool = False) -> list[Finding]:
        """Compare the store with the pool and the kernel; report, and with ``repair`` mend.

        Checks: the pool's transaction id against the store's; the pool's thin ids
        (read from a metadata snapshot with thin_dump, when installed) against the
        layers' thin ids; active devices of this root against the layers; and
        containers recorded as mounted against the mounts.
        """
        findings: list[Finding] = []
        with self.store.exclusive():
            record = self.store.pool()
            assert record is not None
            layers = self.store.layers()
            by_thin = {layer.thin_id: layer for layer in layers}

            actual = self.pool.usage().transaction_id
            if actual != record.transaction_id:
                if repair:
                    self.pool.set_transaction_id(actual, record.transaction_id)
                findings.append(
                    Finding(
                        "transaction-id",
                        self.pool.name,
                        f"pool has {actual}, store has {record.transaction_id}",
                        repair,
                    )
                )

            thin_ids = self._pool_thin_ids()
            if thin_ids is None:
                findings.append(Finding(SKIPPED, "thin ids", "thin_dump is not installed", False))
            else:
                for orphan in sorted(thin_ids - by_thin.keys()):
                    if repair:
                        self.pool.deactivate_thin(orphan)
                        self.pool.delete_thin(orphan)
                    findings.append(
                        Finding("orphan-thin", str(orphan), "in the pool, in no layer", repair)
                    )
                for missing in sorted(by_thin.keys() - thin_ids):
                    layer = by_thin[missing]
                    fixable = repair and not self.store.children(layer.id)
                    if fixable:
                        self._release(layer)
                        if layer.mount is not None:
                            self.store.set_mount(layer.id, None)
                        self.store.remove_layer(layer.id)
                    findings.append(
                        Finding(
                            "missing-thin",
                            _label(layer),
                            f"thin id {missing} is not in the pool",
                            fixable,
                        )
                    )

            for device in self.pool.dm.list_devices():
                if not device.name.startswith(self.pool.prefix) or device.name == self.pool.name:
                    continue
                suffix = device.name.removeprefix(self.pool.prefix)
                if suffix.isdigit() and int(suffix) in by_thin:
                    continue
                if repair:
                    self.pool.dm.remove(device.name, retries=5)
                findings.append(
                    Finding("stray-device", device.name, "active, belongs to no layer", repair)
                )

            # A container whose device is active should be mounted; an inactive one is
            # simply down (after umount or a reboot), which is no mismatch.
            for layer in layers:
                if (
                    layer.mount is not None
                    and self.pool.is_active(layer.thin_id)
                    and not os.path.ismount(layer.mount)
                ):
                    if repair:
                        node = self.pool.activate_thin(layer.thin_id, layer.size_bytes)
                        fs.mount(node, layer.mount)
                    findings.append(
                        Finding("not-mounted", _label(layer), f"not on {layer.mount}", repair)
                    )
        return findings

    def _pool_thin_ids(self) -> set[int] | None:
        """The thin ids the pool holds, from a metadata snapshot; None without thin_dump."""
        dump = self._read_metadata(["thin_dump", "--metadata-snap"])
        if dump is None:
            return None
        return {int(device.get("dev_id", "")) for device in ElementTree.fromstring(dump)}

    def _read_metadata(self, argv: list[str]) -> str | None:
        """Run a thin-provisioning-tools reader on a snapshot of the live pool's metadata.

        Returns its output, or None when the tool is not installed.
        """
        if shutil.which(argv[0]) is None:
            return None
        metadata, _data = self.pool.backing()
        thin_pool.reserve_metadata_snap(self.pool.dm, self.pool.name)
        try:
            return subprocess.run(
                [*argv, metadata], capture_output=True, text=True, check=True
            ).stdout
        finally:
            thin_pool.release_metadata_snap(self.pool.dm, self.pool.name)

    def space(self) -> list[LayerSpace] | None:
        """Pool space each layer maps, and how much of it no other layer shares.

        Read with thin_ls from a metadata snapshot; None when it is not installed.
        """
        listing = self._read_metadata(
            ["thin_ls", "--no-headers", "-o", "DEV,MAPPED_BYTES,EXCLUSIVE_BYTES", "-m"]
        )
        if listing is None:
            return None
        by_thin: dict[int, tuple[int, int]] = {}
        for line in listing.splitlines():
            fields = line.split()
            if len(fields) != 3 or not all(field.isdigit() for field in fields):
                raise LayeringError(f"thin_ls printed {line!r}, not 'DEV MAPPED EXCLUSIVE'")
            by_thin[int(fields[0])] = (int(fields[1]), int(fields[2]))
        return [
            LayerSpace(layer, *by_thin.get(layer.thin_id, (0, 0))) for layer in self.store.layers()
        ]

    def deactivate(self) -> None:
        """Unmount the containers and stop the pool and its devices; everything stays.

        ``Graph.open`` brings the pool back, and ``mount`` each container.
        """
        with self.store.exclusive():
            self._unmount_containers()
            self.pool.teardown()

    def grow(self, *, data_bytes: int | None = None, metadata_bytes: int | None = None) -> Usage:
        """Grow the pool's data and/or metadata files and the pool, online."""
        with self.store.exclusive():
            self.pool.grow(data_bytes=data_bytes, metadata_bytes=metadata_bytes)
            return self.pool.usage()

    # Queries

    def layers(self, kind: LayerKind | None = None) -> list[Layer]:
        return self.store.layers(kind)

    def get(self, ref: str) -> Layer:
        return self.store.get(ref)

    def usage(self) -> Usage:
        return self.pool.usage()

    def tree(self) -> list[tuple[int, Layer]]:
        """Every layer with its depth, parents before children, depth-first."""
        by_parent: dict[str | None, list[Layer]] = {}
        for layer in self.store.layers():
            by_parent.setdefault(layer.parent, []).append(layer)
        ordered: list[tuple[int, Layer]] = []

        def walk(parent: str | None, depth: int) -> None:
            for layer in by_parent.get(parent, []):
                ordered.append((depth, layer))
                walk(layer.id, depth + 1)

        walk(None, 0)
        return ordered

    def destroy(self) -> None:
        """Unmount every container, tear the pool down and delete its files and the store."""
        with self.store.exclusive():
            self._unmount_containers()
            self._abandon()

    def _unmount_containers(self) -> None:
        """Unmount every mounted container; if a process uses one, refuse before any.

        Raises:
            Busy: naming each container in use and the processes using it.
        """
        mounted = [
            (layer, os.stat(layer.mount).st_dev)
            for layer in self.store.layers(LayerKind.CONTAINER)
            if layer.mount is not None and os.path.ismount(layer.mount)
        ]
        users = fs.holders(device for _, device in mounted)
        busy = [
            f"{_label(layer)} (used by {', '.join(users[device])})"
            for layer, device in mounted
            if device in users
        ]
        if busy:
            raise Busy(f"in use, so nothing was unmounted: {'; '.join(busy)}")
        for layer, _ in mounted:
            assert layer.mount is not None
            fs.umount(layer.mount)

    def _abandon(self) -> None:
        """Tear the pool down, delete its files and the store: the root is as before init."""
        self.pool.destroy()
        self.store.close()
        for leftover in ("metadata.db", "metadata.db-wal", "metadata.db-shm", "lock"):
            (self.root / leftover).unlink(missing_ok=True)
        shutil.rmtree(self.root / "containers", ignore_errors=True)

    # Steps shared by the operations

    @contextlib.contextmanager
    def _operation(
        self,
        name: str,
        args: dict[str, str],
        *,
        add: Sequence[Layer] = (),
        remove: Sequence[str] = (),
        gate: bool = False,
    ) -> Iterator[Operation]:
        """Journal an operation; commit it by the pool's transaction id, or undo it on error.

        With ``gate`` (operations that add a layer), refuse with OutOfSpace first when
        the pool is below the free-space minimum.
        """
        # An operation another process (or a failed one of this) left open goes first.
        self._reconcile()
        record = self.store.pool()
        assert record is not None
        # One status read serves the free-space gate (for new layers) and the check.
        usage = self.pool.check_free(self.min_free) if gate else self.pool.usage()
        kernel = usage.transaction_id
        if kernel != record.transaction_id:
            raise LayeringError(
                f"pool transaction id {kernel} differs from the store's "
                f"{record.transaction_id}; run 'dmsnap fsck'"
            )
        op = self.store.begin(name, args, record.transaction_id + 1, add=add, remove=remove)
        # An error the settling below cannot mend leaves the operation open, for the
        # next operation or open to reconcile.
        with op:
            try:
                yield op
                self._step(op, "commit")
                self.pool.set_transaction_id(op.previous_transaction_id, op.planned_transaction_id)
            except BaseException:
                log.debug("%s failed: settling it by the pool's transaction id", name)
                self._settle(op)
                raise
            # Past the commit point the kernel has the operation: it is only completed.
            self._step(op, "committed")
            self._finish(op)

    def _finish(self, op: Operation) -> None:
        """After the commit point: what a removal still has to do, then close the journal."""
        for layer_id in op.removed:
            layer = self.store.get(layer_id)
            self._release(layer)
            self._step(op, "discard")
            try:
                self.pool.discard_thin(layer.thin_id, layer.size_bytes)
            except DMError as exc:
                # Only the host file's holes are lost: the pool frees the blocks anyway.
                # (After a crash the thin id may be gone already, which fails the same way.)
                log.warning("%s not discarded before deletion: %s", _label(layer), exc)
            with contextlib.suppress(NoSuchThinId):
                self.pool.delete_thin(layer.thin_id)
        op.finish()

    def _undo(self, op: Operation) -> None:
        """Before the commit point: take back the devices the operation may have made."""
        for layer_id in op.added:
            layer = self.store.get(layer_id)
            self._release(layer)
            with contextlib.suppress(NoSuchThinId):
                self.pool.delete_thin(layer.thin_id)
        op.rollback()

    def _reconcile(self) -> None:
        op = self.store.interrupted()
        if op is not None:
            self._settle(op)

    def _settle(self, op: Operation) -> None:
        """Complete ``op`` if the pool's transaction id says the kernel committed it, else undo.

        First, an origin that a crash in create_snap left suspended is resumed.
        """
        self.pool.resume_suspended()
        actual = self.pool.usage().transaction_id
        if op.outcome(actual) is Outcome.APPLIED:
            log.debug("%s committed in the kernel: completing it", op.name)
            self._finish(op)
        else:
            log.debug("%s not committed: rolling it back", op.name)
            self._undo(op)

    def _remove_one(self, layer: Layer) -> None:
        self._release(layer, check_busy=True)
        if layer.mount is not None:
            self.store.set_mount(layer.id, None)
        with self._operation("remove", {"layer": layer.id}, remove=[layer.id]) as op:
            self._step(op, "remove")

    def _release(self, layer: Layer, *, check_busy: bool = False) -> None:
        """Unmount a layer (its own mount, and work mounts a crash left) and deactivate it.

        With ``check_busy``, a layer still in use after that is removed deferred
        (when last closed) and :class:`Busy` says who holds it.
        """
        device = self.pool.thin_info(layer.thin_id)
        if device is None:
            return
        for where in fs.mounts_of(device.major, device.minor):
            path = Path(where)
            if path != layer.mount and self.root not in path.parents:
                continue
            try:
                fs.umount(path)
            except fs.FsError as exc:
                if not check_busy:
                    holders = _holders(device)
                    message = f"{_label(layer)} cannot be unmounted: {holders}; stop those first"
                    raise Busy(message) from exc
            else:
                if path.name.startswith(".work-"):
                    path.rmdir()
        info = self.pool.thin_info(layer.thin_id)
        if info is None:
            return  # a deferred removal went through when the last user closed it
        if info.open_count and check_busy:
            holders = _holders(info)
            # Removed by the kernel at its last close, should that come first.
            self.pool.deactivate_thin(layer.thin_id, deferred=True)
            raise Busy(f"{_label(layer)} is busy: {holders}; stop those, then remove it again")
        self.pool.deactivate_thin(layer.thin_id)

    @contextlib.contextmanager
    def _active(self, layer: Layer) -> Iterator[str]:
        device = self.pool.activate_thin(layer.thin_id, layer.size_bytes)
        try:
            yield device
        finally:
            self.pool.deactivate_thin(layer.thin_id)

    @contextlib.contextmanager
    def _mounted(self, layer: Layer, *, grow_from: int) -> Iterator[Path]:
        """The layer's file system mounted on a work directory, grown if the layer is larger."""
        with self._active(layer) as device:
            work = Path(tempfile.mkdtemp(prefix=".work-", dir=self.root))
            fs.mount(device, work)
            try:
                if layer.size_bytes > grow_from:
                    fs.grow(device, work, fs.detect(device))
                yield work
            finally:
                fs.umount(work)
                work.rmdir()

    def _container(self, ref: str) -> Layer:
        layer = self.store.get(ref)
        if layer.kind is not LayerKind.CONTAINER:
            raise InvalidInput(f"{ref} is not a container")
        return layer

    def _descendants(self, layer: Layer) -> list[Layer]:
        """``layer`` and everything built on it, children before parents."""
        ordered: list[Layer] = []
        for child in self.store.children(layer.id):
            ordered.extend(self._descendants(child))
        ordered.append(layer)
        return ordered

    @staticmethod
    def _size(parent: Layer, size_bytes: int | None) -> int:
        if size_bytes is None:
            return parent.size_bytes
        if size_bytes < parent.size_bytes or size_bytes % 512:
            raise InvalidInput(
                f"size {size_bytes} bytes must be a multiple of 512 and at least the "
                f"parent's {parent.size_bytes}"
            )
        return size_bytes

    def _mount_point(self, mount: Path) -> Path:
        """``mount`` resolved, if a container may be mounted there; else InvalidInput.

        Refused: a path that is mounted on already, is not an empty directory, or is
        the root, inside it or above it (the store and the pool files live there).
        """
        where = mount.resolve()
        if where == self.root or where in self.root.parents or self.root in where.parents:
            raise InvalidInput(
                f"mount point {mount} is {self.root}, inside or above it; choose another"
            )
        if os.path.ismount(where):
            raise InvalidInput(f"mount point {mount} has a file system mounted on it already")
        if where.exists() and (not where.is_dir() or any(where.iterdir())):
            raise InvalidInput(f"mount point {mount} exists and is not an empty directory")
        return where

    @staticmethod
    def _step(op: Operation, name: str) -> None:
        op.step(name)
        if os.environ.get(CRASH_ENV) == name:
            log.warning("%s=%s: ending the process here, as a crash would", CRASH_ENV, name)
            os._exit(70)


def _config(record: PoolRecord) -> PoolConfig:
    """The pool's configuration as the store recorded it."""
    block_bytes = record.data_block_size_sectors * 512
    if record.backing is PoolBacking.DEVICES:
        return PoolConfig(
            data_bytes=_size_of(record.data),
            metadata_bytes=min(_size_of(record.metadata), METADATA_MAX_BYTES),
            block_bytes=block_bytes,
            data_device=str(record.data),
            metadata_device=str(record.metadata),
        )
    return PoolConfig(
        data_bytes=record.data.stat().st_size,
        # The kernel uses the first 16 GiB of a larger one (a store grown past it by
        # an older version still opens).
        metadata_bytes=min(record.metadata.stat().st_size, METADATA_MAX_BYTES),
        block_bytes=block_bytes,
    )


def _leftover_config(record: PoolRecord) -> PoolConfig:
    """A configuration that finds a pool's devices and files to remove them, sizes aside.

    The files of an init cut short may be missing or partly made, so they are not read.
    """
    if record.backing is PoolBacking.DEVICES:
        return PoolConfig(data_device=str(record.data), metadata_device=str(record.metadata))
    return PoolConfig()


def _size_of(path: Path) -> int:
    with path.open("rb") as f:
        return f.seek(0, os.SEEK_END)


def _holders(device: DeviceInfo) -> str:
    """Who holds a device, for a Busy message: where it is mounted, which processes use it."""
    mounts = fs.mounts_of(device.major, device.minor)
    users = fs.holders([os.makedev(device.major, device.minor)])
    parts = [f"mounted on {', '.join(mounts)}"] if mounts else []
    for using in users.values():
        parts.append(f"used by {', '.join(using)}")
    return ", ".join(parts) or f"open {device.open_count} time(s)"


def _label(layer: Layer) -> str:
    return f"{layer.kind.value} {layer.name or layer.id}"
