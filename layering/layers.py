"""Apply and export layer tarballs: the OCI / Docker image layer format.

A layer is a tar archive of the files that differ from the layer below.  Two kinds
of member are not files but instructions (see the OCI image spec, layer.md):

``DIR/.wh.NAME``
    a *whiteout*: ``DIR/NAME`` of the lower content is deleted;
``DIR/.wh..wh..opq``
    an *opaque marker*: whatever ``DIR`` held in the lower content is deleted, and
    only what this layer puts into ``DIR`` remains.

Both apply to the lower content only, never to members of the same layer, so they
are applied first and their place in the archive does not matter.  Whiteouts and
markers are never created as files.

Applying is two passes over the archive.  The first reads every header, and
checks the whole member list against the lower content (what is already in
``root``) by simulating the extraction: a member with an absolute name, a ``..``
component or a NUL byte, a member whose parent is a symbolic link (created earlier
in the layer or present below), a relative symbolic link that climbs out of the
root, a hard link outside the root or to a path that neither an earlier member nor
the lower content provides, a size that runs past the end of the archive, or bytes
after the archive's end that are not zeros, are all refused with an error naming
the member -- before anything in ``root`` is touched.  The second pass writes.
Non-seekable streams are spooled to an anonymous temporary file first.  A failure
of the file system in the second pass (a full disk) leaves a partly applied layer:
the caller discards that snapshot.

Why not ``tarfile``'s own extraction filters?  ``tarfile`` is used for what it does
well -- reading headers, PAX records (``SCHILY.xattr.*``, sub-second ``mtime``),
GNU long names and sparse files, and streaming member data -- but neither
``data_filter`` nor ``tar_filter`` expresses a layer's rules: ``data_filter``
refuses device nodes, strips set-uid bits and refuses every absolute symbolic link
(``/etc/localtime -> /usr/share/zoneinfo/UTC`` is in most images; inside an image
an absolute target means "from the image's root", which cannot leave it); both
judge a member by resolving symbolic links *on the host* at the moment it is
extracted, which sees neither links created later in the same pass nor whiteouts.
And ``TarFile.extract`` writes a regular file with ``open(path, "wb")``, which
follows a symbolic link that the lower content has at that path.  So the checks
here are our own, done on the whole list before writing, and the writing is our
own too: every final path component is created with ``O_EXCL``/``O_NOFOLLOW`` or
an ``l*`` call after whatever was there is removed, every parent is checked to be a
real directory, and no symbolic link is ever followed.

Symbolic link targets are stored verbatim; they are paths inside the image.
Ownership is numeric (``uid``/``gid``; names are ignored), which needs root.
Directory modes, owners and times are set after their contents, deepest first.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import importlib
import io
import logging
import lzma
import os
import posixpath
import shutil
import stat
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from enum import Enum
from pathlib import Path
from typing import IO, cast

from layering.errors import InvalidInput, LayeringError

log = logging.getLogger(__name__)

#: Prefix of a whiteout member's base name (OCI image spec, layer.md).
WHITEOUT_PREFIX = ".wh."
#: Base name of the member that makes its directory opaque.
OPAQUE_MARKER = ".wh..wh..opq"
#: PAX record prefix of an extended attribute, as GNU tar, bsdtar and Go write it.
XATTR_PAX_PREFIX = "SCHILY.xattr."

#: Extended attributes that describe the host rather than the file; not exported.
_EXPORT_XATTR_SKIP = ("security.selinux",)
_EXPORT_XATTR_SKIP_PREFIXES = ("system.",)

_CHUNK = 1 << 20
_HOLE = 64 << 10  # runs of zeros this long, aligned, are not written
_NS = 10**9
_MAX_NS = 2**63 - 1
#: Limits of the system calls the second pass makes (linux/limits.h, linux/xattr.h):
#: a path component, an xattr name and value, and a uid or gid.
_NAME_MAX = 255
_XATTR_NAME_MAX = 255
_XATTR_SIZE_MAX = 65536
_MAX_ID = 2**32 - 1

#: ``progress(done_bytes, total_bytes)``: bytes of file data written so far.
Progress = Callable[[int, int], None]

#: A path, or a binary file object open for reading.
Tarball = str | os.PathLike[str] | IO[bytes]


class UnsafeTarball(InvalidInput):
    """A member would be written outside the root, or through a symbolic link.

    Attributes:
        member: the member's name as the archive stores it.
    """

    def __init__(self, member: str, reason: str) -> None:
        self.member = member
        super().__init__(f"unsafe layer tarball: member {member!r} {reason}")


class CorruptTarball(InvalidInput):
    """The archive is damaged or truncated, or holds a member a layer cannot hold.

    Attributes:
        member: the member's name as the archive stores it, if one is to blame.
    """

    def __init__(self, reason: str, member: str | None = None) -> None:
        self.member = member
        if member is None:
            super().__init__(f"bad layer tarball: {reason}")
        else:
            super().__init__(f"bad layer tarball: member {member!r} {reason}")


class UnsupportedCompression(InvalidInput):
    """The archive is compressed in a format this Python cannot read."""


class LayerIOError(LayeringError):
    """Reading or writing a layer's files failed in the file system."""


