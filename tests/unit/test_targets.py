"""Typed targets without a kernel: builders validate, tables and statuses parse strictly.

Status lines are literal examples of each form that thin-provisioning.rst,
snapshot.rst, striped.rst and the targets' status functions print.
"""

from __future__ import annotations

from typing import Any

import pytest

from dmioctl import InvalidArgument, Target
from dmioctl.table import ParseError, TargetBuilder
from dmioctl.targets import (
    BUILDERS,
    delay,
    error,
    flakey,
    from_target,
    linear,
    snapshot,
    striped,
    thin,
    thin_pool,
    zero,
)
from dmioctl.targets.delay import Delay, DelayClass, DelayStatus
from dmioctl.targets.error import Error
from dmioctl.targets.flakey import CorruptBioByte, Direction, Flakey
from dmioctl.targets.linear import Linear
from dmioctl.targets.snapshot import (
    Persistence,
    Snapshot,
    SnapshotMerge,
    SnapshotOrigin,
    SnapshotState,
    SnapshotStatus,
    SnapshotUnusable,
)
from dmioctl.targets.striped import Stripe, Striped, StripedStatus, StripeState
from dmioctl.targets.thin import Thin, ThinState, ThinStatus, ThinUnavailable
from dmioctl.targets.thin_pool import (
    DiscardMode,
    NoSpacePolicy,
    PoolMode,
    PoolState,
    ThinPool,
    ThinPoolStatus,
    ThinPoolUnavailable,
)
from dmioctl.targets.zero import Zero

# ----------------------------------------------------------------- builders round-trip

EXAMPLES: list[tuple[TargetBuilder, str]] = [
    (Linear("/dev/loop0", 0), "/dev/loop0 0"),
    (Linear("7:3", 2048), "7:3 2048"),
    (Striped((Stripe("7:0", 0), Stripe("7:1", 8)), 128), "2 128 7:0 0 7:1 8"),
    (Zero(), ""),
    (Error(), ""),
    (ThinPool("7:1", "7:0", 128, 0), "7:1 7:0 128 0"),
    (
        ThinPool("7:1", "7:0", 2097152, 10, skip_block_zeroing=True, error_if_no_space=True),
        "7:1 7:0 2097152 10 2 skip_block_zeroing error_if_no_space",
    ),
    (
        ThinPool(
            "7:1", "7:0", 256, 1, ignore_discard=True, no_discard_passdown=True, read_only=True
        ),
        "7:1 7:0 256 1 3 ignore_discard no_discard_passdown read_only",
    ),
    (Thin("253:0", 1), "253:0 1"),
    (Thin("253:0", 2**24 - 1, "7:5"), "253:0 16777215 7:5"),
    (SnapshotOrigin("7:0"), "7:0"),
    (Snapshot("7:0", "7:1", Persistence.PERSISTENT, 16), "7:0 7:1 P 16"),
    (Snapshot("7:0", "7:1", Persistence.TRANSIENT, 8), "7:0 7:1 N 8"),
    (Snapshot("7:0", "7:1", Persistence.PERSISTENT, 0), "7:0 7:1 P 0"),
    (
        Snapshot("7:0", "7:1", Persistence.PERSISTENT_OVERFLOW, 32, discard_zeroes_cow=True),
        "7:0 7:1 PO 32 1 discard_zeroes_cow",
    ),
    (
        SnapshotMerge(
            "7:0",
            "7:1",
            Persistence.PERSISTENT,
            16,
            discard_zeroes_cow=True,
            discard_passdown_origin=True,
        ),
        "7:0 7:1 P 16 2 discard_zeroes_cow discard_passdown_origin",
    ),
    (Flakey("7:0", 0, 5, 1), "7:0 0 5 1"),
    (Flakey("7:0", 8, 0, 60, drop_writes=True), "7:0 8 0 60 1 drop_writes"),
    (Flakey("7:0", 0, 1, 1, error_writes=True), "7:0 0 1 1 1 error_writes"),
    (
        Flakey("7:0", 0, 5, 1, corrupt_bio_byte=CorruptBioByte(32, Direction.READ, 1, 0)),
        "7:0 0 5 1 5 corrupt_bio_byte 32 r 1 0",
    ),
    (
        Flakey(
            "7:0",
            0,
            5,
            1,
            error_writes=True,
            corrupt_bio_byte=CorruptBioByte(224, Direction.READ, 0, 33),
        ),
        "7:0 0 5 1 6 error_writes corrupt_bio_byte 224 r 0 33",
    ),
    (Delay(DelayClass("7:0", 0, 500)), "7:0 0 500"),
    (Delay(DelayClass("7:0", 0, 0), DelayClass("7:1", 8, 400)), "7:0 0 0 7:1 8 400"),
    (
        Delay(DelayClass("7:0", 0, 0), DelayClass("7:1", 8, 400), DelayClass("7:2", 0, 20)),
        "7:0 0 0 7:1 8 400 7:2 0 20",
    ),
]


