"""Loop devices through their ioctls: bind a file to ``/dev/loopN``, query it, unbind it.

The model, as in ``drivers/block/loop.c``:

* ``/dev/loop-control`` hands out numbers.  ``LOOP_CTL_GET_FREE`` answers the number
  of an unbound device, creating a new device when every existing one is bound.
  Nothing reserves that number: another process may bind it first, and binding then
  fails with EBUSY.  :func:`attach` asks for a fresh number a bounded number of
  times, logging each attempt.  ``LOOP_CTL_ADD`` and ``LOOP_CTL_REMOVE`` create and
  delete unbound devices by number (:func:`add`, :func:`remove`).
* ``LOOP_CONFIGURE`` (Linux 5.8) binds an open backing file -- a regular file or a
  block device -- with its offset, size limit, flags and logical block size in one
  step.  Older kernels get ``LOOP_SET_FD`` and then ``LOOP_SET_STATUS64``,
  ``LOOP_SET_BLOCK_SIZE`` and ``LOOP_SET_DIRECT_IO`` as needed.  The device keeps
  its own reference to the backing file; the descriptor used to bind it is closed.
* ``LOOP_CLR_FD`` unbinds.  While the device is open elsewhere (a mount, a
  device-mapper table, udev's blkid) the kernel only marks it ``LO_FLAGS_AUTOCLEAR``
  and unbinds it at the last close (loop_clr_fd).  Binding with that flag gives the
  same end without any ``LOOP_CLR_FD``: :func:`attached` holds the device open while
  its caller hands it to the next user, and the device goes away when the last user
  closes it.

Every ioctl of this module goes through :func:`_ioctl`, which logs one DEBUG line
per call and turns a failure into an :class:`~dmioctl.errors.IoctlError` naming the
command and the device.  Offsets, size limits and block sizes are in bytes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import random
import stat
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

from dmioctl.errors import (
    DeviceBusy,
    DeviceExists,
    DMError,
    InvalidArgument,
    IoctlError,
    NoSuchDevice,
)
from dmioctl.uapi.loop import (
    LO_FLAGS_AUTOCLEAR,
    LO_FLAGS_DIRECT_IO,
    LO_FLAGS_PARTSCAN,
    LO_FLAGS_READ_ONLY,
    LO_NAME_SIZE,
    LOOP_CLR_FD,
    LOOP_CONFIGURE,
    LOOP_CTL_ADD,
    LOOP_CTL_GET_FREE,
    LOOP_CTL_REMOVE,
    LOOP_GET_STATUS64,
    LOOP_SET_BLOCK_SIZE,
    LOOP_SET_CAPACITY,
    LOOP_SET_DIRECT_IO,
    LOOP_SET_FD,
    LOOP_SET_STATUS64,
    LOOP_SET_STATUS_SETTABLE_FLAGS,
    LoopFlag,
    LoopIoctl,
    loop_config,
    loop_info64,
)

log = logging.getLogger(__name__)

LOOP_CONTROL = "/dev/loop-control"
SECTOR_SIZE = 512
#: Logical block sizes accepted by :func:`attach`; 0 keeps the kernel's default
#: (512, or the backing device's block size for a file opened with O_DIRECT).
BLOCK_SIZES = (0, 512, 1024, 2048, 4096)
#: How many free devices :func:`attach` tries before giving up when another
#: process binds each one first.  LOOP_CTL_GET_FREE hands every contender the
#: same lowest free number and one of them wins each round, so eight processes
#: attaching at once lost five rounds in a row now and then.
ATTACH_ATTEMPTS = 64
#: Pause after a lost race, seconds: attempt x this, at most _RETRY_PAUSE_MAX,
#: times a random factor in [0.5, 1.5) so that the losers do not meet again.
_RETRY_PAUSE = 0.005
_RETRY_PAUSE_MAX = 0.1
#: lo_offset and lo_sizelimit above this fail with EOVERFLOW (loop_set_status_from_info).
_MAX_BYTES = 2**63 - 1
_SYS_BLOCK = Path("/sys/block")

_ERRNO_CLASSES: dict[int, type[IoctlError]] = {
    errno.ENXIO: NoSuchDevice,
    errno.EEXIST: DeviceExists,
    errno.EBUSY: DeviceBusy,
}


@dataclass(frozen=True)
class LoopDevice:
    """A loop block device: its node ``/dev/loopN``, N, and the node's dev_t.

    Usable wherever a path is: ``open(device, "rb")`` opens the node.
    """

    path: str
    number: int
    dev: int

    @property
    def major(self) -> int:
        """Major number of :attr:`dev` (7, LOOP_MAJOR, in current kernels)."""
        return os.major(self.dev)

    @property
    def minor(self) -> int:
        """Minor number of :attr:`dev`."""
        return os.minor(self.dev)

    def __fspath__(self) -> str:
        return self.path


#: A loop device given by its :class:`LoopDevice` or the path of its node.
LoopRef: TypeAlias = LoopDevice | str | os.PathLike[str]


@dataclass(frozen=True)
class LoopInfo:
    """What ``LOOP_GET_STATUS64`` reports on a bound device.

    Attributes:
        path: the device node that was asked.
        number: N of ``/dev/loopN`` (lo_number).
        file_name: the backing file's name recorded at bind time (lo_file_name):
            the resolved path, cut to 63 bytes by the kernel.
        backing_dev: st_dev of the backing file (lo_device).
        backing_inode: st_ino of the backing file (lo_inode).
        offset: where the device starts in the backing file, bytes (lo_offset).
        sizelimit: the device's size limit in bytes, 0 for up to the end of the
            backing file (lo_sizelimit).
        flags: lo_flags.
    """

    path: str
    number: int
    file_name: str
    backing_dev: int
    backing_inode: int
    offset: int
    sizelimit: int
    flags: LoopFlag


class _Detail:
    """The ``key=value`` tail of a log line, formatted only if the line is emitted."""

    __slots__ = ("_fields",)

    def __init__(self, fields: Mapping[str, object] | None) -> None:
        self._fields = fields or {}

    def __str__(self) -> str:
        return "".join(
            f" {key}={value.words() if isinstance(value, LoopFlag) else value}"
            for key, value in self._fields.items()
        )


def _ioctl(
    fd: int,
    command: LoopIoctl,
    device: str,
    arg: int | bytes | bytearray = 0,
    detail: Mapping[str, object] | None = None,
) -> int:
    """Issue one loop ioctl on ``fd``, the open node ``device``; return its result.

    A :class:`bytearray` argument is passed for the kernel to fill in.

    Raises:
        NoSuchDevice: ENXIO, the device is not bound.
        DeviceBusy: EBUSY.
        DeviceExists: EEXIST.
        IoctlError: any other errno.
    """
    log.debug("%s %s%s", command.name, device, _Detail(detail))
    try:
        if isinstance(arg, bytearray):
            return int(fcntl.ioctl(fd, command, arg, True))
        if isinstance(arg, bytes):
            fcntl.ioctl(fd, command, arg)
            return 0
        return fcntl.ioctl(fd, command, arg)
    except OSError as exc:
        err = exc.errno if exc.errno is not None else errno.EIO
        raise _ERRNO_CLASSES.get(err, IoctlError)(command.name, device, err) from exc


@contextlib.contextmanager
def _opened(path: str, flags: int = os.O_RDONLY) -> Iterator[int]:
    """Open a device node for ioctls and close it afterwards."""
    fd = os.open(path, flags | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def _device_path(device: LoopRef) -> str:
    """The node of ``device``, checked to be a block device."""
    path = os.fspath(device)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise InvalidArgument(f"loop device {path!r} does not exist") from None
    if not stat.S_ISBLK(mode):
        raise InvalidArgument(f"loop device {path!r} is not a block device")
    return path


def _check_backing(path: str | os.PathLike[str]) -> tuple[str, os.stat_result]:
    """The resolved path and stat of a backing file, checked to be usable."""
    name = os.fspath(path)
    try:
        st = os.stat(name)
    except FileNotFoundError:
        raise InvalidArgument(f"backing file {name!r} does not exist") from None
    except OSError as exc:
        raise InvalidArgument(f"backing file {name!r} cannot be examined: {exc.strerror}") from exc
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise InvalidArgument(f"backing file {name!r} is not a regular file or a block device")
    return os.path.realpath(name), st


def _check_geometry(offset: int, sizelimit: int, block_size: int) -> None:
    """Reject an offset, size limit or block size the kernel would refuse or round."""
    for label, value in (("offset", offset), ("sizelimit", sizelimit)):
        if not 0 <= value <= _MAX_BYTES or value % SECTOR_SIZE:
            raise InvalidArgument(
                f"{label} must be a non-negative multiple of {SECTOR_SIZE} bytes "
                f"below 2**63, not {value}"
            )
    if block_size not in BLOCK_SIZES:
        choices = ", ".join(str(size) for size in BLOCK_SIZES)
        raise InvalidArgument(f"block_size must be one of {choices}, not {block_size}")


def _encode_name(path: str) -> bytes:
    """lo_file_name: the path cut to leave room for the NUL, then NUL-padded."""
    return os.fsencode(path)[: LO_NAME_SIZE - 1].ljust(LO_NAME_SIZE, b"\0")


def _decode_name(raw: bytes) -> str:
    return os.fsdecode(raw.split(b"\0", 1)[0])


def _node(number: int) -> LoopDevice:
    """The node of loop device ``number``, made with mknod if devtmpfs has not."""
    path = f"/dev/loop{number}"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        dev = _sysfs_dev(number)
        log.debug("mknod %s b %d:%d", path, os.major(dev), os.minor(dev))
        with contextlib.suppress(FileExistsError):  # devtmpfs made it meanwhile
            os.mknod(path, 0o600 | stat.S_IFBLK, dev)
        st = os.stat(path)
    if not stat.S_ISBLK(st.st_mode):
        raise DMError(f"{path} exists but is not a block device")
    return LoopDevice(path=path, number=number, dev=st.st_rdev)


def _sysfs_dev(number: int) -> int:
    """dev_t of loop device ``number`` from sysfs; its minor depends on max_part."""
    entry = _SYS_BLOCK / f"loop{number}" / "dev"
    try:
        major, minor = entry.read_text().split(":")
        return os.makedev(int(major), int(minor))
    except (OSError, ValueError) as exc:
        raise DMError(f"cannot read the device number of loop{number} from {entry}") from exc


def _configure(
    loop_fd: int,
    device: LoopDevice,
    backing_fd: int,
    file_name: str,
    flags: LoopFlag,
    offset: int,
    sizelimit: int,
    block_size: int,
) -> None:
    """LOOP_CONFIGURE, or its older equivalent on kernels that lack it."""
    config = loop_config.build(
        {
            "fd": backing_fd,
            "block_size": block_size,
            "info": {
                "lo_offset": offset,
                "lo_sizelimit": sizelimit,
                "lo_flags": int(flags),
                "lo_file_name": _encode_name(file_name),
            },
        }
    )
    detail = {
        "fd": backing_fd,
        "flags": flags,
        "offset": offset,
        "sizelimit": sizelimit,
        "block_size": block_size,
    }
    try:
        _ioctl(loop_fd, LOOP_CONFIGURE, device.path, config, detail)
    except IoctlError as exc:
        # Before 5.8 loop answers an unknown command with EINVAL (lo_simple_ioctl);
        # other drivers say ENOTTY.  A real EINVAL recurs below and is raised there.
        if exc.errno not in (errno.EINVAL, errno.ENOTTY):
            raise
        log.debug("%s: LOOP_CONFIGURE refused, binding in steps", device.path)
        _configure_in_steps(loop_fd, device, backing_fd, file_name, flags, offset, sizelimit)
        _finish_in_steps(loop_fd, device, flags, block_size)


def _configure_in_steps(
    loop_fd: int,
    device: LoopDevice,
    backing_fd: int,
    file_name: str,
    flags: LoopFlag,
    offset: int,
    sizelimit: int,
) -> None:
    """LOOP_SET_FD then LOOP_SET_STATUS64.  Read-only follows the descriptors' modes."""
    _ioctl(loop_fd, LOOP_SET_FD, device.path, backing_fd, {"fd": backing_fd})
    status_flags = flags & LOOP_SET_STATUS_SETTABLE_FLAGS
    status = loop_info64.build(
        {
            "lo_offset": offset,
            "lo_sizelimit": sizelimit,
            "lo_flags": int(status_flags),
            "lo_file_name": _encode_name(file_name),
        }
    )
    detail = {"flags": status_flags, "offset": offset, "sizelimit": sizelimit}
    with _undo_bind_on_error(loop_fd, device):
        _ioctl(loop_fd, LOOP_SET_STATUS64, device.path, status, detail)