@dataclass(frozen=True)
class ApplyStats:
    """What :func:`apply` did.

    Attributes:
        files: regular files, device nodes and fifos created.
        directories: directory members (created or merged with a lower one).
        links: symbolic and hard links created.
        whiteouts: whiteout and opaque-marker members honoured.
        bytes: bytes of file data written.
    """

    files: int
    directories: int
    links: int
    whiteouts: int
    bytes: int


class _Kind(Enum):
    DIR = "directory"
    FILE = "regular file"
    SYMLINK = "symbolic link"
    HARDLINK = "hard link"
    CHAR = "character device"
    BLOCK = "block device"
    FIFO = "fifo"


class _Node(Enum):
    """What a path holds at some point of the extraction, as far as parents care."""

    DIR = "directory"
    SYMLINK = "symbolic link"
    OTHER = "non-directory"


@dataclass(frozen=True, eq=False)
class _Entry:
    member: str
    path: str  # normalised, relative to the root; "" is the root itself
    kind: _Kind
    info: tarfile.TarInfo
    link: str  # symbolic link target verbatim, or normalised hard link target
    mtime_ns: int
    xattrs: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class _Plan:
    deletions: tuple[str, ...]  # whiteout targets that exist below, shallowest first
    opaque: tuple[str, ...]  # directories whose lower content goes
    entries: tuple[_Entry, ...]
    whiteouts: int
    total_bytes: int


# -- reading the archive ---------------------------------------------------------------


def _os_reason(exc: OSError) -> str:
    if exc.errno is None:
        return str(exc)
    name = errno.errorcode.get(exc.errno, f"errno {exc.errno}")
    return f"{name} ({os.strerror(exc.errno)})"


@contextmanager
def _open_raw(tarball: Tarball) -> Iterator[IO[bytes]]:
    """The compressed bytes, seekable and positioned at their start."""
    if isinstance(tarball, str | os.PathLike):
        try:
            raw = open(tarball, "rb")  # noqa: SIM115 - closed by the with below
        except OSError as exc:
            raise InvalidInput(
                f"cannot open layer tarball {os.fspath(tarball)!r}: {_os_reason(exc)}"
            ) from exc
        with raw:
            yield raw
        return

    seekable = False
    with suppress(OSError, ValueError):
        seekable = tarball.seekable() and tarball.tell() == 0
    if seekable:
        yield tarball
        return
    with tempfile.TemporaryFile() as spool:
        shutil.copyfileobj(tarball, spool, _CHUNK)
        log.debug("spooled a layer stream of %d bytes", spool.tell())
        spool.seek(0)
        yield spool


def _decompressed(raw: IO[bytes]) -> IO[bytes]:
    """The tar bytes of ``raw``, its compression told by the magic bytes."""
    raw.seek(0)
    magic = raw.read(6)
    raw.seek(0)
    if magic.startswith(b"\x1f\x8b"):
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb"))
    if magic.startswith(b"\xfd7zXZ\x00"):
        return cast(IO[bytes], lzma.LZMAFile(raw))
    if magic.startswith(b"BZh"):
        return cast(IO[bytes], bz2.BZ2File(raw))
    if magic.startswith(b"\x28\xb5\x2f\xfd"):
        try:
            zstd = importlib.import_module("compression.zstd")
        except ImportError:
            version = ".".join(map(str, sys.version_info[:3]))
            raise UnsupportedCompression(
                f"layer tarball is zstd-compressed and Python {version} has no zstd module "
                "(compression.zstd, Python 3.14+); decompress it first"
            ) from None
        return cast(IO[bytes], zstd.ZstdFile(raw))
    return raw


_READ_ERRORS = (tarfile.TarError, OSError, EOFError, lzma.LZMAError, zlib.error)


