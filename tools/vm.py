#!/usr/bin/env python3
"""Run one command inside a throwaway QEMU guest that has device-mapper.

The host kernel has no device-mapper, so tests that need one run here instead.
The model, in the order things happen:

1. **Kernel.** The package that Debian's ``linux-image-amd64`` depends on (the
   generic flavour; ``-cloud`` lacks 9p) is fetched with ``apt-get download``,
   unpacked with ``dpkg-deb -x`` into the cache and indexed with ``depmod``. The
   ELF kernel is extracted from vmlinuz once, so that qemu boots it through its
   PVH entry instead of decompressing it under emulation at every boot. apt's
   answer is remembered until the apt lists change: later runs ask nothing.
2. **Initramfs.** busybox-static, the modules the guest loads at boot (the 9p
   stack and overlay for the root; loop, ext4 and the device-mapper targets for
   the tests) with their dependencies in load order, and the guest init, written
   as a newc cpio. It is cached under the kernel release and a hash of its inputs.
   Other modules load on demand from the unpacked package, through the host's kmod.
3. **Job.** A second, tiny cpio appended to the first carries the command as a
   shell script (argv quoted, never on the kernel command line) and a per-run
   random nonce.  init deletes the nonce before the command starts, and the
   host deletes the job's initramfs file once it does: the command's output
   cannot end the run with a marker by accident (a command bent on forging one,
   as root in the guest, could still find it in memory; that is not guarded).
4. **Guest.** init loads the modules, mounts the host root read-only over 9p,
   puts a tmpfs overlay on top so the guest can write, chroots there, changes to the
   host's working directory and runs the command with a small, explicit
   environment and stdin from /dev/null. Then it prints
   ``DMIOCTL_VM_EXIT_<nonce>=<status>`` on the serial console and powers off.
5. **Host.** The console streams to stdout while the command runs; boot chatter
   is held back (shown with ``--verbose``, or when the guest never starts the
   command). The marker line is swallowed and its status becomes this process's
   exit status.

Writes inside the guest land in memory and vanish with it; only ``--disk`` adds
a block device, a sparse file deleted after the run. /run and /dev are the
guest's own, so the working directory must lie elsewhere; /tmp is the host's,
with the guest's writes kept apart like everywhere else.

Exit statuses of the host process: the guest command's status (0-255); 124 when
the timeout passes; 125 when the guest stops without reporting a status (panic,
oops, crash, failed boot); 126 when the VM cannot be prepared or started.

Example::

    python3 tools/vm.py -- .venv/bin/python -m pytest -m kernel tests
    python3 tools/vm.py --disk 20G -- sh -c 'blockdev --getsize64 "$DMIOCTL_VM_DISK"'
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import fcntl
import functools
import gzip
import hashlib
import io
import json
import logging
import lzma
import os
import re
import secrets
import selectors
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, BinaryIO

log = logging.getLogger("dmioctl.vm")

DEFAULT_CACHE = Path("/var/cache/dmioctl-vm")
DEFAULT_TIMEOUT = 1800.0
DEFAULT_MEMORY_MIB = 4096
DEFAULT_CPUS = 2

EXIT_TIMEOUT = 124  #: the timeout passed; qemu was killed
EXIT_NO_STATUS = 125  #: the guest stopped without reporting the command's status
EXIT_SETUP = 126  #: the VM could not be prepared or started

#: Bumped whenever the initramfs layout changes in a way its inputs do not show.
INITRAMFS_FORMAT = 1

#: The Debian meta package whose dependency names the kernel to boot.
KERNEL_META_PACKAGE = "linux-image-amd64"

#: 9p mount tag of the host root.
HOST_ROOT_TAG = "hostroot"

#: Where the scratch disk of ``--disk`` appears in the guest.
GUEST_DISK = "/dev/vda"

#: Modules the guest init loads, by module name, each with whether boot must fail
#: without it, in two stages: those the root mount needs, and in the background
#: meanwhile, those of the tests. Dependencies (modules.dep) and soft
#: pre-dependencies (modules.softdep: libcrc32c wants a crc32c implementation
#: loaded first) are added in front of each; built-in modules are skipped.
#: Everything else (xfs, dm-crypt and its ciphers, dm-log-writes, ...) loads on
#: demand: the kernel's request_module() and a plain ``modprobe`` in the guest both
#: run the host's kmod over the kernel package's module tree. Big modules cost
#: here: insmod of xfs alone takes about a second under TCG.
ROOT_MODULES: tuple[tuple[str, bool], ...] = (
    ("virtio_pci", True),
    ("9pnet_virtio", True),
    ("9p", True),
    ("overlay", True),
    ("virtio_blk", True),
)
TEST_MODULES: tuple[tuple[str, bool], ...] = (
    ("loop", True),
    ("crc32c_generic", True),
    ("ext4", True),
    ("dm_mod", True),
    ("dm_thin_pool", True),
    ("dm_snapshot", True),
    ("dm_zero", True),
    ("dm_flakey", True),
    ("dm_delay", True),
)

#: Host environment variables passed into the guest: exact names and prefixes.
PASSED_NAMES = frozenset({"CI"})
PASSED_PREFIXES = ("DMIOCTL_", "PYTEST_")

#: Directories always on the guest's PATH, after the host's own.
STANDARD_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")

#: busybox applets the guest init calls, linked in /bin of the initramfs.
BUSYBOX_APPLETS = (
    "sh", "mount", "mkdir", "insmod", "cp", "cat", "env", "chroot", "sync", "poweroff",
    "sleep", "uname",
)  # fmt: skip

#: Directories of the initramfs.
INITRAMFS_DIRECTORIES = (
    "bin", "dev", "etc", "lib", "lib/modules", "mnt", "mnt/host", "mnt/rw", "newroot", "proc",
    "sbin", "sys", "tmp",
)  # fmt: skip

#: The guest's /init. It reads /etc/modules (written by the host) and the per-run
#: /job directory (appended to the initramfs for each run).
INIT_SCRIPT = r"""#!/bin/sh
# init of the dmioctl test VM, written by tools/vm.py.
fail() {
    echo "dmioctl-vm: $*"
    poweroff -f
    sleep 60
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

load() {
    while read -r name required stage; do
        [ "$stage" = "$1" ] || continue
        insmod "/lib/modules/$name.ko" && continue
        [ "$required" = 1 ] && fail "cannot load required module $name"
        echo "dmioctl-vm: optional module $name not loaded"
    done < /etc/modules
}
load test &
load root

mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=512000,cache=loose @TAG@ /mnt/host ||
    fail "cannot mount the host root over 9p"
mount -t tmpfs -o mode=0755 tmpfs /mnt/rw
mkdir /mnt/rw/upper /mnt/rw/work
mount -t overlay -o lowerdir=/mnt/host,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work \
    overlay /newroot || fail "cannot mount the overlay root"

mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts -o ptmxmode=0666 devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /newroot/dev/shm
mount -t tmpfs -o mode=0755 tmpfs /newroot/run
mkdir /newroot/run/dmioctl-vm
cp /job/run.sh /newroot/run/dmioctl-vm/run.sh

# The kernel package's module tree, where the guest's kmod looks for it; the
# kernel's request_module() reaches it through /sbin/modprobe of this initramfs.
read -r modules < /job/modules
tree="/newroot/lib/modules/$(uname -r)"
mkdir -p "$tree" && mount --bind "/mnt/host$modules" "$tree" ||
    echo "dmioctl-vm: modules not loaded here cannot load on demand"

wait
read -r nonce < /job/nonce
rm -f /job/nonce
echo "DMIOCTL_VM_START_$nonce"
env -i chroot /newroot /bin/sh /run/dmioctl-vm/run.sh < /dev/null
echo "DMIOCTL_VM_EXIT_$nonce=$?"
sync
poweroff -f
sleep 60
""".replace("@TAG@", HOST_ROOT_TAG)

#: /sbin/modprobe of the initramfs, which the kernel runs for request_module().
MODPROBE_SCRIPT = """#!/bin/sh
exec chroot /newroot /sbin/modprobe "$@"
"""


class VMError(Exception):
    """The VM could not be prepared or started; the message says what and why."""


# --------------------------------------------------------------------------- kernel


@dataclasses.dataclass(frozen=True)
class KernelPackage:
    """A Debian kernel image package: ``name`` at ``version``."""

    name: str
    version: str

    @property
    def release(self) -> str:
        """The kernel release (``uname -r``) the package installs, e.g. 6.1.0-57-amd64."""
        return self.name.removeprefix("linux-image-")


@dataclasses.dataclass(frozen=True)
class Kernel:
    """An unpacked kernel package in the cache."""

    release: str
    root: Path

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"

    @property
    def vmlinux(self) -> Path:
        """The uncompressed kernel extracted from vmlinuz (absent if that was not possible)."""
        return self.root / "boot" / f"vmlinux-{self.release}"

    @property
    def boot_image(self) -> Path:
        """What qemu boots: vmlinux through its PVH entry if extracted, else vmlinuz."""
        return self.vmlinux if self.vmlinux.exists() else self.vmlinuz

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.release


def parse_kernel_dependency(show_output: str) -> KernelPackage:
    """Find the generic kernel image in ``apt-cache show`` output of the meta package.

    The first stanza is the candidate. The ``-cloud`` flavour is refused: it has no 9p.
    """
    stanza = show_output.strip().split("\n\n")[0]
    match = re.search(r"^Depends:(.*)$", stanza, re.MULTILINE)
    if match is None:
        raise VMError(f"{KERNEL_META_PACKAGE} has no Depends field in apt-cache output")
    for alternative in re.split(r"[,|]", match.group(1)):
        dep = re.fullmatch(
            r"\s*(linux-image-[\w.+-]+)\s*(?:\(\s*=\s*([^)\s]+)\s*\))?\s*", alternative
        )
        if dep and dep.group(2) and not dep.group(1).endswith("-cloud-amd64"):
            return KernelPackage(dep.group(1), dep.group(2))
    raise VMError(f"no generic kernel image in {KERNEL_META_PACKAGE}'s Depends:{match.group(1)}")


def _command(argv: Sequence[str], *, cwd: Path | None = None) -> str:
    """Run a host tool and return its stdout; a failure becomes VMError with its stderr."""
    log.debug("running %s", shlex.join(argv))
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise VMError(f"{argv[0]} not found; run tools/bootstrap as root") from e
    if done.returncode != 0:
        detail = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise VMError(f"{shlex.join(argv)} failed: {detail[0]}")
    return done.stdout


def _write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new content."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as out:
        out.write(data)
    os.replace(out.name, path)


def _apt_lists_stamp() -> int:
    """A value that changes whenever ``apt-get update`` rewrites the package lists."""
    try:
        return os.stat("/var/lib/apt/lists").st_mtime_ns
    except OSError:
        return 0


def resolve_kernel_package(cache: Path) -> KernelPackage:
    """Ask apt which kernel image the meta package wants; remember it until the lists change."""
    memo = cache / "kernel.json"
    stamp = _apt_lists_stamp()
    try:
        saved = json.loads(memo.read_text())
        if saved["apt_lists"] == stamp:
            return KernelPackage(saved["name"], saved["version"])
    except (OSError, ValueError, KeyError, TypeError):
        pass

    argv = ["apt-cache", "show", "--no-all-versions", KERNEL_META_PACKAGE]
    try:
        package = parse_kernel_dependency(_command(argv))
    except VMError:
        log.info("apt does not know %s yet: running apt-get update", KERNEL_META_PACKAGE)
        _command(["apt-get", "update", "-qq"])
        stamp = _apt_lists_stamp()
        package = parse_kernel_dependency(_command(argv))

    record = {"apt_lists": stamp, "name": package.name, "version": package.version}
    _write_atomically(memo, json.dumps(record).encode())
    return package


def ensure_kernel(cache: Path) -> Kernel:
    """Return the unpacked, depmod-indexed kernel, downloading it on first use."""
    package = resolve_kernel_package(cache)
    root = cache / "kernels" / f"{package.name}_{package.version}"
    kernel = Kernel(package.release, root)
    if (root / ".complete").exists():
        return _with_vmlinux(kernel)

    log.info("fetching %s %s", package.name, package.version)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    with tempfile.TemporaryDirectory(dir=cache) as download:
        fetch = ["apt-get", "download", f"{package.name}={package.version}"]
        try:
            _command(fetch, cwd=Path(download))
        except VMError:
            log.info("apt-get download failed: running apt-get update and retrying")
            _command(["apt-get", "update", "-qq"])
            _command(fetch, cwd=Path(download))
        (deb,) = Path(download).glob("*.deb")
        _command(["dpkg-deb", "-x", str(deb), str(root)])
    _command(["depmod", "-b", str(root), package.release])
    if not kernel.vmlinuz.is_file():
        raise VMError(f"{package.name} holds no {kernel.vmlinuz.name}")
    (root / ".complete").touch()
    _prune(cache, keep=root, release=package.release)
    return _with_vmlinux(kernel)


def _prune(cache: Path, *, keep: Path, release: str) -> None:
    """Remove kernels and initramfs images other than the current kernel's (400 MB each)."""
    for old in (cache / "kernels").iterdir():
        if old != keep and old.is_dir():
            log.info("removing the superseded kernel %s", old.name)
            shutil.rmtree(old, ignore_errors=True)
    for old in (cache / "initramfs").glob("*.cpio"):
        if not old.name.startswith(release + "-"):
            old.unlink(missing_ok=True)


def _with_vmlinux(kernel: Kernel) -> Kernel:
    """Extract the PVH-bootable vmlinux next to vmlinuz once; remember if that fails."""
    refused = kernel.root / ".no-vmlinux"
    if not kernel.vmlinux.exists() and not refused.exists():
        vmlinux = extract_vmlinux(kernel.vmlinuz.read_bytes())
        if vmlinux is None:
            log.info("no PVH-bootable vmlinux in %s; booting it compressed", kernel.vmlinuz)
            refused.touch()
        else:
            _write_atomically(kernel.vmlinux, vmlinux)
    return kernel


def extract_vmlinux(bzimage: bytes) -> bytes | None:
    """The ELF kernel inside a bzImage, if it can boot through its PVH entry.

    Under TCG, decompressing the xz payload at every boot costs seconds; qemu
    boots an ELF kernel carrying a PVH entry note directly. The payload's place is
    in the setup header (Documentation/x86/boot.rst: setup_sects at 0x1f1,
    payload_offset and payload_length at 0x248). Returns None when the image is
    not a bzImage, the compression is not one the standard library reads, or the
    kernel has no PVH entry.
    """
    if len(bzimage) < 0x250 or bzimage[0x202:0x206] != b"HdrS":
        return None
    setup_sects = bzimage[0x1F1] or 4
    offset = int.from_bytes(bzimage[0x248:0x24C], "little")
    length = int.from_bytes(bzimage[0x24C:0x250], "little")
    start = (setup_sects + 1) * 512 + offset
    payload = bzimage[start : start + length]
    try:
        if payload.startswith(b"\xfd7zXZ\x00"):
            elf = lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(payload)
        elif payload.startswith(b"\x1f\x8b"):
            elf = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(payload)
        else:
            return None
    except (lzma.LZMAError, zlib.error):
        return None
    return elf if has_pvh_entry(elf) else None


def has_pvh_entry(elf: bytes) -> bool:
    """Whether an ELF64 image has the Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY, 18)."""
    if not elf.startswith(b"\x7fELF\x02\x01"):
        return False

    def number(at: int, size: int) -> int:
        return int.from_bytes(elf[at : at + size], "little")

    phoff, phentsize, phnum = number(0x20, 8), number(0x36, 2), number(0x38, 2)
    for header in range(phoff, phoff + phentsize * phnum, phentsize):
        if number(header, 4) != 4:  # PT_NOTE
            continue
        at, end = number(header + 8, 8), number(header + 8, 8) + number(header + 32, 8)
        while at + 12 <= end:
            namesz, descsz, kind = number(at, 4), number(at + 4, 4), number(at + 8, 4)
            name = elf[at + 12 : at + 12 + namesz]
            if name == b"Xen\0" and kind == 18:
                return True
            at += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


# -------------------------------------------------------------------------- modules


@dataclasses.dataclass(frozen=True)
class ModuleLoad:
    """One insmod of the guest init: module name, file in the tree, whether boot needs it."""

    name: str
    path: Path
    required: bool


def module_name(path: str) -> str:
    """The kernel's name for a module file: ``kernel/fs/9p/9p.ko.xz`` -> ``9p``."""
    base = path.rsplit("/", 1)[-1]
    base = re.sub(r"\.ko(\.(xz|gz|zst))?$", "", base)
    return base.replace("-", "_")


@dataclasses.dataclass
class ModuleIndex:
    """What depmod wrote about one kernel's modules."""

    files: dict[str, str]  #: module name -> path relative to the modules directory
    depends: dict[str, list[str]]  #: module name -> names it depends on, as listed
    builtin: set[str]
    soft_pre: dict[str, list[str]]  #: module name -> names to load before it, if present
    aliases: dict[str, list[str]]  #: alias -> module names, in modules.alias order

    @classmethod
    def read(cls, modules_dir: Path) -> ModuleIndex:
        files: dict[str, str] = {}
        depends: dict[str, list[str]] = {}
        for line in (modules_dir / "modules.dep").read_text().splitlines():
            target, _, deps = line.partition(":")
            name = module_name(target)
            files[name] = target
            depends[name] = [module_name(d) for d in deps.split()]

        builtin_file = modules_dir / "modules.builtin"
        builtin_text = builtin_file.read_text() if builtin_file.exists() else ""
        builtin = {module_name(line) for line in builtin_text.split()}

        soft_pre: dict[str, list[str]] = {}
        softdep_file = modules_dir / "modules.softdep"
        for line in softdep_file.read_text().splitlines() if softdep_file.exists() else []:
            words = line.split()
            if len(words) < 3 or words[0] != "softdep":
                continue
            pre = []
            for word in words[3:] if words[2] == "pre:" else []:
                if word == "post:":
                    break
                pre.append(word)
            soft_pre.setdefault(module_name(words[1]), []).extend(pre)

        aliases: dict[str, list[str]] = {}
        alias_file = modules_dir / "modules.alias"
        for line in alias_file.read_text().splitlines() if alias_file.exists() else []:
            words = line.split()
            if len(words) == 3 and words[0] == "alias":
                aliases.setdefault(words[1], []).append(module_name(words[2]))
        return cls(files, depends, builtin, soft_pre, aliases)

    def resolve(self, name: str) -> str | None:
        """A module name or alias to a loadable module name; generic implementations first."""
        normal = name.replace("-", "_")
        if normal in self.files or normal in self.builtin:
            return normal
        candidates = self.aliases.get(name, [])
        if any(c in self.builtin for c in candidates):
            return next(c for c in candidates if c in self.builtin)
        generic = [c for c in candidates if c.endswith("_generic")]
        return next(iter(generic or candidates), None)


def plan_modules(index: ModuleIndex, wanted: Iterable[tuple[str, bool]]) -> list[ModuleLoad]:
    """Order the wanted modules and their dependencies for insmod, skipping built-ins.

    Each module comes after its soft pre-dependencies and its modules.dep
    dependencies. A dependency of a required module is required. A wanted module
    that is neither in the tree nor built in is an error when required, else dropped.
    """
    order: list[str] = []
    required: dict[str, bool] = {}

    def visit(name: str, needed: bool, trail: tuple[str, ...]) -> None:
        if name in trail:
            raise VMError(f"module dependency cycle: {' -> '.join((*trail, name))}")
        if name in index.builtin:
            return
        if name not in index.files:
            if needed:
                raise VMError(f"module {name} is neither in the kernel package nor built in")
            return
        if name in required:
            required[name] = required[name] or needed
            if not needed:
                return
        for soft in index.soft_pre.get(name, []):
            resolved = index.resolve(soft)
            if resolved is not None:
                visit(resolved, False, (*trail, name))
        for dep in index.depends[name]:
            visit(dep, needed, (*trail, name))
        if name not in required:
            order.append(name)
        required[name] = required.get(name, False) or needed

    for name, needed in wanted:
        visit(name.replace("-", "_"), needed, ())
    return [ModuleLoad(n, Path(index.files[n]), required[n]) for n in order]


def read_module(path: Path) -> bytes:
    """A module file's ELF image, decompressed: busybox insmod may not decompress."""
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if path.name.endswith(".ko.zst"):
        done = subprocess.run(["zstd", "-dc"], input=data, capture_output=True, check=False)
        if done.returncode != 0:
            raise VMError(f"cannot decompress {path} (is zstd installed?)")
        return done.stdout
    return data


# ----------------------------------------------------------------------------- cpio


class CpioWriter:
    """Write a newc ("070701") cpio archive, the format the kernel unpacks as initramfs."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._ino = 1

    def _entry(
        self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        encoded = name.encode() + b"\0"
        fields = (
            self._ino, mode, 0, 0, 2 if stat.S_ISDIR(mode) else 1, 0, len(data),
            0, 0, rdev[0], rdev[1], len(encoded), 0,
        )  # fmt: skip
        self._ino += 1
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._out.write(header + encoded + b"\0" * (-(len(header) + len(encoded)) % 4))
        self._out.write(data + b"\0" * (-len(data) % 4))

    def directory(self, name: str, mode: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | mode)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def char_device(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def finish(self) -> None:
        self._ino = 0
        self._entry("TRAILER!!!", 0)


# ------------------------------------------------------------------------ initramfs


def busybox_path() -> Path:
    """The static busybox to put in the initramfs (Debian's busybox-static)."""
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        path = Path(candidate)
        if path.is_file():
            return path
    raise VMError("busybox not found; run tools/bootstrap as root (package busybox-static)")


def plan_stages(index: ModuleIndex) -> dict[str, list[ModuleLoad]]:
    """The guest's insmods by stage: ``root`` first, ``test`` at the same time.

    Should the two stages share a module, loading them side by side could race,
    so everything then loads in the root stage, one after another.
    """
    root = plan_modules(index, ROOT_MODULES)
    test = plan_modules(index, TEST_MODULES)
    if {m.name for m in root} & {m.name for m in test}:
        return {"root": plan_modules(index, ROOT_MODULES + TEST_MODULES), "test": []}
    return {"root": root, "test": test}


def module_list(stages: Mapping[str, Sequence[ModuleLoad]]) -> str:
    """/etc/modules of the initramfs: ``name required stage`` per insmod, in order."""
    return "".join(
        f"{m.name} {int(m.required)} {stage}\n" for stage, loads in stages.items() for m in loads
    )


def initramfs_key(release: str, init: str, modules: str, busybox: bytes) -> str:
    """Cache name of an initramfs: the kernel release and a hash of every input."""
    digest = hashlib.sha256()
    for part in (str(INITRAMFS_FORMAT).encode(), init.encode(), modules.encode(), busybox):
        digest.update(hashlib.sha256(part).digest())
    return f"{release}-{digest.hexdigest()[:16]}"


def ensure_initramfs(cache: Path, kernel: Kernel) -> Path:
    """Return the cached base initramfs for ``kernel``, building it if missing."""
    stages = plan_stages(ModuleIndex.read(kernel.modules))
    loads = [load for stage in stages.values() for load in stage]
    modules = module_list(stages)
    busybox = busybox_path().read_bytes()
    key = initramfs_key(kernel.release, INIT_SCRIPT + MODPROBE_SCRIPT, modules, busybox)
    target = cache / "initramfs" / f"{key}.cpio"
    if target.exists():
        return target

    log.info("building %s (%d modules)", target.name, len(loads))
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f"{kernel.release}-*.cpio"):
        stale.unlink()
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as out:
        cpio = CpioWriter(out)
        for directory in INITRAMFS_DIRECTORIES:
            cpio.directory(directory)
        cpio.char_device("dev/console", 5, 1)
        cpio.char_device("dev/null", 1, 3, 0o666)
        cpio.file("bin/busybox", busybox, 0o755)
        for applet in BUSYBOX_APPLETS:
            cpio.symlink(f"bin/{applet}", "busybox")
        cpio.file("init", INIT_SCRIPT.encode(), 0o755)
        cpio.file("sbin/modprobe", MODPROBE_SCRIPT.encode(), 0o755)
        cpio.file("etc/modules", modules.encode())
        for load in loads:
            cpio.file(f"lib/modules/{load.name}.ko", read_module(kernel.modules / load.path))
        cpio.finish()
    os.replace(out.name, target)
    return target


# ------------------------------------------------------------------------------ job


def guest_environment(host: Mapping[str, str], *, disk: bool) -> dict[str, str]:
    """The command's environment in the guest: fixed basics plus passed host variables.

    PATH is the host's with the standard directories added; DM_DISABLE_UDEV is set
    because the guest has no udev.
    """
    path = [p for p in host.get("PATH", "").split(":") if p]
    path += [p for p in STANDARD_PATH if p not in path]
    env = {
        name: value
        for name, value in host.items()
        if (name in PASSED_NAMES or name.startswith(PASSED_PREFIXES))
        and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name)
    }
    env.pop("DMIOCTL_VM_DISK", None)
    env.update(
        HOME="/root",
        TERM="dumb",
        LANG="C.UTF-8",
        PATH=":".join(path),
        DM_DISABLE_UDEV="1",
        DMIOCTL_VM="1",
    )
    if disk:
        env["DMIOCTL_VM_DISK"] = GUEST_DISK
    return env


