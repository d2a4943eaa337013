"""DeviceMapper: one method per device-mapper ioctl.

A device has two table slots.  ``create`` makes a device with neither filled,
``load_table`` fills the inactive slot, and ``resume`` swaps the inactive table
into the active slot and lets I/O through; ``suspend`` holds I/O back again.
Devices are named by name or, where a method takes ``uuid=``, by uuid; the
kernel looks a uuid up in preference to a name.

Every method validates its arguments and raises
:class:`~dmioctl.errors.InvalidArgument` before any ioctl is issued.

Example::

    with DeviceMapper() as dm:
        dm.create("scratch")
        dm.load_table("scratch", [Target(0, 2048, "zero")])
        dm.resume("scratch")
        print(dm.status("scratch"))
        dm.remove("scratch")
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import select
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from dmioctl import nodes, udev
from dmioctl.errors import DeviceBusy, DMError, InvalidArgument
from dmioctl.ioctl import NO_FLAGS, Reply, cstring, issue
from dmioctl.table import Target, validate
from dmioctl.uapi.dm import (
    DM_MAX_TYPE_NAME,
    DM_NAME_LEN,
    DM_NAME_LIST_FLAG_DOESNT_HAVE_UUID,
    DM_NAME_LIST_FLAG_HAS_UUID,
    DM_UUID_LEN,
    DMCommand,
    DMFlag,
    KernelCString,
    dm_name_list,
    dm_name_list_trailer,
    dm_target_deps,
    dm_target_msg,
    dm_target_spec,
    dm_target_versions,
    flat_codec,
    kernel_bytes,
)

log = logging.getLogger(__name__)

CONTROL_PATH = "/dev/mapper/control"

#: dm_target_spec as one precompiled struct: table specs are packed and parsed per call.
_SPEC = flat_codec(dm_target_spec).struct
_SPEC_SIZE = _SPEC.size
#: Offset of dm_name_list.name: the fixed fields before it.
_NAME_LIST_HEAD = dm_name_list.subcons[0].sizeof() + dm_name_list.subcons[1].sizeof()
_MESSAGE_BUFFER_SIZE = 64 * 1024


@dataclass(frozen=True)
class DeviceInfo:
    """What DM_DEV_STATUS (and most other commands) report about a device."""

    name: str
    uuid: str
    major: int
    minor: int
    open_count: int
    event_nr: int
    target_count: int
    flags: DMFlag

    @property
    def suspended(self) -> bool:
        return DMFlag.DM_SUSPEND_FLAG in self.flags

    @property
    def read_only(self) -> bool:
        return DMFlag.DM_READONLY_FLAG in self.flags

    @property
    def active_table(self) -> bool:
        return DMFlag.DM_ACTIVE_PRESENT_FLAG in self.flags

    @property
    def inactive_table(self) -> bool:
        return DMFlag.DM_INACTIVE_PRESENT_FLAG in self.flags

    @property
    def deferred_remove(self) -> bool:
        return DMFlag.DM_DEFERRED_REMOVE in self.flags

    @property
    def node(self) -> str:
        """The device's node under /dev/mapper."""
        return nodes.node_path(self.name)


@dataclass(frozen=True)
class ListedDevice:
    """One entry of DM_LIST_DEVICES.

    ``event_nr`` and ``uuid`` are ``None`` on kernels too old to report them.
    """

    name: str
    major: int
    minor: int
    event_nr: int | None
    uuid: str | None


@dataclass(frozen=True)
class TargetVersion:
    """A target type the kernel knows, with its version."""

    name: str
    version: tuple[int, int, int]


def available() -> bool:
    """Whether the running kernel has device-mapper (its misc device is registered).

    A /dev/mapper/control node alone proves nothing: it can be left over from a
    tool that made it on a kernel without the driver.
    """
    try:
        with open("/proc/misc") as misc:
            return any(line.split()[1:] == ["device-mapper"] for line in misc)
    except FileNotFoundError:
        return False


