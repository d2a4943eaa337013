"""Helpers shared by the kernel tests."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest


def require(condition: bool, reason: str) -> None:
    """Skip the test with ``reason`` unless ``condition`` holds.

    Where DMIOCTL_REQUIRE_KERNEL=1 (tools/test sets it inside the VM, and so in
    CI) a missing condition fails the test instead: nothing is skipped there.
    """
    if condition:
        return
    if os.environ.get("DMIOCTL_REQUIRE_KERNEL") == "1":
        pytest.fail(f"required but missing: {reason}")
    pytest.skip(reason)


def sparse_file(path: Path, size: int) -> Path:
    """Create a sparse file of ``size`` bytes at ``path`` and return the path."""
    with path.open("wb") as f:
        f.truncate(size)
    return path


def tar_bytes(files: dict[str, bytes | None]) -> bytes:
    """A layer tarball: a name maps to content, or None for a directory."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            if content is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return out.getvalue()