def _finish_in_steps(loop_fd: int, device: LoopDevice, flags: LoopFlag, block_size: int) -> None:
    """LOOP_SET_BLOCK_SIZE and LOOP_SET_DIRECT_IO after a bind in steps, as asked."""
    with _undo_bind_on_error(loop_fd, device):
        if block_size:
            _ioctl(loop_fd, LOOP_SET_BLOCK_SIZE, device.path, block_size, {"size": block_size})
        if flags & LO_FLAGS_DIRECT_IO:
            _ioctl(loop_fd, LOOP_SET_DIRECT_IO, device.path, 1, {"on": 1})


@contextlib.contextmanager
def _undo_bind_on_error(loop_fd: int, device: LoopDevice) -> Iterator[None]:
    """Unbind ``device`` if the block fails, so a half-configured bind does not linger."""
    try:
        yield
    except IoctlError:
        try:
            _ioctl(loop_fd, LOOP_CLR_FD, device.path)
        except IoctlError as undo:
            log.warning("%s left bound after a failed configuration: %s", device.path, undo)
        raise


def _bind(
    path: str | os.PathLike[str],
    flags: LoopFlag,
    offset: int,
    sizelimit: int,
    block_size: int,
) -> tuple[LoopDevice, int]:
    """Bind ``path`` to a free device; return it and an open descriptor on it."""
    file_name, _ = _check_backing(path)
    _check_geometry(offset, sizelimit, block_size)
    mode = os.O_RDONLY if flags & LO_FLAGS_READ_ONLY else os.O_RDWR

    try:
        backing_fd = os.open(file_name, mode | os.O_CLOEXEC)
    except OSError as exc:
        how = "read-only" if mode == os.O_RDONLY else "read-write"
        raise InvalidArgument(
            f"backing file {file_name!r} cannot be opened {how}: {exc.strerror}"
        ) from exc

    try:
        with _opened(LOOP_CONTROL, os.O_RDWR) as control_fd:
            return _bind_free_device(
                control_fd, backing_fd, file_name, mode, flags, offset, sizelimit, block_size
            )
    finally:
        os.close(backing_fd)


