"""The dmsnap command against a fake layer graph: exact output, exit codes and JSON."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import click
import pytest
from click.testing import CliRunner, Result

from layering import cli
from layering.errors import InvalidInput
from layering.graph import Finding
from layering.pool import GiB, MiB, PoolConfig, Usage
from layering.store import Busy, Layer, LayerKind, NotFound

ROOT = Path("/srv/snaps")
T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC

BASE = Layer("00000000000b", LayerKind.BASE, None, 0, 64 * MiB, name="base", created=T0)
FEDORA = Layer(
    "0000000000f1", LayerKind.IMAGE, BASE.id, 1, 64 * MiB, name="fedora", created=T0 + 60
)
PLAIN = Layer("0000000000a2", LayerKind.IMAGE, FEDORA.id, 2, 96 * MiB, created=T0 + 120)
WEB = Layer(
    "0000000000c3",
    LayerKind.CONTAINER,
    FEDORA.id,
    3,
    64 * MiB,
    name="web",
    created=T0 + 180,
    mount=Path("/srv/snaps/containers/0000000000c3"),
)
IDLE = Layer("0000000000c4", LayerKind.CONTAINER, PLAIN.id, 4, 96 * MiB, created=T0 + 240)


class FakePool:
    name = "dmsnap-1a2b3c4d-pool"

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls


class FakeStore:
    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        self.calls.append("lock")
        yield
        self.calls.append("unlock")


class FakeGraph:
    """The Graph methods the CLI calls, over a fixed set of layers, logging each change."""

    def __init__(self) -> None:
        self.every = [BASE, FEDORA, PLAIN, WEB, IDLE]
        self.calls: list[str] = []
        self.pool = FakePool(self.calls)
        self.store = FakeStore(self.calls)
        self.findings: list[Finding] = []
        self.imported: bytes = b""
        self.progress_steps = [(0, 10), (4, 10), (10, 10)]
        self.failure: Exception | None = None

    def close(self) -> None:
        self.calls.append("close")

    def _find(self, ref: str) -> Layer:
        for layer in self.every:
            if ref in (layer.id, layer.name):
                return layer
        raise NotFound(f"no layer with id or name {ref!r}")

    def grow(self, *, data_bytes: int | None = None, metadata_bytes: int | None = None) -> None:
        self.calls.append(f"grow data={data_bytes} metadata={metadata_bytes}")

    def layers(self, kind: LayerKind | None = None) -> list[Layer]:
        return [layer for layer in self.every if kind is None or layer.kind is kind]

    def tree(self) -> list[tuple[int, Layer]]:
        return [(0, BASE), (1, FEDORA), (2, PLAIN), (3, IDLE), (2, WEB)]

    def usage(self) -> Usage:
        return Usage(96 * MiB, 1 * GiB, 1 * MiB, 16 * MiB, 7)

    def import_layer(
        self,
        tarball: Path | IO[bytes],
        *,
        parent: str = "base",
        name: str | None = None,
        size_bytes: int | None = None,
        progress: Any = None,
    ) -> Layer:
        self._find(parent)
        if isinstance(tarball, Path):
            self.imported = tarball.read_bytes()
            what = f"path {tarball.name}"
        else:
            self.imported = tarball.read()
            what = "stream"
        if progress is not None:
            for done, total in self.progress_steps:
                progress(done, total)
        self.calls.append(
            f"import {what} parent={parent} name={name} size={size_bytes} "
            f"progress={progress is not None}"
        )
        return Layer("0000000000e5", LayerKind.IMAGE, FEDORA.id, 5, 64 * MiB, name, T0)

    def create_container(
        self,
        image: str,
        *,
        name: str | None = None,
        mount: Path | None = None,
        size_bytes: int | None = None,
    ) -> Layer:
        parent = self._find(image)
        self.calls.append(f"create {image} name={name} mount={mount} size={size_bytes}")
        where = mount or ROOT / "containers" / "0000000000c6"
        return Layer("0000000000c6", LayerKind.CONTAINER, parent.id, 6, 64 * MiB, name, T0, where)

    def commit(self, container: str, *, name: str | None = None) -> Layer:
        self.calls.append(f"commit {container} name={name}")
        source = self._find(container)
        assert source.parent is not None
        return Layer("0000000000e7", LayerKind.IMAGE, source.parent, 7, 64 * MiB, name, T0)

    def mount(self, container: str) -> Layer:
        self.calls.append(f"mount {container}")
        return WEB

    def umount(self, container: str) -> Layer:
        self.calls.append(f"umount {container}")
        return self._find(container)

    def remove(self, ref: str, *, recursive: bool = False) -> list[Layer]:
        self.calls.append(f"remove {ref} recursive={recursive}")
        if self.failure is not None:
            raise self.failure
        return [IDLE, PLAIN] if recursive else [self._find(ref)]

    def fsck(self, *, repair: bool = False) -> list[Finding]:
        self.calls.append(f"fsck repair={repair}")
        return self.findings

    def destroy(self) -> None:
        self.calls.append("destroy")


class FakeControl:
    def __enter__(self) -> FakeControl:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


@pytest.fixture
def graph() -> FakeGraph:
    return FakeGraph()


@pytest.fixture
def env(graph: FakeGraph) -> cli.SnapEnvironment:
    def open_graph(root: Path, dm: object) -> FakeGraph:
        graph.calls.append(f"open {root}")
        return graph

    def init_graph(
        root: Path, dm: object, config: PoolConfig, base_bytes: int, fstype: str
    ) -> FakeGraph:
        graph.calls.append(f"init {root} {config} base={base_bytes} fs={fstype}")
        return graph

    return cli.SnapEnvironment(
        open_control=FakeControl,  # type: ignore[arg-type]
        init_graph=init_graph,  # type: ignore[arg-type]
        open_graph=open_graph,  # type: ignore[arg-type]
    )


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Human times in UTC, so that the tables are the same everywhere."""
    monkeypatch.setenv("TZ", "UTC")
    monkeypatch.delenv("DMSNAP_ROOT", raising=False)
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def run(
    env: cli.SnapEnvironment, *args: str, status: int = 0, stdin: bytes | None = None
) -> Result:
    result = CliRunner().invoke(cli.main, ["--root", str(ROOT), *args], obj=env, input=stdin)
    assert result.exit_code == status, (result.output, result.exception)
    return result


