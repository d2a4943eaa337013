"""The layering store's metadata: layers, the pool, and the journal of the open operation.

Everything lives in one SQLite database, ``<root>/metadata.db``, opened in WAL
mode with ``synchronous=FULL`` so that a committed row survives a crash (the
journal's later writes excepted, see below: recovery does not need them).  The
schema version is ``PRAGMA user_version``; :data:`SCHEMA_VERSION` is the one this
code writes, and :data:`MIGRATIONS` maps each older version to the function that
lifts it one step.  A database from a newer version is refused
(:class:`SchemaTooNew`), never guessed at.

Records
-------

A :class:`Layer` is one thin device of the pool: the base (no parent), an image
(read-only, child of the base or of another image) or a container (writable,
child of the base or of an image; never a parent).  Its ``thin_id`` is the
device id inside the pool and is unique; its optional ``name`` is unique in the
store.  The :class:`PoolRecord` holds how the pool is built and the pool's
transaction id as last committed by this store.

Locking
-------

Processes sharing a root are serialised by an exclusive ``flock`` on
``<root>/lock``.  ``with store.exclusive():`` takes it; it is re-entrant within
the process (every :class:`Store` of the same root shares one lock object), so
the layer graph holds it across a whole operation while each mutating method
of the store takes it again, cheaply, for itself.  Reads take no lock: WAL gives
them a consistent snapshot.  A read-modify-write, such as :meth:`Store.next_thin_id`
followed by :meth:`Store.add_layer`, is only safe inside ``exclusive()``.

Journal protocol
----------------

Every operation that changes the pool is journalled before its first kernel
change, and the pool's transaction id (``set_transaction_id``, see
thin-provisioning.rst) is its commit point:

1. Inside ``with store.exclusive():``, reconcile any interrupted operation
   first (below), then check that the pool's transaction id, read from the
   kernel (thin-pool status), equals ``store.pool().transaction_id``.
2. ``op = store.begin(name, args, planned_transaction_id=tid + 1, add=...,
   remove=...)`` writes, in one SQLite transaction, the journal entry (name,
   args, the previous and the planned transaction id) and the records it will
   change: added layers in state ``CREATING``, removed layers marked
   ``REMOVING``.  Thin ids and names are reserved from then on.
   This is the one write that must reach the disk before the kernel changes.
3. Before each kernel change, ``op.step("create_snap")`` records that it may
   have happened (for diagnosis: recovery goes by the transaction id alone).
   Order the kernel changes so that the transaction id moves *after* additive
   changes (``create_thin``, ``create_snap``) and *before* destructive ones
   (``delete``): then whichever side of the commit point a crash falls on,
   what is left to do is idempotent clean-up.
4. ``op.finish()`` commits, in one SQLite transaction that need not reach the
   disk at once (lost to a power cut, it is redone on re-open): ``CREATING``
   records become ``READY``, ``REMOVING`` records are deleted, the pool record
   takes the planned transaction id, and the journal entry is deleted.

After a crash, ``store.interrupted()`` returns the open entry as an
:class:`Operation` with its args and steps.  Read the pool's actual transaction
id and call ``op.outcome(actual)``:

* :attr:`Outcome.APPLIED` (actual == planned): the kernel committed.  Redo the
  idempotent rest (e.g. ``delete`` of a removed thin id, ignoring "no such id"),
  then ``op.complete()``, which is :meth:`Operation.finish`.
* :attr:`Outcome.NOT_APPLIED` (actual == previous): it did not.  Undo what the
  steps say may have happened (e.g. ``delete`` the added thin ids), then
  ``op.rollback()``: ``CREATING`` records are deleted, ``REMOVING`` ones are
  ``READY`` again, the pool record keeps its transaction id.
* Anything else raises :class:`TransactionMismatch`: a matter for fsck.

Only one operation is open per root at a time.  An operation whose ``with``
block is left without ``finish()`` or ``rollback()`` (by an exception, most
often) stays open and is reported by ``interrupted()`` like one from a crashed
process, since its kernel changes are as uncertain.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import json
import logging
import math
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from dmioctl.targets.thin import MAX_DEV_ID
from dmioctl.targets.thin_pool import DATA_BLOCK_SIZE_MAX_SECTORS, DATA_BLOCK_SIZE_MIN_SECTORS
from layering.errors import InvalidInput, LayeringError

log = logging.getLogger(__name__)

#: File name of the database inside the root.
DB_NAME = "metadata.db"
#: File name of the lock file inside the root.
LOCK_NAME = "lock"
#: Schema version this code writes (``PRAGMA user_version``).
SCHEMA_VERSION = 1
#: Bytes per sector: layer sizes are whole sectors.
SECTOR_SIZE = 512
#: Largest transaction id the store keeps (SQLite integers are signed 64-bit).
MAX_TRANSACTION_ID = 2**63 - 1

# Names of images and containers: lower case, first a letter or digit.
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
# Layer ids: 12 hex digits (random) or 64 (sha256 of content).
_ID_RE = re.compile(r"[0-9a-f]{12}|[0-9a-f]{64}")
# Operation names: a word such as "create-container".
_OP_RE = re.compile(r"[a-z][a-z0-9_-]{0,63}")
# Pool device names: dm names are below DM_NAME_LEN (128) bytes.
_POOL_NAME_RE = re.compile(r"[A-Za-z0-9_.+-][A-Za-z0-9_.+:@-]{0,126}")


class NotFound(LayeringError, LookupError):
    """No layer (or pool record) by that id or name."""


class AlreadyExists(LayeringError):
    """An id, name, thin id or mount point is already taken by another layer."""


class HasChildren(LayeringError):
    """A layer cannot be removed while other layers are built on it."""


class Busy(LayeringError):
    """The layer, the journal or the lock is in use."""


class StoreError(LayeringError):
    """The database cannot be used: closed, not a database, or failing."""


class SchemaTooNew(StoreError):
    """The database was written by a newer version of this code."""


class JournalError(LayeringError):
    """The journal was used out of order (no lock held, operation already closed...)."""


class TransactionMismatch(JournalError):
    """The pool's transaction id is neither the planned nor the previous one."""

    def __init__(self, operation: str, previous: int, planned: int, actual: int) -> None:
        self.previous = previous
        self.planned = planned
        self.actual = actual
        super().__init__(
            f"operation {operation}: the pool's transaction id is {actual}, neither the "
            f"planned {planned} nor the previous {previous}; run fsck"
        )