def _bind_free_device(
    control_fd: int,
    backing_fd: int,
    file_name: str,
    mode: int,
    flags: LoopFlag,
    offset: int,
    sizelimit: int,
    block_size: int,
) -> tuple[LoopDevice, int]:
    """Ask for free devices until one binds, :data:`ATTACH_ATTEMPTS` times at most."""
    attempt = 1
    while True:
        number = _ioctl(control_fd, LOOP_CTL_GET_FREE, LOOP_CONTROL)
        device = _node(number)
        loop_fd = os.open(device.path, mode | os.O_CLOEXEC)
        try:
            _configure(
                loop_fd, device, backing_fd, file_name, flags, offset, sizelimit, block_size
            )
        except DeviceBusy as exc:
            os.close(loop_fd)
            log.debug(
                "%s was bound by another process first, attempt %d/%d",
                device.path,
                attempt,
                ATTACH_ATTEMPTS,
            )
            if attempt == ATTACH_ATTEMPTS:
                hint = f"another process bound each free device first, {attempt} attempts"
                raise DeviceBusy(exc.command, exc.device, errno.EBUSY, hint) from exc
            pause = min(_RETRY_PAUSE * attempt, _RETRY_PAUSE_MAX)
            time.sleep(pause * (0.5 + random.random()))
            attempt += 1
        except BaseException:
            os.close(loop_fd)
            raise
        else:
            return device, loop_fd