def _read_headers(raw: IO[bytes]) -> list[tarfile.TarInfo]:
    """Every member's header; refuses truncation and damage after the last one."""
    members: list[tarfile.TarInfo] = []
    try:
        stream = _decompressed(raw)
        tar = tarfile.TarFile(fileobj=stream, mode="r")
        for info in tar:
            members.append(info)
        # tarfile takes a damaged header after the first for the end of the
        # archive: what follows the last member must be zeros (or nothing).
        stream.seek(tar.offset)
        while chunk := stream.read(_CHUNK):
            if chunk.count(0) != len(chunk):
                raise CorruptTarball(
                    f"bytes at offset {tar.offset} after the last member are not a tar header"
                )
    except _READ_ERRORS as exc:
        if members and members[-1].size > 0 and "unexpected end" in str(exc):
            last = members[-1]
            raise CorruptTarball(
                f"has a size of {last.size} bytes that runs past the end of the archive",
                last.name,
            ) from exc
        raise CorruptTarball(f"not a readable tar archive ({exc})") from exc
    return members


# -- checking the member list ----------------------------------------------------------


def _split(name: str, member: str) -> str:
    """A member name as a clean relative path; refuses names that could leave the root."""
    if "\x00" in name:
        raise UnsafeTarball(member, "has a NUL byte in its name")
    if name.startswith("/"):
        raise UnsafeTarball(member, "has an absolute name")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UnsafeTarball(member, "has a '..' component")
    for part in parts:
        if len(part.encode("utf-8", "surrogateescape")) > _NAME_MAX:
            raise CorruptTarball(f"has a name component longer than {_NAME_MAX} bytes", member)
    return "/".join(parts)


def _check_header(info: tarfile.TarInfo) -> None:
    """Refuse header values that the system calls of the second pass would reject."""
    for field, value in (("uid", info.uid), ("gid", info.gid)):
        # (uid_t)-1 means "leave unchanged" to chown, so it is no owner either.
        if not 0 <= value < _MAX_ID:
            raise CorruptTarball(f"has {field} {value}, outside 0..{_MAX_ID - 1}", info.name)
    # The kernel's dev_t: 12 bits of major, 20 of minor (include/linux/kdev_t.h).
    in_range = 0 <= info.devmajor < 1 << 12 and 0 <= info.devminor < 1 << 20
    if (info.ischr() or info.isblk()) and not in_range:
        raise CorruptTarball(
            f"is a device {info.devmajor}:{info.devminor}, outside the kernel's numbers",
            info.name,
        )


def _prefixes(path: str) -> Iterator[str]:
    """The proper ancestors of ``path`` (not the root), shallowest first."""
    parts = path.split("/")
    for i in range(1, len(parts)):
        yield "/".join(parts[:i])


def _kind_of(info: tarfile.TarInfo) -> _Kind:
    if info.isdir():
        return _Kind.DIR
    if info.issym():
        return _Kind.SYMLINK
    if info.islnk():
        return _Kind.HARDLINK
    if info.ischr():
        return _Kind.CHAR
    if info.isblk():
        return _Kind.BLOCK
    if info.isfifo():
        return _Kind.FIFO
    if info.type in tarfile.REGULAR_TYPES:
        return _Kind.FILE
    raise CorruptTarball(f"has the unsupported member type {info.type!r}", info.name)


def _mtime_ns(info: tarfile.TarInfo) -> int:
    """The member's mtime in ns, exact when a PAX record carries a fraction."""
    value: int
    raw = info.pax_headers.get("mtime")
    try:
        if raw is None:
            raise InvalidOperation
        value = int(Decimal(raw).scaleb(9).to_integral_value(ROUND_FLOOR))
    except InvalidOperation:
        value = int(info.mtime) * _NS
    if not -_MAX_NS <= value <= _MAX_NS:
        raise CorruptTarball(f"has an mtime out of range ({raw or info.mtime})", info.name)
    return value


def _xattrs(info: tarfile.TarInfo) -> tuple[tuple[str, bytes], ...]:
    found: list[tuple[str, bytes]] = []
    for key, value in info.pax_headers.items():
        if not key.startswith(XATTR_PAX_PREFIX):
            continue
        name = key[len(XATTR_PAX_PREFIX) :]
        too_long = len(name.encode("utf-8", "surrogateescape")) > _XATTR_NAME_MAX
        if not name or "\x00" in name or too_long:
            raise CorruptTarball(f"has an extended attribute with a bad name {name!r}", info.name)
        data = value.encode("utf-8", "surrogateescape")
        if len(data) > _XATTR_SIZE_MAX:
            raise CorruptTarball(
                f"has an extended attribute {name!r} over {_XATTR_SIZE_MAX} bytes", info.name
            )
        found.append((name, data))
    return tuple(found)