def validate_name(name: str) -> None:
    """Check a device name: 1 to 127 bytes, no '/', no NUL, not '.' or '..'."""
    encoded = kernel_bytes(name)
    if not encoded or len(encoded) >= DM_NAME_LEN:
        raise InvalidArgument(
            f"device name {name!r} must be 1 to {DM_NAME_LEN - 1} bytes, is {len(encoded)}"
        )
    if "/" in name or "\0" in name or name in (".", ".."):
        raise InvalidArgument(f"device name {name!r} must not contain '/' or NUL, nor be . or ..")


def validate_uuid(uuid: str) -> None:
    """Check a uuid: 1 to 128 bytes, no NUL."""
    encoded = kernel_bytes(uuid)
    if not encoded or len(encoded) >= DM_UUID_LEN or b"\0" in encoded:
        raise InvalidArgument(f"uuid {uuid!r} must be 1 to {DM_UUID_LEN - 1} bytes without NUL")


class DeviceMapper:
    """The device-mapper control file, with one method per ioctl.

    Opens ``/dev/mapper/control`` (or ``path``); use it as a context manager or
    call :meth:`close`.  ``manage_nodes`` keeps ``/dev/mapper/<name>`` in step
    with the devices (see :mod:`dmioctl.nodes`); where udevd runs, that means
    waiting up to ``udev_timeout`` seconds for the udev rules after a resume,
    rename or remove (see :mod:`dmioctl.udev`).
    """

    def __init__(
        self,
        path: str = CONTROL_PATH,
        *,
        manage_nodes: bool = True,
        udev_timeout: float = nodes.UDEV_TIMEOUT,
    ) -> None:
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except (FileNotFoundError, OSError) as exc:
            if not isinstance(exc, FileNotFoundError) and exc.errno != errno.ENODEV:
                raise
            raise DMError(
                f"device-mapper is not available: cannot open {path} ({exc.strerror}); "
                "is the dm-mod module loaded?"
            ) from exc
        self.path = path
        self.manage_nodes = manage_nodes
        self.udev_timeout = udev_timeout

    def close(self) -> None:
        """Close the control file."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> DeviceMapper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Top-level commands

    def version(self) -> tuple[int, int, int]:
        """DM_VERSION: the kernel's ioctl interface version."""
        return issue(self.fd, DMCommand.DM_VERSION_CMD).version

    def remove_all(self, *, deferred: bool = False) -> None:
        """DM_REMOVE_ALL: remove every device that is not open, destroying its tables.

        With ``deferred``, open devices are removed when last closed.  Meant for
        tests and debugging.
        """
        flags = DMFlag.DM_DEFERRED_REMOVE if deferred else NO_FLAGS
        before = self.list_devices() if self.manage_nodes else []
        issue(self.fd, DMCommand.DM_REMOVE_ALL_CMD, flags=flags)
        if before:
            remaining = {device.name for device in self.list_devices()}
            for device in before:
                if device.name not in remaining:
                    nodes.removed(device.name)

    def list_devices(self) -> list[ListedDevice]:
        """DM_LIST_DEVICES: every device, with its number and, where reported, uuid.

        DM_UUID_FLAG asks kernels with interface 4.46 or later for the uuids.
        """
        reply = issue(self.fd, DMCommand.DM_LIST_DEVICES_CMD, flags=DMFlag.DM_UUID_FLAG)
        return _parse_name_list(reply)

    # Device commands

    def create(self, name: str, *, uuid: str = "", read_only: bool = False) -> DeviceInfo:
        """DM_DEV_CREATE: create a device with no table, and its node.

        Flags: ``read_only`` (DM_READONLY_FLAG) is passed on; the kernel makes a
        device read-only when a table loaded with ``read_only`` goes live.

        Raises:
            DeviceExists: a device with this name or uuid exists.
        """
        validate_name(name)
        if uuid:
            validate_uuid(uuid)
        flags = DMFlag.DM_READONLY_FLAG if read_only else NO_FLAGS
        info = _info(
            issue(self.fd, DMCommand.DM_DEV_CREATE_CMD, name=name, uuid=uuid, flags=flags)
        )
        if self.manage_nodes:
            nodes.created(info.name, info.major, info.minor)
        return info

    def remove(
        self,
        name: str = "",
        *,
        uuid: str = "",
        deferred: bool = False,
        retries: int = 0,
        retry_delay: float = 0.2,
    ) -> DeviceInfo:
        """DM_DEV_REMOVE: remove a device and its tables, and its node.

        Flags: ``deferred`` (DM_DEFERRED_REMOVE): an open device is removed when
        last closed; the returned info then has ``deferred_remove`` set.  Where no
        udevd runs, its node goes at once, so that no node outlives the device.  A busy
        device is tried ``retries`` more times, ``retry_delay`` seconds apart.

        Raises:
            NoSuchDevice: no such device.
            DeviceBusy: the device is open, after all tries.
            UdevTimeout: the device is gone but udev did not finish in time.
        """
        self._check_ref(name, uuid)
        flags = DMFlag.DM_DEFERRED_REMOVE if deferred else NO_FLAGS
        attempts = retries + 1
        for attempt in range(1, attempts + 1):
            try:
                issued = self._issue_with_cookie(DMCommand.DM_DEV_REMOVE_CMD, name, uuid, flags)
                break
            except DeviceBusy:
                if attempt == attempts:
                    raise
                log.debug("DM_DEV_REMOVE %s busy, attempt %d/%d", name or uuid, attempt, attempts)
                time.sleep(retry_delay)
        info = _info(issued.reply)
        # A deferred removal happens at the last close; udev removes the node then.
        # Without udev nothing would, and the kernel may give the number to another
        # device, so the node goes now: users holding the device keep it.
        if self.manage_nodes and not issued.synced and not (info.deferred_remove and issued.udev):
            nodes.removed(info.name, udev=issued.udev)
        return info

    def rename(
        self, name: str = "", *, uuid: str = "", new_name: str = "", new_uuid: str = ""
    ) -> DeviceInfo:
        """DM_DEV_RENAME: give a device a new name, or set its uuid.

        Exactly one of ``new_name`` and ``new_uuid``; ``new_uuid`` uses
        DM_UUID_FLAG, which the kernel allows only while the device has no uuid.
        A device given by ``uuid`` costs a DM_DEV_STATUS first: dm-ioctl.c
        dm_hash_rename finds the device by name only.

        Raises:
            UdevTimeout: the device was renamed but udev did not finish in time.
        """
        self._check_ref(name, uuid)
        if bool(new_name) == bool(new_uuid):
            raise InvalidArgument("rename takes exactly one of new_name and new_uuid")
        if new_name:
            validate_name(new_name)
            payload, flags = kernel_bytes(new_name) + b"\0", DMFlag(0)
        else:
            validate_uuid(new_uuid)
            payload, flags = kernel_bytes(new_uuid) + b"\0", DMFlag.DM_UUID_FLAG
        if not name:
            name = self.info(uuid=uuid).name
        issued = self._issue_with_cookie(DMCommand.DM_DEV_RENAME_CMD, name, "", flags, payload)
        info = _info(issued.reply)
        if self.manage_nodes and not issued.synced and new_name:
            nodes.renamed(info.name, new_name, info.major, info.minor, udev=issued.udev)
        # The reply carries the name and uuid as sent: ask for the new ones.
        return self.info(new_name) if new_name else self.info(name)

    def suspend(
        self, name: str = "", *, uuid: str = "", noflush: bool = False, skip_lockfs: bool = False
    ) -> DeviceInfo:
        """DM_DEV_SUSPEND with DM_SUSPEND_FLAG: wait for in-flight I/O, then hold new I/O.

        Flags: ``noflush`` (DM_NOFLUSH_FLAG) keeps queued I/O instead of flushing
        it; ``skip_lockfs`` (DM_SKIP_LOCKFS_FLAG) does not freeze a filesystem.
        """
        self._check_ref(name, uuid)
        flags = DMFlag.DM_SUSPEND_FLAG
        if noflush:
            flags |= DMFlag.DM_NOFLUSH_FLAG
        if skip_lockfs:
            flags |= DMFlag.DM_SKIP_LOCKFS_FLAG
        return _info(
            issue(self.fd, DMCommand.DM_DEV_SUSPEND_CMD, name=name, uuid=uuid, flags=flags)
        )

    def resume(self, name: str = "", *, uuid: str = "") -> DeviceInfo:
        """DM_DEV_SUSPEND without DM_SUSPEND_FLAG: make the inactive table active, let I/O through.

        Resuming a device that is not suspended is not an error.

        Raises:
            UdevTimeout: the device runs but udev did not finish its links in time.
        """
        self._check_ref(name, uuid)
        issued = self._issue_with_cookie(DMCommand.DM_DEV_SUSPEND_CMD, name, uuid)
        info = _info(issued.reply)
        if self.manage_nodes and not issued.synced:
            nodes.created(
                info.name, info.major, info.minor, active=info.active_table, udev=issued.udev
            )
        return info

    @contextlib.contextmanager
    def suspended(
        self, name: str = "", *, uuid: str = "", noflush: bool = False, skip_lockfs: bool = False
    ) -> Iterator[DeviceInfo]:
        """Suspend a device for the ``with`` block and always resume it afterwards."""
        info = self.suspend(name, uuid=uuid, noflush=noflush, skip_lockfs=skip_lockfs)
        try:
            yield info
        finally:
            try:
                self.resume(name, uuid=uuid)
            except DMError:
                log.warning("device %s left suspended: resume failed", name or uuid)
                raise

    def info(self, name: str = "", *, uuid: str = "") -> DeviceInfo:
        """DM_DEV_STATUS: the device's state (the kernel's name for this is 'status')."""
        self._check_ref(name, uuid)
        return _info(issue(self.fd, DMCommand.DM_DEV_STATUS_CMD, name=name, uuid=uuid))

    def wait(
        self, name: str = "", *, uuid: str = "", event_nr: int = 0
    ) -> tuple[DeviceInfo, list[Target]]:
        """DM_DEV_WAIT: block until the device's event counter passes ``event_nr``.

        Returns the device's info, whose ``event_nr`` is the new counter, and its
        status lines.  Returns at once when the counter already differs.
        """
        self._check_ref(name, uuid)
        reply = issue(self.fd, DMCommand.DM_DEV_WAIT_CMD, name=name, uuid=uuid, event_nr=event_nr)
        return _info(reply), _parse_targets(reply)

    def arm_poll(self) -> None:
        """DM_DEV_ARM_POLL: make the control file pollable for the next event of any device."""
        issue(self.fd, DMCommand.DM_DEV_ARM_POLL_CMD)

    def poll(self, timeout: float | None = None) -> bool:
        """Wait until an event arrives after :meth:`arm_poll`; False on timeout."""
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        return bool(poller.poll(None if timeout is None else int(timeout * 1000)))

    def set_geometry(
        self, name: str, cylinders: int, heads: int, sectors: int, start: int
    ) -> None:
        """DM_DEV_SET_GEOMETRY: set the CHS geometry reported for the device.

        The limits are dm-ioctl.c dev_set_geometry's: cylinders up to 65535, heads
        and sectors up to 255, and a start sector that fits an unsigned long.
        """
        validate_name(name)
        for label, value, top in (
            ("cylinders", cylinders, 0xFFFF),
            ("heads", heads, 0xFF),
            ("sectors", sectors, 0xFF),
            ("start", start, 2**64 - 1),
        ):
            if not 0 <= value <= top:
                raise InvalidArgument(f"geometry {label} {value} must be between 0 and {top}")
        payload = f"{cylinders} {heads} {sectors} {start}".encode() + b"\0"
        issue(self.fd, DMCommand.DM_DEV_SET_GEOMETRY_CMD, name=name, payload=payload)

    # Table commands

    def load_table(
        self,
        name: str = "",
        targets: Sequence[Target] = (),
        *,
        uuid: str = "",
        read_only: bool = False,
    ) -> DeviceInfo:
        """DM_TABLE_LOAD: load ``targets`` into the inactive slot; ``resume`` activates it.

        Flags: ``read_only`` (DM_READONLY_FLAG).

        Raises:
            InvalidArgument: the targets do not form a table (see table.validate).
            IoctlError: EINVAL when a target refuses its parameters (the kernel
                log says why).
        """
        self._check_ref(name, uuid)
        if not targets:
            raise InvalidArgument("a table needs at least one target")
        validate(targets)
        flags = DMFlag.DM_READONLY_FLAG if read_only else NO_FLAGS
        reply = issue(
            self.fd,
            DMCommand.DM_TABLE_LOAD_CMD,
            name=name,
            uuid=uuid,
            flags=flags,
            target_count=len(targets),
            payload=_pack_targets(targets),
        )
        return _info(reply)

    def clear_table(self, name: str = "", *, uuid: str = "") -> DeviceInfo:
        """DM_TABLE_CLEAR: drop the table in the inactive slot."""
        self._check_ref(name, uuid)
        return _info(issue(self.fd, DMCommand.DM_TABLE_CLEAR_CMD, name=name, uuid=uuid))

    def deps(self, name: str = "", *, uuid: str = "") -> list[tuple[int, int]]:
        """DM_TABLE_DEPS: (major, minor) of each device the active table uses."""
        self._check_ref(name, uuid)
        return _parse_deps(issue(self.fd, DMCommand.DM_TABLE_DEPS_CMD, name=name, uuid=uuid))

    def table(self, name: str = "", *, uuid: str = "", inactive: bool = False) -> list[Target]:
        """DM_TABLE_STATUS with DM_STATUS_TABLE_FLAG: the table's lines.

        Flags: ``inactive`` (DM_QUERY_INACTIVE_TABLE_FLAG) reads the inactive slot.
        """
        return self._table_status(name, uuid, DMFlag.DM_STATUS_TABLE_FLAG, inactive)

    def status(
        self, name: str = "", *, uuid: str = "", inactive: bool = False, noflush: bool = False
    ) -> list[Target]:
        """DM_TABLE_STATUS: each target's status line; ``params`` holds the status.

        Flags: ``inactive`` (DM_QUERY_INACTIVE_TABLE_FLAG); ``noflush``
        (DM_NOFLUSH_FLAG) lets thin targets skip committing metadata first.
        """
        return self._table_status(
            name, uuid, DMFlag.DM_NOFLUSH_FLAG if noflush else NO_FLAGS, inactive
        )

    def _table_status(self, name: str, uuid: str, flags: DMFlag, inactive: bool) -> list[Target]:
        self._check_ref(name, uuid)
        if inactive:
            flags |= DMFlag.DM_QUERY_INACTIVE_TABLE_FLAG
        return _parse_targets(
            issue(self.fd, DMCommand.DM_TABLE_STATUS_CMD, name=name, uuid=uuid, flags=flags)
        )

    def list_versions(self) -> list[TargetVersion]:
        """DM_LIST_VERSIONS: every target type the kernel has loaded, with versions."""
        return _parse_versions(issue(self.fd, DMCommand.DM_LIST_VERSIONS_CMD))

    def get_target_version(self, target_type: str) -> tuple[int, int, int]:
        """DM_GET_TARGET_VERSION: one target type's version, loading its module if needed.

        The kernel takes the type in the header's name field and answers with one
        dm_target_versions record.

        Raises:
            IoctlError: EINVAL when no such target type exists.
        """
        encoded = target_type.encode()
        if not encoded or len(encoded) >= DM_MAX_TYPE_NAME or b"\0" in encoded:
            raise InvalidArgument(f"target type {target_type!r} is not a valid type name")
        reply = issue(self.fd, DMCommand.DM_GET_TARGET_VERSION_CMD, name=target_type)
        record = dm_target_versions.parse(reply.data)
        return (record.version[0], record.version[1], record.version[2])

    def target_message(
        self, name: str = "", message: str = "", *, uuid: str = "", sector: int = 0
    ) -> str | None:
        """DM_TARGET_MSG: send ``message`` to the target covering ``sector``.

        Returns the target's reply text when the kernel sets DM_DATA_OUT_FLAG,
        else None.
        """
        self._check_ref(name, uuid)
        if not message or "\0" in message:
            raise InvalidArgument("a target message must be non-empty and contain no NUL")
        if sector < 0:
            raise InvalidArgument(f"message sector {sector} must not be negative")
        payload = dm_target_msg.build({"sector": sector, "message": message})
        reply = issue(
            self.fd,
            DMCommand.DM_TARGET_MSG_CMD,
            name=name,
            uuid=uuid,
            payload=payload,
            buffer_size=_MESSAGE_BUFFER_SIZE,
        )
        if DMFlag.DM_DATA_OUT_FLAG not in reply.flags:
            return None
        return str(KernelCString.parse(reply.data))

    def _issue_with_cookie(
        self,
        command: DMCommand,
        name: str,
        uuid: str,
        flags: DMFlag = NO_FLAGS,
        payload: bytes = b"",
    ) -> _Issued:
        """Issue a command after which the kernel may send a uevent (resume, rename, remove).

        Where udevd runs and nodes are managed, a udev cookie goes in ``event_nr``
        and, if the reply has DM_UEVENT_GENERATED_FLAG, the rules are waited for
        (at most ``udev_timeout``).  The cookie is removed in every case.

        Raises:
            UdevTimeout: the rules did not complete in time.
        """
        if not (self.manage_nodes and nodes.udev_running()):
            reply = issue(self.fd, command, name=name, uuid=uuid, flags=flags, payload=payload)
            return _Issued(reply, udev=False, synced=False)
        with udev.Cookie.create() as cookie:
            reply = issue(
                self.fd,
                command,
                name=name,
                uuid=uuid,
                flags=flags,
                event_nr=cookie.value,
                payload=payload,
            )
            if DMFlag.DM_UEVENT_GENERATED_FLAG not in reply.flags:
                return _Issued(reply, udev=True, synced=False)
            cookie.wait(self.udev_timeout, f"{command.kernel_name} on {name or uuid!r}")
            return _Issued(reply, udev=True, synced=True)

    @staticmethod
    def _check_ref(name: str, uuid: str) -> None:
        if bool(name) == bool(uuid):
            raise InvalidArgument("name a device by exactly one of name and uuid")
        if name:
            validate_name(name)
        else:
            validate_uuid(uuid)