def _flags(*, read_only: bool, partscan: bool, direct_io: bool) -> LoopFlag:
    flags = LoopFlag(0)
    if read_only:
        flags |= LO_FLAGS_READ_ONLY
    if partscan:
        flags |= LO_FLAGS_PARTSCAN
    if direct_io:
        flags |= LO_FLAGS_DIRECT_IO
    return flags


def attach(
    path: str | os.PathLike[str],
    *,
    read_only: bool = False,
    partscan: bool = False,
    direct_io: bool = False,
    offset: int = 0,
    sizelimit: int = 0,
    block_size: int = 0,
) -> LoopDevice:
    """LOOP_CONFIGURE: bind ``path`` to a free loop device, which stays bound until detached.

    Args:
        path: a regular file or a block device.
        read_only: LO_FLAGS_READ_ONLY; the file is opened read-only too.
        partscan: LO_FLAGS_PARTSCAN, the kernel reads a partition table on the device.
        direct_io: LO_FLAGS_DIRECT_IO, the device reads and writes the file with
            O_DIRECT.  A kernel may refuse it for a filesystem without O_DIRECT, or
            bind without it: :func:`info` tells.
        offset: where the device starts in the file, bytes, a multiple of 512.
        sizelimit: the device's largest size, bytes, a multiple of 512; 0 for up to
            the end of the file.
        block_size: logical block size, one of :data:`BLOCK_SIZES`.

    The device is taken from ``/dev/loop-control`` (LOOP_CTL_GET_FREE); if another
    process binds it first, another one is asked for, :data:`ATTACH_ATTEMPTS` times
    at most.  Kernels before 5.8 get LOOP_SET_FD and LOOP_SET_STATUS64 instead.
    For a device that goes away with its last user, use :func:`attached`.

    Raises:
        InvalidArgument: the file is missing, of the wrong type or cannot be opened,
            or an offset, size limit or block size is not acceptable; nothing has
            been sent to the kernel then.
        DeviceBusy: every free device was bound by another process first.
        IoctlError: the kernel refused the binding (EINVAL for a loop cycle, ...).
        OSError: ``/dev/loop-control`` or the device node cannot be opened.

    Example::

        device = attach("/var/lib/pool/data.img", direct_io=True)
        ...
        detach(device)
    """
    flags = _flags(read_only=read_only, partscan=partscan, direct_io=direct_io)
    device, loop_fd = _bind(path, flags, offset, sizelimit, block_size)
    os.close(loop_fd)
    return device