class _Checker:
    """Simulates the extraction over the lower content, refusing what is unsafe."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.layer: dict[str, _Node] = {}  # what this layer has put (or walked through)
        self.gone: set[str] = set()  # lower paths deleted or replaced, with their subtrees
        self.opaque: set[str] = set()  # lower content below these is deleted
        self._lstat_cache: dict[str, _Node | None] = {}

    def full(self, path: str) -> str:
        return posixpath.join(self.root, path) if path else self.root

    def lstat(self, path: str) -> _Node | None:
        """The lower content at ``path``; its parents must be known to be directories."""
        if path not in self._lstat_cache:
            try:
                mode = os.lstat(self.full(path)).st_mode
            except (FileNotFoundError, NotADirectoryError):
                node = None
            except OSError as exc:  # ENAMETOOLONG for a path past PATH_MAX, ...
                raise CorruptTarball(f"names {path!r}, which is {_os_reason(exc)}") from exc
            else:
                if stat.S_ISDIR(mode):
                    node = _Node.DIR
                elif stat.S_ISLNK(mode):
                    node = _Node.SYMLINK
                else:
                    node = _Node.OTHER
            self._lstat_cache[path] = node
        return self._lstat_cache[path]

    def lower(self, path: str) -> _Node | None:
        """The lower content at ``path`` once deletions and replacements so far are done."""
        if path in self.gone or "" in self.opaque:
            return None
        for prefix in _prefixes(path):
            if prefix in self.gone or prefix in self.opaque:
                return None
        return self.lstat(path)

    def current(self, path: str) -> _Node | None:
        return self.layer[path] if path in self.layer else self.lower(path)

    def whiteout_parent(self, member: str, parent: str, deleted: set[str]) -> bool:
        """Whether ``parent`` is a real lower directory; refuses one behind a symlink."""
        for prefix in [*_prefixes(parent), parent] if parent else []:
            if prefix in deleted:
                return False
            node = self.lstat(prefix)
            if node is _Node.SYMLINK:
                raise UnsafeTarball(member, f"would delete through the symbolic link {prefix!r}")
            if node is not _Node.DIR:
                return False
        return True

    def walk_parents(self, entry: _Entry) -> None:
        """Checks the parents of a member; missing ones will be made as directories."""
        for prefix in _prefixes(entry.path):
            node = self.current(prefix)
            if node is _Node.SYMLINK:
                raise UnsafeTarball(
                    entry.member, f"would be written through the symbolic link {prefix!r}"
                )
            if node is _Node.OTHER:
                raise CorruptTarball(
                    f"has a parent {prefix!r} that is not a directory", entry.member
                )
            self.layer[prefix] = _Node.DIR

    def link_target(self, entry: _Entry) -> _Node:
        """Checks a hard link's target, which must exist when the link is made."""
        if entry.link in ("", entry.path):
            raise CorruptTarball(f"is a hard link to {entry.link or '.'!r}", entry.member)
        node: _Node | None = None
        for prefix in _prefixes(entry.link):
            node = self.current(prefix)
            if node is _Node.SYMLINK:
                raise UnsafeTarball(
                    entry.member, f"is a hard link through the symbolic link {prefix!r}"
                )
            if node is not _Node.DIR:
                node = None
                break
        else:
            node = self.current(entry.link)
        if node is None:
            raise CorruptTarball(
                f"is a hard link to {entry.link!r}, which is neither earlier in the archive "
                "nor in the lower content",
                entry.member,
            )
        if node is _Node.DIR:
            raise CorruptTarball(f"is a hard link to the directory {entry.link!r}", entry.member)
        return node

    def place(self, entry: _Entry) -> None:
        """Records ``entry`` as extracted, refusing what cannot be."""
        if entry.path == "":
            if entry.kind is not _Kind.DIR:
                raise CorruptTarball(
                    f"names the layer's root but is a {entry.kind.value}", entry.member
                )
            return

        self.walk_parents(entry)
        if entry.kind is _Kind.SYMLINK:
            _check_symlink(entry)
            node = _Node.SYMLINK
        elif entry.kind is _Kind.HARDLINK:
            node = self.link_target(entry)
        elif entry.kind is _Kind.DIR:
            node = _Node.DIR
        else:
            node = _Node.OTHER

        here = self.current(entry.path)
        if node is not _Node.DIR and self.layer.get(entry.path) is _Node.DIR:
            raise CorruptTarball(
                f"replaces the directory {entry.path!r} that this layer fills", entry.member
            )
        if here is not None and not (here is _Node.DIR and node is _Node.DIR):
            self.gone.add(entry.path)  # what was there is removed first
        self.layer[entry.path] = node


