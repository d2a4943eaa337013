"""The loop.h layouts and constants, held against the C header compiled here."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest
from construct import Struct

from dmioctl.uapi import loop
from tests.cheader import c_values, field_offsets

LAYOUTS: dict[str, Struct] = {
    "loop_info64": loop.loop_info64,
    "loop_config": loop.loop_config,
}
CONSTANTS = ("LO_NAME_SIZE", "LO_KEY_SIZE")
FLAG_SETS = (
    "LOOP_SET_STATUS_SETTABLE_FLAGS",
    "LOOP_SET_STATUS_CLEARABLE_FLAGS",
    "LOOP_CONFIGURE_SETTABLE_FLAGS",
)
WORD = 8

#: One loop_info64 with every field set to something recognisable, as C
#: designated initialisers and as the values construct builds from.
GOLDEN_C = (
    ".lo_device = 0x0102030405060708ULL, .lo_inode = 0x1112131415161718ULL,"
    " .lo_rdevice = 0x2122232425262728ULL, .lo_offset = 1048576, .lo_sizelimit = 4194304,"
    " .lo_number = 7, .lo_encrypt_type = 0, .lo_encrypt_key_size = 3,"
    " .lo_flags = LO_FLAGS_READ_ONLY | LO_FLAGS_DIRECT_IO,"
    ' .lo_file_name = "/var/lib/pool/data.img", .lo_crypt_name = "none",'
    ' .lo_encrypt_key = "key", .lo_init = { 41, 42 }'
)
GOLDEN_VALUES = {
    "lo_device": 0x0102030405060708,
    "lo_inode": 0x1112131415161718,
    "lo_rdevice": 0x2122232425262728,
    "lo_offset": 1048576,
    "lo_sizelimit": 4194304,
    "lo_number": 7,
    "lo_encrypt_type": 0,
    "lo_encrypt_key_size": 3,
    "lo_flags": int(loop.LO_FLAGS_READ_ONLY | loop.LO_FLAGS_DIRECT_IO),
    "lo_file_name": b"/var/lib/pool/data.img".ljust(loop.LO_NAME_SIZE, b"\0"),
    "lo_crypt_name": b"none".ljust(loop.LO_NAME_SIZE, b"\0"),
    "lo_encrypt_key": b"key".ljust(loop.LO_KEY_SIZE, b"\0"),
    "lo_init": [41, 42],
}


def _words_expr(struct_name: str, initializer: str, index: int) -> str:
    """C expression for 64-bit word ``index`` of a struct literal, read through a union."""
    count = LAYOUTS[struct_name].sizeof() // WORD
    return (
        f"((union {{ struct {struct_name} s; unsigned long long w[{count}]; }})"
        f"{{ .s = {{ {initializer} }} }}).w[{index}]"
    )


@pytest.fixture(scope="module")
def header(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    exprs: dict[str, str] = {}
    for struct_name, layout in LAYOUTS.items():
        exprs[f"sizeof {struct_name}"] = f"sizeof(struct {struct_name})"
        for field in field_offsets(layout):
            exprs[f"offsetof {struct_name}.{field}"] = f"offsetof(struct {struct_name}, {field})"
    for field in field_offsets(loop.loop_info64):
        exprs[f"offsetof loop_config.info.{field}"] = f"offsetof(struct loop_config, info.{field})"
    exprs["sizeof loop_config.__reserved"] = "sizeof(((struct loop_config *)0)->__reserved)"
    for command in loop.LoopIoctl:
        exprs[command.name] = command.name
    for flag in loop.LoopFlag:
        assert flag.name is not None
        exprs[flag.name] = flag.name
    for name in CONSTANTS + FLAG_SETS:
        exprs[name] = name

    info_words = loop.loop_info64.sizeof() // WORD
    for index in range(info_words):
        exprs[f"golden loop_info64 {index}"] = _words_expr("loop_info64", GOLDEN_C, index)
    config_c = f".fd = 5, .block_size = 4096, .info = {{ {GOLDEN_C} }}"
    for index in range(loop.loop_config.sizeof() // WORD):
        exprs[f"golden loop_config {index}"] = _words_expr("loop_config", config_c, index)

    return c_values(["linux/loop.h"], exprs, tmp_path_factory.mktemp("loop-header"))


def _golden(header: dict[str, int], struct_name: str) -> bytes:
    """The bytes of the C program's golden struct, reassembled from its words."""
    count = LAYOUTS[struct_name].sizeof() // WORD
    return b"".join(
        header[f"golden {struct_name} {index}"].to_bytes(WORD, sys.byteorder)
        for index in range(count)
    )


