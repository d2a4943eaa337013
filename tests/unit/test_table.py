"""Table lines: parse_line, parse_table and format_table, without a kernel."""

from __future__ import annotations

import pytest

from dmioctl import InvalidArgument, Target
from dmioctl.table import ParseError, format_table, parse_line, parse_table, validate


def test_parse_line_linear() -> None:
    assert parse_line("0 2048 linear /dev/loop0 0") == Target(0, 2048, "linear", "/dev/loop0 0")


def test_parse_line_without_params() -> None:
    assert parse_line("0 8 zero") == Target(0, 8, "zero", "")


def test_unknown_type_keeps_params_verbatim() -> None:
    target = parse_line("16 32 frobnicate  a   b\tc  # not a comment")
    assert target == Target(16, 32, "frobnicate", "a   b\tc  # not a comment")


def test_leading_and_trailing_blanks_are_separators() -> None:
    assert parse_line("  0   8   zero   ") == Target(0, 8, "zero", "")
    assert parse_line("0 8 linear 7:0 0 ").params == "7:0 0"


def test_parse_table_skips_blank_lines_and_comments() -> None:
    text = "# a comment\n\n0 2048 linear /dev/loop0 0\n   # indented comment\n2048 2048 zero\n"
    assert parse_table(text) == [
        Target(0, 2048, "linear", "/dev/loop0 0"),
        Target(2048, 2048, "zero", ""),
    ]


def test_parse_table_crlf() -> None:
    assert parse_table("0 8 zero\r\n8 8 error\r\n") == [
        Target(0, 8, "zero"),
        Target(8, 8, "error"),
    ]


def test_parse_table_empty() -> None:
    assert parse_table("\n# nothing\n") == []


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("0", "length"),
        ("0 2048", "target type"),
        ("x 2048 zero", "start"),
        ("-1 2048 zero", "start"),
        ("+1 2048 zero", "start"),
        ("0 0 zero", "length"),
        ("0 2k zero", "length"),
        ("0 1_000 zero", "length"),
        (f"0 {2**64} zero", "length"),
        ("0 8 " + "t" * 16, "target type"),
        ("0 8 zero a\0b", "params"),
    ],
)
def test_parse_line_errors_name_the_field(line: str, field: str) -> None:
    with pytest.raises(ParseError) as caught:
        parse_line(line)
    assert caught.value.field == field
    assert caught.value.raw == line
    assert field in str(caught.value)
    assert repr(line) in str(caught.value)


def test_parse_table_error_names_the_line_number() -> None:
    text = "0 8 zero\n# comment\n8 eight zero\n"
    with pytest.raises(ParseError) as caught:
        parse_table(text)
    assert caught.value.line_number == 3
    assert caught.value.field == "length"
    assert str(caught.value).startswith("table line 3: length:")
    assert "'8 eight zero'" in str(caught.value)


def test_parse_error_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument):
        parse_table("0 0 zero")


def test_format_table() -> None:
    targets = [Target(0, 2048, "linear", "7:0 0"), Target(2048, 8, "zero")]
    assert format_table(targets) == "0 2048 linear 7:0 0\n2048 8 zero\n"
    assert format_table([]) == ""


def test_format_then_parse_round_trips() -> None:
    targets = [
        Target(0, 2048, "linear", "7:0 0"),
        Target(2048, 4096, "weird", "a  b   c"),
        Target(6144, 8, "error"),
    ]
    assert parse_table(format_table(targets)) == targets
    validate(parse_table(format_table(targets)))
