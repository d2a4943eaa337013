"""The linux/fs.h block ioctls, held against the C header compiled here."""

from __future__ import annotations

from pathlib import Path

from dmioctl.uapi.fs import BlockIoctl, blk_range, blk_size64
from tests.cheader import c_values


def test_numbers_and_sizes(tmp_path: Path) -> None:
    exprs = {command.name: command.name for command in BlockIoctl}
    exprs["range"] = "sizeof(unsigned long long[2])"
    exprs["size64"] = "sizeof(unsigned long long)"
    header = c_values(["linux/fs.h"], exprs, tmp_path)
    for command in BlockIoctl:
        assert command.value == header[command.name], command.name
    assert blk_range.sizeof() == header["range"]
    assert blk_size64.sizeof() == header["size64"]