#: Guest directories that are fresh mounts, not the host's: no working directory there.
#: (/tmp is the host's, writable through the overlay, so a checkout there runs.)
GUEST_OWN_MOUNTS = ("/run", "/dev", "/proc", "/sys")


@dataclasses.dataclass(frozen=True)
class Job:
    """What one run asks of the guest."""

    argv: tuple[str, ...]
    cwd: str
    env: Mapping[str, str]
    nonce: str  #: per-run secret in the status marker, so guest output cannot end the run
    modules: Path  #: the kernel package's lib/modules/<release> on the host

    def __post_init__(self) -> None:
        if not self.argv:
            raise VMError("no command given")
        for mount in GUEST_OWN_MOUNTS:
            if self.cwd == mount or self.cwd.startswith(mount + "/"):
                raise VMError(f"cannot run in {self.cwd}: {mount} is a fresh mount in the guest")

    def script(self) -> bytes:
        """The POSIX shell script the guest runs, with an empty environment, in the chroot."""
        lines = ["# the command of one tools/vm.py run"]
        lines += [
            f"export {name}={shlex.quote(value)}" for name, value in sorted(self.env.items())
        ]
        cwd = shlex.quote(self.cwd)
        lines.append(f"cd -- {cwd} || {{ echo 'dmioctl-vm: cannot enter '{cwd} >&2; exit 126; }}")
        lines.append("exec " + " ".join(shlex.quote(arg) for arg in self.argv))
        return ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape")

    def cpio(self) -> bytes:
        """The cpio appended to the base initramfs: /job/run.sh, /job/nonce, /job/modules."""
        buffer = io.BytesIO()
        cpio = CpioWriter(buffer)
        cpio.directory("job")
        cpio.file("job/run.sh", self.script(), 0o755)
        cpio.file("job/nonce", self.nonce.encode() + b"\n")
        cpio.file("job/modules", os.fsencode(self.modules) + b"\n")
        cpio.finish()
        return buffer.getvalue()