def _check_symlink(entry: _Entry) -> None:
    target = entry.link
    if not target:
        raise CorruptTarball("is a symbolic link with an empty target", entry.member)
    if "\x00" in target:
        raise UnsafeTarball(entry.member, "has a NUL byte in its link target")
    if target.startswith("/"):
        return  # from the image's root: cannot leave it
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(entry.path), target))
    if resolved == ".." or resolved.startswith("../"):
        raise UnsafeTarball(
            entry.member, f"is a symbolic link to {target!r}, which points outside the root"
        )


def _entry(info: tarfile.TarInfo) -> _Entry | str:
    """The member as an entry, or the base name of a whiteout member."""
    path = _split(info.name, info.name)
    base = posixpath.basename(path)
    if base.startswith(WHITEOUT_PREFIX):
        return base
    kind = _kind_of(info)
    _check_header(info)
    link = ""
    if kind is _Kind.SYMLINK:
        link = info.linkname
    elif kind is _Kind.HARDLINK:
        if "\x00" in info.linkname:
            raise UnsafeTarball(info.name, "has a NUL byte in its link target")
        if info.linkname.startswith("/") or ".." in info.linkname.split("/"):
            raise UnsafeTarball(
                info.name, f"is a hard link to {info.linkname!r}, which is outside the root"
            )
        link = _split(info.linkname, info.name)
    return _Entry(info.name, path, kind, info, link, _mtime_ns(info), _xattrs(info))


def _plan(members: list[tarfile.TarInfo], root: str) -> _Plan:
    """Checks every member against the lower content in ``root``; writes nothing."""
    checker = _Checker(root)
    entries: list[_Entry] = []
    whiteouts: list[tuple[str, str]] = []  # (member, deleted path)
    opaque: list[tuple[str, str]] = []  # (member, directory)

    for info in members:
        entry = _entry(info)
        if isinstance(entry, _Entry):
            entries.append(entry)
            continue
        parent = posixpath.dirname(_split(info.name, info.name))
        if entry == OPAQUE_MARKER:
            opaque.append((info.name, parent))
        elif entry.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            log.debug("layer member %r: aufs metadata, skipped", info.name)
        else:
            name = entry[len(WHITEOUT_PREFIX) :]
            if name in ("", ".", ".."):
                raise UnsafeTarball(info.name, f"is a whiteout of {name!r}")
            whiteouts.append((info.name, posixpath.join(parent, name)))

    # Whiteouts and markers act on the lower content only, so they go first.
    targets = {path for _, path in whiteouts}
    deletions: list[str] = []
    for member, path in sorted(whiteouts, key=lambda item: item[1].count("/")):
        if checker.whiteout_parent(member, posixpath.dirname(path), targets - {path}):
            if checker.lstat(path) is not None:
                deletions.append(path)
            checker.gone.add(path)
    clear: list[str] = []
    for member, directory in opaque:
        if checker.whiteout_parent(member, directory, targets):
            clear.append(directory)
        checker.opaque.add(directory)

    for entry in entries:
        checker.place(entry)

    total = sum(entry.info.size for entry in entries if entry.kind is _Kind.FILE)
    return _Plan(
        tuple(deletions),
        tuple(sorted(set(clear))),
        tuple(entries),
        len(whiteouts) + len(opaque),
        total,
    )


# -- writing ---------------------------------------------------------------------------


