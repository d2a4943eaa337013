"""Compile a small C program against the system's kernel headers and read values from it.

Used by the layout tests to hold the construct declarations against the C
definitions: sizes, field offsets, ioctl numbers and flag values.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from construct import SizeofError, Struct


def c_values(includes: list[str], exprs: dict[str, str], workdir: Path) -> dict[str, int]:
    """Evaluate each C expression of ``exprs`` and return its value under the same key.

    ``includes`` are header names such as ``"linux/dm-ioctl.h"``.  Fails the test
    when no C compiler is installed (tools/bootstrap installs gcc).
    """
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.fail("no C compiler: run tools/bootstrap to install gcc")
    lines = ["#include <stddef.h>", "#include <stdio.h>", "#include <sys/ioctl.h>"]
    lines += [f"#include <{header}>" for header in includes]
    lines.append("int main(void) {")
    for key, expr in exprs.items():
        lines.append(f'    printf("%s=%llu\\n", "{key}", (unsigned long long)({expr}));')
    lines += ["    return 0;", "}"]
    source = workdir / "values.c"
    source.write_text("\n".join(lines) + "\n")
    binary = workdir / "values"
    subprocess.run([compiler, "-o", str(binary), str(source)], check=True)
    output = subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout
    values: dict[str, int] = {}
    for line in output.splitlines():
        key, _, value = line.partition("=")
        values[key] = int(value)
    return values


def field_offsets(layout: Struct) -> dict[str, int]:
    """Offset of each named field of a construct Struct, up to its first variable-size one."""
    offsets: dict[str, int] = {}
    offset = 0
    for sub in layout.subcons:
        if sub.name is not None:
            offsets[sub.name] = offset
        try:
            offset += sub.sizeof()
        except SizeofError:
            break
    return offsets
