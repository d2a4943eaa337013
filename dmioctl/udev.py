"""The device-mapper udev cookie: wait, with a timeout, until the udev rules have run.

Where udevd runs, the standard device-mapper rules (55-dm.rules, 95-dm-notify.rules
from the dmsetup package) make ``/dev/mapper/<name>`` and the other links.  A
caller learns that they have finished through a *cookie*, the protocol
libdevmapper defined and the rules follow:

1. Before an ioctl after which the kernel sends a uevent -- DM_DEV_SUSPEND when it
   resumes a device, DM_DEV_REMOVE, DM_DEV_RENAME -- make a SysV semaphore whose
   key is ``DM_COOKIE_MAGIC << 16 | base`` (``base`` random, 1 to 0xffff) and give
   it the value 1.
2. Send the cookie in ``dm_ioctl.event_nr``: ``base`` in the low 16 bits and
   :class:`UdevFlag` bits, which steer the rules, in the high 16 bits.  The kernel
   hands it to udev as the uevent variable ``DM_COOKIE`` (dm.c dm_kobject_uevent)
   and answers with DM_UEVENT_GENERATED_FLAG when it sent a uevent at all.
3. The rules decode the flags (``dmsetup udevflags $env{DM_COOKIE}``) and, once
   udevd has made the node and links, run ``dmsetup udevcomplete
   $env{DM_COOKIE}``, which takes 1 from the semaphore whose key is the cookie's
   base with the magic put back.
4. The caller waits for the value 0 (semtimedop, so never longer than a timeout)
   and then removes the semaphore (IPC_RMID) -- always, after a timeout or an
   error as well, so none is left behind.

Without a uevent (no DM_UEVENT_GENERATED_FLAG, e.g. resuming a device that is
not suspended) nobody will complete the cookie, so there is nothing to wait for.

Python's standard library has no SysV semaphores; they are called through libc.

Example::

    with Cookie.create() as cookie:
        reply = issue(fd, DMCommand.DM_DEV_REMOVE_CMD, name="scratch", event_nr=cookie.value)
        if DMFlag.DM_UEVENT_GENERATED_FLAG in reply.flags:
            cookie.wait(timeout=10.0)
"""

from __future__ import annotations

import ctypes
import enum
import errno
import logging
import math
import os
import secrets
import time

from dmioctl.errors import DMError

log = logging.getLogger(__name__)

#: The high 16 bits of the semaphore key of every device-mapper cookie (libdevmapper.h).
DM_COOKIE_MAGIC = 0x0D4D
#: Where the flags start in a cookie.
DM_UDEV_FLAGS_SHIFT = 16
#: The flag half of a cookie; the other half is the semaphore's base.
DM_UDEV_FLAGS_MASK = 0xFFFF0000
#: Where the kernel lists the SysV semaphores.
SYSVIPC_SEM = "/proc/sysvipc/sem"
#: How many random bases to try before giving up when each is taken.
CREATE_ATTEMPTS = 8


class UdevFlag(enum.IntFlag):
    """Bits of a cookie's high half, which the udev rules read (libdevmapper.h)."""

    #: No /dev/mapper link from 55-dm.rules.
    DM_UDEV_DISABLE_DM_RULES_FLAG = 1 << 0
    #: Skip the rules of a subsystem (LVM, multipath, ...).
    DM_UDEV_DISABLE_SUBSYSTEM_RULES_FLAG = 1 << 1
    #: No /dev/disk/by-* links.
    DM_UDEV_DISABLE_DISK_RULES_FLAG = 1 << 2
    #: Skip every rule that is not about device-mapper (e.g. blkid scanning).
    DM_UDEV_DISABLE_OTHER_RULES_FLAG = 1 << 3
    #: Give this device lower priority when several claim one link.
    DM_UDEV_LOW_PRIORITY_FLAG = 1 << 4
    #: The sender will not make nodes itself: the rules own them.
    DM_UDEV_DISABLE_LIBRARY_FALLBACK_FLAG = 1 << 5
    #: The uevent is a genuine one, caused by the sender's ioctl (not "udevadm trigger").
    DM_UDEV_PRIMARY_SOURCE_FLAG = 1 << 6


#: What dmioctl sends: the rules own the nodes, and the event is genuine -- the
#: flags libdevmapper sends for an activation that udev finishes.
DEFAULT_FLAGS = (
    UdevFlag.DM_UDEV_DISABLE_LIBRARY_FALLBACK_FLAG | UdevFlag.DM_UDEV_PRIMARY_SOURCE_FLAG
)


class UdevError(DMError):
    """A udev cookie's semaphore could not be made, waited on or removed."""


