"""The VM runner in tools/vm.py: its pure pieces here, and one real boot (marked vm)."""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import lzma
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_vm() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tools_vm", ROOT / "tools" / "vm.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


vm = load_vm()

NONCE = "0123456789abcdef01234567"


# ----------------------------------------------------------------------- kernel


APT_SHOW = """\
Package: linux-image-amd64
Source: linux-signed-amd64 (6.1.192+3)
Version: 6.1.192-3
Depends: linux-image-6.1.0-57-amd64 (= 6.1.192-3)
Description: Linux for 64-bit PCs (meta-package)

Package: linux-image-amd64
Version: 6.1.176-1
Depends: linux-image-6.1.0-50-amd64 (= 6.1.176-1)
"""


def test_kernel_dependency_is_read_from_the_candidate_stanza() -> None:
    package = vm.parse_kernel_dependency(APT_SHOW)
    assert package == vm.KernelPackage("linux-image-6.1.0-57-amd64", "6.1.192-3")
    assert package.release == "6.1.0-57-amd64"


def test_kernel_dependency_refuses_the_cloud_flavour() -> None:
    text = "Package: linux-image-amd64\nDepends: linux-image-6.1.0-57-cloud-amd64 (= 6.1.192-3)\n"
    with pytest.raises(vm.VMError, match="no generic kernel image"):
        vm.parse_kernel_dependency(text)


def test_kernel_dependency_without_depends_is_an_error() -> None:
    with pytest.raises(vm.VMError, match="no Depends field"):
        vm.parse_kernel_dependency("Package: linux-image-amd64\nVersion: 1\n")


def elf_with_notes(*notes: tuple[bytes, int]) -> bytes:
    """A minimal ELF64 header with one PT_NOTE segment holding ``notes``."""
    body = b""
    for name, kind in notes:
        padded = name + b"\0" * (-len(name) % 4)
        body += len(name).to_bytes(4, "little") + (8).to_bytes(4, "little")
        body += kind.to_bytes(4, "little") + padded + bytes(8)
    header = bytearray(64)
    header[:7] = b"\x7fELF\x02\x01\x01"
    header[0x20:0x28] = (64).to_bytes(8, "little")  # e_phoff
    header[0x36:0x38] = (56).to_bytes(2, "little")  # e_phentsize
    header[0x38:0x3A] = (1).to_bytes(2, "little")  # e_phnum
    phdr = bytearray(56)
    phdr[0:4] = (4).to_bytes(4, "little")  # PT_NOTE
    phdr[8:16] = (64 + 56).to_bytes(8, "little")  # p_offset
    phdr[32:40] = len(body).to_bytes(8, "little")  # p_filesz
    return bytes(header + phdr) + body


def bzimage(payload: bytes) -> bytes:
    """A bzImage setup header pointing at ``payload``, as boot.rst lays it out."""
    setup = bytearray(5 * 512)
    setup[0x1F1] = 4  # setup_sects
    setup[0x202:0x206] = b"HdrS"
    setup[0x248:0x24C] = (16).to_bytes(4, "little")  # payload_offset
    setup[0x24C:0x250] = len(payload).to_bytes(4, "little")
    return bytes(setup) + bytes(16) + payload + b"trailing"


def test_pvh_note_is_found_among_other_notes() -> None:
    assert vm.has_pvh_entry(elf_with_notes((b"GNU\0", 3), (b"Xen\0", 18)))
    assert not vm.has_pvh_entry(elf_with_notes((b"Xen\0", 17)))
    assert not vm.has_pvh_entry(b"MZ not an ELF")


def test_vmlinux_is_extracted_from_an_xz_or_gzip_bzimage() -> None:
    elf = elf_with_notes((b"Xen\0", 18))
    assert vm.extract_vmlinux(bzimage(lzma.compress(elf, lzma.FORMAT_XZ))) == elf
    assert vm.extract_vmlinux(bzimage(gzip.compress(elf))) == elf