# -------------------------------------------------------------------------- console


class ConsoleFilter:
    """Split the guest console into boot log, command output and the reported status.

    Text before ``DMIOCTL_VM_START_<nonce>`` is boot log; text after it is the
    command's output until ``DMIOCTL_VM_EXIT_<nonce>=<status>``, which ends it.
    Marker lines are swallowed, CRLF (the tty's newline) becomes LF, and bytes that
    might begin a marker are held back until it is clear they do not.
    """

    def __init__(self, nonce: str) -> None:
        self._start_marker = b"DMIOCTL_VM_START_" + nonce.encode()
        self._exit_marker = b"DMIOCTL_VM_EXIT_" + nonce.encode() + b"="
        self._start = re.compile(re.escape(self._start_marker) + rb"\r?\n")
        self._exit = re.compile(re.escape(self._exit_marker) + rb"(\d{1,3})\r?\n")
        self._buffer = b""
        self.started = False
        self.status: int | None = None

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        """Take console bytes; return (boot log, command output) that can be shown now."""
        self._buffer += data
        boot = b""
        if not self.started:
            match = self._start.search(self._buffer)
            if match is None:
                return _lf(self._release(self._start_marker)), b""
            boot, self._buffer = self._buffer[: match.start()], self._buffer[match.end() :]
            self.started = True
        if self.status is not None:
            self._buffer = b""
            return _lf(boot), b""
        match = self._exit.search(self._buffer)
        if match is None:
            return _lf(boot), _lf(self._release(self._exit_marker))
        self.status = int(match.group(1))
        output, self._buffer = self._buffer[: match.start()], b""
        return _lf(boot), _lf(output)

    def flush(self) -> tuple[bytes, bytes]:
        """Whatever is held back, at the end of the stream: (boot log, command output)."""
        rest, self._buffer = _lf(self._buffer), b""
        if self.status is not None:
            return b"", b""
        return (b"", rest) if self.started else (rest, b"")

    def _release(self, marker: bytes) -> bytes:
        """Take from the buffer what cannot be part of a ``marker`` line; keep the rest."""
        buffer = self._buffer
        cut = len(buffer)
        begun = buffer.rfind(marker)
        if begun >= 0 and b"\n" not in buffer[begun:]:
            cut = begun
        else:
            for length in range(min(len(marker) - 1, len(buffer)), 0, -1):
                if buffer.endswith(marker[:length]):
                    cut = len(buffer) - length
                    break
        if buffer[cut - 1 : cut] == b"\r":
            cut -= 1
        released, self._buffer = buffer[:cut], buffer[cut:]
        return released