class UdevTimeout(UdevError, TimeoutError):
    """udev did not complete a cookie within the timeout.

    The semaphore has been removed all the same.  The usual causes: udevd hangs or
    has stopped, or the device-mapper rules (95-dm-notify.rules) are missing.
    """


# ------------------------------------------------------------------ libc (sys/sem.h)

IPC_CREAT = 0o1000
IPC_EXCL = 0o2000
IPC_NOWAIT = 0o4000
IPC_RMID = 0
GETVAL = 12


class sembuf(ctypes.Structure):
    """``struct sembuf``: one operation of semop(2)."""

    _fields_ = (
        ("sem_num", ctypes.c_ushort),
        ("sem_op", ctypes.c_short),
        ("sem_flg", ctypes.c_short),
    )


class timespec(ctypes.Structure):
    """``struct timespec``: the timeout of semtimedop(2)."""

    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


_libc = ctypes.CDLL(None, use_errno=True)
_semget = _libc.semget
_semget.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int)
_semget.restype = ctypes.c_int
_semop = _libc.semop
_semop.argtypes = (ctypes.c_int, ctypes.POINTER(sembuf), ctypes.c_size_t)
_semop.restype = ctypes.c_int
_semtimedop = _libc.semtimedop
_semtimedop.argtypes = (
    ctypes.c_int,
    ctypes.POINTER(sembuf),
    ctypes.c_size_t,
    ctypes.POINTER(timespec),
)
_semtimedop.restype = ctypes.c_int
# semctl is variadic; the commands used here (IPC_RMID, GETVAL) take no fourth argument.
_semctl = _libc.semctl
_semctl.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int)
_semctl.restype = ctypes.c_int


def _errno() -> int:
    return ctypes.get_errno()


def _describe(err: int) -> str:
    return f"{errno.errorcode.get(err, f'errno {err}')} ({os.strerror(err)})"


# ------------------------------------------------------------------ cookies


def semaphore_key(cookie: int) -> int:
    """The SysV key of the semaphore behind ``cookie`` (flags dropped, magic put back)."""
    return (DM_COOKIE_MAGIC << DM_UDEV_FLAGS_SHIFT) | (cookie & ~DM_UDEV_FLAGS_MASK & 0xFFFF)


def cookie_flags(cookie: int) -> UdevFlag:
    """The :class:`UdevFlag` bits carried in ``cookie``."""
    return UdevFlag((cookie & DM_UDEV_FLAGS_MASK) >> DM_UDEV_FLAGS_SHIFT)