@contextlib.contextmanager
def attached(
    path: str | os.PathLike[str],
    *,
    read_only: bool = False,
    partscan: bool = False,
    direct_io: bool = False,
    offset: int = 0,
    sizelimit: int = 0,
    block_size: int = 0,
) -> Iterator[LoopDevice]:
    """LOOP_CONFIGURE with LO_FLAGS_AUTOCLEAR: a device bound while anything holds it open.

    The device is held open for the duration of the block.  On leaving it, the
    kernel unbinds the device at once, or at the last close of whatever else
    opened it inside the block: a mounted filesystem, a device-mapper table.
    Arguments and errors are those of :func:`attach`.

    Example::

        with attached(data_file) as data, attached(meta_file) as meta:
            dm.create("pool", ...)  # the thin-pool table now holds both devices
        # both stay bound until the pool is removed
    """
    flags = _flags(read_only=read_only, partscan=partscan, direct_io=direct_io)
    device, loop_fd = _bind(path, flags | LO_FLAGS_AUTOCLEAR, offset, sizelimit, block_size)
    try:
        yield device
    finally:
        os.close(loop_fd)


def detach(device: LoopRef) -> None:
    """LOOP_CLR_FD: unbind ``device`` from its backing file.

    If the device is open elsewhere, the kernel marks it LO_FLAGS_AUTOCLEAR and
    unbinds it at the last close instead; this call returns at once either way.

    Raises:
        InvalidArgument: ``device`` is not a block device node.
        NoSuchDevice: the device is not bound (ENXIO).
        IoctlError: any other failure.
    """
    path = _device_path(device)
    with _opened(path) as fd:
        _ioctl(fd, LOOP_CLR_FD, path)


def refresh_capacity(device: LoopRef) -> None:
    """LOOP_SET_CAPACITY: resize ``device`` to its backing file, after the file grew.

    Raises:
        InvalidArgument: ``device`` is not a block device node.
        NoSuchDevice: the device is not bound (ENXIO).
        IoctlError: any other failure (EPERM without CAP_SYS_ADMIN).
    """
    path = _device_path(device)
    with _opened(path) as fd:
        _ioctl(fd, LOOP_SET_CAPACITY, path)


def set_direct_io(device: LoopRef, on: bool) -> None:
    """LOOP_SET_DIRECT_IO: switch O_DIRECT access to the backing file on or off.

    Raises:
        InvalidArgument: ``device`` is not a block device node.
        NoSuchDevice: the device is not bound (ENXIO).
        IoctlError: EINVAL when the backing file's filesystem or alignment does
            not allow direct I/O; any other failure.
    """
    path = _device_path(device)
    with _opened(path) as fd:
        _ioctl(fd, LOOP_SET_DIRECT_IO, path, int(on), {"on": int(on)})


def set_block_size(device: LoopRef, block_size: int) -> None:
    """LOOP_SET_BLOCK_SIZE: change the logical block size of a bound device.

    ``block_size`` is one of :data:`BLOCK_SIZES` other than 0.

    Raises:
        InvalidArgument: the size is not acceptable, or ``device`` is not a block
            device node.
        NoSuchDevice: the device is not bound (ENXIO).
        IoctlError: any other failure.
    """
    if block_size not in BLOCK_SIZES or not block_size:
        choices = ", ".join(str(size) for size in BLOCK_SIZES if size)
        raise InvalidArgument(f"block_size must be one of {choices}, not {block_size}")
    path = _device_path(device)
    with _opened(path) as fd:
        _ioctl(fd, LOOP_SET_BLOCK_SIZE, path, block_size, {"size": block_size})


