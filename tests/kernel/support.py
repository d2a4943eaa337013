"""Helpers shared by the kernel tests."""

from __future__ import annotations

import os
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
