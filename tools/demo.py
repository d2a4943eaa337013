"""The snapshot chain on the built-in defaults, in a throwaway root: build, show, clean up.

    sparse files -> loop devices -> thin-pool -> base (ext4)
      image "system" = files this machine already has (/etc/os-release, ...)
        image "app"  = adds an app, deletes a file with a whiteout
          container "web1" = writes a log; committed as image "app-logged"
          container "web2" = sees none of web1's writes

Runs as root on a kernel with device-mapper; ``tools/demo`` picks the VM when
this machine's kernel has none.  The pool files are sparse: the defaults
(100 GiB data, 2 GiB metadata, a 10 GiB base) cost only what is written.
"""

from __future__ import annotations

import io
import os
import sys
import tarfile
import tempfile
from pathlib import Path

from dmioctl import DeviceMapper
from layering.graph import Graph
from layering.pool import MiB, PoolConfig
from layering.store import Layer

SYSTEM_FILES = ("/etc/os-release", "/etc/hostname", "/etc/passwd", "/etc/group", "/etc/shells")


def step(text: str) -> None:
    print(f"-- {text}", flush=True)


def tarball(files: dict[str, bytes]) -> io.BytesIO:
    """A layer tarball with regular files (a name ending in / is a directory)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name.rstrip("/"))
            if name.endswith("/"):
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(content), 0o644
                tar.addfile(info, io.BytesIO(content))
    out.seek(0)
    return out


def files_of(layer: Layer) -> list[str]:
    assert layer.mount is not None
    return sorted(
        str(path.relative_to(layer.mount))
        for path in layer.mount.rglob("*")
        if path.is_file() and "lost+found" not in path.parts
    )


def main() -> int:
    if os.geteuid() != 0:
        print("demo: run as root (it makes loop and device-mapper devices)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="dmsnap-demo-") as tmp, DeviceMapper() as dm:
        root = Path(tmp) / "root"
        config = PoolConfig()
        step(
            f"init: thin-pool on sparse files ({config.data_bytes >> 30} GiB data, "
            f"{config.metadata_bytes >> 30} GiB metadata, {config.block_bytes >> 10} KiB blocks),"
            " base device formatted ext4"
        )
        graph = Graph.init(root, dm, config)
        try:
            system = {"etc/": b""}
            for path in SYSTEM_FILES:
                if os.path.exists(path):
                    system[path.lstrip("/")] = Path(path).read_bytes()
            step(f"import image 'system': {len(system) - 1} files from this machine")
            graph.import_layer(tarball(system), name="system")

            step("import image 'app' on 'system': adds srv/app, deletes etc/shells (whiteout)")
            graph.import_layer(
                tarball({"srv/": b"", "srv/app": b"listen 8080\n", "etc/.wh.shells": b""}),
                parent="system",
                name="app",
            )

            step("containers 'web1' and 'web2' from 'app'; web1 writes srv/log")
            web1 = graph.create_container("app", name="web1")
            web2 = graph.create_container("app", name="web2")
            assert web1.mount is not None
            (web1.mount / "srv" / "log").write_bytes(os.urandom(4 * MiB))
            print("   web1:", " ".join(files_of(web1)))
            print("   web2:", " ".join(files_of(web2)))

            step("commit 'web1' as image 'app-logged'")
            graph.commit("web1", name="app-logged")

            step("tree")
            for depth, layer in graph.tree():
                where = f"  mounted on {layer.mount}" if layer.mount else ""
                label = layer.name or layer.id
                print(f"   {'  ' * depth}{label} ({layer.kind.value}){where}")
            usage = graph.usage()
            held = graph.pool.data_file.stat().st_blocks * 512
            step(
                f"pool usage: data {usage.data_used / MiB:.1f} MiB of "
                f"{usage.data_total >> 30} GiB, metadata {usage.metadata_used / MiB:.1f} MiB "
                f"of {usage.metadata_total >> 30} GiB; the sparse data file holds "
                f"{held / MiB:.1f} MiB"
            )
        finally:
            step("cleaning up: destroy the store")
            graph.destroy()
    print("demo: done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
