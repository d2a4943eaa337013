"""File systems on thin devices: make, mount, grow, and find who holds a device.

ext4 is the default (xfs on request).  Mounts use ``discard``, so a file deleted
in any layer returns its blocks to the pool, and from there to the sparse data
file on the host.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

from layering.errors import InvalidInput, LayeringError

log = logging.getLogger(__name__)

FILESYSTEMS = ("ext4", "xfs")

#: ext4 with its tables written now, not by a background thread after mount: a
#: lazily initialised table would allocate blocks in every snapshot later.
_MKFS = {
    "ext4": ["mkfs.ext4", "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0"],
    "xfs": ["mkfs.xfs", "-q"],
}
_GROW = {"ext4": ["resize2fs"], "xfs": ["xfs_growfs"]}

#: Superblock magic numbers: ext2/3/4 at byte 1080 (s_magic, little-endian
#: 0xEF53), xfs at byte 0 (sb_magicnum "XFSB").
_EXT4_MAGIC_AT = 1080
_EXT4_MAGIC = b"\x53\xef"
_XFS_MAGIC = b"XFSB"

_MS_RDONLY = 1  # linux/mount.h
_libc = ctypes.CDLL(None, use_errno=True)


class FsError(LayeringError):
    """A file-system tool failed; the message carries its own words."""


def check_fstype(fstype: str) -> None:
    if fstype not in FILESYSTEMS:
        raise InvalidInput(f"file system {fstype!r} is not one of {', '.join(FILESYSTEMS)}")


def _run(argv: list[str]) -> None:
    log.debug("run %s", " ".join(argv))
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise FsError(f"{argv[0]} failed: {detail[-1] if detail else result.returncode}")


def mkfs(device: str, fstype: str = "ext4") -> None:
    """Make an empty file system on ``device``."""
    check_fstype(fstype)
    _run([*_MKFS[fstype], device])


def mount(device: str, target: Path, *, read_only: bool = False) -> None:
    """Mount ``device`` on ``target`` with discard (read-only when asked), by mount(2).

    The system call, not the mount program: a process start costs more than the
    mount itself, on the path of every container create.
    """
    target.mkdir(parents=True, exist_ok=True)
    fstype = detect(device)
    flags = _MS_RDONLY if read_only else 0
    options = b"" if read_only else b"discard"
    log.debug("mount %s on %s (%s, %s)", device, target, fstype, options.decode() or "ro")
    if _libc.mount(
        device.encode(), str(target).encode(), fstype.encode(), ctypes.c_ulong(flags), options
    ):
        _raise_errno(f"mount {device} on {target}")


def umount(target: Path) -> None:
    """Unmount ``target`` by umount2(2).

    Raises:
        FsError: e.g. EBUSY while a file on it is open.
    """
    log.debug("umount %s", target)
    if _libc.umount2(str(target).encode(), 0):
        _raise_errno(f"umount {target}")


def _raise_errno(what: str) -> None:
    err = ctypes.get_errno()
    raise FsError(f"{what} failed: {errno.errorcode.get(err, err)} ({os.strerror(err)})")


def grow(device: str, mountpoint: Path, fstype: str) -> None:
    """Grow the file system to fill its (already grown) device; ext4 online or offline."""
    check_fstype(fstype)
    _run([*_GROW[fstype], str(mountpoint) if fstype == "xfs" else device])


def detect(device: str) -> str:
    """The file-system type on ``device``, from its superblock's magic number."""
    with open(device, "rb") as f:
        head = f.read(_EXT4_MAGIC_AT + 2)
    if head[:4] == _XFS_MAGIC:
        return "xfs"
    if head[_EXT4_MAGIC_AT : _EXT4_MAGIC_AT + 2] == _EXT4_MAGIC:
        return "ext4"
    raise FsError(f"no ext4 or xfs file system found on {device}")


def mounts_of(major: int, minor: int) -> list[str]:
    """Mount points of block device ``major:minor``, from /proc/self/mountinfo.

    The kernel prints them with symbolic links resolved and with blank, tab,
    newline and backslash as octal escapes (fs/proc_namespace.c show_mountinfo),
    which are decoded here.
    """
    wanted = f"{major}:{minor}".encode()
    points = []
    with open("/proc/self/mountinfo", "rb") as info:
        for line in info:
            fields = line.split()
            if fields[2] == wanted:
                points.append(os.fsdecode(_OCTAL_ESCAPE.sub(_unescape, fields[4])))
    return points


def holders(devices: Iterable[int]) -> dict[int, list[str]]:
    """Processes using files of the block devices ``devices`` (dev_t): ``pid N (comm)``.

    One pass over /proc: open files, working and root directories, and mapped
    files (the device field of /proc/<pid>/maps).  Processes that end or cannot
    be read meanwhile are passed over.  Devices no process uses are left out.
    """
    wanted = set(devices)
    found: dict[int, list[str]] = {}
    for entry in sorted(os.scandir("/proc"), key=lambda e: int(e.name) if e.name.isdigit() else 0):
        if not entry.name.isdigit():
            continue
        try:
            used = _devices_used(entry.path) & wanted
            if used:
                comm = Path(entry.path, "comm").read_text().strip()
                for device in used:
                    found.setdefault(device, []).append(f"pid {entry.name} ({comm})")
        except OSError:
            continue
    return found


def _devices_used(proc: str) -> set[int]:
    paths = [f"{proc}/cwd", f"{proc}/root", *(fd.path for fd in os.scandir(f"{proc}/fd"))]
    used = set()
    for path in paths:
        with contextlib.suppress(OSError):
            used.add(os.stat(path).st_dev)
    with open(f"{proc}/maps", "rb") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) > 4 and fields[4] != b"0":  # an inode: a file, not anonymous
                major, _, minor = fields[3].partition(b":")
                used.add(os.makedev(int(major, 16), int(minor, 16)))
    return used


_OCTAL_ESCAPE = re.compile(rb"\\([0-7]{3})")


def _unescape(match: re.Match[bytes]) -> bytes:
    return bytes([int(match.group(1), 8)])