class LayerKind(enum.Enum):
    """What a layer is."""

    BASE = "base"
    IMAGE = "image"
    CONTAINER = "container"


class LayerState(enum.Enum):
    """Where a layer's record stands in the journal."""

    #: Added by the open operation; becomes READY when it finishes.
    CREATING = "creating"
    #: Usable.
    READY = "ready"
    #: Removed by the open operation; deleted when it finishes.
    REMOVING = "removing"


class PoolBacking(enum.Enum):
    """What the pool's data and metadata live on."""

    #: Sparse files in the root, attached as loop devices.
    FILES = "files"
    #: Block devices given by the user.
    DEVICES = "devices"


class Outcome(enum.Enum):
    """What the pool's transaction id says about an interrupted operation."""

    #: The pool has the planned transaction id: complete the records.
    APPLIED = "applied"
    #: The pool still has the previous transaction id: roll the records back.
    NOT_APPLIED = "not-applied"


def new_layer_id() -> str:
    """A fresh random layer id of 12 hex digits."""
    return secrets.token_hex(6)


def is_layer_id(text: str) -> bool:
    """Whether ``text`` has the form of a layer id (12 or 64 lower-case hex digits)."""
    return _ID_RE.fullmatch(text) is not None


def check_name(name: str) -> None:
    """Raise :class:`InvalidInput` unless ``name`` may name an image or a container.

    A name is 1 to 128 characters of ``a-z 0-9 . _ -``, starting with a letter or
    digit, and must not look like a layer id.
    """
    if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
        raise InvalidInput(
            f"name {name!r} is not valid: use 1 to 128 of a-z 0-9 . _ -, "
            "starting with a letter or digit"
        )
    if is_layer_id(name):
        raise InvalidInput(f"name {name!r} is not valid: it could be mistaken for a layer id")


def _check_id(what: str, value: str) -> None:
    if not isinstance(value, str) or not is_layer_id(value):
        raise InvalidInput(f"{what} {value!r} is not a layer id (12 or 64 hex digits)")


