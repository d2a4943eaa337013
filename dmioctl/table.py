"""Tables: the list of targets that maps a device's sectors.

A table covers sectors ``0 .. size-1`` without gaps; each :class:`Target` maps
``length`` sectors from ``start`` with a target type (``linear``, ``thin``...)
and that type's parameter string.  Sizes are in 512-byte sectors throughout.
"""

from __future__ import annotations

import abc
import enum
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Self, TypeVar

from dmioctl.errors import InvalidArgument
from dmioctl.uapi.dm import DM_MAX_TYPE_NAME

#: Bytes per sector, the unit of every table.
SECTOR_SIZE = 512

_E = TypeVar("_E", bound=enum.Enum)


@dataclass(frozen=True)
class Target:
    """One line of a table: ``start length target_type params``.

    ``start`` and ``length`` are in sectors.
    """

    start: int
    length: int
    target_type: str
    params: str = ""

    def line(self) -> str:
        """The line as ``dmsetup table`` prints it."""
        return f"{self.start} {self.length} {self.target_type} {self.params}".rstrip()


def validate(targets: Sequence[Target]) -> None:
    """Check that ``targets`` form a loadable table; raise :class:`InvalidArgument` if not.

    The kernel wants the targets in order, each starting where the previous one
    ended, the first at sector 0 (dm-table.c dm_table_add_target and
    dm_table_complete); a type name fits in ``DM_MAX_TYPE_NAME`` with its NUL.
    """
    expected = 0
    for index, target in enumerate(targets):
        where = f"target {index} ({target.target_type!r})"
        if target.start != expected:
            raise InvalidArgument(
                f"{where} starts at sector {target.start}, expected {expected}: "
                "targets must follow each other without gaps from sector 0"
            )
        if target.length <= 0:
            raise InvalidArgument(f"{where} has length {target.length}; it must be positive")
        encoded = target.target_type.encode()
        if not encoded or len(encoded) >= DM_MAX_TYPE_NAME or b"\0" in encoded:
            raise InvalidArgument(
                f"{where}: a target type is 1 to {DM_MAX_TYPE_NAME - 1} bytes without NUL"
            )
        if "\0" in target.params:
            raise InvalidArgument(f"{where}: parameters contain a NUL byte")
        expected += target.length


#: Largest sector number or count a table line can carry (the kernel's sector_t is u64).
MAX_SECTORS = 2**64 - 1

# A table line: start, length, type, then the rest verbatim.  Leading blanks and
# the blanks after the type separate fields; trailing blanks are dropped.
_LINE = re.compile(r"[ \t]*(\S+)(?:[ \t]+(\S+))?(?:[ \t]+(\S+))?(?:[ \t]+(.*?))?[ \t]*")
_UINT = re.compile(r"[0-9]+")
_DEVICE_NUMBER = re.compile(r"[0-9]+:[0-9]+")


class ParseError(InvalidArgument):
    """A table line, a target's parameters or a status line does not have the expected form.

    Attributes:
        source: what was being parsed, e.g. ``"thin-pool status"`` or ``"table line 3"``.
        field: the field that did not match, e.g. ``"held metadata root"``.
        raw: the whole text that was being parsed.
        line_number: the line's number (from 1) when parsing a table, else ``None``.
    """

    def __init__(
        self, source: str, field: str, raw: str, reason: str, *, line_number: int | None = None
    ) -> None:
        self.source = source
        self.field = field
        self.raw = raw
        self.line_number = line_number
        super().__init__(f"{source}: {field}: {reason} in {raw!r}")


def parse_line(text: str, *, line_number: int | None = None) -> Target:
    """Parse one dmsetup-style table line ``<start> <length> <target type> [<params>]``.

    ``start`` and ``length`` are decimal sector counts; ``length`` is positive.
    The parameters are kept exactly as written between the type and the end of
    the line (inner spacing included; trailing blanks dropped), whatever the
    type, so tables of target types this library does not know pass through
    untouched.

    Raises:
        ParseError: a field is missing or malformed; the error names the field
            and, when ``line_number`` is given, the line.
    """
    source = "table line" if line_number is None else f"table line {line_number}"

    def fail(field: str, reason: str) -> ParseError:
        return ParseError(source, field, text, reason, line_number=line_number)

    if "\n" in text or "\r" in text:
        raise fail("line", "a table line holds no line break")
    match = _LINE.fullmatch(text)
    if match is None:
        raise fail("start", "the line is empty")
    start_text, length_text, target_type, params = match.groups()
    if length_text is None:
        raise fail("length", "missing")
    if target_type is None:
        raise fail("target type", "missing")
    start = _sector_field(start_text, fail, "start")
    length = _sector_field(length_text, fail, "length")
    if length == 0:
        raise fail("length", "must be positive")
    encoded = target_type.encode()
    if len(encoded) >= DM_MAX_TYPE_NAME or "\0" in target_type:
        raise fail("target type", f"{target_type!r} is not 1 to {DM_MAX_TYPE_NAME - 1} bytes")
    params = params or ""
    if "\0" in params:
        raise fail("params", "contain a NUL byte")
    return Target(start, length, target_type, params)


