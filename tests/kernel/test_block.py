"""Block-device ioctls on a loop device over a sparse file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dmioctl import InvalidArgument, block, loop
from tests.kernel.support import require, sparse_file

pytestmark = pytest.mark.kernel

MiB = 1024 * 1024


def test_size_and_discard_punch_holes(tmp_path: Path) -> None:
    require(os.geteuid() == 0, "needs root")
    path = sparse_file(tmp_path / "disk.img", 16 * MiB)
    with loop.attached(path) as device:
        assert block.size(device.path) == 16 * MiB
        fd = os.open(device.path, os.O_WRONLY)
        try:
            os.write(fd, os.urandom(8 * MiB))
            os.fsync(fd)
        finally:
            os.close(fd)
        written = path.stat().st_blocks * 512
        assert written >= 8 * MiB

        block.discard(device.path, 0, 4 * MiB)
        assert path.stat().st_blocks * 512 <= written - 4 * MiB
        block.discard(device.path)
        assert path.stat().st_blocks * 512 < MiB

        for start, length in ((1, 512), (0, 513), (0, 32 * MiB), (-512, 512)):
            with pytest.raises(InvalidArgument, match="discard range"):
                block.discard(device.path, start, length)