@pytest.mark.parametrize(("builder", "params"), EXAMPLES, ids=lambda x: str(x)[:40])
def test_builder_params_and_back(builder: TargetBuilder, params: str) -> None:
    assert builder.params() == params
    assert type(builder).from_params(params) == builder
    target = builder.target(0, 2**26)
    assert target == Target(0, 2**26, builder.target_type, params)
    assert from_target(target) == builder


@pytest.mark.parametrize(
    ("kernel_params", "expected"),
    [
        ("7:1 7:0 128 0 0 ", ThinPool("7:1", "7:0", 128, 0)),
        (
            "7:1 7:0 128 0 2 skip_block_zeroing error_if_no_space ",
            ThinPool("7:1", "7:0", 128, 0, skip_block_zeroing=True, error_if_no_space=True),
        ),
        ("7:0 0 5 1 0", Flakey("7:0", 0, 5, 1)),
    ],
)
def test_kernel_forms_parse(kernel_params: str, expected: TargetBuilder) -> None:
    """The kernel prints a feature count of 0 and trailing blanks; both parse."""
    assert type(expected).from_params(kernel_params) == expected


def test_builders_registry() -> None:
    assert set(BUILDERS) == {
        "linear",
        "striped",
        "zero",
        "error",
        "thin-pool",
        "thin",
        "snapshot",
        "snapshot-origin",
        "snapshot-merge",
        "flakey",
        "delay",
    }
    with pytest.raises(InvalidArgument, match="crypt"):
        from_target(Target(0, 8, "crypt", "aes 00 0 7:0 0"))


def test_snapshot_merge_is_not_snapshot() -> None:
    args = ("7:0", "7:1", Persistence.PERSISTENT, 16)
    assert Snapshot(*args) != SnapshotMerge(*args)
    assert SnapshotMerge(*args).target(0, 8).target_type == "snapshot-merge"


# ----------------------------------------------------------------- builder validation

BAD_BUILDERS: list[tuple[Any, tuple[Any, ...], dict[str, Any], str]] = [
    (Linear, ("loop0", 0), {}, "absolute path"),
    (Linear, ("/dev/a b", 0), {}, "blank"),
    (Linear, ("", 0), {}, "device"),
    (Linear, ("7:0", -1), {}, "offset"),
    (Linear, ("7:0", 2**64), {}, "offset"),
    (Linear, ("7:0", True), {}, "integer"),
    (Striped, ((), 128), {}, "non-empty"),
    (Striped, ((Stripe("7:0"),), 0), {}, "chunk size"),
    (Striped, (("7:0",), 128), {}, "Stripe"),
    (ThinPool, ("7:1", "7:0", 64, 0), {}, "data block size"),
    (ThinPool, ("7:1", "7:0", 192, 0), {}, "multiple of 128"),
    (ThinPool, ("7:1", "7:0", 2097152 + 128, 0), {}, "data block size"),
    (ThinPool, ("7:1", "7:0", 128, -1), {}, "low water mark"),
    (ThinPool, ("7:1", "x", 128, 0), {}, "data device"),
    (
        ThinPool,
        ("7:1", "7:0", 128, 0),
        dict.fromkeys(
            (
                "skip_block_zeroing",
                "ignore_discard",
                "no_discard_passdown",
                "read_only",
                "error_if_no_space",
            ),
            True,
        ),
        "at most 4 features",
    ),
    (Thin, ("253:0", 2**24), {}, "device id"),
    (Thin, ("253:0", -1), {}, "device id"),
    (Thin, ("253:0", 1, "origin"), {}, "external origin"),
    (Snapshot, ("7:0", "7:1", Persistence.PERSISTENT, 24), {}, "power of two"),
    (Snapshot, ("7:0", "7:1", Persistence.TRANSIENT, 0), {}, "needs a persistent store"),
    (Snapshot, ("7:0", "7:1", "P", 16), {}, "Persistence"),
    (
        Snapshot,
        ("7:0", "7:1", Persistence.PERSISTENT, 16),
        {"discard_passdown_origin": True},
        "needs discard_zeroes_cow",
    ),
    (SnapshotOrigin, ("origin",), {}, "origin"),
    (Flakey, ("7:0", 0, 0, 0), {}, "up \\+ down"),
    (Flakey, ("7:0", 0, 2**32 - 1, 1), {}, "up \\+ down"),
    (Flakey, ("7:0", 0, 1, 1), {"drop_writes": True, "error_writes": True}, "exclude"),
    (
        Flakey,
        ("7:0", 0, 1, 1),
        {"drop_writes": True, "corrupt_bio_byte": CorruptBioByte(1, Direction.WRITE, 0)},
        "corrupt_bio_byte on writes",
    ),
    (CorruptBioByte, (0, Direction.READ, 0), {}, "from 1"),
    (CorruptBioByte, (1, Direction.READ, 256), {}, "value"),
    (CorruptBioByte, (1, "r", 0), {}, "Direction"),
    (CorruptBioByte, (1, Direction.READ, 0, 2**32), {}, "flags"),
    (DelayClass, ("7:0", 0, -5), {}, "delay"),
    (DelayClass, ("7:0", 0, 2**32), {}, "delay"),
    (Delay, (DelayClass("7:0"), None, DelayClass("7:1")), {}, "flush class needs a write"),
    (Delay, ("7:0",), {}, "DelayClass"),
]


