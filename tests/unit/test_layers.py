"""Layer tarballs: every member kind, whiteouts, compression, hostile archives, export.

The archives are built here with ``tarfile``; the layer roots are plain directories
under ``tmp_path``.  Ownership and device nodes need root, as applying a layer does.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import io
import lzma
import os
import posixpath
import stat
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from layering import layers
from layering.errors import InvalidInput, LayeringError
from layering.layers import (
    ApplyStats,
    CorruptTarball,
    UnsafeTarball,
    UnsupportedCompression,
    apply,
    export,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="applying layers needs root")

T0 = 1_600_000_000
T1 = 1_650_000_000

Member = tuple[tarfile.TarInfo, bytes | None]


# -- building archives -------------------------------------------------------------------


def _info(name: str, kind: bytes, **attrs: Any) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = attrs.pop("mode", 0o644)
    info.uid = attrs.pop("uid", 0)
    info.gid = attrs.pop("gid", 0)
    info.mtime = attrs.pop("mtime", T0)
    pax: dict[str, str] = attrs.pop("pax", {})
    for name_, value in attrs.pop("xattrs", {}).items():
        pax["SCHILY.xattr." + name_] = value.decode("utf-8", "surrogateescape")
    info.pax_headers = pax
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def reg(name: str, data: bytes = b"", **attrs: Any) -> Member:
    info = _info(name, tarfile.REGTYPE, **attrs)
    info.size = len(data)
    return info, data


def dir_(name: str, **attrs: Any) -> Member:
    attrs.setdefault("mode", 0o755)
    return _info(name, tarfile.DIRTYPE, **attrs), None


def sym(name: str, target: str, **attrs: Any) -> Member:
    return _info(name, tarfile.SYMTYPE, linkname=target, mode=0o777, **attrs), None


def hard(name: str, target: str) -> Member:
    return _info(name, tarfile.LNKTYPE, linkname=target), None


def node(name: str, kind: bytes, major: int = 0, minor: int = 0, **attrs: Any) -> Member:
    return _info(name, kind, devmajor=major, devminor=minor, **attrs), None


def build(*members: Member, compression: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    raw = buf.getvalue()
    compressors: dict[str, Callable[[bytes], bytes]] = {
        "": lambda b: b,
        "gzip": gzip.compress,
        "xz": lambda b: lzma.compress(b, format=lzma.FORMAT_XZ),
        "bzip2": bz2.compress,
    }
    return compressors[compression](raw)


def apply_bytes(data: bytes, root: Path, **kwargs: Any) -> ApplyStats:
    return apply(io.BytesIO(data), root, **kwargs)


# -- looking at trees --------------------------------------------------------------------


def xattrs_of(path: Path) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.ENOTSUP:
            return {}
        raise
    return {name: os.getxattr(path, name, follow_symlinks=False) for name in sorted(names)}


def snapshot(top: Path, *, exact: bool = True) -> dict[str, dict[str, object]]:
    """Every path under ``top`` (and ``top``): type, metadata, contents, xattrs.

    ``exact`` adds inode numbers and ctimes, which any write or attribute change
    moves: two exact snapshots are equal only if nothing was touched at all.
    """
    tree: dict[str, dict[str, object]] = {}
    first_of_inode: dict[int, str] = {}

    def visit(path: Path, rel: str) -> None:
        st = os.lstat(path)
        record: dict[str, object] = {
            "type": stat.S_IFMT(st.st_mode),
            "mode": stat.S_IMODE(st.st_mode),
            "uid": st.st_uid,
            "gid": st.st_gid,
            "mtime_ns": st.st_mtime_ns,
            "xattrs": xattrs_of(path),
        }
        if exact:
            record.update(ino=st.st_ino, ctime_ns=st.st_ctime_ns, nlink=st.st_nlink)
        if stat.S_ISREG(st.st_mode):
            record["data"] = path.read_bytes()
            if st.st_nlink > 1:
                record["same_file_as"] = first_of_inode.setdefault(st.st_ino, rel)
        elif stat.S_ISLNK(st.st_mode):
            record["link"] = os.readlink(path)
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            record["rdev"] = st.st_rdev
        tree[rel] = record
        if stat.S_ISDIR(st.st_mode):
            for name in sorted(os.listdir(path)):
                visit(path / name, f"{rel}/{name}" if rel != "." else name)

    visit(top, ".")
    return tree


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def xattrs_ok(tmp_path: Path) -> bool:
    probe = tmp_path / "xattr-probe"
    probe.touch()
    try:
        os.setxattr(probe, "user.probe", b"1")
    except OSError as exc:
        if exc.errno != errno.ENOTSUP:
            raise
        return False
    finally:
        probe.unlink()
    return True


# -- every member kind -------------------------------------------------------------------

EVERY_KIND = (
    dir_("etc/", mode=0o750, uid=10, gid=20, mtime=T1, xattrs={"user.dir": b"d"}),
    reg(
        "etc/passwd",
        b"root:x:0:0\n",
        mode=0o644,
        uid=1000,
        gid=1001,
        mtime=T0,
        xattrs={"user.mime": b"text/plain", "trusted.bin": b"\x00\xff\x01"},
    ),
    reg("usr/bin/su", b"\x7fELF", mode=0o4755, mtime=T0, pax={"mtime": "1600000000.123456789"}),
    reg("usr/bin/sg", b"", mode=0o2711, uid=0, gid=5),
    sym("usr/bin/sh", "dash", uid=7, gid=8, mtime=T1),
    sym("etc/localtime", "/usr/share/zoneinfo/UTC"),
    hard("usr/bin/newgrp", "usr/bin/su"),
    node("dev/null", tarfile.CHRTYPE, 1, 3, mode=0o666),
    node("dev/loop0", tarfile.BLKTYPE, 7, 0, mode=0o660, gid=6),
    node("run/initctl", tarfile.FIFOTYPE, mode=0o600),
)


def test_every_member_kind_with_its_metadata(root: Path, xattrs_ok: bool) -> None:
    stats = apply_bytes(build(*EVERY_KIND), root)

    assert stats == ApplyStats(files=6, directories=1, links=3, whiteouts=0, bytes=15)

    etc = os.lstat(root / "etc")
    assert (stat.S_IMODE(etc.st_mode), etc.st_uid, etc.st_gid) == (0o750, 10, 20)
    assert etc.st_mtime_ns == T1 * 10**9  # set after passwd and localtime were made in it

    passwd = os.lstat(root / "etc/passwd")
    assert (root / "etc/passwd").read_bytes() == b"root:x:0:0\n"
    assert (stat.S_IMODE(passwd.st_mode), passwd.st_uid, passwd.st_gid) == (0o644, 1000, 1001)
    assert passwd.st_mtime_ns == T0 * 10**9

    su = os.lstat(root / "usr/bin/su")
    assert stat.S_IMODE(su.st_mode) == 0o4755  # set-uid survives the chown
    assert su.st_mtime_ns == 1_600_000_000_123_456_789  # PAX mtime to the ns
    sg = os.lstat(root / "usr/bin/sg")
    assert (stat.S_IMODE(sg.st_mode), sg.st_gid) == (0o2711, 5)

    assert os.readlink(root / "usr/bin/sh") == "dash"
    sh = os.lstat(root / "usr/bin/sh")
    assert (sh.st_uid, sh.st_gid, sh.st_mtime_ns) == (7, 8, T1 * 10**9)
    assert os.readlink(root / "etc/localtime") == "/usr/share/zoneinfo/UTC"

    newgrp = os.lstat(root / "usr/bin/newgrp")
    assert (newgrp.st_ino, newgrp.st_nlink) == (su.st_ino, 2)

    null = os.lstat(root / "dev/null")
    assert stat.S_ISCHR(null.st_mode) and stat.S_IMODE(null.st_mode) == 0o666
    assert (os.major(null.st_rdev), os.minor(null.st_rdev)) == (1, 3)
    loop0 = os.lstat(root / "dev/loop0")
    assert stat.S_ISBLK(loop0.st_mode) and (os.major(loop0.st_rdev), loop0.st_gid) == (7, 6)
    assert stat.S_ISFIFO(os.lstat(root / "run/initctl").st_mode)

    # Parents the archive does not list are made 0755, owned by root.
    usr = os.lstat(root / "usr")
    assert (stat.S_IMODE(usr.st_mode), usr.st_uid) == (0o755, 0)

    assert os.getxattr(root / "etc/passwd", "trusted.bin") == b"\x00\xff\x01"
    if xattrs_ok:
        assert os.getxattr(root / "etc/passwd", "user.mime") == b"text/plain"
        assert os.getxattr(root / "etc", "user.dir") == b"d"


def test_directory_times_are_set_after_their_contents(root: Path) -> None:
    archive = build(
        dir_("a/", mtime=T0),
        dir_("a/b/", mtime=T0 + 1),
        reg("a/b/f", b"x", mtime=T0 + 2),
        reg("a/g", b"y", mtime=T0 + 3),
        dir_("./", mode=0o711, mtime=T0 + 4),
    )
    apply_bytes(archive, root)

    assert os.lstat(root / "a").st_mtime == T0
    assert os.lstat(root / "a/b").st_mtime == T0 + 1
    assert os.lstat(root / "a/b/f").st_mtime == T0 + 2
    root_st = os.lstat(root)
    assert (root_st.st_mtime, stat.S_IMODE(root_st.st_mode)) == (T0 + 4, 0o711)


def test_sparse_regions_stay_holes_and_data_is_exact(root: Path) -> None:
    data = b"head" + bytes(4 << 20) + b"tail"
    apply_bytes(build(reg("big", data)), root)

    assert (root / "big").read_bytes() == data
    assert os.lstat(root / "big").st_blocks * 512 <= 256 << 10


def test_progress_reports_bytes_up_to_the_total(root: Path) -> None:
    calls: list[tuple[int, int]] = []
    sizes = [3 << 20, 10, 0, 5]
    archive = build(*(reg(f"f{i}", b"z" * size) for i, size in enumerate(sizes)))

    stats = apply_bytes(archive, root, progress=lambda done, total: calls.append((done, total)))

    total = sum(sizes)
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert {t for _, t in calls} == {total} and len(calls) >= 4
    assert stats.bytes == total


# -- compression and sources -------------------------------------------------------------


@pytest.mark.parametrize("compression", ["", "gzip", "xz", "bzip2"])
def test_compressions_give_the_same_tree(tmp_path: Path, compression: str) -> None:
    plain, packed = tmp_path / "plain", tmp_path / "packed"
    plain.mkdir()
    packed.mkdir()
    archive = build(*EVERY_KIND, compression=compression)
    assert archive != build(*EVERY_KIND) or compression == ""

    apply_bytes(build(*EVERY_KIND), plain)
    path = tmp_path / "layer.tar"
    path.write_bytes(archive)
    apply(path, packed)

    # Directories the archive does not list are made now: their times differ.
    implicit = {".", "usr", "usr/bin", "dev", "run"}
    trees = [snapshot(packed, exact=False), snapshot(plain, exact=False)]
    for tree in trees:
        for name in implicit:
            del tree[name]["mtime_ns"]
    assert trees[0] == trees[1]
    assert len(trees[0]) == 15  # the root and 14 paths


class _Pipe(io.RawIOBase):
    """A read-only stream that cannot seek, like a pipe or an HTTP body."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        chunk = self._data.read(min(len(buffer), 1000))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def test_a_stream_that_cannot_seek_is_spooled(root: Path) -> None:
    stream = _Pipe(build(reg("a/b", b"through a pipe"), compression="gzip"))
    assert not stream.seekable()

    stats = apply(io.BufferedReader(stream), root)

    assert (root / "a/b").read_bytes() == b"through a pipe"
    assert stats.files == 1