def test_vmlinux_without_pvh_entry_or_known_compression_is_refused() -> None:
    assert vm.extract_vmlinux(bzimage(lzma.compress(elf_with_notes((b"GNU\0", 3))))) is None
    assert vm.extract_vmlinux(bzimage(b"\x02\x21\x4c\x18 lz4 is not read")) is None
    assert vm.extract_vmlinux(b"not a kernel") is None


# ---------------------------------------------------------------------- modules


def module_tree(root: Path) -> Path:
    """A fake depmod output: thin-pool needs libcrc32c, which wants crc32c first."""
    tree = root / "lib" / "modules" / "6.1.0-1-amd64"
    tree.mkdir(parents=True)
    (tree / "modules.dep").write_text(
        "kernel/drivers/md/dm-mod.ko:\n"
        "kernel/drivers/md/dm-bufio.ko: kernel/drivers/md/dm-mod.ko\n"
        "kernel/lib/libcrc32c.ko:\n"
        "kernel/crypto/crc32c_generic.ko:\n"
        "kernel/arch/x86/crypto/crc32c-intel.ko:\n"
        "kernel/drivers/md/persistent-data/dm-persistent-data.ko:"
        " kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko kernel/lib/libcrc32c.ko\n"
        "kernel/drivers/md/dm-thin-pool.ko:"
        " kernel/drivers/md/persistent-data/dm-persistent-data.ko"
        " kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko kernel/lib/libcrc32c.ko\n"
        "kernel/fs/xfs/xfs.ko.xz: kernel/lib/libcrc32c.ko\n"
    )
    (tree / "modules.builtin").write_text("kernel/drivers/block/loop.ko\n")
    (tree / "modules.softdep").write_text(
        "# Soft dependencies extracted from modules themselves.\n"
        "softdep libcrc32c pre: crc32c\n"
        "softdep dm_mod post: dm_uevent\n"
    )
    (tree / "modules.alias").write_text(
        "alias crc32c crc32c_intel\nalias crc32c crc32c_generic\nalias fs-xfs xfs\n"
    )
    return tree


def test_module_names_follow_the_kernel() -> None:
    assert vm.module_name("kernel/fs/9p/9p.ko") == "9p"
    assert vm.module_name("kernel/drivers/md/dm-thin-pool.ko.zst") == "dm_thin_pool"
    assert vm.module_name("kernel/arch/x86/crypto/crc32c-intel.ko.xz") == "crc32c_intel"


def test_plan_puts_dependencies_and_soft_dependencies_first(tmp_path: Path) -> None:
    index = vm.ModuleIndex.read(module_tree(tmp_path))
    plan = vm.plan_modules(index, [("loop", True), ("dm-thin-pool", True)])
    assert [m.name for m in plan] == [
        "dm_mod",
        "dm_bufio",
        "crc32c_generic",
        "libcrc32c",
        "dm_persistent_data",
        "dm_thin_pool",
    ]
    assert {m.name: m.required for m in plan}["crc32c_generic"] is False
    assert all(m.required for m in plan if m.name != "crc32c_generic")
    assert plan[-1].path == Path("kernel/drivers/md/dm-thin-pool.ko")


def test_plan_marks_a_module_required_when_a_later_module_needs_it(tmp_path: Path) -> None:
    index = vm.ModuleIndex.read(module_tree(tmp_path))
    plan = vm.plan_modules(index, [("crc32c_generic", False), ("libcrc32c", True)])
    assert [(m.name, m.required) for m in plan] == [
        ("crc32c_generic", False),
        ("libcrc32c", True),
    ]


def test_plan_refuses_a_missing_required_module_and_drops_an_optional_one(
    tmp_path: Path,
) -> None:
    index = vm.ModuleIndex.read(module_tree(tmp_path))
    assert vm.plan_modules(index, [("dm_crypt", False)]) == []
    with pytest.raises(vm.VMError, match="dm_crypt is neither"):
        vm.plan_modules(index, [("dm_crypt", True)])


