"""The layer graph end to end on a real thin-pool: images, containers, crashes, space."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dmioctl import DeviceMapper
from layering.errors import InvalidInput
from layering.graph import Graph, NotInitialised
from layering.layers import UnsafeTarball
from layering.pool import MiB, PoolConfig, root_tag
from layering.store import Busy, HasChildren, LayerKind, LayerState
from tests.kernel.support import require, tar_bytes

pytestmark = pytest.mark.kernel

CONFIG = PoolConfig(data_bytes=1024 * MiB, metadata_bytes=16 * MiB)
BASE = 64 * MiB
ROOT = Path(__file__).resolve().parents[2]


def tarball(files: dict[str, bytes | None]) -> io.BytesIO:
    """A layer tarball as a file object: a name maps to content, or None for a directory."""
    return io.BytesIO(tar_bytes(files))


@pytest.fixture
def graph(dm: DeviceMapper, tmp_path: Path) -> Iterator[Graph]:
    made = Graph.init(tmp_path / "store", dm, CONFIG, base_bytes=BASE)
    try:
        yield made
    finally:
        check_metadata(made)
        made.destroy()


def check_metadata(graph: Graph) -> None:
    """thin_check passes on the pool's metadata with the pool stopped."""
    require(shutil.which("thin_check") is not None, "thin-provisioning-tools not installed")
    for layer in graph.layers(LayerKind.CONTAINER):
        if layer.mount is not None and os.path.ismount(layer.mount):
            subprocess.run(["umount", str(layer.mount)], check=True)
    graph.pool.teardown()
    result = subprocess.run(
        ["thin_check", str(graph.pool.metadata_file)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def listing(root: Path) -> dict[str, str]:
    """Files under a mount, lost+found aside, with their text."""
    return {
        str(path.relative_to(root)): path.read_text()
        for path in sorted(root.rglob("*"))
        if path.is_file() and "lost+found" not in path.parts
    }


def test_chain_whiteouts_isolation_and_commit(graph: Graph) -> None:
    os_layer = graph.import_layer(
        tarball({"etc": None, "etc/os": b"fedora\n", "etc/motd": b"hi\n", "var": None}),
        name="fedora",
    )
    app = graph.import_layer(
        tarball({"etc/.wh.motd": b"", "srv": None, "srv/app": b"apache\n"}),
        parent="fedora",
        name="apache",
    )
    assert app.parent == os_layer.id
    one = graph.create_container("apache", name="one")
    two = graph.create_container("apache", name="two")
    assert one.mount is not None and two.mount is not None
    assert listing(one.mount) == {"etc/os": "fedora\n", "srv/app": "apache\n"}

    (one.mount / "srv" / "log").write_text("only in one\n")
    assert not (two.mount / "srv" / "log").exists()

    committed = graph.commit("one", name="apache-logged")
    three = graph.create_container("apache-logged", name="three")
    assert three.mount is not None
    assert (three.mount / "srv" / "log").read_text() == "only in one\n"

    # An opaque directory hides what was below it and keeps what the layer adds.
    opaque = graph.import_layer(
        tarball({"etc/.wh..wh..opq": b"", "etc/fresh": b"new\n"}), parent="apache-logged"
    )
    four = graph.create_container(opaque.id)
    assert four.mount is not None
    assert sorted(p.name for p in (four.mount / "etc").iterdir()) == ["fresh"]
    assert committed.parent == app.id

    depths = {layer.name: depth for depth, layer in graph.tree()}
    assert depths["base"] == 0 and depths["fedora"] == 1 and depths["apache"] == 2


def test_hostile_tarball_leaves_nothing(graph: Graph) -> None:
    before = graph.layers()
    usage = graph.usage()
    with pytest.raises(UnsafeTarball, match=r"\.\./escape"):
        graph.import_layer(tarball({"../escape": b"x"}))
    assert graph.layers() == before
    assert graph.usage().transaction_id == usage.transaction_id
    assert graph.store.interrupted() is None


def test_remove_refuses_children_and_returns_space(graph: Graph) -> None:
    image = graph.import_layer(tarball({"big": os.urandom(16 * MiB)}), name="big")
    container = graph.create_container("big", name="c")
    with pytest.raises(HasChildren):
        graph.remove("big")
    assert container.mount is not None
    used_before = graph.usage().data_used
    (container.mount / "more").write_bytes(os.urandom(16 * MiB))
    os.sync()
    assert graph.usage().data_used > used_before

    with open(container.mount / "more", "rb"), pytest.raises(Busy, match="busy"):
        graph.remove("c")
    held = graph.pool.data_file.stat().st_blocks * 512
    removed = graph.remove("big", recursive=True)
    assert [layer.id for layer in removed] == [container.id, image.id]
    assert graph.usage().data_used < used_before
    # Both layers' own 16 MiB went back to the host as holes in the sparse file.
    assert graph.pool.data_file.stat().st_blocks * 512 <= held - 30 * MiB
    assert {layer.kind for layer in graph.layers()} == {LayerKind.BASE}


def test_teardown_and_reopen_keep_everything(graph: Graph, dm: DeviceMapper) -> None:
    graph.import_layer(tarball({"kept": b"kept\n"}), name="img")
    container = graph.create_container("img", name="c")
    assert container.mount is not None
    (container.mount / "written").write_text("written\n")
    graph.umount("c")
    graph.pool.teardown()
    graph.close()

    again = Graph.open(graph.root, dm)
    assert [layer.name for layer in again.layers()] == ["base", "img", "c"]
    mounted = again.mount("c")
    assert mounted.mount is not None
    assert listing(mounted.mount) == {"kept": "kept\n", "written": "written\n"}
    graph.store = again.store


def test_grown_layer(graph: Graph) -> None:
    image = graph.import_layer(tarball({"a": b"a"}), size_bytes=2 * BASE)
    container = graph.create_container(image.id)
    assert container.mount is not None
    total = os.statvfs(container.mount)
    assert total.f_blocks * total.f_frsize > BASE * 1.5


def crash(code: str, step: str | None = None) -> None:
    """Run ``code`` in a new interpreter, which must end as a crash does (exit 70).

    With ``step``, the graph's crash hook ends it there (DMSNAP_CRASH_AT).
    """
    env = dict(os.environ, DMSNAP_CRASH_AT=step) if step else None
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 70, result.stderr


STEPS = {
    "import": ["create_snap", "apply", "commit", "committed"],
    "create": ["create_snap", "mount", "commit", "committed"],
    "remove": ["remove", "commit", "committed", "discard"],
}


@pytest.mark.parametrize(
    ("operation", "step"), [(op, step) for op, steps in STEPS.items() for step in steps]
)
def test_crash_at_each_step_is_reconciled(
    graph: Graph, dm: DeviceMapper, operation: str, step: str
) -> None:
    graph.import_layer(tarball({"f": b"f"}), name="img")
    if operation == "remove":
        graph.create_container("img", name="victim")
    script = {
        "import": "g.import_layer(tarball({'g': b'g'}), parent='img', name='new')",
        "create": "g.create_container('img', name='new')",
        "remove": "g.remove('victim')",
    }[operation]
    code = (
        "import sys; from pathlib import Path; from dmioctl import DeviceMapper;"
        "from layering.graph import Graph; from tests.kernel.test_graph import tarball;"
        f"g = Graph.open(Path({str(graph.root)!r}), DeviceMapper()); {script}"
    )
    crash(code, step)

    graph.close()
    again = Graph.open(graph.root, dm)
    graph.store = again.store
    assert again.store.interrupted() is None
    names = {layer.name for layer in again.layers()}
    assert all(layer.state is LayerState.READY for layer in again.layers())
    committed = step in ("committed", "discard")
    if operation == "remove":
        assert ("victim" in names) is not committed
    else:
        assert ("new" in names) is committed
    record = again.store.pool()
    assert record is not None
    assert again.usage().transaction_id == record.transaction_id
    # Every recorded layer's thin device exists in the pool: activating works.
    for layer in again.layers():
        again.pool.activate_thin(layer.thin_id, layer.size_bytes)


def test_fsck_reports_and_repairs(graph: Graph, dm: DeviceMapper) -> None:
    graph.import_layer(tarball({"a": b"a"}), name="img")
    container = graph.create_container("img", name="c")
    assert graph.fsck() == []

    # An orphan thin id, a stray device, an unmounted container, a moved transaction id.
    graph.pool.create_thin(4000)
    stray = graph.pool.prefix + "999"
    dm.create(stray)
    assert container.mount is not None
    subprocess.run(["umount", str(container.mount)], check=True)
    graph.pool.set_transaction_id(graph.usage().transaction_id, 77)

    kinds = sorted(finding.kind for finding in graph.fsck())
    assert kinds == ["not-mounted", "orphan-thin", "stray-device", "transaction-id"]
    repaired = graph.fsck(repair=True)
    assert all(finding.repaired for finding in repaired)
    assert graph.fsck() == []
    assert os.path.ismount(container.mount)


def test_eight_concurrent_container_creations(graph: Graph) -> None:
    graph.import_layer(tarball({"a": b"a"}), name="img")
    code = (
        "import sys; from pathlib import Path; from dmioctl import DeviceMapper;"
        "from layering.graph import Graph;"
        f"g = Graph.open(Path({str(graph.root)!r}), DeviceMapper());"
        "g.create_container('img', name='c' + sys.argv[1])"
    )
    workers = [
        subprocess.Popen([sys.executable, "-c", code, str(i)], cwd=ROOT, stderr=subprocess.PIPE)
        for i in range(8)
    ]
    errors = [worker.communicate()[1] for worker in workers]
    assert [worker.returncode for worker in workers] == [0] * 8, errors
    containers = graph.layers(LayerKind.CONTAINER)
    assert sorted(layer.name or "" for layer in containers) == [f"c{i}" for i in range(8)]
    assert len({layer.thin_id for layer in containers}) == 8
    assert all(layer.mount is not None and os.path.ismount(layer.mount) for layer in containers)


def test_xfs_base_and_a_grown_container(dm: DeviceMapper, tmp_path: Path) -> None:
    require(shutil.which("mkfs.xfs") is not None, "xfsprogs not installed")
    graph = Graph.init(tmp_path / "xfs", dm, CONFIG, base_bytes=320 * MiB, fstype="xfs")
    try:
        graph.import_layer(tarball({"etc": None, "etc/os": b"xfs\n"}), name="img")
        container = graph.create_container("img", size_bytes=640 * MiB)
        assert container.mount is not None
        assert (container.mount / "etc" / "os").read_text() == "xfs\n"
        total = os.statvfs(container.mount)
        assert total.f_blocks * total.f_frsize > 500 * MiB
    finally:
        check_metadata(graph)
        graph.destroy()


def test_space_per_layer_and_deactivate(graph: Graph, dm: DeviceMapper) -> None:
    image = graph.import_layer(tarball({"data": os.urandom(8 * MiB)}), name="img")
    container = graph.create_container("img", name="c")
    assert container.mount is not None
    (container.mount / "own").write_bytes(os.urandom(4 * MiB))
    os.sync()
    space = graph.space()
    assert space is not None
    by_id = {entry.layer.id: entry for entry in space}
    assert by_id[image.id].mapped_bytes >= 8 * MiB
    assert by_id[container.id].exclusive_bytes >= 4 * MiB
    assert by_id[container.id].mapped_bytes > by_id[container.id].exclusive_bytes

    graph.deactivate()
    assert not graph.pool.exists()
    assert not os.path.ismount(container.mount)
    graph.close()
    again = Graph.open(graph.root, dm)
    graph.store = again.store
    assert (again.mount("c").mount or Path("/")).joinpath("own").stat().st_size == 4 * MiB


def leftovers(dm: DeviceMapper, root: Path) -> list[str]:
    """What of a root's pool is still there: its devices and its pool files."""
    prefix = f"dmsnap-{root_tag(root)}-"
    devices = [d.name for d in dm.list_devices() if d.name.startswith(prefix)]
    files = sorted(str(p.relative_to(root)) for p in root.glob("pool/*"))
    return devices + files


def test_failed_init_leaves_the_root_as_it_was(dm: DeviceMapper, tmp_path: Path) -> None:
    root = tmp_path / "store"
    # mkfs.ext4 refuses a device of 8 sectors: the pool and the thin device are made by then.
    with pytest.raises(Exception, match="mkfs"):
        Graph.init(root, dm, CONFIG, base_bytes=4096)
    assert leftovers(dm, root) == []
    assert not (root / "metadata.db").exists()
    graph = Graph.init(root, dm, CONFIG, base_bytes=BASE)
    try:
        assert [layer.name for layer in graph.layers()] == ["base"]
    finally:
        check_metadata(graph)
        graph.destroy()


@pytest.mark.parametrize("step", ["create_thin", "commit", "committed"])
def test_crash_during_init_is_reconciled(dm: DeviceMapper, tmp_path: Path, step: str) -> None:
    root = tmp_path / "store"
    code = (
        "from pathlib import Path; from dmioctl import DeviceMapper; from layering.graph import "
        "Graph; from layering.pool import MiB, PoolConfig;"
        f"Graph.init(Path({str(root)!r}), DeviceMapper(), PoolConfig(data_bytes=1024 * MiB, "
        f"metadata_bytes=16 * MiB), base_bytes={BASE})"
    )
    crash(code, step)

    if step == "committed":
        # The kernel has the base: opening completes the init.
        graph = Graph.open(root, dm)
    else:
        with pytest.raises(NotInitialised, match="did not finish was cleaned up"):
            Graph.open(root, dm)
        assert leftovers(dm, root) == []
        graph = Graph.init(root, dm, CONFIG, base_bytes=BASE)
    try:
        assert [layer.state for layer in graph.layers()] == [LayerState.READY]
        record = graph.store.pool()
        assert record is not None and graph.usage().transaction_id == record.transaction_id
    finally:
        check_metadata(graph)
        graph.destroy()


def test_failure_after_the_commit_point_completes_the_operation(
    graph: Graph, monkeypatch: pytest.MonkeyPatch
) -> None:
    graph.import_layer(tarball({"f": b"f"}), name="img")

    def interrupted(op: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(graph, "_finish", interrupted)
        with pytest.raises(KeyboardInterrupt):
            graph.create_container("img", name="c")
    # The kernel committed it, so it was not undone; the next operation completes it.
    other = graph.create_container("img", name="d")
    assert {layer.name: layer.state for layer in graph.layers(LayerKind.CONTAINER)} == {
        "c": LayerState.READY,
        "d": LayerState.READY,
    }
    record = graph.store.pool()
    assert record is not None and graph.usage().transaction_id == record.transaction_id
    assert other.mount is not None and os.path.ismount(other.mount)


def test_mount_points_with_blanks_and_behind_symlinks(graph: Graph, tmp_path: Path) -> None:
    graph.import_layer(tarball({"f": b"f"}), name="img")
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    for where in (tmp_path / "with blank\tand tab", tmp_path / "link" / "c"):
        container = graph.create_container("img", mount=where)
        assert container.mount is not None and (container.mount / "f").read_text() == "f"
        graph.umount(container.id)
        assert not os.path.ismount(where)
        graph.mount(container.id)
        assert os.path.ismount(where)
        graph.remove(container.id)
        assert not os.path.ismount(where)


def test_unsafe_mount_points_are_refused_before_anything_changes(
    graph: Graph, tmp_path: Path
) -> None:
    graph.import_layer(tarball({"f": b"f"}), name="img")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    taken = graph.create_container("img", name="taken", mount=tmp_path / "taken")
    assert taken.mount is not None
    before = graph.layers()
    record = graph.store.pool()
    for where, reason in [
        (graph.root, "inside or above"),
        (graph.root / "pool", "inside or above"),
        (tmp_path, "inside or above"),
        (tmp_path / "full", "not an empty directory"),
        (taken.mount, "mounted on it already"),
    ]:
        with pytest.raises(InvalidInput, match=reason):
            graph.create_container("img", mount=where)
    assert graph.layers() == before
    assert graph.store.pool() == record


def test_an_origin_left_suspended_by_a_crash_is_resumed(graph: Graph, dm: DeviceMapper) -> None:
    graph.import_layer(tarball({"f": b"f"}), name="img")
    container = graph.create_container("img", name="c")
    assert container.mount is not None
    # The process dies with the container suspended for the commit's create_snap.
    code = (
        "import os; from pathlib import Path; from dmioctl import DeviceMapper;"
        "from dmioctl.targets import thin_pool; from layering.graph import Graph;"
        "thin_pool._send = lambda *args: os._exit(70);"
        f"g = Graph.open(Path({str(graph.root)!r}), DeviceMapper()); g.commit('c')"
    )
    crash(code)
    device = graph.pool.thin_name(container.thin_id)
    assert dm.info(device).suspended

    graph.close()
    again = Graph.open(graph.root, dm)
    graph.store = again.store
    assert not dm.info(device).suspended
    assert [layer.name for layer in again.layers(LayerKind.IMAGE)] == ["img"]
    (container.mount / "written-after").write_text("ok")
    os.sync()


def test_busy_messages_name_the_processes_and_down_changes_nothing(graph: Graph) -> None:
    graph.import_layer(tarball({"f": b"f"}), name="img")
    idle = graph.create_container("img", name="idle")
    held = graph.create_container("img", name="held")
    assert idle.mount is not None and held.mount is not None
    holder = subprocess.Popen(["sleep", "300"], cwd=held.mount)
    try:
        with pytest.raises(Busy) as refused:
            graph.deactivate()
        assert str(refused.value) == (
            f"in use, so nothing was unmounted: container held (used by pid {holder.pid} (sleep))"
        )
        assert os.path.ismount(idle.mount) and os.path.ismount(held.mount)
        assert graph.pool.exists()

        with pytest.raises(Busy, match=rf"used by pid {holder.pid} \(sleep\); stop those first"):
            graph.umount("held")
        with pytest.raises(Busy) as busy:
            graph.remove("held")
        assert f"used by pid {holder.pid} (sleep); stop those, then remove it again" in str(
            busy.value
        )
    finally:
        holder.kill()
        holder.wait()
    graph.remove("held")
    assert [layer.name for layer in graph.layers(LayerKind.CONTAINER)] == ["idle"]


def test_a_store_whose_metadata_file_grew_past_16_gib_opens(
    graph: Graph, dm: DeviceMapper
) -> None:
    # As an older grow left it: the kernel uses the first 16 GiB of such a device.
    with graph.pool.metadata_file.open("r+b") as f:
        f.truncate(20 * 1024 * MiB)
    graph.close()
    again = Graph.open(graph.root, dm)
    graph.store = again.store
    assert [layer.name for layer in again.layers()] == ["base"]
    again.import_layer(tarball({"f": b"f"}), name="img")