def test_zstd_without_a_zstd_module_is_refused_clearly(root: Path) -> None:
    try:
        __import__("compression.zstd")
    except ImportError:
        pass
    else:
        pytest.skip("this Python reads zstd")
    before = snapshot(root)

    with pytest.raises(UnsupportedCompression, match="zstd") as raised:
        apply_bytes(b"\x28\xb5\x2f\xfd" + bytes(64), root)

    assert isinstance(raised.value, InvalidInput)
    assert snapshot(root) == before


def test_a_missing_tarball_is_invalid_input(root: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"cannot open layer tarball .*ENOENT"):
        apply(tmp_path / "nope.tar", root)


# -- whiteouts -----------------------------------------------------------------------------


def _lower(root: Path) -> None:
    (root / "a/d/deep").mkdir(parents=True)
    (root / "a/x").write_bytes(b"lower x")
    (root / "a/y").write_bytes(b"lower y")
    (root / "a/d/deep/z").write_bytes(b"lower z")
    (root / "keep").write_bytes(b"keep")
    os.symlink("/nowhere", root / "a/ln")


def test_whiteouts_delete_lower_content_and_are_not_created(root: Path) -> None:
    _lower(root)
    archive = build(reg("a/.wh.x"), reg("a/.wh.d"), reg("a/.wh.ln"), reg("a/.wh.absent"))

    stats = apply_bytes(archive, root)

    assert sorted(os.listdir(root / "a")) == ["y"]
    assert (root / "keep").read_bytes() == b"keep"
    assert stats.whiteouts == 4 and stats.files == 0