def test_alias_resolution_prefers_the_generic_implementation(tmp_path: Path) -> None:
    index = vm.ModuleIndex.read(module_tree(tmp_path))
    assert index.resolve("crc32c") == "crc32c_generic"
    assert index.resolve("fs-xfs") == "xfs"
    assert index.resolve("dm-mod") == "dm_mod"
    assert index.resolve("nothing") is None


def test_compressed_modules_are_decompressed_for_busybox_insmod(tmp_path: Path) -> None:
    image = b"\x7fELF module image"
    (tmp_path / "a.ko.xz").write_bytes(lzma.compress(image))
    (tmp_path / "b.ko.gz").write_bytes(gzip.compress(image))
    (tmp_path / "c.ko").write_bytes(image)
    for name in ("a.ko.xz", "b.ko.gz", "c.ko"):
        assert vm.read_module(tmp_path / name) == image


def test_module_list_is_one_line_per_insmod_with_its_stage() -> None:
    root = [vm.ModuleLoad("virtio", Path("v"), True)]
    test = [vm.ModuleLoad("dm_mod", Path("x"), True), vm.ModuleLoad("xfs", Path("y"), False)]
    text = vm.module_list({"root": root, "test": test})
    assert text == "virtio 1 root\ndm_mod 1 test\nxfs 0 test\n"


def test_stages_load_in_parallel_only_when_they_share_no_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = vm.ModuleIndex.read(module_tree(tmp_path))
    monkeypatch.setattr(vm, "ROOT_MODULES", (("dm_mod", True),))
    monkeypatch.setattr(vm, "TEST_MODULES", (("libcrc32c", True),))
    stages = vm.plan_stages(index)
    assert [m.name for m in stages["root"]] == ["dm_mod"]
    assert [m.name for m in stages["test"]] == ["crc32c_generic", "libcrc32c"]

    monkeypatch.setattr(vm, "TEST_MODULES", (("dm_bufio", True),))
    stages = vm.plan_stages(index)
    assert [m.name for m in stages["root"]] == ["dm_mod", "dm_bufio"]
    assert stages["test"] == []


# ------------------------------------------------------------------------- cpio


def read_cpio(data: bytes) -> list[tuple[str, int, bytes, tuple[int, int]]]:
    """Parse a newc archive: (name, mode, data, (rdevmajor, rdevminor)) per entry."""
    entries: list[tuple[str, int, bytes, tuple[int, int]]] = []
    at = 0
    while True:
        assert data[at : at + 6] == b"070701"
        fields = [int(data[at + 6 + 8 * i : at + 14 + 8 * i], 16) for i in range(13)]
        mode, size, rdev, namesize = fields[1], fields[6], (fields[9], fields[10]), fields[11]
        name_at = at + 110
        name = data[name_at : name_at + namesize - 1].decode()
        data_at = name_at + namesize + (-(110 + namesize) % 4)
        if name == "TRAILER!!!":
            assert len(data) == data_at
            return entries
        entries.append((name, mode, data[data_at : data_at + size], rdev))
        at = data_at + size + (-size % 4)