class _Writer:
    def __init__(self, root: str, plan: _Plan, progress: Progress | None) -> None:
        self.root = root
        self.plan = plan
        self.progress = progress
        self.done = 0
        self.files = 0
        self.directories = 0
        self.links = 0
        self.dirs: dict[str, _Entry] = {}
        self.known_dirs: set[str] = set()

    def full(self, path: str) -> str:
        return posixpath.join(self.root, path) if path else self.root

    def advance(self, count: int) -> None:
        self.done += count
        if self.progress is not None:
            self.progress(self.done, self.plan.total_bytes)

    def remove(self, path: str) -> None:
        full = self.full(path)
        try:
            mode = os.lstat(full).st_mode
        except FileNotFoundError:
            return
        if stat.S_ISDIR(mode):
            shutil.rmtree(full)
        else:
            os.unlink(full)

    def delete_lower(self) -> None:
        for path in self.plan.deletions:
            log.debug("whiteout: remove %r", path)
            self.remove(path)
        for directory in self.plan.opaque:
            log.debug("opaque: empty %r", directory or ".")
            full = self.full(directory)
            if not stat.S_ISDIR(os.lstat(full).st_mode):
                continue
            for name in sorted(os.listdir(full)):
                self.remove(posixpath.join(directory, name))

    def make_parents(self, entry: _Entry) -> None:
        for prefix in _prefixes(entry.path):
            if prefix in self.known_dirs:
                continue
            full = self.full(prefix)
            try:
                mode = os.lstat(full).st_mode
            except FileNotFoundError:
                os.mkdir(full)
                os.chmod(full, 0o755)
                mode = stat.S_IFDIR
            if not stat.S_ISDIR(mode):  # the checks make this impossible; never write through
                raise UnsafeTarball(
                    entry.member, f"has a parent {prefix!r} that is not a directory"
                )
            self.known_dirs.add(prefix)

    def put(self, entry: _Entry, tar: tarfile.TarFile) -> None:
        if entry.path == "":
            self.dirs[""] = entry
            self.directories += 1
            return

        self.make_parents(entry)
        full = self.full(entry.path)
        info = entry.info
        if entry.kind is _Kind.DIR:
            try:
                is_dir = stat.S_ISDIR(os.lstat(full).st_mode)
            except FileNotFoundError:
                is_dir = False
            if not is_dir:
                self.remove(entry.path)
                os.mkdir(full, 0o700)
            self.known_dirs.add(entry.path)
            self.dirs[entry.path] = entry  # owner, mode and times once it is filled
            self.directories += 1
            return

        self.remove(entry.path)
        if entry.kind is _Kind.FILE:
            self.write_file(entry, full, tar)
            self.files += 1
        elif entry.kind is _Kind.HARDLINK:
            os.link(self.full(entry.link), full, follow_symlinks=False)
            self.links += 1
        elif entry.kind is _Kind.SYMLINK:
            os.symlink(entry.link, full)
            os.chown(full, info.uid, info.gid, follow_symlinks=False)
            self.set_xattrs(entry, full)
            os.utime(full, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
            self.links += 1
        else:
            kind = {_Kind.CHAR: stat.S_IFCHR, _Kind.BLOCK: stat.S_IFBLK, _Kind.FIFO: stat.S_IFIFO}
            device = 0 if entry.kind is _Kind.FIFO else os.makedev(info.devmajor, info.devminor)
            os.mknod(full, 0o600 | kind[entry.kind], device)
            self.set_attrs(entry, full)
            self.files += 1

    def write_file(self, entry: _Entry, full: str, tar: tarfile.TarFile) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(full, flags, 0o600)
        with open(fd, "wb", closefd=True) as out:
            data = tar.extractfile(entry.info)
            if data is None:  # tarfile only returns None for non-files
                raise CorruptTarball("has no data", entry.member)
            with data:
                while chunk := data.read(_CHUNK):
                    view = memoryview(chunk)
                    for start in range(0, len(chunk), _HOLE):
                        end = min(start + _HOLE, len(chunk))
                        if chunk.count(0, start, end) == end - start:
                            out.seek(end - start, io.SEEK_CUR)  # a hole stays a hole
                        else:
                            out.write(view[start:end])
                    self.advance(len(chunk))
            out.truncate(entry.info.size)
            out.flush()
            self.set_attrs(entry, fd)

    def set_xattrs(self, entry: _Entry, target: str | int) -> None:
        follow = isinstance(target, int)  # an fd is the file itself
        for name, value in entry.xattrs:
            try:
                os.setxattr(target, name, value, follow_symlinks=follow)
            except OSError as exc:
                if exc.errno not in (errno.ENOTSUP, errno.EPERM):
                    raise
                log.warning(
                    "layer member %r: extended attribute %r not set: %s",
                    entry.member,
                    name,
                    _os_reason(exc),
                )

    def set_attrs(self, entry: _Entry, target: str | int) -> None:
        """Owner, then mode (chown clears set-uid), then xattrs, then times.

        ``target`` is an fd, or the path of anything but a symbolic link.
        """
        info = entry.info
        follow = isinstance(target, int)
        os.chown(target, info.uid, info.gid, follow_symlinks=follow)
        os.chmod(target, info.mode & 0o7777)
        self.set_xattrs(entry, target)
        os.utime(target, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=follow)

    def finish_dirs(self) -> None:
        deepest_first = sorted(self.dirs, key=lambda path: -1 if path == "" else path.count("/"))
        for path in reversed(deepest_first):
            self.set_attrs(self.dirs[path], self.full(path))


def apply(tarball: Tarball, root: Path, *, progress: Progress | None = None) -> ApplyStats:
    """Extracts the layer ``tarball`` (plain, gzip, xz, bzip2) onto the lower content in ``root``.

    ``root`` is the mounted file system of the new layer, holding a copy of its parent.
    Whiteouts and opaque markers delete from that content; members are then written
    in archive order; directories get their owner, mode and times last.  ``progress``
    is called with ``(done_bytes, total_bytes)`` of file data as it is written.

    Raises:
        UnsafeTarball: a member would leave ``root`` or go through a symbolic link;
            nothing was written.
        CorruptTarball: the archive is damaged, truncated or holds an impossible
            member (a hard link to nothing); nothing was written.
        UnsupportedCompression: zstd without a zstd module; nothing was written.
        LayerIOError: the file system failed while writing; ``root`` is partly written.
    """
    root_s = os.fspath(root)
    if not os.path.isdir(root_s):
        raise InvalidInput(f"layer root {root_s!r} is not a directory")

    with _open_raw(tarball) as raw:
        plan = _plan(_read_headers(raw), root_s)
        log.debug(
            "apply layer into %s: %d members, %d whiteouts, %d bytes",
            root_s,
            len(plan.entries),
            plan.whiteouts,
            plan.total_bytes,
        )

        writer = _Writer(root_s, plan, progress)
        entry: _Entry | None = None
        try:
            writer.delete_lower()
            if progress is not None:
                progress(0, plan.total_bytes)
            tar = tarfile.TarFile(fileobj=_decompressed(raw), mode="r")
            for entry in plan.entries:
                writer.put(entry, tar)
            entry = None
            writer.finish_dirs()
        except OSError as exc:
            where = f"member {entry.member!r}" if entry is not None else "the lower content"
            raise LayerIOError(
                f"applying layer into {root_s}: writing {where} failed: {_os_reason(exc)}"
            ) from exc
        except (tarfile.TarError, EOFError, lzma.LZMAError, zlib.error) as exc:
            raise CorruptTarball(f"changed or damaged while it was applied ({exc})") from exc

    stats = ApplyStats(writer.files, writer.directories, writer.links, plan.whiteouts, writer.done)
    log.debug("applied layer into %s: %s", root_s, stats)
    return stats


# -- exporting -------------------------------------------------------------------------


def _read_xattrs(full: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(full, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM):
            return {}
        raise
    found: dict[str, bytes] = {}
    for name in sorted(names):
        if name in _EXPORT_XATTR_SKIP or name.startswith(_EXPORT_XATTR_SKIP_PREFIXES):
            continue
        found[name] = os.getxattr(full, name, follow_symlinks=False)
    return found


def _link_target(full: str, st: os.stat_result) -> str:
    return os.readlink(full) if stat.S_ISLNK(st.st_mode) else ""


def _same(new: str, st: os.stat_result, old: str, lst: os.stat_result) -> bool:
    """Whether a lower file is unchanged: metadata, size and times (contents are not read)."""
    if stat.S_IFMT(st.st_mode) != stat.S_IFMT(lst.st_mode):
        return False
    fields = ("st_mode", "st_uid", "st_gid", "st_mtime_ns")
    if any(getattr(st, name) != getattr(lst, name) for name in fields):
        return False
    if stat.S_ISREG(st.st_mode) and st.st_size != lst.st_size:
        return False
    if (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)) and st.st_rdev != lst.st_rdev:
        return False
    if _link_target(new, st) != _link_target(old, lst):
        return False
    return _read_xattrs(new) == _read_xattrs(old)


class _Exporter:
    def __init__(self, root: str, lower: str | None, tar: tarfile.TarFile) -> None:
        self.root = root
        self.lower = lower
        self.tar = tar
        self.inodes: dict[tuple[int, int], str] = {}

    def diff(self, path: str, lower_is_dir: bool) -> list[tuple[str, os.stat_result | None]]:
        """Changed paths under the directory ``path`` (None: a whiteout), sorted."""
        full = posixpath.join(self.root, path)
        names = os.listdir(full)
        old_names: set[str] = set()
        if lower_is_dir and self.lower is not None:
            old_names = set(os.listdir(posixpath.join(self.lower, path)))

        items: list[tuple[str, os.stat_result | None]] = []
        for name in sorted([*names, *(WHITEOUT_PREFIX + n for n in old_names - set(names))]):
            child = posixpath.join(path, name)
            if name not in names:
                items.append((child, None))
                continue
            if name.startswith(WHITEOUT_PREFIX):
                raise InvalidInput(
                    f"cannot export {child!r}: names starting with {WHITEOUT_PREFIX!r} "
                    "mean whiteouts in a layer"
                )
            st = os.lstat(posixpath.join(self.root, child))
            lst = None
            if name in old_names and self.lower is not None:
                lst = os.lstat(posixpath.join(self.lower, child))
            changed = lst is None or not _same(
                posixpath.join(self.root, child), st, posixpath.join(self.lower or "", child), lst
            )
            if stat.S_ISDIR(st.st_mode):
                below = self.diff(child, lst is not None and stat.S_ISDIR(lst.st_mode))
                # A parent of a change comes along, so that its times come back too.
                if changed or below:
                    items.append((child, st))
                items.extend(below)
            elif changed:
                items.append((child, st))
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                self.inodes.setdefault((st.st_dev, st.st_ino), child)
        return items

    def add(self, path: str, st: os.stat_result | None) -> None:
        if st is None:
            info = tarfile.TarInfo(path)
            info.mode = 0o644
            self.tar.addfile(info)
            return

        full = posixpath.join(self.root, path) if path else self.root
        mode = st.st_mode
        info = tarfile.TarInfo(path or ".")
        info.mode = stat.S_IMODE(mode)
        info.uid, info.gid = st.st_uid, st.st_gid
        info.uname = info.gname = ""
        seconds, fraction = divmod(st.st_mtime_ns, _NS)
        info.mtime = seconds
        pax: dict[str, str] = {}
        if fraction:  # exact to the ns, where ustar has whole seconds
            pax["mtime"] = format(Decimal(st.st_mtime_ns).scaleb(-9), "f")
        for name, value in _read_xattrs(full).items():
            pax[XATTR_PAX_PREFIX + name] = value.decode("utf-8", "surrogateescape")
        info.pax_headers = pax

        if stat.S_ISDIR(mode):
            info.type = tarfile.DIRTYPE
        elif stat.S_ISLNK(mode):
            info.type = tarfile.SYMTYPE
            info.linkname = os.readlink(full)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif stat.S_ISFIFO(mode):
            info.type = tarfile.FIFOTYPE
        elif stat.S_ISREG(mode):
            first = self.inodes.get((st.st_dev, st.st_ino), path)
            if first != path:
                info.type = tarfile.LNKTYPE
                info.linkname = first
            else:
                info.size = st.st_size
                fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                with open(fd, "rb") as data:
                    self.tar.addfile(info, data)
                return
        else:
            log.debug("export: %r is a socket or unknown file type, skipped", path)
            return
        self.tar.addfile(info)


def export(root: Path, out: IO[bytes], *, lower: Path | None = None) -> None:
    """Writes ``root`` to ``out`` as an uncompressed PAX layer tarball, in sorted order.

    With ``lower``, only what differs from it: added and changed paths (a change is
    one of type, mode, owner, mtime, size, device, link target or xattrs; contents
    are not compared), the directories above them, and a ``.wh.NAME`` whiteout for
    each path of ``lower`` that ``root`` no longer has.  Applying the result onto a
    copy of ``lower`` gives ``root``.  Hard links within ``root`` stay hard links.

    Raises:
        InvalidInput: ``root`` (or ``lower``) is not a directory, or a name in
            ``root`` starts with ``.wh.``.
        LayerIOError: reading a file or writing ``out`` failed.
    """
    root_s = os.fspath(root)
    lower_s = os.fspath(lower) if lower is not None else None
    for where in (root_s, lower_s):
        if where is not None and not os.path.isdir(where):
            raise InvalidInput(f"cannot export a layer: {where!r} is not a directory")

    try:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            exporter = _Exporter(root_s, lower_s, tar)
            items = exporter.diff("", lower_s is not None)
            root_st = os.lstat(root_s)
            if lower_s is None or items or not _same(root_s, root_st, lower_s, os.lstat(lower_s)):
                items.insert(0, ("", root_st))
            for path, st in items:
                exporter.add(path, st)
    except OSError as exc:
        raise LayerIOError(f"exporting layer {root_s}: {_os_reason(exc)}") from exc
    log.debug("exported layer %s (against %s): %d entries", root_s, lower_s, len(items))
