"""Build a copy-on-write snapshot chain on a thin-pool, show it, and clean up.

    sparse files -> loop devices -> thin-pool
      base (ext4, files copied from this machine)
        image "app" = snapshot of base, one file added, one deleted
          container "c1" = snapshot of app, written to
          container "c2" = snapshot of app, sees none of c1's writes

Runs as root on a kernel with device-mapper; ``tools/demo`` picks the VM when
this machine's kernel has none.  Everything lives in a throwaway directory and
under a unique name prefix, and is removed at the end, also after a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from dmioctl import DeviceMapper, Target, loop
from dmioctl.nodes import node_path

SECTOR = 512
BLOCK_SECTORS = 128  # 64 KiB thin-pool blocks
POOL_BYTES = 1 << 30
META_BYTES = 64 << 20
THIN_BYTES = 256 << 20
PREFIX = f"dmioctl-demo-{os.getpid()}-"


def step(text: str) -> None:
    print(f"-- {text}", flush=True)


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


class Chain:
    """The pool and its thin devices, torn down in reverse order on exit."""

    def __init__(self, dm: DeviceMapper, stack: contextlib.ExitStack, root: Path) -> None:
        self.dm = dm
        self.stack = stack
        self.root = root
        self.pool = PREFIX + "pool"
        self.thin_ids: dict[str, int] = {}

    def start_pool(self) -> None:
        meta = self.sparse("meta.img", META_BYTES)
        data = self.sparse("data.img", POOL_BYTES)
        meta_dev = self.stack.enter_context(loop.attached(meta))
        data_dev = self.stack.enter_context(loop.attached(data))
        params = f"{meta_dev.path} {data_dev.path} {BLOCK_SECTORS} 0"
        self.activate(self.pool, [Target(0, POOL_BYTES // SECTOR, "thin-pool", params)])

    def sparse(self, name: str, size: int) -> Path:
        path = self.root / name
        with path.open("wb") as f:
            f.truncate(size)
        return path

    def activate(self, name: str, targets: list[Target]) -> None:
        self.dm.create(name)
        self.stack.callback(self.dm.remove, name, retries=5)
        self.dm.load_table(name, targets)
        self.dm.resume(name)

    def thin(self, name: str, origin: str | None = None) -> str:
        """Create thin device ``name`` (a snapshot of ``origin`` if given) and activate it."""
        thin_id = len(self.thin_ids)
        if origin is None:
            self.dm.target_message(self.pool, f"create_thin {thin_id}")
        else:
            # An active origin is suspended around the snapshot (thin-provisioning.rst).
            with self.dm.suspended(PREFIX + origin):
                self.dm.target_message(self.pool, f"create_snap {thin_id} {self.thin_ids[origin]}")
        self.stack.callback(self.dm.target_message, self.pool, f"delete {thin_id}")
        self.thin_ids[name] = thin_id
        params = f"{node_path(self.pool)} {thin_id}"
        self.activate(PREFIX + name, [Target(0, THIN_BYTES // SECTOR, "thin", params)])
        return node_path(PREFIX + name)

    @contextlib.contextmanager
    def mounted(self, name: str) -> Iterator[Path]:
        where = self.root / "mnt" / name
        where.mkdir(parents=True, exist_ok=True)
        run("mount", "-o", "discard", node_path(PREFIX + name), str(where))
        try:
            yield where
        finally:
            run("umount", str(where))

    def usage(self) -> str:
        fields = self.dm.status(self.pool)[0].params.split()
        used, total = (
            int(blocks) * BLOCK_SECTORS * SECTOR >> 20 for blocks in fields[2].split("/")
        )
        return f"data {used} MiB used of {total} MiB"


def main() -> int:
    if os.geteuid() != 0:
        print("demo: run as root (it creates loop and device-mapper devices)", file=sys.stderr)
        return 1
    with (
        tempfile.TemporaryDirectory(prefix="dmioctl-demo-") as tmp,
        DeviceMapper() as dm,
        contextlib.ExitStack() as stack,
    ):
        chain = Chain(dm, stack, Path(tmp))
        step(f"thin-pool on sparse loop files: {POOL_BYTES >> 30} GiB data, 64 KiB blocks")
        chain.start_pool()

        step("base: thin device, ext4, files copied from /etc")
        run("mkfs.ext4", "-q", chain.thin("base"))
        with chain.mounted("base") as base:
            for name in ("os-release", "hostname", "passwd", "group"):
                if os.path.exists(f"/etc/{name}"):
                    shutil.copy(f"/etc/{name}", base / name)
            print("   base:", sorted(p.name for p in base.iterdir() if p.is_file()))

        step("image app: snapshot of base; adds app.conf, deletes group")
        chain.thin("app", origin="base")
        with chain.mounted("app") as app:
            (app / "app.conf").write_text("listen 8080\n")
            (app / "group").unlink()
            print("   app: ", sorted(p.name for p in app.iterdir() if p.is_file()))

        step("containers c1 and c2: snapshots of app; c1 writes a file")
        chain.thin("c1", origin="app")
        chain.thin("c2", origin="app")
        with chain.mounted("c1") as c1:
            (c1 / "scratch.txt").write_text("only in c1\n")
            print("   c1:  ", sorted(p.name for p in c1.iterdir() if p.is_file()))
        with chain.mounted("c2") as c2:
            print("   c2:  ", sorted(p.name for p in c2.iterdir() if p.is_file()))
            assert not (c2 / "scratch.txt").exists(), "c2 sees c1's write"

        step("tree")
        print(f"   {PREFIX}pool\n     base\n       app\n         c1\n         c2")
        step(f"pool usage: {chain.usage()}")
        step("cleaning up")
    print("demo: done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