def test_cpio_writer_produces_newc_entries() -> None:
    buffer = io.BytesIO()
    cpio = vm.CpioWriter(buffer)
    cpio.directory("bin")
    cpio.file("bin/busybox", b"\x7fELF!", 0o755)
    cpio.symlink("bin/sh", "busybox")
    cpio.char_device("dev/console", 5, 1)
    cpio.finish()
    entries = read_cpio(buffer.getvalue())
    assert entries == [
        ("bin", stat.S_IFDIR | 0o755, b"", (0, 0)),
        ("bin/busybox", stat.S_IFREG | 0o755, b"\x7fELF!", (0, 0)),
        ("bin/sh", stat.S_IFLNK | 0o777, b"busybox", (0, 0)),
        ("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1)),
    ]


@pytest.mark.skipif(shutil.which("cpio") is None, reason="needs the cpio tool")
def test_cpio_tool_reads_the_archive() -> None:
    buffer = io.BytesIO()
    cpio = vm.CpioWriter(buffer)
    cpio.directory("job")
    cpio.file("job/run.sh", b"exit 0\n", 0o755)
    cpio.finish()
    listed = subprocess.run(
        ["cpio", "-t", "--quiet"], input=buffer.getvalue(), capture_output=True, check=True
    )
    assert listed.stdout.split() == [b"job", b"job/run.sh"]


# ---------------------------------------------------------------------- initramfs


def test_initramfs_key_names_the_release_and_covers_every_input() -> None:
    base = ("6.1.0-57-amd64", "init", "dm_mod 1\n", b"busybox")
    key = vm.initramfs_key(*base)
    assert key.startswith("6.1.0-57-amd64-")
    assert key == vm.initramfs_key(*base)
    for changed in (
        ("6.1.0-58-amd64", *base[1:]),
        (base[0], "init changed", *base[2:]),
        (*base[:2], "dm_mod 1\nxfs 0\n", base[3]),
        (*base[:3], b"other busybox"),
    ):
        assert vm.initramfs_key(*changed) != key


def test_init_script_mounts_the_host_root_and_reports_the_status() -> None:
    init = vm.INIT_SCRIPT
    assert init.startswith("#!/bin/sh\n")
    assert f"trans=virtio,version=9p2000.L,msize=512000,cache=loose {vm.HOST_ROOT_TAG}" in init
    assert "lowerdir=/mnt/host,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work" in init
    assert "mount -t devtmpfs devtmpfs /newroot/dev" in init
    assert "/newroot/tmp" not in init  # the host's /tmp stays visible, for checkouts there
    assert "env -i chroot /newroot /bin/sh /run/dmioctl-vm/run.sh < /dev/null" in init
    assert 'echo "DMIOCTL_VM_START_$nonce"' in init
    assert 'echo "DMIOCTL_VM_EXIT_$nonce=$?"' in init
    assert init.index("DMIOCTL_VM_EXIT_") < init.index("poweroff -f\nsleep 60\n")
    # the test stage loads while the root is mounted, and is waited for
    assert init.index("load test &\nload root\n") < init.index("mount -t 9p")
    assert init.index("mount -t overlay") < init.index("\nwait\n") < init.index("START")


@pytest.mark.parametrize("script", ["INIT_SCRIPT", "MODPROBE_SCRIPT"])
def test_guest_scripts_are_valid_shell(script: str) -> None:
    checked = subprocess.run(["sh", "-n"], input=getattr(vm, script), text=True, check=False)
    assert checked.returncode == 0


def test_init_uses_only_linked_busybox_applets() -> None:
    used = {"mount", "mkdir", "insmod", "cp", "env", "chroot", "sync", "poweroff", "sleep"}
    assert used <= set(vm.BUSYBOX_APPLETS)
    assert "uname" in vm.BUSYBOX_APPLETS  # $(uname -r) names the module tree


# -------------------------------------------------------------------------- job


def test_guest_environment_passes_only_the_named_variables() -> None:
    host = {
        "PATH": "/opt/venv/bin:/usr/bin",
        "DMIOCTL_TRACE": "1",
        "PYTEST_ADDOPTS": "-x",
        "CI": "true",
        "HOME": "/home/someone",
        "SSH_AUTH_SOCK": "/run/agent",
        "CIRCLE": "no",
        "DMIOCTL_VM_DISK": "/dev/sdz",
        "DMIOCTL_BAD-NAME": "x",
    }
    env = vm.guest_environment(host, disk=False)
    assert env == {
        "DMIOCTL_TRACE": "1",
        "PYTEST_ADDOPTS": "-x",
        "CI": "true",
        "HOME": "/root",
        "TERM": "dumb",
        "LANG": "C.UTF-8",
        "PATH": "/opt/venv/bin:/usr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/sbin:/bin",
        "DM_DISABLE_UDEV": "1",
        "DMIOCTL_VM": "1",
    }
    assert vm.guest_environment(host, disk=True)["DMIOCTL_VM_DISK"] == "/dev/vda"
    assert vm.guest_environment({}, disk=False)["PATH"] == ":".join(vm.STANDARD_PATH)


def job(argv: tuple[str, ...], cwd: str = str(ROOT), **env: str) -> Any:
    return vm.Job(argv, cwd, env, NONCE, Path("/cache/lib/modules/6.1.0-57-amd64"))


#: Set by sh itself, or by Python's C locale coercion (PEP 538).
SHELL_AND_PYTHON_VARIABLES = {"PWD", "OLDPWD", "SHLVL", "_", "LC_CTYPE"}


def test_job_script_runs_the_exact_argv_in_the_directory_with_the_environment() -> None:
    argv = (
        sys.executable,
        "-c",
        "import json, os, sys; print(json.dumps([sys.argv[1:], os.getcwd(), dict(os.environ)]))",
        "it's",
        'a "b" c',
        "$HOME `id` $(id)",
        "new\nline",
        "",
        "-n",
    )
    script = job(argv, str(ROOT), HOME="/root", ODD="'\"$x\n").script()
    done = subprocess.run(
        ["env", "-i", "sh", "-c", script.decode()], capture_output=True, text=True, check=True
    )
    args, cwd, env = json.loads(done.stdout)
    assert args == list(argv[3:])
    assert cwd == str(ROOT)
    assert {k: v for k, v in env.items() if k not in SHELL_AND_PYTHON_VARIABLES} == {
        "HOME": "/root",
        "ODD": "'\"$x\n",
    }


def test_job_script_fails_clearly_when_the_directory_is_missing() -> None:
    script = job(("true",), "/nonexistent/dir").script()
    done = subprocess.run(["sh", "-c", script.decode()], capture_output=True, text=True)
    assert done.returncode == 126
    assert "dmioctl-vm: cannot enter /nonexistent/dir" in done.stderr


def test_job_refuses_no_command_and_directories_the_guest_replaces() -> None:
    with pytest.raises(vm.VMError, match="no command"):
        job(())
    for cwd in ("/run", "/run/user", "/dev/shm", "/proc"):
        with pytest.raises(vm.VMError, match="fresh mount in the guest"):
            job(("true",), cwd)
    job(("true",), "/runner")  # only the mount itself and below
    job(("true",), "/tmp/checkout")  # the host's /tmp is visible in the guest


def test_job_cpio_carries_script_nonce_and_module_tree() -> None:
    files = {name: data for name, _, data, _ in read_cpio(job(("true",)).cpio())}
    assert files["job/nonce"] == NONCE.encode() + b"\n"
    assert files["job/modules"] == b"/cache/lib/modules/6.1.0-57-amd64\n"
    assert files["job/run.sh"].endswith(b"exec true\n")


# ---------------------------------------------------------------------- console


def feed_all(console: Any, chunks: list[bytes]) -> tuple[bytes, bytes]:
    boot = output = b""
    for chunk in chunks:
        b, o = console.feed(chunk)
        boot, output = boot + b, output + o
    b, o = console.flush()
    return boot + b, output + o


STREAM = (
    b"[    2.1] kernel says\r\nloading modules\r\n"
    b"DMIOCTL_VM_START_" + NONCE.encode() + b"\r\n"
    b"line one\r\nDMIOCTL_VM_EXIT_wrongnonce=0\r\nno newline at end"
    b"DMIOCTL_VM_EXIT_" + NONCE.encode() + b"=7\r\n"
    b"[    9.9] reboot: Power down\r\n"
)


def test_console_separates_boot_log_output_and_status() -> None:
    console = vm.ConsoleFilter(NONCE)
    boot, output = feed_all(console, [STREAM])
    assert boot == b"[    2.1] kernel says\nloading modules\n"
    assert output == b"line one\nDMIOCTL_VM_EXIT_wrongnonce=0\nno newline at end"
    assert console.started and console.status == 7


@pytest.mark.parametrize("size", [1, 2, 3, 5, 17])
def test_console_finds_markers_split_across_reads(size: int) -> None:
    console = vm.ConsoleFilter(NONCE)
    chunks = [STREAM[i : i + size] for i in range(0, len(STREAM), size)]
    assert feed_all(console, chunks) == feed_all(vm.ConsoleFilter(NONCE), [STREAM])
    assert console.status == 7


def test_console_streams_partial_lines_without_waiting_for_a_newline() -> None:
    console = vm.ConsoleFilter(NONCE)
    console.feed(b"DMIOCTL_VM_START_" + NONCE.encode() + b"\n")
    assert console.feed(b"....") == (b"", b"....")
    assert console.feed(b"F\r") == (b"", b"F")
    assert console.feed(b"\nDMIOCTL_VM_EX") == (b"", b"\n")
    assert console.feed(b"IT_") == (b"", b"")
    assert console.feed(b"nope\n") == (b"", b"DMIOCTL_VM_EXIT_nope\n")


def test_console_without_status_returns_everything_on_flush() -> None:
    console = vm.ConsoleFilter(NONCE)
    boot, output = feed_all(console, [b"Kernel panic - not syncing\r\nDMIOCTL_VM_STA"])
    assert boot == b"Kernel panic - not syncing\nDMIOCTL_VM_STA"
    assert output == b""
    assert not console.started and console.status is None


def test_console_holds_a_marker_until_its_line_ends() -> None:
    console = vm.ConsoleFilter(NONCE)
    console.feed(b"DMIOCTL_VM_START_" + NONCE.encode() + b"\n")
    assert console.feed(b"out\nDMIOCTL_VM_EXIT_" + NONCE.encode() + b"=12") == (b"", b"out\n")
    assert console.status is None
    assert console.feed(b"5\r\n") == (b"", b"")
    assert console.status == 125


# ------------------------------------------------------------------------- qemu


def test_disk_sizes() -> None:
    assert vm.parse_size("4096") == 4096
    assert vm.parse_size("512M") == 512 << 20
    assert vm.parse_size("20G") == 20 << 30
    assert vm.parse_size("1TiB") == 1 << 40
    for bad in ("", "0", "-1G", "1.5G", "20X"):
        with pytest.raises(ValueError, match="not a disk size"):
            vm.parse_size(bad)


def test_kernel_command_line_keeps_the_console_quiet_and_panics_fatal() -> None:
    params = vm.kernel_command_line(verbose=False).split()
    assert {"console=ttyS0", "loglevel=3", "panic=-1", "oops=panic", "tsc=reliable"} <= set(params)
    assert "loglevel=7" in vm.kernel_command_line(verbose=True).split()


def test_qemu_command_uses_tcg_and_shares_the_root_read_only(tmp_path: Path) -> None:
    kernel = vm.Kernel("6.1.0-57-amd64", tmp_path)
    argv = vm.qemu_command(
        kernel, tmp_path / "initrd", memory=4096, cpus=2, disk=None, verbose=False
    )
    joined = " ".join(argv)
    assert "-accel tcg,thread=multi -cpu max -smp 2 -m 4096" in joined
    assert "-no-reboot" in argv and "-nodefaults" in argv
    assert (
        "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap" in argv
    )
    assert argv[argv.index("-kernel") + 1] == str(kernel.vmlinuz)  # no vmlinux extracted
    assert "-drive" not in argv
    with_disk = vm.qemu_command(
        kernel, tmp_path / "initrd", memory=1024, cpus=1, disk=tmp_path / "a,b", verbose=False
    )
    assert f"file={tmp_path / 'a,,b'},format=raw,if=none,id=scratch" in " ".join(with_disk)


# ------------------------------------------------------------------ supervision


def fake_qemu(program: str) -> list[str]:
    """A stand-in for qemu: a Python program printing a console stream."""
    return [sys.executable, "-c", program]


class ClosedPipe(io.BytesIO):
    """An output whose reader has gone away."""

    def write(self, data: Any) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def supervise(
    program: str, timeout: float = 30.0, out: io.BytesIO | None = None
) -> tuple[int, bytes, bytes]:
    out, err = out or io.BytesIO(), io.BytesIO()

    def say(message: str) -> None:
        err.write(f"vm: {message}\n".encode())

    status = vm._supervise(
        fake_qemu(program), NONCE, timeout, vm._Clock(), out, err, say, verbose=False
    )
    return status, out.getvalue(), err.getvalue()


def test_supervisor_returns_the_reported_status_and_hides_boot_log() -> None:
    status, out, err = supervise(
        "import sys; w = sys.stdout.write;"
        "w('boot noise\\r\\nDMIOCTL_VM_START_" + NONCE + "\\r\\n');"
        "w('result\\r\\nDMIOCTL_VM_EXIT_" + NONCE + "=42\\r\\nPower down\\r\\n')"
    )
    assert (status, out, err) == (42, b"result\n", b"")


def test_supervisor_keeps_the_status_when_the_output_reader_goes_away() -> None:
    status, _, err = supervise(
        "import sys; w = sys.stdout.write;"
        "w('DMIOCTL_VM_START_" + NONCE + "\\n' + 'x' * 100000 + '\\n');"
        "w('DMIOCTL_VM_EXIT_" + NONCE + "=3\\n')",
        out=ClosedPipe(),
    )
    assert (status, err) == (3, b"")


def test_supervisor_reports_a_guest_that_never_reports() -> None:
    status, out, err = supervise(
        "import sys; sys.stdout.write('booting\\r\\nKernel panic\\r\\n'); sys.exit(0)"
    )
    assert status == vm.EXIT_NO_STATUS
    assert out == b""
    assert err.startswith(b"booting\nKernel panic\n")  # the boot log explains the failure
    assert err.rstrip().splitlines()[-1].startswith(b"vm: the guest never reported")


def test_supervisor_kills_a_guest_that_outlives_the_timeout() -> None:
    status, _, err = supervise("import time; time.sleep(60)", timeout=0.5)
    assert status == vm.EXIT_TIMEOUT
    assert err == b"vm: timed out after 0.5 s; killed the guest\n"


def test_command_line_takes_the_command_after_the_options() -> None:
    options = vm._parse_args(["--timeout", "60", "--disk", "1G", "--", "sh", "-c", "exit 3"])
    assert options.command == ["sh", "-c", "exit 3"]
    assert (options.timeout, options.disk, options.memory, options.cpus) == (60, 1 << 30, 4096, 2)
    for bad in (["--"], ["--cpus", "0", "--", "true"], ["--timeout", "-1", "--", "true"]):
        with pytest.raises(SystemExit):
            vm._parse_args(bad)


# --------------------------------------------------------------------- real VM


def vm_unavailable() -> str | None:
    if os.environ.get("DMIOCTL_VM"):
        return "already inside the VM"
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 missing (tools/bootstrap installs it)"
    cache = Path(os.environ.get("DMIOCTL_VM_CACHE") or vm.DEFAULT_CACHE)
    if os.geteuid() != 0 and not os.access(cache if cache.exists() else cache.parent, os.W_OK):
        return f"cannot write the VM cache {cache}"
    return None


@pytest.mark.vm
@pytest.mark.skipif(vm_unavailable() is not None, reason=str(vm_unavailable()))
def test_real_guest_has_device_mapper_and_returns_the_exact_status() -> None:
    out, err = io.BytesIO(), io.BytesIO()
    script = (
        "test -c /dev/mapper/control || exit 1; test -c /dev/loop-control || exit 2;"
        ' [ "$(pwd)" = "$1" ] || exit 3; test -e /proc/1/root/job/nonce && exit 4;'
        ' echo "guest ok"; exit 7'
    )
    status = vm.run(
        ["sh", "-c", script, "sh", str(ROOT)],
        timeout=600,
        cwd=str(ROOT),
        stdout=out,
        stderr=err,
    )
    assert status == 7, err.getvalue().decode(errors="replace")
    assert b"guest ok\n" in out.getvalue()
    assert b"DMIOCTL_VM_" not in out.getvalue()