# Sizes


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4096", 4096),
        ("512B", 512),
        ("512K", 512 * 1024),
        ("512M", 512 * MiB),
        ("10G", 10 * GiB),
        ("10g", 10 * GiB),
        ("100GiB", 100 * GiB),
        ("64 KiB", 64 * 1024),
        ("2T", 2 * 1024 * GiB),
        ("1P", 1024**5),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert cli.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "10Q", "1.5G", "-1G", "10GB", "0", "0M", "10 G B"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="size"):
        cli.parse_size(text)


@pytest.mark.parametrize(
    ("size", "text"),
    [(512, "512 B"), (64 * MiB, "64 MiB"), (1536 * MiB, "1.5 GiB"), (5000 * 1024**4, "5000 TiB")],
)
def test_format_size(size: int, text: str) -> None:
    assert cli.format_size(size) == text


def test_bad_size_is_one_line_naming_the_option(
    env: cli.SnapEnvironment, graph: FakeGraph
) -> None:
    result = run(env, "init", "--data-size", "10Q", status=2)
    assert result.stdout == ""
    assert result.stderr == (
        "dmsnap: Invalid value for '--data-size': '10Q' is not a size: give bytes or a whole "
        "number with K, M, G, T or P (powers of 1024), as in 512M, 10G or 100GiB\n"
    )
    assert graph.calls == []


def test_zero_size_is_refused(env: cli.SnapEnvironment, graph: FakeGraph) -> None:
    result = run(env, "create", "fedora", "--size", "0", status=2)
    assert result.stderr == (
        "dmsnap: Invalid value for '--size': '0': a size must be more than zero\n"
    )
    assert graph.calls == []


# Setting up and taking down


def test_init_passes_sizes_in_bytes(env: cli.SnapEnvironment, graph: FakeGraph) -> None:
    args = ["--data-size", "1G", "--metadata-size", "16M", "--block-size", "128K"]
    result = run(env, "init", *args, "--base-size", "64MiB", "--fs", "xfs")
    config = PoolConfig(1 * GiB, 16 * MiB, 128 * 1024)
    assert graph.calls == [f"init {ROOT} {config} base={64 * MiB} fs=xfs", "close"]
    assert result.stdout == ""


def test_init_defaults_are_the_library_s(env: cli.SnapEnvironment, graph: FakeGraph) -> None:
    run(env, "init")
    assert graph.calls[0] == f"init {ROOT} {PoolConfig()} base={10 * GiB} fs=ext4"