class _Issued(NamedTuple):
    """A reply to a command that may send a uevent, and what udev did about it."""

    reply: Reply
    #: Whether udevd ran when the command was issued (and nodes are managed).
    udev: bool
    #: Whether its rules were waited for: then the nodes are final.
    synced: bool


def _info(reply: Reply) -> DeviceInfo:
    return DeviceInfo(
        name=reply.name,
        uuid=reply.uuid,
        major=os.major(reply.dev),
        minor=os.minor(reply.dev),
        open_count=reply.open_count,
        event_nr=reply.event_nr,
        target_count=reply.target_count,
        flags=reply.flags,
    )


def _pack_targets(targets: Sequence[Target]) -> bytes:
    """The DM_TABLE_LOAD payload: each spec, its NUL-terminated parameters, padded to 8."""
    chunks: list[bytes] = []
    for target in targets:
        params = target.params.encode() + b"\0"
        params += bytes(-(_SPEC_SIZE + len(params)) % 8)
        spec = _SPEC.pack(
            target.start, target.length, 0, _SPEC_SIZE + len(params), target.target_type.encode()
        )
        chunks.append(spec + params)
    return b"".join(chunks)


def _parse_targets(reply: Reply) -> list[Target]:
    """Targets of a DM_TABLE_STATUS reply; each ``next`` counts from the first spec."""
    targets: list[Target] = []
    buffer = reply.buffer
    offset = first = reply.data_start
    for _ in range(reply.target_count):
        start, length, _status, next_offset, target_type = _SPEC.unpack_from(buffer, offset)
        params_at = offset + _SPEC_SIZE
        params = buffer[params_at : buffer.index(0, params_at)].decode()
        targets.append(Target(start, length, cstring(target_type), params))
        offset = first + next_offset
    return targets