@pytest.mark.parametrize("struct_name", list(LAYOUTS))
def test_sizes(header: dict[str, int], struct_name: str) -> None:
    assert LAYOUTS[struct_name].sizeof() == header[f"sizeof {struct_name}"]


@pytest.mark.parametrize("struct_name", list(LAYOUTS))
def test_offsets(header: dict[str, int], struct_name: str) -> None:
    offsets = field_offsets(LAYOUTS[struct_name])
    checked = 0
    for field, offset in offsets.items():
        key = f"offsetof {struct_name}.{field}"
        if key in header:
            assert offset == header[key], key
            checked += 1
    assert checked == len(offsets)


def test_nested_info_offsets(header: dict[str, int]) -> None:
    base = field_offsets(loop.loop_config)["info"]
    for field, offset in field_offsets(loop.loop_info64).items():
        assert base + offset == header[f"offsetof loop_config.info.{field}"], field


def test_reserved_tail(header: dict[str, int]) -> None:
    reserved = loop.loop_config.subcons[-1]
    assert reserved.name == "__reserved"
    assert (
        field_offsets(loop.loop_config)["__reserved"] == header["offsetof loop_config.__reserved"]
    )
    assert reserved.sizeof() == header["sizeof loop_config.__reserved"]


def test_ioctl_numbers(header: dict[str, int]) -> None:
    for command in loop.LoopIoctl:
        assert command.value == header[command.name], command.name
        assert getattr(loop, command.name) is command


def test_every_ioctl_of_the_header_is_declared(tmp_path_factory: pytest.TempPathFactory) -> None:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.fail("no C compiler: run tools/bootstrap to install gcc")
    macros = subprocess.run(
        [compiler, "-dM", "-E", "-include", "linux/loop.h", "-x", "c", "-"],
        input="",
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    in_header = set(re.findall(r"^#define (LOOP_\w+)\s+0x[0-9A-Fa-f]+$", macros, re.MULTILINE))
    assert len(in_header) == 14
    assert in_header == {command.name for command in loop.LoopIoctl}


def test_flags(header: dict[str, int]) -> None:
    for flag in loop.LoopFlag:
        assert flag.name is not None
        assert flag.value == header[flag.name], flag.name
        assert getattr(loop, flag.name) is flag


@pytest.mark.parametrize("name", FLAG_SETS)
def test_flag_sets(header: dict[str, int], name: str) -> None:
    assert getattr(loop, name) == header[name]


@pytest.mark.parametrize("name", CONSTANTS)
def test_constants(header: dict[str, int], name: str) -> None:
    assert getattr(loop, name) == header[name]


def test_loop_info64_golden_bytes(header: dict[str, int]) -> None:
    golden = _golden(header, "loop_info64")
    assert loop.loop_info64.build(GOLDEN_VALUES) == golden
    parsed = loop.loop_info64.parse(golden)
    for field, value in GOLDEN_VALUES.items():
        assert parsed[field] == value, field


def test_loop_config_golden_bytes(header: dict[str, int]) -> None:
    golden = _golden(header, "loop_config")
    built = loop.loop_config.build({"fd": 5, "block_size": 4096, "info": GOLDEN_VALUES})
    assert built == golden
    assert golden[-64:] == bytes(64)


def test_unset_fields_build_as_zero() -> None:
    # What attach sends: only the "in" fields set, everything else zero.
    name = b"/srv/a.img".ljust(loop.LO_NAME_SIZE, b"\0")
    built = loop.loop_info64.build(
        {"lo_offset": 512, "lo_sizelimit": 0, "lo_flags": 0, "lo_file_name": name}
    )
    offsets = field_offsets(loop.loop_info64)
    assert len(built) == loop.loop_info64.sizeof()
    assert built[: offsets["lo_offset"]] == bytes(24)
    assert int.from_bytes(built[24:32], sys.byteorder) == 512
    start = offsets["lo_file_name"]
    assert built[start : start + loop.LO_NAME_SIZE] == name
    assert built[start + loop.LO_NAME_SIZE :] == bytes(len(built) - start - loop.LO_NAME_SIZE)


def test_flag_words() -> None:
    flags = loop.LO_FLAGS_READ_ONLY | loop.LO_FLAGS_AUTOCLEAR
    assert flags.words() == "READ_ONLY|AUTOCLEAR"
    assert loop.LoopFlag(0).words() == "-"