def test_init_on_devices(env: cli.SnapEnvironment, graph: FakeGraph) -> None:
    run(env, "init", "--data-device", "/dev/sdb", "--metadata-device", "/dev/sdc")
    config = PoolConfig(data_device="/dev/sdb", metadata_device="/dev/sdc")
    assert graph.calls[0] == f"init {ROOT} {config} base={10 * GiB} fs=ext4"


def test_init_refuses_one_device_only(env: cli.SnapEnvironment, graph: FakeGraph) -> None:
    result = run(env, "init", "--data-device", "/dev/sdb", status=1)
    assert result.stderr == "dmsnap: give both a data and a metadata device, or neither\n"
    assert graph.calls == []


def test_unknown_file_system_is_one_line(env: cli.SnapEnvironment) -> None:
    result = run(env, "init", "--fs", "btrfs", status=2)
    assert result.stderr == (
        "dmsnap: Invalid value for '--fs': 'btrfs' is not one of 'ext4', 'xfs'.\n"
    )


def test_destroy_needs_yes(env: cli.SnapEnvironment, graph: FakeGraph) -> None:
    result = run(env, "destroy", status=1)
    assert result.stdout == ""
    assert result.stderr == (
        f"dmsnap: destroy deletes every layer under {ROOT}; give --yes to confirm\n"
    )
    assert graph.calls == []


def test_destroy(env: cli.SnapEnvironment, graph: FakeGraph) -> None:
    result = run(env, "destroy", "--yes")
    assert result.output == ""
    assert graph.calls == [f"open {ROOT}", "destroy", "close"]


def test_grow(env: cli.SnapEnvironment, graph: FakeGraph) -> None:
    run(env, "grow", "--data-size", "2G")
    assert graph.calls == [f"open {ROOT}", f"grow data={2 * GiB} metadata=None", "close"]


def test_grow_needs_a_size(env: cli.SnapEnvironment, graph: FakeGraph) -> None:
    result = run(env, "grow", status=1)
    assert result.stderr == "dmsnap: give --data-size, --metadata-size or both\n"
    assert graph.calls == []


# Reading


def test_status(env: cli.SnapEnvironment) -> None:
    assert run(env, "status").stdout == (
        "Root:           /srv/snaps\n"
        "Pool:           dmsnap-1a2b3c4d-pool\n"
        "Data:           96 MiB of 1 GiB used (9.4%)\n"
        "Metadata:       1 MiB of 16 MiB used (6.2%)\n"
        "Transaction id: 7\n"
        "Layers:         1 base, 2 images, 2 containers\n"
    )


def test_status_json(env: cli.SnapEnvironment) -> None:
    assert json.loads(run(env, "status", "--json").stdout) == {
        "root": "/srv/snaps",
        "pool": "dmsnap-1a2b3c4d-pool",
        "data": {"used_bytes": 96 * MiB, "total_bytes": GiB, "used_percent": 9.38},
        "metadata": {"used_bytes": MiB, "total_bytes": 16 * MiB, "used_percent": 6.25},
        "transaction_id": 7,
        "layers": {"base": 1, "images": 2, "containers": 2},
    }


def test_images(env: cli.SnapEnvironment, graph: FakeGraph) -> None:
    assert run(env, "images").stdout == (
        "ID            NAME    PARENT  SIZE    CREATED\n"
        "00000000000b  base    -       64 MiB  2023-11-14 22:13:20\n"
        "0000000000f1  fedora  base    64 MiB  2023-11-14 22:14:20\n"
        "0000000000a2  -       fedora  96 MiB  2023-11-14 22:15:20\n"
    )
    assert graph.calls == [f"open {ROOT}", "close"]


def test_containers(env: cli.SnapEnvironment) -> None:
    assert run(env, "containers").stdout == (
        "ID            NAME  PARENT        SIZE    CREATED              MOUNT\n"
        "0000000000c3  web   fedora        64 MiB  2023-11-14 22:16:20  "
        "/srv/snaps/containers/0000000000c3\n"
        "0000000000c4  -     0000000000a2  96 MiB  2023-11-14 22:17:20  -\n"
    )


def test_no_containers_is_the_heading(env: cli.SnapEnvironment, graph: FakeGraph) -> None:
    graph.every = [BASE]
    assert run(env, "containers").stdout == "ID  NAME  PARENT  SIZE  CREATED  MOUNT\n"