@pytest.mark.parametrize("whiteout_first", [True, False])
def test_a_whiteout_spares_the_same_name_in_its_own_layer(
    root: Path, whiteout_first: bool
) -> None:
    _lower(root)
    members = [reg("a/.wh.x"), reg("a/x", b"upper x"), reg("a/.wh.d"), dir_("a/d/")]
    if not whiteout_first:
        members.reverse()

    apply_bytes(build(*members), root)

    assert (root / "a/x").read_bytes() == b"upper x"
    assert os.listdir(root / "a/d") == []


@pytest.mark.parametrize("marker_first", [True, False])
def test_an_opaque_directory_keeps_only_this_layers_entries(
    root: Path, marker_first: bool
) -> None:
    _lower(root)
    new = [dir_("a/", mode=0o700), reg("a/new", b"n"), dir_("a/d/"), reg("a/d/n2", b"m")]
    marker = reg("a/.wh..wh..opq")
    members = [marker, *new] if marker_first else [*new, marker]

    stats = apply_bytes(build(*members), root)

    assert sorted(os.listdir(root / "a")) == ["d", "new"]
    assert os.listdir(root / "a/d") == ["n2"]
    assert stat.S_IMODE(os.lstat(root / "a").st_mode) == 0o700
    assert (root / "keep").exists()
    assert stats.whiteouts == 1