def parse_table(text: str) -> list[Target]:
    """Parse a table in dmsetup's format: one target per line.

    Blank lines and lines whose first non-blank character is ``#`` are skipped;
    a ``#`` elsewhere is part of the parameters (a path or a key may hold one).
    Lines are checked one by one (see :func:`parse_line`); whether the targets
    follow each other without gaps is :func:`validate`'s business.

    Example::

        >>> parse_table("# scratch\\n0 2048 zero\\n")
        [Target(start=0, length=2048, target_type='zero', params='')]

    Raises:
        ParseError: naming the line number, the field and the line.
    """
    targets: list[Target] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        targets.append(parse_line(line, line_number=number))
    return targets


def format_table(targets: Sequence[Target]) -> str:
    """The table as dmsetup prints it: one line per target, each ending in a newline."""
    return "".join(f"{target.line()}\n" for target in targets)


def _sector_field(text: str, fail: Callable[[str, str], ParseError], field: str) -> int:
    if not _UINT.fullmatch(text):
        raise fail(field, f"{text!r} is not a decimal sector count")
    value = int(text)
    if value > MAX_SECTORS:
        raise fail(field, f"{value} is larger than 2**64 - 1")
    return value


# --------------------------------------------------------------------- typed targets


class TargetBuilder(abc.ABC):
    """The parameters of one target type, checked; base of the builders in dmioctl.targets.

    A builder is a frozen dataclass whose fields are the target's table
    parameters.  Creating one checks them against the kernel's limits and raises
    :class:`InvalidArgument` before anything reaches the kernel.  :meth:`params`
    writes the parameter string, :meth:`target` a whole :class:`Target`, and
    :meth:`from_params` reads the parameters back (as ``dm.table()`` returns them).
    """

    #: The kernel's name of the target type, e.g. ``"thin-pool"``.
    target_type: ClassVar[str]

    @abc.abstractmethod
    def params(self) -> str:
        """The parameter string of a table line for this target."""

    @classmethod
    @abc.abstractmethod
    def from_params(cls, params: str) -> Self:
        """Parse a parameter string as the kernel prints it in a table.

        Raises:
            ParseError: naming the target type, the field and the raw text.
        """

    def check_length(self, length: int) -> None:
        """Raise :class:`InvalidArgument` if the target cannot map ``length`` sectors.

        Most target types map any length; striped overrides this.
        """
        del length

    def target(self, start: int, length: int) -> Target:
        """A table line mapping ``length`` sectors from sector ``start`` to this target.

        Raises:
            InvalidArgument: ``start`` is negative, ``length`` not positive, or the
                target type refuses that length (e.g. striped, see striped.rst).
        """
        check_uint(self.target_type, "start", start, MAX_SECTORS)
        check_uint(self.target_type, "length", length, MAX_SECTORS)
        if length == 0:
            raise InvalidArgument(f"{self.target_type}: length must be positive")
        self.check_length(length)
        return Target(start, length, self.target_type, self.params())


@dataclass(frozen=True)
class ParameterlessBuilder(TargetBuilder):
    """The builder of a target type that takes no table parameters (zero, error)."""

    def params(self) -> str:
        return ""

    @classmethod
    def from_params(cls, params: str) -> Self:
        expect_empty(f"{cls.target_type} table", params)
        return cls()


# Checks of builder fields, and readers of fields in parameter and status text, shared
# by the target modules.

#: Largest value of the kernel's unsigned int, the type of most counts in tables.
MAX_UINT32 = 2**32 - 1
#: Largest value of a u64 field.
MAX_UINT64 = 2**64 - 1