def test_containers_json(env: cli.SnapEnvironment) -> None:
    assert json.loads(run(env, "containers", "--json").stdout) == [
        {
            "id": "0000000000c3",
            "kind": "container",
            "name": "web",
            "parent": "0000000000f1",
            "thin_id": 3,
            "size_bytes": 64 * MiB,
            "created": "2023-11-14T22:16:20Z",
            "mount": "/srv/snaps/containers/0000000000c3",
            "state": "ready",
        },
        {
            "id": "0000000000c4",
            "kind": "container",
            "name": None,
            "parent": "0000000000a2",
            "thin_id": 4,
            "size_bytes": 96 * MiB,
            "created": "2023-11-14T22:17:20Z",
            "mount": None,
            "state": "ready",
        },
    ]


def test_images_json_lists_the_base_and_the_images(env: cli.SnapEnvironment) -> None:
    listed = json.loads(run(env, "images", "--json").stdout)
    assert [(i["id"], i["kind"], i["parent"]) for i in listed] == [
        ("00000000000b", "base", None),
        ("0000000000f1", "image", "00000000000b"),
        ("0000000000a2", "image", "0000000000f1"),
    ]
    assert all(list(i) == list(cli.layer_json(BASE)) for i in listed)


def test_tree(env: cli.SnapEnvironment) -> None:
    assert run(env, "tree").stdout == (
        "base (base, 00000000000b)\n"
        "\u2514\u2500 fedora (image, 0000000000f1)\n"
        "   \u251c\u2500 0000000000a2 (image)\n"
        "   \u2502  \u2514\u2500 0000000000c4 (container)\n"
        "   \u2514\u2500 web (container, 0000000000c3, /srv/snaps/containers/0000000000c3)\n"
    )


def test_tree_json_nests(env: cli.SnapEnvironment) -> None:
    roots = json.loads(run(env, "tree", "--json").stdout)

    def shape(node: dict[str, Any]) -> object:
        return [node["id"], [shape(child) for child in node["children"]]]

    assert [shape(root) for root in roots] == [
        [
            "00000000000b",
            [["0000000000f1", [["0000000000a2", [["0000000000c4", []]]], ["0000000000c3", []]]]],
        ]
    ]
    assert roots[0] == {**cli.layer_json(BASE), "children": roots[0]["children"]}


# Images and containers


def test_import_tarball(env: cli.SnapEnvironment, graph: FakeGraph, tmp_path: Path) -> None:
    (tmp_path / "layer.tar").write_bytes(b"tar bytes")
    result = run(env, "import", str(tmp_path / "layer.tar"), "--parent", "fedora", "--name", "app")
    assert result.stdout == "0000000000e5\n"
    assert result.stderr == ""
    assert graph.calls == [
        f"open {ROOT}",
        "import path layer.tar parent=fedora name=app size=None progress=False",
        "close",
    ]


def test_import_stdin_with_size(env: cli.SnapEnvironment, graph: FakeGraph) -> None:
    run(env, "import", "-", "--size", "128M", stdin=b"streamed")
    assert graph.imported == b"streamed"
    assert graph.calls[1] == f"import stream parent=base name=None size={128 * MiB} progress=False"


def test_import_directory_exports_it(
    env: cli.SnapEnvironment, graph: FakeGraph, tmp_path: Path
) -> None:
    (tmp_path / "files" / "etc").mkdir(parents=True)
    (tmp_path / "files" / "etc" / "motd").write_text("hello\n")
    run(env, "import", str(tmp_path / "files"))
    assert graph.calls[1].startswith("import stream parent=base")
    with tarfile.open(fileobj=io.BytesIO(graph.imported)) as tar:
        names = tar.getnames()
        motd = tar.extractfile("etc/motd")
        assert motd is not None and motd.read() == b"hello\n"
    assert "etc" in names


def test_import_progress_on_request(
    env: cli.SnapEnvironment, graph: FakeGraph, tmp_path: Path
) -> None:
    (tmp_path / "layer.tar").write_bytes(b"x")
    result = run(env, "import", str(tmp_path / "layer.tar"), "--progress")
    # Not a terminal: click writes the label once, and the bar only on a terminal.
    assert result.stderr == f"Importing {tmp_path / 'layer.tar'}\n"
    assert result.stdout == "0000000000e5\n"
    assert graph.calls[1].endswith("progress=True")