def _lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


# ----------------------------------------------------------------------------- qemu


def parse_size(text: str) -> int:
    """A disk size in bytes from ``4096``, ``512M``, ``20G`` (binary units, optional B/iB)."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(i?B)?\s*", text, re.IGNORECASE)
    if match is None or int(match.group(1)) == 0:
        raise ValueError(f"not a disk size: {text!r} (examples: 512M, 20G)")
    return int(match.group(1)) << (10 * " KMGT".index(match.group(2).upper() or " "))


def kernel_command_line(*, verbose: bool) -> str:
    """Kernel parameters of the guest.

    Console on the first serial port; only critical messages unless verbose, so
    that kernel chatter rarely mixes into the command's output (dmesg has it all).
    A panic or oops ends the guest at once rather than leaving a test hanging.
    TCG's TSC is synchronous between vCPUs: trusting it spares every clock read an
    emulated HPET access. Mitigations and crypto self-tests only slow a throwaway
    guest.
    """
    params = [
        "console=ttyS0",
        "loglevel=7" if verbose else "loglevel=3",
        "panic=-1",
        "oops=panic",
        "tsc=reliable",
        "mitigations=off",
        "cryptomgr.notests",
        "rdinit=/init",
    ]
    return " ".join(params)


def qemu_command(
    kernel: Kernel,
    initrd: Path,
    *,
    memory: int,
    cpus: int,
    disk: Path | None,
    verbose: bool,
) -> list[str]:
    """The qemu-system-x86_64 command line of one run."""
    argv = [
        "qemu-system-x86_64",
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-display", "none",
        "-accel", "tcg,thread=multi",
        "-cpu", "max",
        "-smp", str(cpus),
        "-m", str(memory),
        "-kernel", str(kernel.boot_image),
        "-initrd", str(initrd),
        "-append", kernel_command_line(verbose=verbose),
        "-serial", "stdio",
        "-virtfs",
        f"local,path=/,mount_tag={HOST_ROOT_TAG},security_model=none,readonly=on,multidevs=remap",
    ]  # fmt: skip
    if disk is not None:
        drive = f"file={_qemu_quote(disk)},format=raw,if=none,id=scratch"
        # Unsafe caching and discards punched through: the disk dies with the run.
        argv += ["-drive", f"{drive},cache=unsafe,discard=unmap"]
        argv += ["-device", "virtio-blk-pci,drive=scratch"]
    return argv


def _qemu_quote(path: Path) -> str:
    """A path as a value in a qemu option list, where a comma is written twice."""
    return str(path).replace(",", ",,")


# ------------------------------------------------------------------------------ run


@dataclasses.dataclass
class _Clock:
    """Timestamps of one run, for --verbose."""

    begin: float = dataclasses.field(default_factory=time.monotonic)
    launched: float = 0.0
    started: float = 0.0
    finished: float = 0.0


def prepare(cache: Path) -> tuple[Kernel, bytes]:
    """The kernel and base initramfs in ``cache``, under a lock shared by concurrent runs.

    The initramfs comes back as bytes, read under the lock: a concurrent run of a
    different tools/vm.py may replace the cached file right after.
    """
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with open(cache / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            kernel = ensure_kernel(cache)
            return kernel, ensure_initramfs(cache, kernel).read_bytes()
    except OSError as e:
        raise VMError(f"cannot prepare the VM cache in {cache}: {e}") from e


def run(
    argv: Sequence[str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    memory: int = DEFAULT_MEMORY_MIB,
    cpus: int = DEFAULT_CPUS,
    cache: Path | None = None,
    disk: int | None = None,
    verbose: bool = False,
    cwd: str | None = None,
    environ: Mapping[str, str] | None = None,
    stdout: BinaryIO | None = None,
    stderr: BinaryIO | None = None,
) -> int:
    """Run ``argv`` in a fresh guest and return its exit status.

    ``disk`` is the size in bytes of a sparse scratch disk (``/dev/vda``), if any.
    Guest output goes to ``stdout`` (default: this process's); boot log (with
    ``verbose``, or when the guest fails to start the command) and the one-line
    failure message go to ``stderr``. Returns the command's status, or
    EXIT_TIMEOUT / EXIT_NO_STATUS / EXIT_SETUP.
    """
    out = stdout if stdout is not None else sys.stdout.buffer
    err = stderr if stderr is not None else sys.stderr.buffer

    def say(message: str) -> None:
        err.write(f"vm: {message}\n".encode())
        err.flush()

    clock = _Clock()
    cache = (cache or Path(os.environ.get("DMIOCTL_VM_CACHE") or DEFAULT_CACHE)).absolute()
    try:
        kernel, base = prepare(cache)
    except VMError as e:
        say(str(e))
        return EXIT_SETUP

    try:
        job = Job(
            argv=tuple(argv),
            cwd=cwd or os.getcwd(),
            env=guest_environment(
                os.environ if environ is None else environ, disk=disk is not None
            ),
            nonce=secrets.token_hex(12),
            modules=kernel.modules,
        )
    except VMError as e:
        say(str(e))
        return EXIT_SETUP
    with tempfile.TemporaryDirectory(prefix="dmioctl-vm-") as scratch:
        initrd = Path(scratch) / "initrd.cpio"
        initrd.write_bytes(base + job.cpio())
        disk_path = None
        if disk is not None:
            disk_path = Path(scratch) / "disk.raw"
            with open(disk_path, "wb") as f:
                f.truncate(disk)
        command = qemu_command(
            kernel, initrd, memory=memory, cpus=cpus, disk=disk_path, verbose=verbose
        )
        log.debug("%s", shlex.join(command))
        status = _supervise(
            command,
            job.nonce,
            timeout,
            clock,
            out,
            err,
            say,
            verbose=verbose,
            on_start=lambda: initrd.unlink(missing_ok=True),
        )

    if verbose:
        say(
            f"prepare {clock.launched - clock.begin:.1f}s, "
            f"boot {max(clock.started - clock.launched, 0):.1f}s, "
            f"command {max(clock.finished - clock.started, 0):.1f}s, "
            f"total {time.monotonic() - clock.begin:.1f}s"
        )
    return status


def _supervise(
    command: list[str],
    nonce: str,
    timeout: float,
    clock: _Clock,
    out: BinaryIO,
    err: BinaryIO,
    say: Callable[[str], None],
    *,
    verbose: bool,
    on_start: Callable[[], None] = lambda: None,
) -> int:
    """Start qemu, stream its console until the status marker, and always reap it.

    ``on_start`` runs once the guest has started the command (qemu has long read
    its initramfs then).
    """
    console = ConsoleFilter(nonce)
    boot_log = bytearray()
    clock.launched = time.monotonic()
    deadline = clock.launched + timeout
    try:
        qemu = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            preexec_fn=_death_signal_setter(),
        )
    except OSError as e:
        say(f"cannot start {command[0]}: {e}")
        return EXIT_SETUP
    assert qemu.stdout is not None

    reader_gone = False

    def show(boot: bytes, output: bytes) -> None:
        nonlocal reader_gone
        if boot:
            boot_log.extend(boot)
            if verbose:
                err.write(boot)
                err.flush()
        if console.started and not clock.started:
            clock.started = time.monotonic()
            on_start()
        if output and not reader_gone:
            try:
                out.write(output)
                out.flush()
            except BrokenPipeError:
                # Whoever read the output stopped (| head): drop the rest, but keep
                # supervising so the exit status is still the command's.
                reader_gone = True
                _silence(out)

    def explain_boot() -> None:
        """A guest that failed before the command started: its boot log says why."""
        if not console.started and not verbose and boot_log:
            err.write(bytes(boot_log))

    try:
        with selectors.DefaultSelector() as selector:
            selector.register(qemu.stdout, selectors.EVENT_READ)
            while console.status is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    show(*console.flush())
                    explain_boot()
                    say(f"timed out after {timeout:g} s; killed the guest")
                    return EXIT_TIMEOUT
                if not selector.select(min(remaining, 1.0)):
                    continue
                data = os.read(qemu.stdout.fileno(), 65536)
                if not data:
                    break
                show(*console.feed(data))
                if len(data) < 4096:
                    # The emulated UART hands over one byte per write: let a few
                    # milliseconds of output gather rather than wake per byte.
                    time.sleep(0.005)
        clock.finished = time.monotonic()
        if console.status is not None:
            _wait_briefly(qemu)
            return console.status

        show(*console.flush())
        code = qemu.wait()
        explain_boot()
        stage = "while the command ran" if console.started else "during boot"
        say(
            f"the guest never reported the command's exit status: it stopped {stage} "
            f"(kernel panic or crash? qemu exit status {code})"
        )
        return EXIT_NO_STATUS
    finally:
        if qemu.poll() is None:
            qemu.kill()
            qemu.wait()


def _silence(stream: BinaryIO) -> None:
    """Point a stream whose reader went away at /dev/null, so flushing it cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # not a file (e.g. BytesIO): nothing will flush it
        pass


