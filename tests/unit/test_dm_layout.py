"""The dm-ioctl.h layouts and constants, held against the C header compiled here."""

from __future__ import annotations

import pytest
from construct import Struct

from dmioctl.ioctl import DATA_START
from dmioctl.uapi import dm
from tests.cheader import c_values, field_offsets

LAYOUTS: dict[str, Struct] = {
    "dm_ioctl": dm.dm_ioctl,
    "dm_target_spec": dm.dm_target_spec,
    "dm_target_deps": dm.dm_target_deps,
    "dm_name_list": dm.dm_name_list,
    "dm_target_versions": dm.dm_target_versions,
    "dm_target_msg": dm.dm_target_msg,
}
FIXED_SIZE = ("dm_ioctl", "dm_target_spec")


@pytest.fixture(scope="module")
def header(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    exprs: dict[str, str] = {}
    for struct_name in FIXED_SIZE:
        exprs[f"sizeof {struct_name}"] = f"sizeof(struct {struct_name})"
    for struct_name, layout in LAYOUTS.items():
        for field in field_offsets(layout):
            if field in ("padding", "data") and struct_name != "dm_ioctl":
                continue
            exprs[f"offsetof {struct_name}.{field}"] = f"offsetof(struct {struct_name}, {field})"
    for command in dm.DMCommand:
        exprs[command.name] = command.name
        exprs[command.kernel_name] = command.kernel_name
    for flag in dm.DMFlag:
        assert flag.name is not None
        exprs[flag.name] = flag.name
    for const in CONSTANTS:
        exprs[const] = const
    return c_values(["linux/dm-ioctl.h"], exprs, tmp_path_factory.mktemp("dm-header"))


@pytest.mark.parametrize("struct_name", FIXED_SIZE)
def test_sizes(header: dict[str, int], struct_name: str) -> None:
    assert LAYOUTS[struct_name].sizeof() == header[f"sizeof {struct_name}"]


@pytest.mark.parametrize("struct_name", list(LAYOUTS))
def test_offsets(header: dict[str, int], struct_name: str) -> None:
    checked = 0
    for field, offset in field_offsets(LAYOUTS[struct_name]).items():
        key = f"offsetof {struct_name}.{field}"
        if key in header:
            assert offset == header[key], key
            checked += 1
    assert checked >= 2


def test_variable_part_offsets(header: dict[str, int]) -> None:
    # The first variable-size field of each struct starts where the C member does.
    assert field_offsets(dm.dm_name_list)["name"] == header["offsetof dm_name_list.name"]
    assert field_offsets(dm.dm_target_deps)["dev"] == header["offsetof dm_target_deps.dev"]
    assert field_offsets(dm.dm_target_msg)["message"] == header["offsetof dm_target_msg.message"]


def test_command_numbers(header: dict[str, int]) -> None:
    for command in dm.DMCommand:
        assert command.value == header[command.name], command.name
        assert command.request == header[command.kernel_name], command.kernel_name
        assert getattr(dm, command.kernel_name) == header[command.kernel_name]


def test_flags(header: dict[str, int]) -> None:
    for flag in dm.DMFlag:
        assert flag.name is not None
        assert flag.value == header[flag.name], flag.name
        assert getattr(dm, flag.name) is flag


CONSTANTS = (
    "DM_NAME_LEN",
    "DM_UUID_LEN",
    "DM_MAX_TYPE_NAME",
    "DM_IOCTL",
    "DM_VERSION_MAJOR",
    "DM_NAME_LIST_FLAG_HAS_UUID",
    "DM_NAME_LIST_FLAG_DOESNT_HAVE_UUID",
)


@pytest.mark.parametrize("const", CONSTANTS)
def test_constants(header: dict[str, int], const: str) -> None:
    assert getattr(dm, const) == header[const]


def test_payload_is_aligned(header: dict[str, int]) -> None:
    assert header["sizeof dm_ioctl"] == DATA_START
    assert DATA_START % 8 == 0


def test_flat_codec_matches_construct() -> None:
    codec = dm.flat_codec(dm.dm_ioctl)
    values = {
        "version": [4, 47, 1],
        "data_size": 16384,
        "data_start": 312,
        "target_count": 2,
        "open_count": -1,
        "flags": int(dm.DM_SUSPEND_FLAG | dm.DM_NOFLUSH_FLAG),
        "event_nr": 7,
        "dev": 0xFD00003,
        "name": "pool-a",
        "uuid": "LVM-xyz",
    }
    built = dm.dm_ioctl.build(values)
    flat = codec.struct.pack(
        4, 47, 1, 16384, 312, 2, -1, values["flags"], 7, 0xFD00003, b"pool-a", b"LVM-xyz"
    )
    assert built == flat
    assert codec.fields[:3] == ("version",) * 3
    assert "padding" not in codec.fields and "data" not in codec.fields