def _check_int(what: str, value: int, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidInput(f"{what} must be an integer in {low}..{high}, not {value!r}")


@dataclass(frozen=True)
class Layer:
    """The record of one thin device: the base, an image or a container.

    ``size_bytes`` is a whole number of sectors; ``created`` is a Unix time;
    ``mount`` is an absolute path where the layer is mounted, or None.
    Construction validates every field and raises :class:`InvalidInput`.
    """

    id: str
    kind: LayerKind
    parent: str | None
    thin_id: int
    size_bytes: int
    name: str | None = None
    created: float = field(default_factory=time.time)
    mount: Path | None = None
    state: LayerState = LayerState.READY

    def __post_init__(self) -> None:
        _check_id("layer id", self.id)
        if not isinstance(self.kind, LayerKind):
            raise InvalidInput(f"layer {self.id}: kind {self.kind!r} is not a LayerKind")
        if self.kind is LayerKind.BASE and self.parent is not None:
            raise InvalidInput(f"layer {self.id}: a base layer has no parent")
        if self.kind is not LayerKind.BASE:
            if self.parent is None:
                raise InvalidInput(f"layer {self.id}: a {self.kind.value} needs a parent")
            _check_id(f"parent of layer {self.id}:", self.parent)
        if self.name is not None:
            check_name(self.name)
        _check_int(f"layer {self.id}: thin id", self.thin_id, 0, MAX_DEV_ID)
        _check_int(f"layer {self.id}: size in bytes", self.size_bytes, 1, 2**63 - 1)
        if self.size_bytes % SECTOR_SIZE:
            raise InvalidInput(
                f"layer {self.id}: size {self.size_bytes} bytes is not a multiple of "
                f"{SECTOR_SIZE} (one sector)"
            )
        if not isinstance(self.created, int | float) or not math.isfinite(self.created):
            raise InvalidInput(f"layer {self.id}: creation time {self.created!r} is not a time")
        if self.mount is not None:
            _check_mount(f"layer {self.id}", self.mount)
        if not isinstance(self.state, LayerState):
            raise InvalidInput(f"layer {self.id}: state {self.state!r} is not a LayerState")


def _check_mount(what: str, mount: Path) -> None:
    if not isinstance(mount, Path) or not mount.is_absolute():
        raise InvalidInput(f"{what}: mount point {mount!r} is not an absolute path")


@dataclass(frozen=True)
class PoolRecord:
    """How the pool is built, and its transaction id as last committed by the store.

    ``device_name`` is the pool's device-mapper name; ``data`` and ``metadata`` are
    the backing files (``PoolBacking.FILES``) or block devices (``DEVICES``).
    """

    device_name: str
    backing: PoolBacking
    data: Path
    metadata: Path
    data_block_size_sectors: int
    transaction_id: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.device_name, str) or not _POOL_NAME_RE.fullmatch(self.device_name):
            raise InvalidInput(f"pool device name {self.device_name!r} is not a valid dm name")
        if not isinstance(self.backing, PoolBacking):
            raise InvalidInput(f"pool backing {self.backing!r} is not a PoolBacking")
        for what, path in (("data", self.data), ("metadata", self.metadata)):
            if not isinstance(path, Path) or not path.is_absolute():
                raise InvalidInput(f"pool {what} {path!r} is not an absolute path")
        size = self.data_block_size_sectors
        _check_int(
            "pool data block size in sectors",
            size,
            DATA_BLOCK_SIZE_MIN_SECTORS,
            DATA_BLOCK_SIZE_MAX_SECTORS,
        )
        if size % DATA_BLOCK_SIZE_MIN_SECTORS:
            raise InvalidInput(
                f"pool data block size {size} sectors is not a multiple of "
                f"{DATA_BLOCK_SIZE_MIN_SECTORS}"
            )
        _check_int("pool transaction id", self.transaction_id, 0, MAX_TRANSACTION_ID)


@dataclass(frozen=True)
class Step:
    """One recorded step of an operation: its name and when it was recorded."""

    name: str
    at: float


# --- schema -------------------------------------------------------------------------------


def _kinds() -> str:
    return ", ".join(f"'{kind.value}'" for kind in LayerKind)


def _states() -> str:
    return ", ".join(f"'{state.value}'" for state in LayerState)


def _create_v1(db: sqlite3.Connection) -> None:
    """Version 0 (empty file) to 1: the first schema."""
    statements = [
        f"""CREATE TABLE layer (
            id TEXT PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ({_kinds()})),
            parent TEXT REFERENCES layer (id) DEFERRABLE INITIALLY DEFERRED,
            name TEXT UNIQUE,
            thin_id INTEGER NOT NULL UNIQUE CHECK (thin_id BETWEEN 0 AND {MAX_DEV_ID}),
            size_bytes INTEGER NOT NULL CHECK (size_bytes > 0),
            created REAL NOT NULL,
            mount TEXT UNIQUE,
            state TEXT NOT NULL CHECK (state IN ({_states()})),
            CHECK ((kind = 'base') = (parent IS NULL))
        )""",
        "CREATE INDEX layer_parent ON layer (parent)",
        """CREATE TABLE pool (
            singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
            device_name TEXT NOT NULL,
            backing TEXT NOT NULL,
            data TEXT NOT NULL,
            metadata TEXT NOT NULL,
            data_block_size_sectors INTEGER NOT NULL,
            transaction_id INTEGER NOT NULL CHECK (transaction_id >= 0)
        )""",
        """CREATE TABLE operation (
            singleton INTEGER PRIMARY KEY CHECK (singleton = 1),
            id TEXT NOT NULL,
            name TEXT NOT NULL,
            args TEXT NOT NULL,
            previous_transaction_id INTEGER NOT NULL,
            planned_transaction_id INTEGER NOT NULL,
            added TEXT NOT NULL,
            removed TEXT NOT NULL,
            started REAL NOT NULL
        )""",
        """CREATE TABLE operation_step (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            at REAL NOT NULL
        )""",
    ]
    for statement in statements:
        db.execute(statement)


#: Schema migrations: ``MIGRATIONS[n]`` lifts a database from version n to n + 1.
#: Each runs inside the transaction that then sets ``user_version`` to n + 1.
MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {0: _create_v1}


# --- the lock -----------------------------------------------------------------------------