def _wait_briefly(qemu: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """Give a guest that reported its status a moment to power off; the caller kills it.

    Nothing in the guest outlives it (tmpfs overlay, read-only host root, scratch
    disk deleted), so a guest slow to power off costs nothing but this wait.
    """
    try:
        qemu.wait(grace)
    except subprocess.TimeoutExpired:
        log.info("the guest did not power off within %g s; killing qemu", grace)


def _death_signal_setter() -> Callable[[], object]:
    """For the qemu child: have the kernel kill it when this process dies (PR_SET_PDEATHSIG).

    libc is looked up here, in the parent, so the child only makes one call.
    """
    pr_set_pdeathsig = 1
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return functools.partial(prctl, pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)


# ----------------------------------------------------------------------------- main


def _positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    """An argparse type: a number of ``kind`` above zero."""

    def parse(text: str) -> int | float:
        value = kind(text)
        if value <= 0:
            raise ValueError(text)
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _parse_args(args: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="tools/vm.py",
        description="Run one command in a QEMU guest with device-mapper, the host root "
        "shared read-only under a tmpfs overlay; exit with the command's status.",
        epilog="example: python3 tools/vm.py -- sh -c 'dmsetup targets; exit 3'",
    )
    parser.add_argument(
        "--timeout", type=_positive(float), default=DEFAULT_TIMEOUT, metavar="SECONDS",
        help=f"kill the guest after this long and exit {EXIT_TIMEOUT} (default %(default)g)",
    )  # fmt: skip
    parser.add_argument(
        "--memory", type=_positive(int), default=DEFAULT_MEMORY_MIB, metavar="MiB",
        help="guest memory (default %(default)d)",
    )  # fmt: skip
    parser.add_argument(
        "--cpus", type=_positive(int), default=DEFAULT_CPUS, metavar="N",
        help="guest CPUs (default %(default)d)",
    )  # fmt: skip
    parser.add_argument(
        "--cache", type=Path, metavar="DIR",
        help=f"kernel and initramfs cache (default $DMIOCTL_VM_CACHE or {DEFAULT_CACHE})",
    )  # fmt: skip
    parser.add_argument(
        "--disk", type=parse_size, metavar="SIZE",
        help=f"attach a sparse scratch disk of SIZE (e.g. 20G) as {GUEST_DISK}",
    )  # fmt: skip
    parser.add_argument(
        "--verbose", action="store_true",
        help="show the boot log and timings on stderr; kernel messages then also mix "
        "into the output (otherwise only critical ones do)",
    )  # fmt: skip
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments")
    options = parser.parse_args(args)
    if options.command[:1] == ["--"]:
        options.command = options.command[1:]
    if not options.command:
        parser.error("no command given (put it after --)")
    return options


def main(args: Sequence[str] | None = None) -> int:
    """Command-line entry: parse options, run the command in the guest, return its status."""
    options = _parse_args(args)
    logging.basicConfig(
        format="vm: %(message)s", level=logging.INFO if options.verbose else logging.WARNING
    )

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    try:
        return run(
            options.command,
            timeout=options.timeout,
            memory=options.memory,
            cpus=options.cpus,
            cache=options.cache,
            disk=options.disk,
            verbose=options.verbose,
        )
    except KeyboardInterrupt:
        print("vm: interrupted; killed the guest", file=sys.stderr)
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
