"""Both node modes against the real kernel: udevd with the device-mapper rules, and none.

The udev tests start udevd themselves (the test VM runs none) without
DM_DISABLE_UDEV in its environment -- ``dmsetup udevcomplete``, which the rules
run, does nothing when it is set -- and stop it afterwards, removing its control
socket, so that the tests after them (the last one here included) run without udev.
Links are checked right when a call returns, with no sleep: the cookie is what
makes that hold.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dmioctl import DeviceMapper, nodes
from dmioctl.nodes import link_target, node_path, udev_running
from dmioctl.targets.zero import Zero
from dmioctl.udev import UdevTimeout, cookie_keys
from tests.kernel.support import require

pytestmark = pytest.mark.kernel

UDEVD_PATHS = ("/lib/systemd/systemd-udevd", "/usr/lib/systemd/systemd-udevd", "/sbin/udevd")
RULES_DIRS = ("/lib/udev/rules.d", "/usr/lib/udev/rules.d", "/etc/udev/rules.d")
RULES = ("55-dm.rules", "95-dm-notify.rules")
SLACK = 3.0


def find_udevd() -> str | None:
    return next((path for path in UDEVD_PATHS if os.access(path, os.X_OK)), None)


def udev_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key != "DM_DISABLE_UDEV"}


@pytest.fixture
def udevd(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A udevd of our own, in the foreground as our child; stopped and cleaned after."""
    require(os.geteuid() == 0, "needs root")
    path = find_udevd()
    require(path is not None, "no udevd (Debian package 'udev')")
    for rules in RULES:
        require(
            any(os.path.exists(os.path.join(d, rules)) for d in RULES_DIRS),
            f"no {rules} (Debian package 'dmsetup')",
        )
    require(not udev_running(), "a udevd runs already: these tests start and stop their own")
    assert path is not None
    with (tmp_path / "udevd.log").open("wb") as log_file:
        daemon = subprocess.Popen(
            [path, "--debug"], env=udev_env(), stdout=log_file, stderr=log_file
        )
    try:
        deadline = time.monotonic() + 30
        while not udev_running():
            assert daemon.poll() is None, (tmp_path / "udevd.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "udevd did not make its control socket"
            time.sleep(0.05)
        yield daemon
    finally:
        with contextlib.suppress(ProcessLookupError):
            daemon.send_signal(signal.SIGCONT)
        daemon.terminate()
        try:
            daemon.wait(timeout=15)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(timeout=15)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(nodes.UDEV_CONTROL)
    assert not udev_running()


def properties(minor: int, major: int) -> dict[str, str]:
    """The udev database's DM_* properties of a device."""
    out = subprocess.run(
        ["udevadm", "info", "--query=property", f"/sys/dev/block/{major}:{minor}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pairs = (line.split("=", 1) for line in out.splitlines() if line.startswith("DM_"))
    return dict(pairs)


def activate(dm: DeviceMapper, name: str) -> int:
    """Create a small zero device and resume it; return its minor."""
    info = dm.create(name)
    dm.load_table(name, [Zero().target(0, 8)])
    dm.resume(name)
    return info.minor


def test_links_are_there_when_calls_return(
    udevd: subprocess.Popen[bytes], dm: DeviceMapper, prefix: str
) -> None:
    before = set(cookie_keys())
    name, new_name = prefix + "u", prefix + "v"

    info = dm.create(name)
    assert not os.path.lexists(node_path(name))  # the rules link active devices only
    dm.load_table(name, [Zero().target(0, 8)])
    dm.resume(name)
    dm_node = f"../dm-{info.minor}"
    assert link_target(name) == dm_node

    dm.rename(name, new_name=new_name)
    assert not os.path.lexists(node_path(name))
    assert link_target(new_name) == dm_node

    dm.rename(new_name, new_uuid=prefix + "uuid")
    assert link_target(new_name) == dm_node
    assert properties(info.minor, info.major)["DM_UUID"] == prefix + "uuid"

    with dm.suspended(new_name):
        pass
    assert link_target(new_name) == dm_node
    dm.resume(new_name)  # already running: the kernel sends no uevent
    assert link_target(new_name) == dm_node

    dm.remove(new_name)
    assert not os.path.lexists(node_path(new_name))
    assert set(cookie_keys()) <= before


def test_rules_read_our_flags_as_dmsetups(
    udevd: subprocess.Popen[bytes], dm: DeviceMapper, prefix: str
) -> None:
    """The rules record the same DM_* properties for our device as for dmsetup's."""
    ours = activate(dm, prefix + "ours")
    subprocess.run(
        ["dmsetup", "create", prefix + "theirs", "--table", "0 8 zero"],
        env=udev_env(),
        check=True,
    )
    theirs = os.minor(os.stat(node_path(prefix + "theirs")).st_rdev)
    ours_props = properties(ours, dm.info(prefix + "ours").major)
    theirs_props = properties(theirs, dm.info(prefix + "theirs").major)
    assert ours_props.pop("DM_NAME") == prefix + "ours"
    assert theirs_props.pop("DM_NAME") == prefix + "theirs"
    assert ours_props == theirs_props
    assert ours_props["DM_UDEV_PRIMARY_SOURCE_FLAG"] == "1"
    assert ours_props["DM_ACTIVATION"] == "1"
    subprocess.run(["dmsetup", "remove", prefix + "theirs"], env=udev_env(), check=True)


def test_timeout_raises_and_removes_the_cookie(
    udevd: subprocess.Popen[bytes], dm: DeviceMapper, prefix: str
) -> None:
    before = set(cookie_keys())
    name = prefix + "t"
    dm.create(name)
    dm.load_table(name, [Zero().target(0, 8)])
    impatient = DeviceMapper(udev_timeout=1.0)
    udevd.send_signal(signal.SIGSTOP)  # the uevent queues; no rule runs
    try:
        started = time.monotonic()
        with pytest.raises(UdevTimeout, match="did not complete cookie"):
            impatient.resume(name)
        assert 1.0 <= time.monotonic() - started < 1.0 + SLACK
        assert set(cookie_keys()) <= before
        assert dm.info(name).active_table and not dm.info(name).suspended
    finally:
        udevd.send_signal(signal.SIGCONT)
        impatient.close()
    # The queued event runs now; its udevcomplete finds no semaphore, harmlessly.
    dm.remove(name)
    assert not os.path.lexists(node_path(name))
    assert set(cookie_keys()) <= before


def test_without_udev_nodes_are_made_directly(dm: DeviceMapper, prefix: str) -> None:
    """Runs after the udev tests in the same session: their udevd must be gone."""
    require(os.geteuid() == 0, "needs root")
    if shutil.which("udevadm") and udev_running():
        pytest.skip("a udevd runs on this machine")
    name, new_name = prefix + "n", prefix + "m"
    info = dm.create(name)
    st = os.lstat(node_path(name))
    assert stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(info.major, info.minor)
    dm.load_table(name, [Zero().target(0, 8)])
    dm.resume(name)
    dm.rename(name, new_name=new_name)
    assert not os.path.lexists(node_path(name))
    assert os.lstat(node_path(new_name)).st_rdev == os.makedev(info.major, info.minor)
    dm.remove(new_name)
    assert not os.path.lexists(node_path(new_name))