class _RootLock:
    """The flock on ``<root>/lock``, shared by every Store of that root in this process."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._mutex = threading.RLock()
        self._depth = 0
        self._owner: int | None = None
        self._fd: int | None = None

    def held(self) -> bool:
        """Whether the calling thread holds the lock."""
        return self._depth > 0 and self._owner == threading.get_ident()

    @contextlib.contextmanager
    def hold(self, timeout: float | None) -> Iterator[None]:
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._acquire_mutex(deadline):
            raise Busy(f"{self.path} is held by another thread (waited {timeout} s)")
        try:
            if self._depth == 0:
                self._fd = self._flock(deadline, timeout)
                self._owner = threading.get_ident()
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self._unlock()
        finally:
            self._mutex.release()

    def _acquire_mutex(self, deadline: float | None) -> bool:
        if deadline is None:
            return self._mutex.acquire()
        return self._mutex.acquire(timeout=max(0.0, deadline - time.monotonic()))

    def _flock(self, deadline: float | None, timeout: float | None) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if deadline is None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:
                self._flock_until(fd, deadline, timeout)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        log.debug("locked %s", self.path)
        return fd

    def _flock_until(self, fd: int, deadline: float, timeout: float | None) -> None:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                    raise Busy(
                        f"{self.path} is held by process {holder} (waited {timeout} s)"
                    ) from None
                time.sleep(0.02)

    def _unlock(self) -> None:
        fd, self._fd, self._owner = self._fd, None, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            log.debug("unlocked %s", self.path)


_locks: dict[Path, _RootLock] = {}
_locks_mutex = threading.Lock()


def _root_lock(root: Path) -> _RootLock:
    with _locks_mutex:
        lock = _locks.get(root)
        if lock is None:
            lock = _locks[root] = _RootLock(root / LOCK_NAME)
        return lock


def _forget_locks_after_fork() -> None:
    # A forked child must take the flock through its own open file description.
    global _locks_mutex
    _locks.clear()
    _locks_mutex = threading.Lock()


os.register_at_fork(after_in_child=_forget_locks_after_fork)


# --- the store ----------------------------------------------------------------------------

_LAYER_COLUMNS = "id, kind, parent, name, thin_id, size_bytes, created, mount, state"


def _layer_from_row(row: tuple[Any, ...]) -> Layer:
    layer_id, kind, parent, name, thin_id, size, created, mount, state = row
    return Layer(
        id=layer_id,
        kind=LayerKind(kind),
        parent=parent,
        name=name,
        thin_id=thin_id,
        size_bytes=size,
        created=created,
        mount=None if mount is None else Path(mount),
        state=LayerState(state),
    )


class Store:
    """The metadata of one root: layers, the pool record and the journal.

    Open with :meth:`open`; use as a context manager or call :meth:`close`.
    One thread uses a Store; other threads and processes open their own (a
    Store does not survive ``fork``: open a new one in the child).
    """

    def __init__(self, root: Path, db: sqlite3.Connection, lock: _RootLock) -> None:
        self.root = root
        self._db: sqlite3.Connection | None = db
        self._lock = lock
        self._owned: set[str] = set()

    @classmethod
    def open(cls, root: Path) -> Store:
        """Open the store in ``root``, creating the directory and database if missing.

        Raises:
            SchemaTooNew: the database was written by a newer version.
            StoreError: ``metadata.db`` is not a usable SQLite database.
        """
        root = Path(root).absolute()
        root.mkdir(parents=True, exist_ok=True)
        # Resolved, as the kernel names mount points: those under the root compare equal.
        root = root.resolve()
        lock = _root_lock(root)
        path = root / DB_NAME
        with lock.hold(None):
            try:
                db = sqlite3.connect(path, isolation_level=None, timeout=30.0)
            except sqlite3.Error as err:
                raise StoreError(f"cannot open {path}: {err}") from err
            try:
                _prepare(db, path)
            except BaseException:
                db.close()
                raise
            store = cls(root, db, lock)
            row = db.execute("SELECT id, name FROM operation").fetchone()
        if row is not None:
            log.debug("%s: operation %s (%s) was interrupted", path, row[1], row[0])
        log.debug("opened %s", path)
        return store

    def close(self) -> None:
        """Close the database; further calls raise :class:`StoreError`."""
        if self._db is not None:
            self._db.close()
            self._db = None
            log.debug("closed %s", self.root / DB_NAME)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"the store in {self.root} is closed")
        return self._db

    # --- locking ------------------------------------------------------------------------

    @contextlib.contextmanager
    def exclusive(self, timeout: float | None = None) -> Iterator[None]:
        """Hold the root's exclusive lock; re-entrant within the process.

        Raises:
            Busy: ``timeout`` seconds passed and another process still holds it
                (the message names that process).
        """
        with self._lock.hold(timeout):
            yield

    def holds_lock(self) -> bool:
        """Whether the calling thread holds the root's lock."""
        return self._lock.held()

    @contextlib.contextmanager
    def _write(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction, under the lock.

        A transaction that is not ``durable`` commits without waiting for the
        disk (``synchronous=NORMAL``: after a power loss it may be missing, never
        half there); the next durable commit makes it durable too.
        """
        db = self._conn
        with self.exclusive():
            if not durable:
                db.execute("PRAGMA synchronous = NORMAL")
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                try:
                    db.execute("COMMIT")
                except sqlite3.Error as err:
                    db.execute("ROLLBACK")
                    raise StoreError(f"{self.root / DB_NAME}: commit failed: {err}") from err
            finally:
                if not durable:
                    db.execute("PRAGMA synchronous = FULL")

    # --- layers -------------------------------------------------------------------------

    def get(self, ref: str) -> Layer:
        """The layer with id or name ``ref`` (an id is looked up first).

        Raises:
            InvalidInput: ``ref`` is neither a layer id nor a valid name.
            NotFound: no such layer.
        """
        if not isinstance(ref, str) or not (is_layer_id(ref) or _NAME_RE.fullmatch(ref)):
            raise InvalidInput(f"{ref!r} is neither a layer id nor a valid name")
        layer = self._find(self._conn, ref)
        if layer is None:
            raise NotFound(f"no layer with id or name {ref!r}")
        return layer

    def layers(self, kind: LayerKind | None = None) -> list[Layer]:
        """All layers, or those of ``kind``, oldest first."""
        query = f"SELECT {_LAYER_COLUMNS} FROM layer"
        params: tuple[str, ...] = ()
        if kind is not None:
            query += " WHERE kind = ?"
            params = (LayerKind(kind).value,)
        rows = self._conn.execute(query + " ORDER BY created, id", params).fetchall()
        return [_layer_from_row(row) for row in rows]

    def children(self, layer_id: str) -> list[Layer]:
        """The layers whose parent is ``layer_id``, oldest first.

        Raises:
            NotFound: no layer ``layer_id``.
        """
        self._require(self._conn, layer_id)
        rows = self._conn.execute(
            f"SELECT {_LAYER_COLUMNS} FROM layer WHERE parent = ? ORDER BY created, id",
            (layer_id,),
        ).fetchall()
        return [_layer_from_row(row) for row in rows]

    def chain(self, layer_id: str) -> list[Layer]:
        """The layer ``layer_id`` and its ancestors, ending with the base.

        Raises:
            NotFound: no layer ``layer_id``.
        """
        chain = [self._require(self._conn, layer_id)]
        while (parent := chain[-1].parent) is not None:
            chain.append(self._require(self._conn, parent))
        return chain

    def next_thin_id(self) -> int:
        """The lowest thin id no layer uses (records of the open operation included).

        Not a reservation: allocate and add inside :meth:`exclusive`.

        Raises:
            Busy: all 2**24 thin ids are used.
        """
        (free,) = self._conn.execute(
            """SELECT CASE
                WHEN NOT EXISTS (SELECT 1 FROM layer WHERE thin_id = 0) THEN 0
                ELSE (SELECT MIN(a.thin_id) + 1 FROM layer AS a WHERE NOT EXISTS
                      (SELECT 1 FROM layer AS b WHERE b.thin_id = a.thin_id + 1))
            END"""
        ).fetchone()
        if free > MAX_DEV_ID:
            raise Busy(f"all {MAX_DEV_ID + 1} thin ids of the pool are in use")
        return int(free)

    def add_layer(self, layer: Layer) -> Layer:
        """Record ``layer`` as it is, outside any operation; return it.

        Used for records whose device already exists (adoption, repairs).  A new
        device is recorded through :meth:`begin` instead.

        Raises:
            AlreadyExists: its id, name, thin id or mount point is taken.
            NotFound: its parent does not exist.
            InvalidInput: its parent is a container.
            Busy: its parent is being removed.
        """
        with self._write() as db:
            self._insert(db, layer)
        log.debug(
            "added %s %s (thin id %d, parent %s)",
            layer.kind.value,
            layer.id,
            layer.thin_id,
            layer.parent,
        )
        return layer

    def remove_layer(self, layer_id: str) -> None:
        """Delete the record of ``layer_id``, outside any operation.

        Used when its device is already gone; a device removal goes through
        :meth:`begin` instead.

        Raises:
            NotFound: no such layer.
            HasChildren: layers are built on it.
            Busy: it is mounted or part of the open operation.
        """
        with self._write() as db:
            self._check_removable(db, layer_id, frozenset())
            db.execute("DELETE FROM layer WHERE id = ?", (layer_id,))
        log.debug("removed the record of layer %s", layer_id)

    def set_mount(self, layer_id: str, mount: Path | None) -> Layer:
        """Record that ``layer_id`` is mounted at ``mount`` (None: not mounted).

        Raises:
            InvalidInput: ``mount`` is not an absolute path.
            NotFound: no such layer.
            AlreadyExists: another layer is mounted there.
            Busy: the layer is being removed.
        """
        if mount is not None:
            _check_mount(f"layer {layer_id}", mount)
        with self._write() as db:
            layer = self._require(db, layer_id)
            if layer.state is LayerState.REMOVING:
                raise Busy(f"layer {layer_id} is being removed by the open operation")
            if mount is not None:
                self._check_mount_free(db, mount, layer_id)
            db.execute(
                "UPDATE layer SET mount = ? WHERE id = ?",
                (None if mount is None else str(mount), layer_id),
            )
        log.debug("layer %s mount: %s", layer_id, mount)
        return replace(layer, mount=mount)

    # --- pool ---------------------------------------------------------------------------

    def pool(self) -> PoolRecord | None:
        """The pool record, or None when no pool is recorded yet."""
        row = self._conn.execute(
            "SELECT device_name, backing, data, metadata, data_block_size_sectors, "
            "transaction_id FROM pool"
        ).fetchone()
        if row is None:
            return None
        name, backing, data, metadata, block_size, transaction_id = row
        return PoolRecord(
            name, PoolBacking(backing), Path(data), Path(metadata), block_size, transaction_id
        )

    def set_pool(self, pool: PoolRecord) -> None:
        """Record ``pool``, replacing any earlier record.

        Raises:
            Busy: an operation is open (it owns the transaction id).
        """
        with self._write() as db:
            self._check_no_operation(db)
            db.execute(
                "INSERT OR REPLACE INTO pool VALUES (1, ?, ?, ?, ?, ?, ?)",
                (
                    pool.device_name,
                    pool.backing.value,
                    str(pool.data),
                    str(pool.metadata),
                    pool.data_block_size_sectors,
                    pool.transaction_id,
                ),
            )
        log.debug("pool %s recorded (transaction id %d)", pool.device_name, pool.transaction_id)

    # --- journal ------------------------------------------------------------------------

    def begin(
        self,
        name: str,
        args: Mapping[str, Any],
        planned_transaction_id: int,
        *,
        add: Iterable[Layer] = (),
        remove: Iterable[str] = (),
    ) -> Operation:
        """Journal an operation that will change the pool, before its first kernel change.

        In one SQLite transaction: the entry (``name``, ``args``, the pool record's
        transaction id as the previous one, ``planned_transaction_id``), the
        layers of ``add`` recorded as ``CREATING`` and those of ``remove`` marked
        ``REMOVING``.  The caller must hold :meth:`exclusive` until the operation
        is finished or rolled back.

        Raises:
            InvalidInput: a bad name, args that are not JSON, a bad layer.
            JournalError: the lock is not held, or the planned transaction id
                equals the committed one.
            NotFound: no pool is recorded, or a layer to remove does not exist.
            Busy: another operation is open.
            AlreadyExists, HasChildren: as for :meth:`add_layer`, :meth:`remove_layer`.
        """
        if not isinstance(name, str) or not _OP_RE.fullmatch(name):
            raise InvalidInput(f"operation name {name!r} is not a lower-case word")
        try:
            args_json = json.dumps(dict(args), sort_keys=True)
        except (TypeError, ValueError) as err:
            raise InvalidInput(f"operation {name}: args are not JSON: {err}") from err
        _check_int(
            f"operation {name}: planned transaction id",
            planned_transaction_id,
            0,
            MAX_TRANSACTION_ID,
        )
        added = list(add)
        removed = list(remove)
        for layer_id in removed:
            _check_id(f"operation {name}: layer to remove", layer_id)
        if not self.holds_lock():
            raise JournalError(f"operation {name}: begin() needs store.exclusive() held")

        op_id = new_layer_id()
        started = time.time()
        with self._write() as db:
            self._check_no_operation(db)
            pool = self.pool()
            if pool is None:
                raise NotFound(f"operation {name}: no pool is recorded in {self.root}")
            previous = pool.transaction_id
            if planned_transaction_id == previous:
                raise JournalError(
                    f"operation {name}: planned transaction id {previous} is the committed one"
                )
            for layer in added:
                self._insert(db, replace(layer, state=LayerState.CREATING))
            doomed = frozenset(removed)
            for layer_id in removed:
                self._check_removable(db, layer_id, doomed)
            db.executemany(
                "UPDATE layer SET state = ? WHERE id = ?",
                [(LayerState.REMOVING.value, layer_id) for layer_id in removed],
            )
            db.execute(
                "INSERT INTO operation VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    op_id,
                    name,
                    args_json,
                    previous,
                    planned_transaction_id,
                    json.dumps([layer.id for layer in added]),
                    json.dumps(removed),
                    started,
                ),
            )
            db.execute("DELETE FROM operation_step")
        self._owned.add(op_id)
        log.debug(
            "operation %s (%s) begun: transaction id %d -> %d, adds %s, removes %s",
            name,
            op_id,
            previous,
            planned_transaction_id,
            [layer.id for layer in added],
            removed,
        )
        return Operation(
            self,
            op_id,
            name,
            json.loads(args_json),
            previous,
            planned_transaction_id,
            tuple(layer.id for layer in added),
            tuple(removed),
            started,
            [],
        )

    def interrupted(self) -> Operation | None:
        """The open operation that no live code of this Store is carrying out, if any.

        That is one left by a crashed process, by a process that released the lock
        without finishing it, or by a ``with op:`` block left by an exception.  The
        lock is taken (re-entrantly) to ask, so an operation still running in
        another process is waited for, not reported.
        """
        with self.exclusive():
            row = self._conn.execute(
                "SELECT id, name, args, previous_transaction_id, planned_transaction_id, "
                "added, removed, started FROM operation"
            ).fetchone()
            if row is None or row[0] in self._owned:
                return None
            steps = [
                Step(step_name, at)
                for step_name, at in self._conn.execute(
                    "SELECT name, at FROM operation_step ORDER BY seq"
                )
            ]
        op_id, name, args, previous, planned, added, removed, started = row
        return Operation(
            self,
            op_id,
            name,
            json.loads(args),
            previous,
            planned,
            tuple(json.loads(added)),
            tuple(json.loads(removed)),
            started,
            steps,
        )

    # --- helpers (inside a transaction) -------------------------------------------------

    def _find(self, db: sqlite3.Connection, ref: str) -> Layer | None:
        for column in ("id", "name"):
            row = db.execute(
                f"SELECT {_LAYER_COLUMNS} FROM layer WHERE {column} = ?", (ref,)
            ).fetchone()
            if row is not None:
                return _layer_from_row(row)
        return None

    def _require(self, db: sqlite3.Connection, layer_id: str) -> Layer:
        row = db.execute(
            f"SELECT {_LAYER_COLUMNS} FROM layer WHERE id = ?", (layer_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"no layer with id {layer_id!r}")
        return _layer_from_row(row)

    def _holder(self, db: sqlite3.Connection, column: str, value: object) -> str | None:
        row = db.execute(f"SELECT kind, id FROM layer WHERE {column} = ?", (value,)).fetchone()
        return None if row is None else f"{row[0]} {row[1]}"

    def _check_mount_free(self, db: sqlite3.Connection, mount: Path, layer_id: str) -> None:
        row = db.execute(
            "SELECT kind, id FROM layer WHERE mount = ? AND id != ?", (str(mount), layer_id)
        ).fetchone()
        if row is not None:
            raise AlreadyExists(f"mount point {mount} is taken by {row[0]} {row[1]}")

    def _insert(self, db: sqlite3.Connection, layer: Layer) -> None:
        if not isinstance(layer, Layer):
            raise InvalidInput(f"{layer!r} is not a Layer")
        if self._holder(db, "id", layer.id) is not None:
            raise AlreadyExists(f"layer {layer.id} exists already")
        if layer.name is not None and (holder := self._holder(db, "name", layer.name)):
            raise AlreadyExists(f"name {layer.name!r} is taken by {holder}")
        if holder := self._holder(db, "thin_id", layer.thin_id):
            raise AlreadyExists(f"thin id {layer.thin_id} is taken by {holder}")
        if layer.mount is not None:
            self._check_mount_free(db, layer.mount, layer.id)
        if layer.parent is not None:
            row = db.execute(
                "SELECT kind, state FROM layer WHERE id = ?", (layer.parent,)
            ).fetchone()
            if row is None:
                raise NotFound(f"parent {layer.parent} of layer {layer.id} does not exist")
            if row[0] == LayerKind.CONTAINER.value:
                raise InvalidInput(
                    f"parent {layer.parent} of layer {layer.id} is a container; "
                    "commit it to an image first"
                )
            if row[1] == LayerState.REMOVING.value:
                raise Busy(f"parent {layer.parent} of layer {layer.id} is being removed")
        db.execute(
            f"INSERT INTO layer ({_LAYER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                layer.id,
                layer.kind.value,
                layer.parent,
                layer.name,
                layer.thin_id,
                layer.size_bytes,
                float(layer.created),
                None if layer.mount is None else str(layer.mount),
                layer.state.value,
            ),
        )

    def _check_removable(
        self, db: sqlite3.Connection, layer_id: str, doomed: frozenset[str]
    ) -> None:
        layer = self._require(db, layer_id)
        if layer.state is not LayerState.READY:
            raise Busy(f"layer {layer_id} is part of the open operation ({layer.state.value})")
        if layer.mount is not None:
            raise Busy(f"{layer.kind.value} {layer_id} is mounted at {layer.mount}")
        kept = [
            child_id
            for (child_id,) in db.execute("SELECT id FROM layer WHERE parent = ?", (layer_id,))
            if child_id not in doomed
        ]
        if kept:
            raise HasChildren(
                f"{layer.kind.value} {layer_id} has {len(kept)} "
                f"{'child' if len(kept) == 1 else 'children'}: {', '.join(sorted(kept))}"
            )

    def _check_no_operation(self, db: sqlite3.Connection) -> None:
        row = db.execute("SELECT name, id FROM operation").fetchone()
        if row is not None:
            raise Busy(
                f"operation {row[0]} ({row[1]}) is open in {self.root}; "
                "finish or roll it back first"
            )


def _prepare(db: sqlite3.Connection, path: Path) -> None:
    """Set the connection up and bring the schema to SCHEMA_VERSION (lock held)."""
    try:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"{path} has schema version {version}; this version of dmioctl "
                f"reads up to {SCHEMA_VERSION}: upgrade dmioctl"
            )
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")
        while version < SCHEMA_VERSION:
            migrate = MIGRATIONS.get(version)
            if migrate is None:
                raise StoreError(f"{path}: no migration from schema version {version}")
            db.execute("BEGIN IMMEDIATE")
            try:
                migrate(db)
                db.execute(f"PRAGMA user_version = {version + 1}")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            log.debug("%s: schema version %d -> %d", path, version, version + 1)
            version += 1
    except sqlite3.Error as err:
        raise StoreError(f"{path} is not a usable metadata database: {err}") from err


class Operation:
    """An open journal entry: an operation that changes the pool.

    Obtained from :meth:`Store.begin` or :meth:`Store.interrupted`.  Used as a
    context manager, a block left without :meth:`finish` or :meth:`rollback`
    leaves it open and interrupted (its kernel changes are uncertain); see the
    module docstring.
    """

    def __init__(
        self,
        store: Store,
        op_id: str,
        name: str,
        args: dict[str, Any],
        previous_transaction_id: int,
        planned_transaction_id: int,
        added: tuple[str, ...],
        removed: tuple[str, ...],
        started: float,
        steps: list[Step],
    ) -> None:
        self.store = store
        self.id = op_id
        self.name = name
        self._args = args
        self.previous_transaction_id = previous_transaction_id
        self.planned_transaction_id = planned_transaction_id
        self.added = added
        self.removed = removed
        self.started = started
        self._steps = steps
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"<Operation {self.name} {self.id} transaction id "
            f"{self.previous_transaction_id} -> {self.planned_transaction_id}>"
        )

    @property
    def args(self) -> dict[str, Any]:
        """The args given to :meth:`Store.begin`, as stored (a copy)."""
        copy: dict[str, Any] = json.loads(json.dumps(self._args))
        return copy

    @property
    def steps(self) -> tuple[Step, ...]:
        """The steps recorded so far, in order."""
        return tuple(self._steps)

    @property
    def closed(self) -> bool:
        """Whether this operation was finished or rolled back."""
        return self._closed

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._closed:
            self.store._owned.discard(self.id)
            log.debug("operation %s (%s) left open: interrupted", self.name, self.id)

    def step(self, name: str) -> None:
        """Record that step ``name`` is about to happen (for the record: see :meth:`_open`).

        Raises:
            InvalidInput: ``name`` is empty or longer than 128 characters.
            JournalError: the operation is closed.
        """
        if not isinstance(name, str) or not 0 < len(name) <= 128:
            raise InvalidInput(f"operation {self.name}: step name {name!r} is not 1-128 chars")
        step = Step(name, time.time())
        with self._open() as db:
            db.execute("INSERT INTO operation_step (name, at) VALUES (?, ?)", (name, step.at))
        self._steps.append(step)
        log.debug("operation %s (%s) step %s", self.name, self.id, name)

    def outcome(self, actual_transaction_id: int) -> Outcome:
        """Which way to reconcile, given the pool's transaction id read from the kernel.

        Raises:
            TransactionMismatch: it is neither the planned nor the previous id.
        """
        if actual_transaction_id == self.planned_transaction_id:
            return Outcome.APPLIED
        if actual_transaction_id == self.previous_transaction_id:
            return Outcome.NOT_APPLIED
        raise TransactionMismatch(
            f"{self.name} ({self.id})",
            self.previous_transaction_id,
            self.planned_transaction_id,
            actual_transaction_id,
        )

    def finish(self) -> None:
        """Commit the operation's records and close it, in one SQLite transaction.

        Added layers become READY, removed ones are deleted, the pool record
        takes the planned transaction id.

        Raises:
            JournalError: the operation is closed.
        """
        with self._open() as db:
            db.executemany(
                "UPDATE layer SET state = ? WHERE id = ?",
                [(LayerState.READY.value, layer_id) for layer_id in self.added],
            )
            db.executemany("DELETE FROM layer WHERE id = ?", [(i,) for i in self.removed])
            db.execute("UPDATE pool SET transaction_id = ?", (self.planned_transaction_id,))
            self._close(db)
        self._closed_now()
        log.debug(
            "operation %s (%s) finished at transaction id %d",
            self.name,
            self.id,
            self.planned_transaction_id,
        )

    def complete(self) -> None:
        """Finish an interrupted operation whose kernel change happened (same as finish)."""
        self.finish()

    def rollback(self) -> None:
        """Undo the operation's records and close it, in one SQLite transaction.

        Added layers are deleted, removed ones are READY again, the pool record
        keeps the previous transaction id.

        Raises:
            JournalError: the operation is closed.
        """
        with self._open() as db:
            db.executemany("DELETE FROM layer WHERE id = ?", [(i,) for i in self.added])
            db.executemany(
                "UPDATE layer SET state = ? WHERE id = ?",
                [(LayerState.READY.value, layer_id) for layer_id in self.removed],
            )
            self._close(db)
        self._closed_now()
        log.debug("operation %s (%s) rolled back", self.name, self.id)

    @contextlib.contextmanager
    def _open(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on the open operation's records.

        Not durable: only :meth:`Store.begin` must reach the disk before the
        kernel changes.  Should a power loss take back a step, finish or
        rollback, the entry is found open and reconciled by the pool's
        transaction id, which is all recovery reads, and the clean-up it redoes
        is idempotent.
        """
        if self._closed:
            raise JournalError(f"operation {self.name} ({self.id}) is closed")
        with self.store._write(durable=False) as db:
            row = db.execute("SELECT id FROM operation").fetchone()
            if row is None or row[0] != self.id:
                raise JournalError(f"operation {self.name} ({self.id}) is no longer open")
            yield db

    def _close(self, db: sqlite3.Connection) -> None:
        db.execute("DELETE FROM operation_step")
        db.execute("DELETE FROM operation")

    def _closed_now(self) -> None:
        self._closed = True
        self.store._owned.discard(self.id)
