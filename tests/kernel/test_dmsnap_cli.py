"""The dmsnap command on a real thin-pool: a whole session, and bad input that changes nothing."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from dmioctl import DeviceMapper
from layering.cli import main
from layering.graph import Graph
from layering.pool import root_tag
from tests.kernel.support import tar_bytes

pytestmark = pytest.mark.kernel

SMALL = ["--data-size", "1G", "--metadata-size", "16M", "--base-size", "64M"]
LAYER_ID = re.compile(r"[0-9a-f]{12}")


@pytest.fixture
def root(dm: DeviceMapper, tmp_path: Path) -> Iterator[Path]:
    """A root for the store; whatever a failing test leaves there is destroyed."""
    where = tmp_path / "root"
    yield where
    if (where / "metadata.db").exists():
        Graph.open(where, dm).destroy()


def dmsnap(root: Path, *args: str, status: int = 0, stdin: bytes | None = None) -> Result:
    """Run the command in-process against the real control file."""
    result = CliRunner().invoke(main, ["--root", str(root), *args], input=stdin)
    assert result.exit_code == status, (args, result.output, result.exception)
    return result


def out(root: Path, *args: str, stdin: bytes | None = None) -> str:
    result = dmsnap(root, *args, stdin=stdin)
    assert result.stderr == "", (args, result.stderr)
    return result.stdout


def as_json(root: Path, *args: str) -> Any:
    return json.loads(out(root, *args, "--json"))


def new_id(root: Path, *args: str, stdin: bytes | None = None) -> str:
    printed = out(root, *args, stdin=stdin).strip()
    assert LAYER_ID.fullmatch(printed), printed
    return printed


def files_in(mount: Path) -> dict[str, str]:
    return {
        str(path.relative_to(mount)): path.read_text()
        for path in sorted(mount.rglob("*"))
        if path.is_file() and "lost+found" not in path.parts
    }


def test_a_whole_session(dm: DeviceMapper, root: Path, tmp_path: Path) -> None:
    assert out(root, "init", *SMALL) == ""

    os_tar = tmp_path / "os.tar"
    os_tar.write_bytes(
        tar_bytes({"etc": None, "etc/os": b"debian\n", "etc/motd": b"hi\n", "srv": None})
    )
    os_id = new_id(root, "import", str(os_tar), "--name", "os")
    # From stdin, with a whiteout of etc/motd, and a progress bar on request.
    app_tar = tar_bytes({"etc/.wh.motd": b"", "srv/app": b"apache\n"})
    result = dmsnap(
        root, "import", "-", "--parent", "os", "--name", "app", "--progress", stdin=app_tar
    )
    app_id = result.stdout.strip()
    assert LAYER_ID.fullmatch(app_id) and result.stderr == "Importing -\n"
    # A directory is a layer with all of its files.
    (tmp_path / "extra" / "srv").mkdir(parents=True)
    (tmp_path / "extra" / "srv" / "extra").write_text("more\n")
    extra_id = new_id(
        root, "import", str(tmp_path / "extra"), "--parent", "app", "--name", "extra"
    )

    one_id = new_id(root, "create", "extra", "--name", "one")
    two_mount = tmp_path / "two"
    two = as_json(root, "create", extra_id, "--name", "two", "--mount", str(two_mount))
    assert two["mount"] == str(two_mount) and two["parent"] == extra_id

    listed = {c["name"]: c for c in as_json(root, "containers")}
    assert list(listed) == ["one", "two"]
    one_mount = Path(listed["one"]["mount"])
    assert one_mount == root / "containers" / one_id
    expected = {"etc/os": "debian\n", "srv/app": "apache\n", "srv/extra": "more\n"}
    assert files_in(one_mount) == files_in(two_mount) == expected

    (one_mount / "srv" / "log").write_text("only in one\n")
    assert not (two_mount / "srv" / "log").exists()
    logged_id = new_id(root, "commit", "one", "--name", "logged")

    base_id = as_json(root, "images")[0]["id"]
    assert out(root, "tree") == (
        f"base (base, {base_id})\n"
        f"\u2514\u2500 os (image, {os_id})\n"
        f"   \u2514\u2500 app (image, {app_id})\n"
        f"      \u2514\u2500 extra (image, {extra_id})\n"
        f"         \u251c\u2500 one (container, {one_id}, {one_mount})\n"
        f"         \u251c\u2500 two (container, {two['id']}, {two_mount})\n"
        f"         \u2514\u2500 logged (image, {logged_id})\n"
    )
    [tree] = as_json(root, "tree")
    assert tree["id"] == base_id and tree["children"][0]["name"] == "os"

    images = out(root, "images").splitlines()
    assert images[0].split() == ["ID", "NAME", "PARENT", "SIZE", "CREATED"]
    assert [line.split()[:4] for line in images[1:]] == [
        [base_id, "base", "-", "64"],
        [os_id, "os", "base", "64"],
        [app_id, "app", "os", "64"],
        [extra_id, "extra", "app", "64"],
        [logged_id, "logged", "extra", "64"],
    ]
    containers = out(root, "containers").splitlines()
    assert containers[0].split() == ["ID", "NAME", "PARENT", "SIZE", "CREATED", "MOUNT"]
    assert containers[1].split()[-1] == str(one_mount)

    status = as_json(root, "status")
    assert status["pool"] == f"dmsnap-{root_tag(root)}-pool"
    assert status["layers"] == {"base": 1, "images": 4, "containers": 2}
    assert 0 < status["data"]["used_bytes"] < status["data"]["total_bytes"] == 1 << 30
    assert 0 < status["metadata"]["used_bytes"] < status["metadata"]["total_bytes"]
    assert status["transaction_id"] > 0
    human = out(root, "status").splitlines()
    assert human[0] == f"Root:           {root}"
    assert human[2].startswith("Data:           ") and human[2].endswith("%)")
    assert human[4] == f"Transaction id: {status['transaction_id']}"

    # The umounted container comes back with its content.
    assert out(root, "umount", "one") == ""
    assert out(root, "mount", "one") == f"{one_mount}\n"
    assert (one_mount / "srv" / "log").read_text() == "only in one\n"

    refused = dmsnap(root, "rm", "app", status=1)
    assert refused.stderr.startswith("dmsnap: image app has children (")
    assert refused.stderr.count("\n") == 1
    removed = out(root, "rm", "-r", "app").split()
    assert sorted(removed) == sorted([one_id, two["id"], logged_id, extra_id, app_id])
    assert removed[-1] == app_id
    assert [i["name"] for i in as_json(root, "images")] == ["base", "os"]
    assert as_json(root, "containers") == []
    assert not two_mount.is_mount()

    assert out(root, "destroy", "--yes") == ""
    assert not (root / "metadata.db").exists()
    assert not [d for d in dm.list_devices() if d.name.startswith(f"dmsnap-{root_tag(root)}-")]


def test_bad_input_changes_nothing(root: Path, tmp_path: Path) -> None:
    bad = dmsnap(root, "init", "--data-size", "10Q", status=2)
    assert bad.stderr.startswith("dmsnap: Invalid value for '--data-size': '10Q' is not a size")
    assert bad.stderr.count("\n") == 1
    assert not root.exists()

    out(root, "init", *SMALL)
    image = new_id(root, "import", "-", "--name", "img", stdin=tar_bytes({"f": b"x\n"}))

    def state() -> tuple[Any, Any, int]:
        status = as_json(root, "status")
        return as_json(root, "tree"), status["layers"], status["transaction_id"]

    before = state()
    hostile = tmp_path / "hostile.tar"
    hostile.write_bytes(tar_bytes({"../escape": b"x"}))
    for args, message in [
        (["create", "nosuch"], "dmsnap: no layer with id or name 'nosuch'\n"),
        (["create", "img", "--size", "1M"], None),
        (["import", str(hostile), "--parent", image], None),
        (["commit", "img"], "dmsnap: img is not a container\n"),
        (["rm", "base"], "dmsnap: the base layer goes only with 'destroy'\n"),
        (
            ["destroy"],
            f"dmsnap: destroy deletes every layer under {root}; give --yes to confirm\n",
        ),
    ]:
        result = dmsnap(root, *args, status=1)
        assert result.stdout == ""
        assert result.stderr.startswith("dmsnap: ") and result.stderr.count("\n") == 1, args
        if message is not None:
            assert result.stderr == message
        assert state() == before, args
    assert not (tmp_path / "escape").exists()

    fsck = as_json(root, "fsck")
    assert fsck["remaining"] == 0, fsck
    assert [f["kind"] for f in fsck["findings"]] in ([], ["skipped"])