@pytest.mark.parametrize(("cls", "args", "kwargs", "message"), BAD_BUILDERS)
def test_builder_validation(
    cls: Any, args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        cls(*args, **kwargs)


def test_striped_length_must_fit_stripes_and_chunks() -> None:
    builder = Striped((Stripe("7:0"), Stripe("7:1")), 128)
    assert builder.target(0, 512).length == 512
    for length in (3, 128, 384):
        with pytest.raises(InvalidArgument, match="stripes"):
            builder.target(0, length)


def test_thin_pool_length_checks() -> None:
    builder = ThinPool("7:1", "7:0", 128, 4)
    assert builder.target(0, 512).length == 512
    with pytest.raises(InvalidArgument, match="less than one data block"):
        builder.target(0, 127)
    with pytest.raises(InvalidArgument, match="low water mark"):
        builder.target(0, 3 * 128)


@pytest.mark.parametrize(("start", "length"), [(-1, 8), (0, 0), (0, -8), (0, 2**64)])
def test_target_start_and_length(start: int, length: int) -> None:
    with pytest.raises(InvalidArgument):
        Zero().target(start, length)


# ----------------------------------------------------------------- bad table params

BAD_PARAMS: list[tuple[type[TargetBuilder], str, str]] = [
    (Linear, "7:0", "offset"),
    (Linear, "7:0 x", "offset"),
    (Linear, "7:0 0 extra", "end"),
    (Linear, "sda 0", "device"),
    (Zero, "x", "end"),
    (Error, "x", "end"),
    (Striped, "2 128 7:0 0", "stripes"),
    (Striped, "1 0 7:0 0", "chunk size"),
    (ThinPool, "7:1 7:0 128", "low water mark"),
    (ThinPool, "7:1 7:0 100 0", "parameters"),
    (ThinPool, "7:1 7:0 128 0 1 zero_blocks", "feature"),
    (ThinPool, "7:1 7:0 128 0 2 read_only read_only", "feature"),
    (ThinPool, "7:1 7:0 128 0 2 read_only", "feature args"),
    (ThinPool, "7:1 7:0 128 0 5 a b c d e", "number of feature args"),
    (Thin, "253:0", "device id"),
    (Thin, "253:0 16777216", "device id"),
    (Thin, "253:0 1 7:1 extra", "end"),
    (SnapshotOrigin, "", "origin"),
    (Snapshot, "7:0 7:1 X 16", "persistent?"),
    (Snapshot, "7:0 7:1 P 12", "parameters"),
    (Snapshot, "7:0 7:1 P 16 1 discard_passdown_origin", "parameters"),
    (Snapshot, "7:0 7:1 P 16 1 frob", "feature"),
    (Flakey, "7:0 0 5", "down interval"),
    (Flakey, "7:0 0 5 1 1 frob", "feature"),
    (Flakey, "7:0 0 5 1 2 drop_writes drop_writes", "feature"),
    (Flakey, "7:0 0 5 1 5 corrupt_bio_byte 1 x 0 0", "corrupt_bio_byte direction"),
    (Flakey, "7:0 0 5 1 5 corrupt_bio_byte 0 r 0 0", "corrupt_bio_byte"),
    (Flakey, "7:0 0 5 1 5 corrupt_bio_byte 1 r 256 0", "corrupt_bio_byte value"),
    (Flakey, "7:0 0 5 1 2 drop_writes error_writes", "features"),
    (Delay, "7:0 0", "arguments"),
    (Delay, "7:0 0 1 7:1 0", "arguments"),
    (Delay, "7:0 0 x", "read delay"),
]


@pytest.mark.parametrize(("cls", "params", "field"), BAD_PARAMS)
def test_bad_table_params(cls: type[TargetBuilder], params: str, field: str) -> None:
    with pytest.raises(ParseError) as caught:
        cls.from_params(params)
    assert caught.value.field == field
    assert caught.value.raw == params
    assert cls.target_type in str(caught.value)
    assert repr(params) in str(caught.value)


# ----------------------------------------------------------------- statuses


def test_empty_statuses() -> None:
    assert linear.parse_status("") == linear.LinearStatus()
    assert zero.parse_status("") == zero.ZeroStatus()
    assert error.parse_status("") == error.ErrorStatus()
    assert flakey.parse_status("") == flakey.FlakeyStatus()
    assert snapshot.parse_origin_status("") == snapshot.SnapshotOriginStatus()


@pytest.mark.parametrize(
    "parse",
    [
        linear.parse_status,
        zero.parse_status,
        error.parse_status,
        flakey.parse_status,
        snapshot.parse_origin_status,
    ],
)
def test_empty_statuses_reject_text(parse: Any) -> None:
    with pytest.raises(ParseError, match="expected nothing"):
        parse("1 2")


def test_striped_status() -> None:
    assert striped.parse_status("2 7:0 7:1 1 AD") == StripedStatus(
        ("7:0", "7:1"), (StripeState.ALIVE, StripeState.DEAD)
    )


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("2 7:0 7:1 1 A", "stripe states"),
        ("2 7:0 7:1 1 AX", "stripe states"),
        ("2 7:0 7:1 2 AA", "number of status fields"),
        ("2 7:0", "stripe device"),
        ("x", "number of stripes"),
        ("1 7:0 1 A extra", "end"),
    ],
)
def test_striped_status_errors(text: str, field: str) -> None:
    with pytest.raises(ParseError) as caught:
        striped.parse_status(text)
    assert (caught.value.field, caught.value.raw) == (field, text)


