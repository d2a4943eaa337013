"""File systems on thin devices: make, mount, grow, and find who holds a device.

ext4 is the default (xfs on request).  Mounts use ``discard``, so a file deleted
in any layer returns its blocks to the pool, and from there to the sparse data
file on the host.
"""

from __future__ import annotations

import logging
import os
import subprocess
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
    """Mount ``device`` on ``target`` with discard (and ro when asked)."""
    target.mkdir(parents=True, exist_ok=True)
    options = "ro" if read_only else "discard"
    _run(["mount", "-o", options, device, str(target)])


def umount(target: Path) -> None:
    _run(["umount", str(target)])


def grow(device: str, mountpoint: Path, fstype: str) -> None:
    """Grow the file system to fill its (already grown) device; ext4 online or offline."""
    check_fstype(fstype)
    _run([*_GROW[fstype], str(mountpoint) if fstype == "xfs" else device])


def detect(device: str) -> str:
    """The file-system type on ``device``, as blkid reports it."""
    result = subprocess.run(
        ["blkid", "-o", "value", "-s", "TYPE", device], capture_output=True, text=True
    )
    fstype = result.stdout.strip()
    if result.returncode or not fstype:
        raise FsError(f"no file system found on {device}")
    return fstype


def mounts_of(device: str) -> list[str]:
    """Mount points of ``device``, from /proc/self/mountinfo (by major:minor)."""
    rdev = os.stat(device).st_rdev
    wanted = f"{os.major(rdev)}:{os.minor(rdev)}"
    points = []
    with open("/proc/self/mountinfo") as info:
        for line in info:
            fields = line.split()
            if fields[2] == wanted:
                points.append(fields[4])
    return points