def _parse_deps(reply: Reply) -> list[tuple[int, int]]:
    """(major, minor) pairs of a DM_TABLE_DEPS reply; none when there is no live table.

    Without a live table the kernel writes no payload at all (dm-ioctl.c table_deps).
    """
    if not reply.data:
        return []
    parsed = dm_target_deps.parse(reply.data)
    return [(os.major(dev), os.minor(dev)) for dev in parsed.dev]


def _parse_versions(reply: Reply) -> list[TargetVersion]:
    """Records of a DM_LIST_VERSIONS reply; each ``next`` counts from its own record."""
    versions: list[TargetVersion] = []
    offset = reply.data_start
    while True:
        record = dm_target_versions.parse(reply.buffer[offset:])
        versions.append(TargetVersion(record.name, tuple(record.version)))
        if not record.next:
            return versions
        offset += record.next


def _parse_name_list(reply: Reply) -> list[ListedDevice]:
    """Records of a DM_LIST_DEVICES reply.

    After each name, aligned to 8 bytes from the buffer's start, interface 4.46
    puts the event number, flags saying whether a uuid follows, and the uuid when
    asked with DM_UUID_FLAG (see dm-ioctl.c list_devices).  Older kernels leave
    the flags zero, so flags with neither bit set mean "not reported".  (The
    version in a reply's header is the one we sent, so it cannot tell.)  An
    empty list is a single zeroed record.
    """
    devices: list[ListedDevice] = []
    offset = reply.data_start
    end = reply.data_size
    if end - offset < _NAME_LIST_HEAD:
        return devices
    while True:
        record = dm_name_list.parse(reply.buffer[offset:end])
        if not record.dev and not record.name:
            return devices
        record_end = offset + record.next if record.next else end
        trailer_at = _align8(offset + _NAME_LIST_HEAD + len(kernel_bytes(record.name)) + 1)
        event_nr: int | None = None
        uuid: str | None = None
        if trailer_at + dm_name_list_trailer.sizeof() <= record_end:
            trailer = dm_name_list_trailer.parse(reply.buffer[trailer_at:])
            if trailer.flags & DM_NAME_LIST_FLAG_HAS_UUID:
                uuid_at = trailer_at + dm_name_list_trailer.sizeof()
                uuid = KernelCString.parse(reply.buffer[uuid_at:record_end])
            elif trailer.flags & DM_NAME_LIST_FLAG_DOESNT_HAVE_UUID:
                uuid = ""
            if uuid is not None:
                event_nr = trailer.event_nr
        devices.append(
            ListedDevice(record.name, os.major(record.dev), os.minor(record.dev), event_nr, uuid)
        )
        if not record.next:
            return devices
        offset += record.next


def _align8(offset: int) -> int:
    return (offset + 7) & ~7


__all__ = [
    "CONTROL_PATH",
    "DeviceInfo",
    "DeviceMapper",
    "ListedDevice",
    "TargetVersion",
    "available",
    "validate_name",
    "validate_uuid",
]