def test_delay_status() -> None:
    assert delay.parse_status("1 2 3") == DelayStatus(1, 2, 3)
    for bad, field in (("1 2", "flushes"), ("1 2 3 4", "end"), ("1 -2 3", "writes")):
        with pytest.raises(ParseError) as caught:
            delay.parse_status(bad)
        assert caught.value.field == field


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("16/2048 8", SnapshotStatus(16, 2048, 8)),
        ("0/65536 0", SnapshotStatus(0, 65536, 0)),
        ("Invalid", SnapshotUnusable(SnapshotState.INVALID)),
        ("Merge failed", SnapshotUnusable(SnapshotState.MERGE_FAILED)),
        ("Overflow", SnapshotUnusable(SnapshotState.OVERFLOW)),
        ("Unknown", SnapshotUnusable(SnapshotState.UNKNOWN)),
    ],
)
def test_snapshot_status(text: str, expected: object) -> None:
    assert snapshot.parse_status(text) == expected


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("16 2048 8", "sectors allocated/total"),
        ("16/x 8", "sectors allocated/total"),
        ("16/2048", "metadata sectors"),
        ("16/2048 8 9", "end"),
        ("Merge", "sectors allocated/total"),
    ],
)
def test_snapshot_status_errors(text: str, field: str) -> None:
    with pytest.raises(ParseError) as caught:
        snapshot.parse_status(text, "snapshot-merge")
    assert (caught.value.field, caught.value.raw) == (field, text)
    assert "snapshot-merge status" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2048 4095", ThinStatus(2048, 4095)),
        ("0 -", ThinStatus(0, None)),
        ("-", ThinUnavailable(ThinState.NOT_OPEN)),
        ("Fail", ThinUnavailable(ThinState.FAIL)),
        ("Error", ThinUnavailable(ThinState.ERROR)),
    ],
)
def test_thin_status(text: str, expected: object) -> None:
    assert thin.parse_status(text) == expected


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("", "nr mapped sectors"),
        ("fail", "nr mapped sectors"),
        ("128", "highest mapped sector"),
        ("128 x", "highest mapped sector"),
        ("128 127 1", "end"),
    ],
)
def test_thin_status_errors(text: str, field: str) -> None:
    with pytest.raises(ParseError) as caught:
        thin.parse_status(text)
    assert (caught.value.source, caught.value.field, caught.value.raw) == (
        "thin status",
        field,
        text,
    )


