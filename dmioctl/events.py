"""Device-mapper events: wait for one device's next event, or watch several, with timeouts.

The model.  Each device has an event counter (``event_nr`` of DM_DEV_STATUS) that a
target raises when user space should look at it: a thin pool falling to its low
water mark or running out of space, a snapshot filling up, a mirror leg failing
(dm_table_event in the targets).  The same events, and every create, remove and
rename, also raise one global counter; a control file armed with
DM_DEV_ARM_POLL turns readable (POLLIN) once the global counter passes the
value it had when the file was armed (dm-ioctl.c dev_arm_poll and dm_poll).

DM_DEV_WAIT blocks until one device's counter differs from a given number and
takes no timeout: nothing but the event or a signal ends it.  So both functions
here wait with ``poll()`` on a control file of their own (arming is per open
file), armed *before* they read the counters so that no event falls between
reading and waiting, and issue DM_DEV_WAIT only once a counter has moved -- it
then returns at once, with the new counter and the status lines of the same
moment.  A wake-up caused by another device costs one DM_DEV_STATUS per watched
device.

Example: report when a thin pool falls to its low water mark::

    from dmioctl import DeviceMapper
    from dmioctl.events import watch
    from dmioctl.targets.thin_pool import ThinPool, ThinPoolStatus, parse_status

    with DeviceMapper() as dm:
        (line,) = dm.table("pool")
    low_water = ThinPool.from_params(line.params).low_water_mark_blocks

    for event in watch(["pool"]):
        if event.gone:
            print("the pool was removed")
            break
        status = parse_status(event.targets[0].params)
        if not isinstance(status, ThinPoolStatus):
            print(f"the pool has failed: {status.state.value}")
            break
        free = status.total_data_blocks - status.used_data_blocks
        if free <= low_water:
            print(f"pool at its low water mark: {free} data blocks free; grow it")

(The pool raises this event once; it raises it again after a reload, e.g. by
:func:`dmioctl.targets.thin_pool.grow`.)
"""

from __future__ import annotations

import logging
import math
import select
import time
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field

from dmioctl.control import CONTROL_PATH, DeviceMapper, validate_name
from dmioctl.errors import DMError, InvalidArgument, NoSuchDevice
from dmioctl.table import Target

log = logging.getLogger(__name__)


class EventTimeout(DMError, TimeoutError):
    """No event arrived for the device within the timeout."""


@dataclass(frozen=True)
class Event:
    """An event of device ``name``: its counter now, and its status lines then.

    ``gone`` marks the one report that the device no longer exists under this
    name (removed or renamed); then ``event_nr`` is the last counter seen and
    ``targets`` is empty.
    """

    name: str
    event_nr: int
    targets: list[Target] = field(default_factory=list)
    gone: bool = False


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and (math.isnan(timeout) or timeout < 0):
        raise InvalidArgument(f"timeout {timeout} must be a number of seconds, 0 or more")


def _poll(fd: int, deadline: float | None) -> bool:
    """Wait until ``fd`` is readable or ``deadline`` (monotonic) passes; False on timeout."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if deadline is None:
        return bool(poller.poll())
    left = deadline - time.monotonic()
    if left <= 0:
        return bool(poller.poll(0))
    # Round up so that a wake-up before the deadline is never taken for a timeout.
    return bool(poller.poll(math.ceil(left * 1000)))


def wait_for_event(
    dm: DeviceMapper, name: str, event_nr: int, timeout: float | None = None
) -> Event:
    """Wait until device ``name``'s event counter is no longer ``event_nr``.

    Returns at once when it already differs (pass the ``event_nr`` of an earlier
    :meth:`~dmioctl.control.DeviceMapper.info` or :class:`Event` to miss
    nothing).  ``timeout`` is in seconds; None waits for ever.  Waits with
    DM_DEV_ARM_POLL and poll() on a control file of its own, opened at
    ``dm.path`` and closed before returning, then fetches counter and status
    with DM_DEV_WAIT (see the module's docstring).

    Raises:
        EventTimeout: no event within ``timeout``.
        NoSuchDevice: the device does not exist, or was removed while waited for.
        InvalidArgument: a bad name, ``event_nr`` or ``timeout``.
    """
    validate_name(name)
    _check_timeout(timeout)
    if not 0 <= event_nr < 1 << 32:
        raise InvalidArgument(f"event number {event_nr} is not a 32-bit counter")
    deadline = None if timeout is None else time.monotonic() + timeout
    with DeviceMapper(dm.path, manage_nodes=False) as watcher:
        while True:
            watcher.arm_poll()
            if watcher.info(name).event_nr != event_nr:
                info, targets = watcher.wait(name, event_nr=event_nr)
                return Event(info.name, info.event_nr, targets)
            if not _poll(watcher.fd, deadline):
                raise EventTimeout(
                    f"no event on device {name!r} after event {event_nr} within {timeout:g} s"
                )


def watch(
    names: Iterable[str], timeout: float | None = None, *, control: str = CONTROL_PATH
) -> Generator[Event, None, None]:
    """Yield the events of the devices ``names`` as they happen, for as long as any is left.

    The counters seen on the first ``next()`` are the starting point: what
    happened before is not reported.  Several events of one device between two
    looks are reported once, with the latest counter.  A device that disappears
    (removed, or renamed away) is reported once with ``gone`` set and no longer
    watched; when none is left, the iteration ends.  It also ends when
    ``timeout`` seconds pass without an event of a watched device (None: never).

    Uses a control file of its own at ``control``, closed when the generator is
    exhausted or closed (``close()``, or garbage collection).

    Raises:
        NoSuchDevice: on the first ``next()``, when a device does not exist.
        InvalidArgument: a bad name or ``timeout``, at the first ``next()``.
    """
    wanted = list(dict.fromkeys(names))
    for name in wanted:
        validate_name(name)
    _check_timeout(timeout)
    with DeviceMapper(control, manage_nodes=False) as watcher:
        watcher.arm_poll()
        seen = {name: watcher.info(name).event_nr for name in wanted}
        log.debug("watching events of %s", ", ".join(wanted) or "no device")
        deadline = None if timeout is None else time.monotonic() + timeout
        while seen:
            if not _poll(watcher.fd, deadline):
                return
            watcher.arm_poll()
            found = False
            for name, last in list(seen.items()):
                try:
                    if watcher.info(name).event_nr == last:
                        continue
                    info, targets = watcher.wait(name, event_nr=last)
                except NoSuchDevice:
                    del seen[name]
                    yield Event(name, last, gone=True)
                    found = True
                    continue
                seen[name] = info.event_nr
                yield Event(name, info.event_nr, targets)
                found = True
            if found and timeout is not None:
                deadline = time.monotonic() + timeout


__all__ = ["Event", "EventTimeout", "wait_for_event", "watch"]