def test_import_missing_source(env: cli.SnapEnvironment, graph: FakeGraph) -> None:
    result = run(env, "import", "/nonexistent/layer.tar", status=2)
    assert result.stderr == (
        "dmsnap: Invalid value for 'SOURCE': Path '/nonexistent/layer.tar' does not exist.\n"
    )
    assert graph.calls == []


def test_import_json(env: cli.SnapEnvironment, tmp_path: Path) -> None:
    (tmp_path / "layer.tar").write_bytes(b"x")
    made = json.loads(run(env, "import", str(tmp_path / "layer.tar"), "--json").stdout)
    assert made["id"] == "0000000000e5" and made["kind"] == "image"


def test_create(env: cli.SnapEnvironment, graph: FakeGraph, tmp_path: Path) -> None:
    result = run(env, "create", "fedora", "--name", "db", "--mount", "/mnt/db", "--size", "1G")
    assert result.stdout == "0000000000c6\n"
    assert graph.calls[1] == f"create fedora name=db mount=/mnt/db size={GiB}"


def test_create_json(env: cli.SnapEnvironment) -> None:
    made = json.loads(run(env, "create", "fedora", "--json").stdout)
    assert made["mount"] == "/srv/snaps/containers/0000000000c6"
    assert made["parent"] == FEDORA.id


def test_unknown_image_is_one_line(env: cli.SnapEnvironment, graph: FakeGraph) -> None:
    result = run(env, "create", "nosuch", status=1)
    assert result.stdout == ""
    assert result.stderr == "dmsnap: no layer with id or name 'nosuch'\n"
    assert graph.calls == [f"open {ROOT}", "close"]


def test_mount_umount_commit(env: cli.SnapEnvironment, graph: FakeGraph) -> None:
    assert run(env, "mount", "web").stdout == "/srv/snaps/containers/0000000000c3\n"
    assert run(env, "umount", "web").stdout == ""
    assert run(env, "commit", "web", "--name", "fedora-web").stdout == "0000000000e7\n"
    assert [c for c in graph.calls if not c.startswith(("open", "close"))] == [
        "mount web",
        "umount web",
        "commit web name=fedora-web",
    ]


def test_rm(env: cli.SnapEnvironment, graph: FakeGraph) -> None:
    assert run(env, "rm", "web").stdout == "0000000000c3\n"
    assert run(env, "rm", "-r", "0000000000a2").stdout == "0000000000c4\n0000000000a2\n"
    assert graph.calls[-2] == "remove 0000000000a2 recursive=True"
    removed = json.loads(run(env, "rm", "--recursive", "0000000000a2", "--json").stdout)
    assert [layer["id"] for layer in removed] == ["0000000000c4", "0000000000a2"]


def test_rm_busy_is_one_line(env: cli.SnapEnvironment, graph: FakeGraph) -> None:
    graph.failure = Busy("container web is busy: open 1 time(s); remove it again then")
    result = run(env, "rm", "web", status=1)
    assert result.stderr == (
        "dmsnap: container web is busy: open 1 time(s); remove it again then\n"
    )
    assert graph.calls[-1] == "close"


def test_os_error_is_one_line(env: cli.SnapEnvironment, graph: FakeGraph) -> None:
    graph.failure = PermissionError(13, "Permission denied", "/srv/snaps/lock")
    result = run(env, "rm", "web", status=1)
    assert result.stderr == "dmsnap: Permission denied: /srv/snaps/lock\n"


# fsck


def test_fsck_clean(env: cli.SnapEnvironment, graph: FakeGraph) -> None:
    assert run(env, "fsck").stdout == "no findings\n"
    assert graph.calls[1] == "fsck repair=False"


def test_fsck_findings_remaining_exit_1(env: cli.SnapEnvironment, graph: FakeGraph) -> None:
    graph.findings = [
        Finding("orphan-thin", "9", "in the pool, in no layer", False),
        Finding("skipped", "thin ids", "thin_dump is not installed", False),
    ]
    result = run(env, "fsck", status=1)
    assert result.stdout == (
        "orphan-thin: 9: in the pool, in no layer\nskipped: thin ids: thin_dump is not installed\n"
    )
    assert result.stderr == ""


def test_fsck_repaired_exit_0(env: cli.SnapEnvironment, graph: FakeGraph) -> None:
    graph.findings = [
        Finding("stray-device", "dmsnap-1a2b3c4d-9", "active, belongs to no layer", True),
        Finding("skipped", "thin ids", "thin_dump is not installed", False),
    ]
    result = run(env, "fsck", "--repair")
    assert result.stdout.splitlines()[0] == (
        "stray-device: dmsnap-1a2b3c4d-9: active, belongs to no layer (repaired)"
    )
    assert graph.calls[1] == "fsck repair=True"