def pool(**changes: Any) -> ThinPoolStatus:
    fields: dict[str, Any] = {
        "transaction_id": 0,
        "used_metadata_blocks": 10,
        "total_metadata_blocks": 4096,
        "used_data_blocks": 0,
        "total_data_blocks": 1024,
        "held_metadata_root": None,
        "mode": PoolMode.READ_WRITE,
        "discard": DiscardMode.PASSDOWN,
        "no_space_policy": NoSpacePolicy.QUEUE,
        "needs_check": False,
        "metadata_low_watermark_blocks": 1024,
    }
    fields.update(changes)
    return ThinPoolStatus(**fields)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0 10/4096 0/1024 - rw discard_passdown queue_if_no_space - 1024 ", pool()),
        (
            "0 10/4096 0/1024 - rw discard_passdown queue_if_no_space -",
            pool(metadata_low_watermark_blocks=None),
        ),
        (
            "7 10/4096 5/1024 42 rw discard_passdown queue_if_no_space - 1024",
            pool(transaction_id=7, used_data_blocks=5, held_metadata_root=42),
        ),
        (
            "0 10/4096 0/1024 - ro no_discard_passdown error_if_no_space needs_check 1024",
            pool(
                mode=PoolMode.READ_ONLY,
                discard=DiscardMode.NO_PASSDOWN,
                no_space_policy=NoSpacePolicy.ERROR,
                needs_check=True,
            ),
        ),
        (
            "0 10/4096 1024/1024 - out_of_data_space ignore_discard queue_if_no_space - 1024",
            pool(
                used_data_blocks=1024,
                mode=PoolMode.OUT_OF_DATA_SPACE,
                discard=DiscardMode.IGNORE,
            ),
        ),
        ("Fail", ThinPoolUnavailable(PoolState.FAIL)),
        ("Error", ThinPoolUnavailable(PoolState.ERROR)),
    ],
)
def test_thin_pool_status(text: str, expected: object) -> None:
    assert thin_pool.parse_status(text) == expected


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("", "transaction id"),
        ("x 10/4096 0/1024 - rw discard_passdown queue_if_no_space - 1024", "transaction id"),
        (
            "0 10-4096 0/1024 - rw discard_passdown queue_if_no_space -",
            "used/total metadata blocks",
        ),
        ("0 10/4096 0/ - rw discard_passdown queue_if_no_space -", "used/total data blocks"),
        ("0 10/4096 0/1024 none rw discard_passdown queue_if_no_space -", "held metadata root"),
        ("0 10/4096 0/1024 - rx discard_passdown queue_if_no_space -", "mode"),
        ("0 10/4096 0/1024 - rw discard queue_if_no_space -", "discard"),
        ("0 10/4096 0/1024 - rw discard_passdown queue -", "no space policy"),
        ("0 10/4096 0/1024 - rw discard_passdown queue_if_no_space", "needs_check"),
        ("0 10/4096 0/1024 - rw discard_passdown queue_if_no_space check", "needs_check"),
        (
            "0 10/4096 0/1024 - rw discard_passdown queue_if_no_space - lots",
            "metadata low watermark",
        ),
        ("0 10/4096 0/1024 - rw discard_passdown queue_if_no_space - 1 2", "end"),
        ("fail", "transaction id"),
    ],
)
def test_thin_pool_status_errors(text: str, field: str) -> None:
    with pytest.raises(ParseError) as caught:
        thin_pool.parse_status(text)
    assert (caught.value.source, caught.value.field, caught.value.raw) == (
        "thin-pool status",
        field,
        text,
    )
    assert f"thin-pool status: {field}:" in str(caught.value)
    assert repr(text) in str(caught.value)