class Cookie:
    """One udev cookie: a SysV semaphore of value 1 that the udev rules take to 0.

    Make one with :meth:`create`; use it as a context manager so that it is always
    removed.  ``value`` is what goes into ``dm_ioctl.event_nr``.
    """

    def __init__(self, key: int, semid: int, flags: UdevFlag) -> None:
        self.key = key
        self.semid = semid
        self.flags = flags

    @property
    def value(self) -> int:
        """The cookie as the kernel and the rules see it: flags above, base below."""
        return (self.flags << DM_UDEV_FLAGS_SHIFT) | (self.key & ~DM_UDEV_FLAGS_MASK)

    @classmethod
    def create(cls, flags: UdevFlag = DEFAULT_FLAGS) -> Cookie:
        """Make a new semaphore of value 1 under a random cookie key.

        A key already in use (EEXIST) is replaced by another random one, up to
        :data:`CREATE_ATTEMPTS` tries, each logged.

        Raises:
            UdevError: no free key was found, or semget/semop failed.
        """
        for attempt in range(1, CREATE_ATTEMPTS + 1):
            base = 1 + secrets.randbelow(0xFFFF)  # base 0 means "flags only" to dmsetup
            key = semaphore_key(base)
            semid = _semget(key, 1, IPC_CREAT | IPC_EXCL | 0o600)
            if semid >= 0:
                break
            err = _errno()
            if err != errno.EEXIST:
                raise UdevError(f"cannot create udev cookie semaphore {key:#x}: {_describe(err)}")
            log.debug("udev cookie %#x taken, attempt %d/%d", key, attempt, CREATE_ATTEMPTS)
        else:
            raise UdevError(f"no free udev cookie after {CREATE_ATTEMPTS} random tries")
        cookie = cls(key, semid, flags)
        # A new semaphore is 0; one event is outstanding once the ioctl is sent.
        op = sembuf(0, 1, IPC_NOWAIT)
        if _semop(semid, ctypes.byref(op), 1) < 0:
            err = _errno()
            cookie.destroy()
            raise UdevError(f"cannot set udev cookie {cookie.value:#x} to 1: {_describe(err)}")
        log.debug("udev cookie %#x created (semaphore %#x, id %d)", cookie.value, key, semid)
        return cookie

    def count(self) -> int:
        """The semaphore's value: how many uevents the rules have yet to complete."""
        value = _semctl(self.semid, 0, GETVAL)
        if value < 0:
            err = _errno()
            raise UdevError(f"cannot read udev cookie {self.value:#x}: {_describe(err)}")
        return int(value)

    def wait(self, timeout: float, what: str = "") -> None:
        """Block until the rules have completed the cookie (value 0), at most ``timeout`` s.

        A signal does not end the wait early: it goes on for the time that is left.
        ``what`` names the operation for messages, e.g. ``DM_DEV_REMOVE on 'vol'``.

        Raises:
            UdevTimeout: the value did not reach 0 in time.
            UdevError: the semaphore vanished or semtimedop failed.
        """
        started = time.monotonic()
        deadline = started + timeout
        op = sembuf(0, 0, 0)
        while True:
            left = max(0.0, deadline - time.monotonic())
            fraction, whole = math.modf(left)
            limit = timespec(int(whole), int(fraction * 1e9))
            if _semtimedop(self.semid, ctypes.byref(op), 1, ctypes.byref(limit)) == 0:
                log.debug(
                    "udev cookie %#x completed after %.3f s",
                    self.value,
                    time.monotonic() - started,
                )
                return
            err = _errno()
            if err == errno.EINTR:
                continue
            if err == errno.EAGAIN:
                after = f" after {what}" if what else ""
                raise UdevTimeout(
                    f"udev did not complete cookie {self.value:#x}{after} within {timeout:g} s; "
                    "is udevd running, with the device-mapper rules (95-dm-notify.rules)?"
                )
            raise UdevError(f"waiting for udev cookie {self.value:#x} failed: {_describe(err)}")

    def complete(self) -> None:
        """Take 1 from the semaphore, as ``dmsetup udevcomplete`` does from the rules."""
        complete(self.value)

    def destroy(self) -> None:
        """Remove the semaphore (IPC_RMID); removing it twice is not an error.

        Raises:
            UdevError: semctl failed for another reason than the semaphore being gone.
        """
        if self.semid < 0:
            return
        semid, self.semid = self.semid, -1
        if _semctl(semid, 0, IPC_RMID) < 0:
            err = _errno()
            if err in (errno.EINVAL, errno.EIDRM):
                log.debug("udev cookie %#x was removed already", self.value)
                return
            raise UdevError(f"cannot remove udev cookie {self.value:#x}: {_describe(err)}")
        log.debug("udev cookie %#x removed", self.value)

    def __enter__(self) -> Cookie:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def __repr__(self) -> str:
        return f"Cookie({self.value:#x}, semid={self.semid})"


def complete(cookie: int) -> None:
    """Take 1 from the semaphore of ``cookie`` -- what the rules do when they are done.

    A cookie whose base is 0 carries flags only and names no semaphore.

    Raises:
        UdevError: no such semaphore, or semop failed.
    """
    if not cookie & ~DM_UDEV_FLAGS_MASK:
        return
    key = semaphore_key(cookie)
    semid = _semget(key, 1, 0)
    if semid < 0:
        err = _errno()
        raise UdevError(f"no semaphore for udev cookie {cookie:#x}: {_describe(err)}")
    op = sembuf(0, -1, IPC_NOWAIT)
    if _semop(semid, ctypes.byref(op), 1) < 0:
        err = _errno()
        raise UdevError(f"cannot complete udev cookie {cookie:#x}: {_describe(err)}")


def cookie_keys() -> list[int]:
    """Keys of every device-mapper cookie semaphore that exists now (from /proc/sysvipc/sem).

    Anyone's, not only this process's: ``dmsetup udevcookies`` lists the same.
    """
    with open(SYSVIPC_SEM) as table:
        next(table, None)  # the header line
        keys = (int(line.split()[0]) for line in table if line.strip())
        return [key for key in keys if key >> DM_UDEV_FLAGS_SHIFT == DM_COOKIE_MAGIC]


__all__ = [
    "DEFAULT_FLAGS",
    "DM_COOKIE_MAGIC",
    "DM_UDEV_FLAGS_MASK",
    "DM_UDEV_FLAGS_SHIFT",
    "Cookie",
    "UdevError",
    "UdevFlag",
    "UdevTimeout",
    "complete",
    "cookie_flags",
    "cookie_keys",
    "semaphore_key",
]