def test_fsck_json(env: cli.SnapEnvironment, graph: FakeGraph) -> None:
    graph.findings = [Finding("not-mounted", "web", "not on /srv/web", False)]
    result = run(env, "fsck", "--json", status=1)
    assert json.loads(result.stdout) == {
        "findings": [
            {
                "kind": "not-mounted",
                "subject": "web",
                "detail": "not on /srv/web",
                "repaired": False,
            }
        ],
        "remaining": 1,
    }


# The group


def test_root_from_the_environment(
    env: cli.SnapEnvironment, graph: FakeGraph, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DMSNAP_ROOT", "relative/root")
    monkeypatch.chdir(tmp_path)
    CliRunner().invoke(cli.main, ["images"], obj=env)
    assert graph.calls[0] == f"open {tmp_path / 'relative' / 'root'}"


def test_root_default(env: cli.SnapEnvironment, graph: FakeGraph) -> None:
    CliRunner().invoke(cli.main, ["images"], obj=env)
    assert graph.calls[0] == "open /var/lib/dmsnap"


def test_verbose_logs_debug_on_stderr(env: cli.SnapEnvironment) -> None:
    class Logging(FakeGraph):
        def layers(self, kind: LayerKind | None = None) -> list[Layer]:
            logging.getLogger("layering.store").debug("listing %s", kind)
            return super().layers(kind)

    noisy = Logging()
    env.open_graph = lambda root, dm: noisy  # type: ignore[assignment,misc,return-value]
    result = CliRunner().invoke(cli.main, ["-v", "containers"], obj=env)
    assert result.stderr == (
        "dmsnap: layering.store: listing LayerKind.CONTAINER\n"
        "dmsnap: layering.store: listing None\n"
    )
    quiet = CliRunner().invoke(cli.main, ["containers"], obj=env)
    assert quiet.stderr == ""


def test_library_error_from_open(env: cli.SnapEnvironment) -> None:
    def refuse(root: Path, dm: object) -> FakeGraph:
        raise InvalidInput(f"{root} holds no store; run 'dmsnap init' first")

    env.open_graph = refuse  # type: ignore[assignment]
    result = run(env, "tree", status=1)
    assert result.stderr == "dmsnap: /srv/snaps holds no store; run 'dmsnap init' first\n"


def _commands() -> list[str]:
    return sorted(cli.main.commands)


def test_the_commands() -> None:
    assert _commands() == [
        "commit",
        "containers",
        "create",
        "destroy",
        "down",
        "du",
        "fsck",
        "grow",
        "images",
        "import",
        "init",
        "mount",
        "rm",
        "status",
        "tree",
        "umount",
    ]


@pytest.mark.parametrize("command", ["", *_commands()])
def test_every_help_has_an_example(command: str) -> None:
    args = [command, "--help"] if command else ["--help"]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0
    example = result.stdout.split("Example:\n", 1)[1]
    assert example.lstrip().startswith("dmsnap")


@pytest.mark.parametrize("command", ["status", "images", "containers", "tree", "fsck"])
def test_read_commands_take_json(command: str) -> None:
    assert "--json" in [opt for p in cli.main.commands[command].params for opt in p.opts]


def test_module_docstring_documents_every_json_command() -> None:
    doc = cli.__doc__ or ""
    for command, cmd in cli.main.commands.items():
        if any("--json" in p.opts for p in cmd.params):
            assert f"``{command}``" in doc, command


def test_entry_point_is_declared() -> None:
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert 'dmsnap = "layering.cli:main"' in pyproject
    assert isinstance(cli.main, click.Group)
    assert os.path.basename(cli.__file__) == "cli.py"


@pytest.mark.parametrize("command", [["create", "fedora"], ["commit", "web"], ["import", "-"]])
def test_a_bad_name_is_refused_before_the_store_is_opened(
    env: cli.SnapEnvironment, graph: FakeGraph, command: list[str]
) -> None:
    result = run(env, *command, "--name", "Bad/Name", status=1, stdin=b"")
    assert result.stderr == (
        "dmsnap: name 'Bad/Name' is not valid: use 1 to 128 of a-z 0-9 . _ -, "
        "starting with a letter or digit\n"
    )
    assert graph.calls == []