def test_members_replace_lower_entries_of_another_type(root: Path) -> None:
    _lower(root)
    archive = build(reg("a/d", b"was a directory"), dir_("a/x/"), reg("a/x/inner", b"i"))

    apply_bytes(archive, root)

    assert (root / "a/d").read_bytes() == b"was a directory"
    assert os.listdir(root / "a/x") == ["inner"]


def test_a_lower_symlink_is_replaced_not_written_through(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(b"host file")
    os.symlink(outside, root / "etc-shadow")
    os.symlink(outside, root / "dir-link")

    apply_bytes(build(reg("etc-shadow", b"layer"), dir_("dir-link/", mode=0o700)), root)

    assert outside.read_bytes() == b"host file"
    assert (root / "etc-shadow").read_bytes() == b"layer"
    assert stat.S_ISDIR(os.lstat(root / "dir-link").st_mode)


def test_a_hard_link_may_point_into_the_lower_content(root: Path) -> None:
    _lower(root)
    apply_bytes(build(hard("a/y2", "a/y")), root)

    assert os.lstat(root / "a/y2").st_ino == os.lstat(root / "a/y").st_ino


# -- hostile and broken archives ---------------------------------------------------------


def _pax_name(name: str, **pax: str) -> Member:
    info, data = reg("placeholder", b"")
    info.pax_headers = {"path": name, **pax}
    return info, data


HOSTILE: dict[str, tuple[list[Member], str, type[UnsafeTarball] | type[CorruptTarball]]] = {
    "dot-dot": ([reg("../x", b"pwned")], "../x", UnsafeTarball),
    "dot-dot-inside": ([reg("a/../../x", b"pwned")], "a/../../x", UnsafeTarball),
    "absolute": ([reg("/etc/x", b"pwned")], "/etc/x", UnsafeTarball),
    "symlink-escape": ([sym("a/up", "../../outside")], "a/up", UnsafeTarball),
    "write-through-new-symlink": (
        [sym("evil", "/etc"), reg("evil/passwd", b"pwned")],
        "evil/passwd",
        UnsafeTarball,
    ),
    "write-through-inner-symlink": (
        [dir_("real/"), sym("alias", "real"), reg("alias/f", b"x")],
        "alias/f",
        UnsafeTarball,
    ),
    "write-through-lower-symlink": (
        [reg("hostlink/pwned", b"x")],
        "hostlink/pwned",
        UnsafeTarball,
    ),
    "dir-through-lower-symlink": ([dir_("hostlink/sub/")], "hostlink/sub", UnsafeTarball),
    "whiteout-through-lower-symlink": (
        [reg("hostlink/.wh.secret")],
        "hostlink/.wh.secret",
        UnsafeTarball,
    ),
    "opaque-in-lower-symlink": (
        [reg("hostlink/.wh..wh..opq")],
        "hostlink/.wh..wh..opq",
        UnsafeTarball,
    ),
    "whiteout-of-dot-dot": ([reg("a/.wh...")], "a/.wh...", UnsafeTarball),
    "hardlink-dot-dot": ([hard("h", "../outside/secret")], "h", UnsafeTarball),
    "hardlink-absolute": ([hard("h", "/etc/passwd")], "h", UnsafeTarball),
    "hardlink-through-symlink": ([hard("h", "hostlink/secret")], "h", UnsafeTarball),
    "hardlink-to-nothing": ([hard("h", "not/there")], "h", CorruptTarball),
    "hardlink-to-later-member": ([hard("h", "later"), reg("later", b"l")], "h", CorruptTarball),
    "hardlink-to-whited-out": ([reg(".wh.keep"), hard("h", "keep")], "h", CorruptTarball),
    "hardlink-to-directory": ([hard("h", "a")], "h", CorruptTarball),
    "nul-in-name": ([_pax_name("a\x00b")], "a\x00b", UnsafeTarball),
    "nul-in-symlink-target": (
        [sym("s", "x", pax={"linkpath": "x\x00y"})],
        "s",
        UnsafeTarball,
    ),
    "file-under-file": ([reg("keep/child", b"c")], "keep/child", CorruptTarball),
    "root-as-file": ([reg("./", b"")], "./", CorruptTarball),
    "file-over-own-directory": ([reg("n/f", b"1"), reg("n", b"2")], "n", CorruptTarball),
    "unknown-type": ([(_info("vol", b"V"), None)], "vol", CorruptTarball),
    "uid-too-large": ([reg("u", b"x", uid=2**40)], "u", CorruptTarball),
    "gid-unchanged-marker": ([reg("g", b"x", gid=2**32 - 1)], "g", CorruptTarball),
    "name-component-too-long": ([reg("d/" + "n" * 256, b"x")], "d/" + "n" * 256, CorruptTarball),
    "xattr-name-too-long": (
        [reg("x", b"x", xattrs={"user." + "n" * 251: b"v"})],
        "x",
        CorruptTarball,
    ),
    "xattr-value-too-large": (
        [reg("x", b"x", xattrs={"user.big": b"v" * 65537})],
        "x",
        CorruptTarball,
    ),
    "device-number-too-large": ([node("dev", tarfile.CHRTYPE, 4096, 1)], "dev", CorruptTarball),
}


@pytest.fixture
def guarded(root: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A lower content with a symbolic link to a directory outside the root."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    (root / "a").mkdir()
    (root / "a/file").write_bytes(b"lower")
    (root / "keep").write_bytes(b"keep")
    (root / "old").write_bytes(b"old")
    os.symlink(outside, root / "hostlink")
    os.chmod(root, 0o755)
    return root, outside


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_members_are_refused_before_anything_is_written(
    guarded: tuple[Path, Path], case: str
) -> None:
    root, outside = guarded
    members, name, error = HOSTILE[case]
    # Benign members and a whiteout first, the directory entry last: extracting
    # before checking would change the tree.
    archive = build(
        reg("good", b"benign"), reg(".wh.old"), *members, dir_("./", mode=0o700, mtime=T0)
    )
    before = snapshot(root), snapshot(outside)

    with pytest.raises((UnsafeTarball, CorruptTarball)) as raised:
        apply_bytes(archive, root)

    assert type(raised.value) is error
    assert raised.value.member == name
    assert repr(name) in str(raised.value)
    assert "\n" not in str(raised.value)
    assert (snapshot(root), snapshot(outside)) == before


BROKEN: dict[str, tuple[Callable[[], bytes], str, str | None]] = {
    "size-past-the-end": (
        lambda: build(reg("big", b"b" * 10240))[: 1536 + 512],
        "runs past the end",
        "big",
    ),
    "huge-size-field": (lambda: _huge_size(), "runs past the end", "claims"),
    "garbage-after-first-member": (
        lambda: build(reg("one", b"1"))[:1536] + b"\x01" * 512 + bytes(1024),
        "not a tar header",
        None,
    ),
    "not-a-tar": (lambda: b"hello, I am not an archive" * 40, "not a readable tar archive", None),
    "empty": (lambda: b"", "not a readable tar archive", None),
    "damaged-gzip": (
        lambda: build(reg("f", b"f" * 5000), compression="gzip")[:-20],
        "not a readable tar archive",
        None,
    ),
}


def _huge_size() -> bytes:
    info, _ = reg("claims", b"")
    info.size = 1 << 40
    header = info.tobuf(tarfile.PAX_FORMAT)
    return header + bytes(4096)


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_archives_are_refused_untouched(root: Path, case: str) -> None:
    make, words, member = BROKEN[case]
    (root / "lower").write_bytes(b"lower")
    before = snapshot(root)

    with pytest.raises(CorruptTarball, match=words) as raised:
        apply_bytes(make(), root)

    assert raised.value.member == member
    assert snapshot(root) == before


def test_refusals_are_layering_errors_and_value_errors(root: Path) -> None:
    with pytest.raises(LayeringError) as raised:
        apply_bytes(build(reg("../x")), root)
    assert isinstance(raised.value, ValueError)
    assert str(raised.value) == "unsafe layer tarball: member '../x' has a '..' component"


def test_the_root_must_be_a_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="not a directory"):
        apply_bytes(build(reg("f")), tmp_path / "missing")


# -- export ------------------------------------------------------------------------------


def _build_lower(top: Path, xattrs_ok: bool) -> None:
    top.mkdir()
    apply_bytes(build(*EVERY_KIND), top)
    (top / "srv/gone-dir/inner").mkdir(parents=True)
    (top / "srv/gone-dir/inner/f").write_bytes(b"f")
    (top / "srv/to-file").mkdir()
    (top / "srv/to-dir").write_bytes(b"file, then a directory")
    (top / "srv/edit").write_bytes(b"before")
    (top / "srv/chmod").write_bytes(b"c")
    (top / "srv/same").write_bytes(b"same")
    (top / "srv/gone").write_bytes(b"gone")
    if xattrs_ok:
        os.setxattr(top / "srv/same", "user.tag", b"v1")


def _change(top: Path, xattrs_ok: bool) -> None:
    srv = top / "srv"
    subprocess.run(["rm", "-r", str(srv / "gone-dir"), str(srv / "gone")], check=True)
    os.rmdir(srv / "to-file")
    (srv / "to-file").write_bytes(b"directory, then a file")
    os.unlink(srv / "to-dir")
    (srv / "to-dir").mkdir()
    (srv / "to-dir/x").write_bytes(b"x")
    (srv / "edit").write_bytes(b"after, longer")
    os.chmod(srv / "chmod", 0o600)
    os.chown(srv / "chmod", 42, 43)
    os.link(top / "etc/passwd", srv / "passwd-link")
    os.symlink("../etc", srv / "etc-link")
    os.mknod(srv / "zero", 0o644 | stat.S_IFCHR, os.makedev(1, 5))
    (top / "new/deeper").mkdir(parents=True)
    (top / "new/deeper/file").write_bytes(b"new")
    os.utime(top / "new/deeper/file", ns=(1, 1_234_567_891))
    os.unlink(top / "run/initctl")
    if xattrs_ok:
        os.setxattr(srv / "same", "user.tag", b"v2")


def _names(archive: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return tar.getnames()


def test_export_of_a_difference_applies_back_to_the_same_tree(
    tmp_path: Path, xattrs_ok: bool
) -> None:
    lower, upper, rebuilt = tmp_path / "lower", tmp_path / "upper", tmp_path / "rebuilt"
    _build_lower(lower, xattrs_ok)
    subprocess.run(["cp", "-a", str(lower), str(upper)], check=True)
    subprocess.run(["cp", "-a", str(lower), str(rebuilt)], check=True)
    _change(upper, xattrs_ok)

    out = io.BytesIO()
    export(upper, out, lower=lower)
    stats = apply_bytes(out.getvalue(), rebuilt)

    assert snapshot(rebuilt, exact=False) == snapshot(upper, exact=False)
    names = _names(out.getvalue())
    assert {"srv/.wh.gone", "srv/.wh.gone-dir", "run/.wh.initctl"} <= set(names)
    assert "srv/chmod" in names and "srv/to-dir/x" in names
    assert not {"etc/passwd", "usr/bin/su", "dev/null", "srv/gone-dir/inner"} & set(names)
    assert ("srv/same" in names) == xattrs_ok
    assert stats.whiteouts == 3


def test_export_without_lower_rebuilds_the_whole_tree(tmp_path: Path, xattrs_ok: bool) -> None:
    source, rebuilt = tmp_path / "source", tmp_path / "rebuilt"
    _build_lower(source, xattrs_ok)
    _change(source, xattrs_ok)
    os.chmod(source, 0o751)
    rebuilt.mkdir()

    out = io.BytesIO()
    export(source, out)
    apply_bytes(out.getvalue(), rebuilt)

    assert snapshot(rebuilt, exact=False) == snapshot(source, exact=False)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        su = tar.getmember("usr/bin/su")  # after newgrp in sorted order
        assert (su.islnk(), su.linkname) == (True, "usr/bin/newgrp")
        assert all(member.uname == "" for member in tar)


def test_export_is_deterministic_and_sorted(tmp_path: Path, xattrs_ok: bool) -> None:
    source = tmp_path / "source"
    _build_lower(source, xattrs_ok)

    first, second = io.BytesIO(), io.BytesIO()
    export(source, first)
    export(source, second)

    assert first.getvalue() == second.getvalue()
    names = [name.rstrip("/") for name in _names(first.getvalue())]
    assert names[0] == "."
    for parent in ("etc", "srv", "srv/gone-dir"):
        children = [posixpath.basename(n) for n in names if posixpath.dirname(n) == parent]
        assert children == sorted(children) and children


def test_export_of_an_unchanged_tree_is_empty(tmp_path: Path) -> None:
    lower, same = tmp_path / "lower", tmp_path / "same"
    _build_lower(lower, xattrs_ok=False)
    subprocess.run(["cp", "-a", str(lower), str(same)], check=True)

    out = io.BytesIO()
    export(same, out, lower=lower)

    assert _names(out.getvalue()) == []


def test_export_refuses_names_that_mean_whiteouts(tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "d").mkdir(parents=True)
    (source / "d/.wh.trick").write_bytes(b"")

    with pytest.raises(InvalidInput, match=r"cannot export 'd/\.wh\.trick'"):
        export(source, io.BytesIO())


def test_public_names() -> None:
    assert layers.WHITEOUT_PREFIX == ".wh." and layers.OPAQUE_MARKER == ".wh..wh..opq"
    assert issubclass(layers.LayerIOError, LayeringError)