def info(device: LoopRef) -> LoopInfo:
    """LOOP_GET_STATUS64: what ``device`` is bound to, and how.

    Raises:
        InvalidArgument: ``device`` is not a block device node.
        NoSuchDevice: the device is not bound (ENXIO).
        IoctlError: any other failure (ENOTTY: not a loop device).
    """
    path = _device_path(device)
    buffer = bytearray(loop_info64.sizeof())
    with _opened(path) as fd:
        _ioctl(fd, LOOP_GET_STATUS64, path, buffer)
    status = loop_info64.parse(bytes(buffer))
    return LoopInfo(
        path=path,
        number=status.lo_number,
        file_name=_decode_name(status.lo_file_name),
        backing_dev=status.lo_device,
        backing_inode=status.lo_inode,
        offset=status.lo_offset,
        sizelimit=status.lo_sizelimit,
        flags=LoopFlag(status.lo_flags),
    )


def add(number: int | None = None) -> LoopDevice:
    """LOOP_CTL_ADD: create unbound loop device ``number``, or the lowest unused number.

    :func:`attach` needs no prior ``add``: LOOP_CTL_GET_FREE creates a device
    when none is free.  This is for holding a particular number.

    Raises:
        InvalidArgument: ``number`` is negative.
        DeviceExists: a loop device with that number exists (EEXIST).
        IoctlError: any other failure (EINVAL: the number is beyond the minors).
        OSError: ``/dev/loop-control`` cannot be opened.
    """
    if number is not None and number < 0:
        raise InvalidArgument(f"loop device number must not be negative, not {number}")
    with _opened(LOOP_CONTROL, os.O_RDWR) as control_fd:
        # The kernel takes a negative number as "any" (loop_add).
        wanted = -1 if number is None else number
        about = LOOP_CONTROL if number is None else f"/dev/loop{number}"
        added = _ioctl(control_fd, LOOP_CTL_ADD, about, wanted)
    return _node(added)


def remove(device: LoopDevice | int) -> None:
    """LOOP_CTL_REMOVE: delete an unbound, unopened loop device.

    Raises:
        DeviceBusy: the device is bound or open (EBUSY).
        IoctlError: any other failure (ENODEV: there is no such device).
        OSError: ``/dev/loop-control`` cannot be opened.
    """
    number = device.number if isinstance(device, LoopDevice) else device
    with _opened(LOOP_CONTROL, os.O_RDWR) as control_fd:
        _ioctl(control_fd, LOOP_CTL_REMOVE, f"/dev/loop{number}", number)


def list_attached() -> list[LoopInfo]:
    """LOOP_GET_STATUS64 on every bound loop device, in device-number order.

    Candidates come from ``/sys/block/loopN``; the kernel adds its ``loop``
    directory when a device is bound (loop_sysfs_init).  A device unbound between
    listing and asking is left out.

    Raises:
        IoctlError: a device failed to answer for another reason than ENXIO.
    """
    numbers = sorted(
        int(entry.name.removeprefix("loop"))
        for entry in _SYS_BLOCK.glob("loop*")
        if entry.name.removeprefix("loop").isdigit() and (entry / "loop").is_dir()
    )
    found = []
    for number in numbers:
        with contextlib.suppress(NoSuchDevice):
            found.append(info(_node(number)))
    return found


def find(backing_path: str | os.PathLike[str]) -> list[LoopInfo]:
    """LOOP_GET_STATUS64 on every bound device; those whose backing file is ``backing_path``.

    The file is matched by its device and inode numbers (lo_device, lo_inode), not by
    name, so a renamed file or a path longer than lo_file_name is still found.  The
    kernel encodes lo_device with huge_encode_dev, which agrees with the C
    library's dev_t for every major number below 4096.

    Raises:
        InvalidArgument: ``backing_path`` does not exist.
        IoctlError: a device failed to answer for another reason than ENXIO.
    """
    name = os.fspath(backing_path)
    try:
        st = os.stat(name)
    except FileNotFoundError:
        raise InvalidArgument(f"backing file {name!r} does not exist") from None
    return [
        loop
        for loop in list_attached()
        if loop.backing_dev == st.st_dev and loop.backing_inode == st.st_ino
    ]