def check_uint(what: str, field: str, value: int, maximum: int = MAX_UINT64) -> None:
    """Raise :class:`InvalidArgument` unless ``value`` is an int in ``0..maximum``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument(f"{what}: {field} must be an integer, not {value!r}")
    if not 0 <= value <= maximum:
        raise InvalidArgument(f"{what}: {field} {value} is outside 0..{maximum}")


def check_device(what: str, field: str, device: str) -> None:
    """Raise :class:`InvalidArgument` unless ``device`` names a block device for a table.

    The kernel takes a path (dm_get_device looks it up) or ``major:minor``;
    either must be one field without blanks.
    """
    if not isinstance(device, str) or not device:
        raise InvalidArgument(f"{what}: {field} must be a device path or major:minor")
    if any(c.isspace() for c in device) or "\0" in device:
        raise InvalidArgument(f"{what}: {field} {device!r} contains a blank or NUL")
    if not (device.startswith("/") or _DEVICE_NUMBER.fullmatch(device)):
        raise InvalidArgument(
            f"{what}: {field} {device!r} is neither an absolute path nor major:minor"
        )


class FieldReader:
    """Reads the blank-separated fields of one parameter or status string in order.

    Every failure is a :class:`ParseError` naming ``source``, the field and the
    whole raw text.
    """

    def __init__(self, source: str, raw: str) -> None:
        self.source = source
        self.raw = raw
        self.fields = raw.split()
        self.position = 0

    def error(self, field: str, reason: str) -> ParseError:
        """A ParseError about ``field`` of this text."""
        return ParseError(self.source, field, self.raw, reason)

    def remaining(self) -> int:
        """How many fields are left."""
        return len(self.fields) - self.position

    def peek(self) -> str | None:
        """The next field without consuming it, or None at the end."""
        return self.fields[self.position] if self.remaining() else None

    def word(self, field: str) -> str:
        """The next field as it is."""
        if self.position >= len(self.fields):
            raise self.error(field, "missing")
        value = self.fields[self.position]
        self.position += 1
        return value

    def uint(self, field: str, maximum: int = MAX_UINT64) -> int:
        """The next field as a decimal integer in ``0..maximum``."""
        text = self.word(field)
        if not _UINT.fullmatch(text):
            raise self.error(field, f"{text!r} is not a decimal number")
        value = int(text)
        if value > maximum:
            raise self.error(field, f"{value} is larger than {maximum}")
        return value

    def uint_or_dash(self, field: str, maximum: int = MAX_UINT64) -> int | None:
        """The next field as :meth:`uint`, or None where the kernel prints ``-`` for none."""
        if self.peek() == "-":
            self.position += 1
            return None
        return self.uint(field, maximum)

    def ratio(self, field: str) -> tuple[int, int]:
        """The next field as ``used/total``."""
        text = self.word(field)
        used, slash, total = text.partition("/")
        if not slash or not _UINT.fullmatch(used) or not _UINT.fullmatch(total):
            raise self.error(field, f"{text!r} is not <used>/<total>")
        return int(used), int(total)

    def device(self, field: str) -> str:
        """The next field as a device (path or major:minor)."""
        text = self.word(field)
        if not (text.startswith("/") or _DEVICE_NUMBER.fullmatch(text)):
            raise self.error(field, f"{text!r} is neither a path nor major:minor")
        return text

    def choice(self, field: str, enum_type: type[_E]) -> _E:
        """The next field as a member of a str-valued enum."""
        text = self.word(field)
        for member in enum_type:
            if member.value == text:
                return member
        allowed = ", ".join(str(member.value) for member in enum_type)
        raise self.error(field, f"{text!r} is not one of {allowed}")

    def feature_count(self, maximum: int) -> int:
        """The optional ``#feature_args`` field, which must count exactly the fields left.

        Returns 0 when the text ends before it.
        """
        count = self.uint("number of feature args", maximum) if self.remaining() else 0
        if self.remaining() != count:
            raise self.error("feature args", f"expected {count} fields")
        return count

    def flags(self, names: Iterable[str]) -> dict[str, bool]:
        """The remaining fields as feature words, each one of ``names`` at most once.

        Returns every name, True where it was given.
        """
        given = dict.fromkeys(names, False)
        while self.remaining():
            name = self.word("feature")
            if given.get(name) is not False:
                raise self.error("feature", f"{name!r} is unknown or repeated")
            given[name] = True
        return given

    def end(self) -> None:
        """Raise unless every field was read."""
        if self.remaining():
            extra = " ".join(self.fields[self.position :])
            raise self.error("end", f"unexpected trailing fields {extra!r}")


def state_word(raw: str, enum_type: type[_E]) -> _E | None:
    """The member of ``enum_type`` that a status made only of a state spells, else None.

    Targets print such a state (``Fail``, ``Merge failed``...) instead of figures.
    """
    words = " ".join(raw.split())
    for member in enum_type:
        if member.value == words:
            return member
    return None


def expect_empty(source: str, raw: str) -> None:
    """Raise :class:`ParseError` unless ``raw`` is blank (targets with no parameters or status)."""
    if raw.strip():
        raise ParseError(source, "end", raw, "expected nothing")
