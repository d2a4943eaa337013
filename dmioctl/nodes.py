"""Device nodes under /dev/mapper.

The kernel names a device ``dm-N`` in sysfs and devtmpfs; ``/dev/mapper/<name>``
is made in user space.  Where udevd runs, the device-mapper udev rules make it
(as a link to ``../dm-N``) and dmioctl waits, with a timeout, until they have,
rather than racing them: after a resume, rename or remove through the udev
cookie (:mod:`dmioctl.udev`), which the rules release once the links are done;
where the kernel sends no cookie (DM_REMOVE_ALL, a resume that changed nothing),
by watching for the path.  Where no udevd runs, dmioctl makes and removes the
node itself, so that it exists exactly when the device does, with its dev_t
(a device whose removal is deferred until its last close has none already).
"""

from __future__ import annotations

import logging
import os
import stat
import time

from dmioctl.errors import DMError

log = logging.getLogger(__name__)

MAPPER_DIR = "/dev/mapper"
#: udevd's control socket; its presence means udevd is running.
UDEV_CONTROL = "/run/udev/control"
#: How long to wait for udev to make or remove a node.
UDEV_TIMEOUT = 10.0


def node_path(name: str) -> str:
    """Where the node of device ``name`` lives."""
    return os.path.join(MAPPER_DIR, name)


def udev_running() -> bool:
    """Whether udevd runs, so that the udev rules own the nodes.

    udevd makes its control socket at start; a udevd that was killed can leave
    it behind, and then calls that wait for udev time out.
    """
    return os.path.exists(UDEV_CONTROL)


def link_target(name: str) -> str | None:
    """Where ``/dev/mapper/<name>`` points when it is a link (``../dm-N``), else None."""
    try:
        return os.readlink(node_path(name))
    except OSError:  # absent (ENOENT) or not a link (EINVAL)
        return None


def created(
    name: str, major: int, minor: int, *, active: bool = False, udev: bool | None = None
) -> None:
    """Make sure ``/dev/mapper/<name>`` is the block device ``major:minor``.

    With udev the rules make the node once the device has an active table, so
    this waits for it only when ``active`` says the device has one.  ``udev``
    says whether udevd runs, when the caller has just looked.
    """
    path = node_path(name)
    if udev_running() if udev is None else udev:
        if active:
            _wait_for(path, present=True)
        return
    wanted = os.makedev(major, minor)
    # A new device has no node yet: try the one call that makes it first.
    try:
        _mknod(path, wanted)
        return
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(MAPPER_DIR, exist_ok=True)
        _mknod(path, wanted)
        return
    st = os.lstat(path)
    if stat.S_ISBLK(st.st_mode) and st.st_rdev == wanted:
        return
    os.unlink(path)
    log.debug("node %s pointed at the wrong device: replaced", path)
    _mknod(path, wanted)


def _mknod(path: str, device: int) -> None:
    os.mknod(path, 0o600 | stat.S_IFBLK, device)
    log.debug("mknod %s %d:%d", path, os.major(device), os.minor(device))


def removed(name: str, *, udev: bool | None = None) -> None:
    """Make sure ``/dev/mapper/<name>`` is gone: unlink it, or wait for udev to.

    ``udev`` says whether udevd runs, when the caller has just looked.
    """
    path = node_path(name)
    if udev_running() if udev is None else udev:
        _wait_for(path, present=False)
        return
    try:
        os.unlink(path)
        log.debug("unlink %s", path)
    except FileNotFoundError:
        pass


def renamed(old: str, new: str, major: int, minor: int, *, udev: bool | None = None) -> None:
    """Move the node of a renamed device from ``old`` to ``new``."""
    if udev_running() if udev is None else udev:
        _wait_for(node_path(old), present=False)
        return
    removed(old, udev=False)
    created(new, major, minor, udev=False)


def _wait_for(path: str, *, present: bool, timeout: float = UDEV_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while os.path.lexists(path) != present:
        if time.monotonic() > deadline:
            state = "appear" if present else "disappear"
            raise DMError(f"udev did not make {path} {state} within {timeout:.0f} s")
        time.sleep(0.01)
