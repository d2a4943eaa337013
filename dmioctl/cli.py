"""The ``dmioctl`` command: dmsetup's verbs, options and output over the dmioctl library.

Each command is a few lines: read the arguments, call :class:`DeviceMapper`,
print.  Human output is what ``dmsetup`` prints for the same command, so that a
script can switch from one to the other; where dmsetup says "Library version"
this prints dmioctl's.  Errors of the library (:class:`~dmioctl.errors.DMError`)
are caught in one place, :class:`DMGroup`, and become one line on stderr,
``dmioctl: <message>``, and exit status 1; usage errors are click's (status 2).
Tables are parsed and checked before the kernel is asked anything, and a
``create`` whose table the kernel refuses removes the device it made.

With ``--json`` the read commands print one JSON document instead.  The schema
is stable; fields may be added, never renamed or removed:

``version``
    ``{"library": "0.1.0", "driver": [4, 47, 0]}``
``targets``
    ``[{"name": "linear", "version": [1, 4, 0]}, ...]`` in the kernel's order.
``ls``
    ``[{"name", "major", "minor", "uuid", "event_nr"}, ...]`` sorted by name;
    ``uuid`` and ``event_nr`` are ``null`` where the kernel does not report them.
    With ``--tree``, the devices no other device uses, each
    ``{"name", "major", "minor", "children": [...]}`` where the children are the
    devices it uses; a device that is not a device-mapper device has name ``null``
    and no children.
``info``
    ``[{"name", "uuid", "major", "minor", "open_count", "event_nr",
    "target_count", "suspended", "read_only", "live_table", "inactive_table",
    "deferred_remove", "read_ahead"}, ...]``; ``uuid`` is ``""`` when unset,
    ``read_ahead`` is in sectors or ``null`` when the device has no queue yet.
``table``
    ``[{"name", "targets": [{"start", "length", "type", "params"}, ...]}, ...]``
``status``
    ``[{"name", "targets": [{"start", "length", "type", "status"}, ...]}, ...]``
``deps``
    ``[{"name", "deps": [{"major", "minor"}, ...]}, ...]``

Commands given a NAME still print a list, of one device.  Sectors are 512 bytes.

Example::

    $ dmioctl create scratch --table '0 2048 zero'
    $ dmioctl table scratch
    0 2048 zero
    $ dmioctl info --json scratch | jq '.[0].open_count'
    0
    $ dmioctl remove scratch
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO, TypeVar

import click

from dmioctl import nodes
from dmioctl.control import DeviceInfo, DeviceMapper, ListedDevice
from dmioctl.errors import DMError, InvalidArgument
from dmioctl.table import Target, parse_table, validate

log = logging.getLogger(__name__)

_F = TypeVar("_F", bound=Callable[..., Any])

#: How often ``remove --retry`` tries a busy device, and how far apart (as libdevmapper).
REMOVE_RETRIES = 25
REMOVE_RETRY_DELAY = 0.2

NO_DEVICES = "No devices found"


def sysfs_read_ahead(major: int, minor: int) -> int | None:
    """The device's read-ahead in sectors, from sysfs as dmsetup reads it; None if unknown.

    A device-mapper device has no queue (and no sysfs entry) until its first table.
    """
    path = f"/sys/dev/block/{major}:{minor}/bdi/read_ahead_kb"
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read()) * 2
    except (OSError, ValueError):
        return None


@dataclass
class Environment:
    """What the commands run against; tests replace the parts that reach the system."""

    open_control: Callable[[], DeviceMapper] = DeviceMapper
    read_ahead: Callable[[int, int], int | None] = sysfs_read_ahead

    def control(self) -> DeviceMapper:
        """Open the device-mapper control file; failing to is a library-style error."""
        try:
            return self.open_control()
        except DMError:
            raise
        except OSError as exc:
            raise DMError(f"cannot open the device-mapper control file: {exc.strerror}") from exc


class DMGroup(click.Group):
    """The command group; the one place where library errors become a message and a status.

    The message starts with the program's name; ``dmsnap``'s group extends this one.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DMError as exc:
            fail(ctx, str(exc), 1)


def fail(ctx: click.Context, message: str, status: int) -> None:
    """End the command with ``<program>: <message>`` on stderr and exit ``status``."""
    click.echo(f"{ctx.find_root().info_name}: {message}", err=True)
    ctx.exit(status)


class _EchoHandler(logging.Handler):
    """Log records on stderr, looked up at each record (click's test runner swaps it)."""

    def __init__(self, prog: str) -> None:
        super().__init__()
        self.prog = prog

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"{self.prog}: {self.format(record)}", err=True)


def set_verbose(prog: str, verbose: bool, loggers: Sequence[str] = ("dmioctl",)) -> None:
    """DEBUG records of ``loggers`` on stderr, prefixed ``<prog>:``, when ``verbose``."""
    for name in loggers:
        logger = logging.getLogger(name)
        if not any(isinstance(h, _EchoHandler) for h in logger.handlers):
            handler = _EchoHandler(prog)
            handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
            logger.addHandler(handler)
        logger.setLevel(logging.DEBUG if verbose else logging.WARNING)


# Shared options


def json_option(f: _F) -> _F:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print JSON (schema: see the program's --help)."
    )(f)


def optional_name(f: _F) -> _F:
    return click.argument("name", required=False)(f)


def target_option(f: _F) -> _F:
    return click.option(
        "--target", "target_type", metavar="TYPE", help="Only targets of this type."
    )(f)


def inactive_option(f: _F) -> _F:
    return click.option("--inactive", is_flag=True, help="Read the inactive table slot.")(f)


def readonly_option(f: _F) -> _F:
    return click.option(
        "-r", "--readonly", "read_only", is_flag=True, help="Make the table read-only."
    )(f)


def table_source(f: _F) -> _F:
    """FILE argument and --table option: where a table comes from (else stdin)."""
    f = click.argument("file", type=click.File("r"), required=False)(f)
    return click.option(
        "--table", "table_text", metavar="TEXT", help="The table itself, one target per line."
    )(f)


def _read_table(table_text: str | None, file: TextIO | None) -> list[Target]:
    """The table from --table, FILE or stdin, parsed and checked before any ioctl."""
    if table_text is not None and file is not None:
        raise InvalidArgument("give the table either with --table or as FILE, not both")
    if table_text is None:
        stream = file if file is not None else sys.stdin
        table_text = stream.read()
    targets = parse_table(table_text)
    if not targets:
        raise InvalidArgument("the table is empty (create takes --notable for no table)")
    validate(targets)
    return targets


def _dump(data: object) -> None:
    click.echo(json.dumps(data, indent=2))


def _by_name(devices: Sequence[ListedDevice]) -> list[ListedDevice]:
    """Devices in dmsetup's order: by name, bytewise."""
    return sorted(devices, key=lambda d: d.name.encode(errors="surrogateescape"))


def _names(dm: DeviceMapper, name: str | None) -> list[str]:
    return [name] if name else [d.name for d in _by_name(dm.list_devices())]


def _dmsetup_line(target: Target) -> str:
    """A table or status line as dmsetup prints it, with the blank before empty params."""
    return f"{target.start} {target.length} {target.target_type} {target.params}"


def _hide_key(target: Target) -> Target:
    """A crypt target with its key written as zeros, as dmsetup shows it without --showkeys.

    A key given by keyring reference (``:32:logon:desc``) is not secret and stays.
    """
    cipher, sep, rest = target.params.partition(" ")
    key, sep2, tail = rest.partition(" ")
    if target.target_type != "crypt" or not key or key.startswith(":"):
        return target
    return Target(
        target.start, target.length, "crypt", cipher + sep + "0" * len(key) + sep2 + tail
    )


@click.group(cls=DMGroup, name="dmioctl")
@click.option("-v", "--verbose", is_flag=True, help="Log each ioctl on stderr.")
@click.version_option(package_name="dmioctl", message="%(prog)s %(version)s")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """Drive Linux device-mapper: dmsetup's commands, through dmioctl's ioctls.

    Human output matches dmsetup's; read commands take --json.

    \b
    Example:
        dmioctl create scratch --table '0 2048 zero'
        dmioctl ls --tree
    """
    if ctx.obj is None:
        ctx.obj = Environment()
    set_verbose("dmioctl", verbose)


pass_env = click.make_pass_decorator(Environment)


# Read commands


@main.command()
@json_option
@pass_env
def version(env: Environment, as_json: bool) -> None:
    """Show the dmioctl version and the kernel's device-mapper interface version.

    \b
    Example:
        dmioctl version
    """
    with env.control() as dm:
        driver = dm.version()
    try:
        library = importlib.metadata.version("dmioctl")
    except importlib.metadata.PackageNotFoundError:
        library = "unknown"
    if as_json:
        _dump({"library": library, "driver": list(driver)})
        return
    click.echo(f"Library version:   dmioctl {library}")
    click.echo("Driver version:    {}.{}.{}".format(*driver))


@main.command()
@json_option
@pass_env
def targets(env: Environment, as_json: bool) -> None:
    """List the target types the kernel has loaded, with their versions.

    \b
    Example:
        dmioctl targets
    """
    with env.control() as dm:
        versions = dm.list_versions()
    if as_json:
        _dump([{"name": v.name, "version": list(v.version)} for v in versions])
        return
    for v in versions:
        click.echo(f"{v.name:<16} v{v.version[0]}.{v.version[1]}.{v.version[2]}")


@main.command("ls")
@target_option
@click.option("--tree", is_flag=True, help="Show which devices each device uses.")
@click.option(
    "-o",
    "--options",
    "tree_options",
    default="",
    metavar="ascii|utf",
    help="Tree drawing characters (default utf).",
)
@json_option
@pass_env
def ls_command(
    env: Environment, target_type: str | None, tree: bool, tree_options: str, as_json: bool
) -> None:
    """List the devices: name and major:minor.

    With --target, only devices with a target of that type (printed as dmsetup
    does then, "(major, minor)"); with --tree, each device with the devices it
    uses beneath it.

    \b
    Example:
        dmioctl ls --target thin-pool
    """
    symbols = _tree_symbols(tree_options)
    roots: list[_TreeNode] = []
    with env.control() as dm:
        devices = _by_name(dm.list_devices())
        if target_type is not None:
            devices = [d for d in devices if _has_target(dm, d.name, target_type)]
        elif tree:
            roots = _build_tree(dm, devices)
    if as_json:
        if tree and target_type is None:
            _dump([root.as_json() for root in roots])
        else:
            _dump([_listed_json(d) for d in devices])
    elif target_type is not None:
        for d in devices:
            click.echo(f"{d.name}\t({d.major}, {d.minor})")
    elif not devices:
        click.echo(NO_DEVICES)
    elif tree:
        for root in roots:
            for line in root.lines(symbols):
                click.echo(line)
    else:
        for d in devices:
            click.echo(f"{d.name}\t({d.major}:{d.minor})")


def _has_target(dm: DeviceMapper, name: str, target_type: str) -> bool:
    return any(t.target_type == target_type for t in dm.status(name))


def _listed_json(device: ListedDevice) -> dict[str, object]:
    return {
        "name": device.name,
        "major": device.major,
        "minor": device.minor,
        "uuid": device.uuid,
        "event_nr": device.event_nr,
    }


@dataclass(frozen=True)
class _TreeSymbols:
    branch: str
    last: str
    vertical: str


_TREE_SYMBOLS = {
    "ascii": _TreeSymbols("|-", "`-", "| "),
    "utf": _TreeSymbols("\u251c\u2500", "\u2514\u2500", "\u2502 "),
}


def _tree_symbols(options: str) -> _TreeSymbols:
    chosen = _TREE_SYMBOLS["utf"]
    for option in filter(None, options.split(",")):
        if option not in _TREE_SYMBOLS:
            raise click.BadParameter(f"{option!r}: the tree options are ascii and utf")
        chosen = _TREE_SYMBOLS[option]
    return chosen


@dataclass(frozen=True)
class _TreeNode:
    """A device in ``ls --tree``: name ``""`` for one that is not a device-mapper device."""

    name: str
    major: int
    minor: int
    children: tuple[_TreeNode, ...]

    def lines(self, symbols: _TreeSymbols, more: tuple[bool, ...] = ()) -> Iterator[str]:
        """Lines for this node and the devices below it, indented as dmsetup does.

        ``more[i]`` says whether the ancestor at depth ``i + 1`` (or, last, this
        node) has siblings after it: those draw a vertical line or a branch.
        """
        prefix = "".join(" " + (symbols.vertical if m else "  ") for m in more[:-1])
        if more:
            prefix += " " + (symbols.branch if more[-1] else symbols.last)
        label = f"{self.name} ({self.major}:{self.minor})" if self.name else ""
        yield prefix + (label or f" ({self.major}:{self.minor})")
        for index, child in enumerate(self.children):
            yield from child.lines(symbols, (*more, index < len(self.children) - 1))

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name or None,
            "major": self.major,
            "minor": self.minor,
            "children": [child.as_json() for child in self.children],
        }


def _build_tree(dm: DeviceMapper, devices: Sequence[ListedDevice]) -> list[_TreeNode]:
    """Roots of the dependency tree: devices that no other listed device uses."""
    by_number = {(d.major, d.minor): d for d in devices}
    uses = {(d.major, d.minor): dm.deps(d.name) for d in devices}
    used = {dep for deps in uses.values() for dep in deps}

    def node(number: tuple[int, int]) -> _TreeNode:
        device = by_number.get(number)
        if device is None:
            return _TreeNode("", number[0], number[1], ())
        children = tuple(node(dep) for dep in uses[number])
        return _TreeNode(device.name, device.major, device.minor, children)

    return [node((d.major, d.minor)) for d in devices if (d.major, d.minor) not in used]


@dataclass(frozen=True)
class _Column:
    """A field of ``info -c``: dmsetup's name for -o, its heading and width."""

    heading: str
    width: int
    numeric: bool
    value: Callable[[DeviceInfo], str]


def _attr(info: DeviceInfo) -> str:
    return (
        ("L" if info.active_table else "-")
        + ("I" if info.inactive_table else "-")
        + ("s" if info.suspended else "-")
        + ("r" if info.read_only else "w")
    )


_COLUMNS = {
    "name": _Column("Name", 16, False, lambda i: i.name),
    "major": _Column("Maj", 3, True, lambda i: str(i.major)),
    "minor": _Column("Min", 3, True, lambda i: str(i.minor)),
    "attr": _Column("Stat", 4, False, _attr),
    "open": _Column("Open", 4, True, lambda i: str(i.open_count)),
    "segments": _Column("Targ", 4, True, lambda i: str(i.target_count)),
    "events": _Column("Event", 6, True, lambda i: str(i.event_nr)),
    "uuid": _Column("UUID", 32, False, lambda i: i.uuid),
}
DEFAULT_COLUMNS = "name,major,minor,attr,open,segments,events,uuid"


def format_info(info: DeviceInfo, read_ahead: int | None) -> list[str]:
    """The block ``dmsetup info`` prints for one device, ending with a blank line."""
    state = "SUSPENDED" if info.suspended else "ACTIVE"
    state += " (READ-ONLY)" if info.read_only else ""
    state += " (DEFERRED REMOVE)" if info.deferred_remove else ""
    slots = [s for s, on in (("LIVE", info.active_table), ("INACTIVE", info.inactive_table)) if on]
    lines = [f"Name:              {info.name}", f"State:             {state}"]
    if read_ahead is not None:
        lines.append(f"Read Ahead:        {read_ahead}")
    lines += [
        f"Tables present:    {' & '.join(slots) or 'None'}",
        f"Open count:        {info.open_count}",
        f"Event number:      {info.event_nr}",
        f"Major, minor:      {info.major}, {info.minor}",
        f"Number of targets: {info.target_count}",
    ]
    if info.uuid:
        lines.append(f"UUID: {info.uuid}")
    return [*lines, ""]


def format_columns(
    infos: Sequence[DeviceInfo], fields: str, *, headings: bool, separator: str | None
) -> list[str]:
    """Rows as ``dmsetup info -c`` prints them.

    Aligned and separated by a blank by default; --noheadings alone separates
    with ``:``, and any separator turns alignment off (as dmsetup's report does).
    """
    try:
        columns = [_COLUMNS[f] for f in fields.split(",")]
    except KeyError as exc:
        raise click.BadParameter(
            f"unknown field {exc.args[0]!r}; known: {', '.join(_COLUMNS)}"
        ) from None
    aligned = separator is None and headings
    if separator is None:
        separator = " " if headings else ":"
    rows = [[c.value(info) for c in columns] for info in infos]
    if not aligned:
        table = [[c.heading for c in columns]] if headings else []
        return [separator.join(row) for row in table + rows]
    widths = [
        max([c.width, len(c.heading), *(len(row[i]) for row in rows)])
        for i, c in enumerate(columns)
    ]
    lines = [separator.join(c.heading.ljust(w) for c, w in zip(columns, widths, strict=True))]
    for row in rows:
        cells = [
            v.rjust(w) if c.numeric else v.ljust(w)
            for c, v, w in zip(columns, row, widths, strict=True)
        ]
        lines.append(separator.join(cells))
    return lines


def info_json(info: DeviceInfo, read_ahead: int | None) -> dict[str, object]:
    return {
        "name": info.name,
        "uuid": info.uuid,
        "major": info.major,
        "minor": info.minor,
        "open_count": info.open_count,
        "event_nr": info.event_nr,
        "target_count": info.target_count,
        "suspended": info.suspended,
        "read_only": info.read_only,
        "live_table": info.active_table,
        "inactive_table": info.inactive_table,
        "deferred_remove": info.deferred_remove,
        "read_ahead": read_ahead,
    }


@main.command()
@optional_name
@click.option("-c", "--columns", is_flag=True, help="One line per device, in columns.")
@click.option(
    "-o",
    "--options",
    "fields",
    default=DEFAULT_COLUMNS,
    metavar="FIELDS",
    help=f"Columns to show, comma-separated: {', '.join(_COLUMNS)}.",
)
@click.option("--noheadings", is_flag=True, help="No heading line (columns mode).")
@click.option("--separator", metavar="SEP", help="Column separator; turns alignment off.")
@json_option
@pass_env
def info(
    env: Environment,
    name: str | None,
    columns: bool,
    fields: str,
    noheadings: bool,
    separator: str | None,
    as_json: bool,
) -> None:
    """Show the state of NAME, or of every device.

    \b
    Example:
        dmioctl info -c -o name,attr,events
    """
    with env.control() as dm:
        infos = [dm.info(n) for n in _names(dm, name)]
    read_ahead = {i.name: env.read_ahead(i.major, i.minor) for i in infos}
    if as_json:
        _dump([info_json(i, read_ahead[i.name]) for i in infos])
        return
    if not infos:
        click.echo(NO_DEVICES)
        return
    if columns:
        lines = format_columns(infos, fields, headings=not noheadings, separator=separator)
    else:
        lines = [line for i in infos for line in format_info(i, read_ahead[i.name])]
    for line in lines:
        click.echo(line)


def _print_targets(
    per_device: Sequence[tuple[str, list[Target]]], target_type: str | None, prefixed: bool
) -> None:
    """Lines of ``dmsetup table`` / ``status``: "name: " first when listing every device."""
    if not per_device and prefixed:
        click.echo(NO_DEVICES)
    for device, targets in per_device:
        prefix = f"{device}: " if prefixed else ""
        if not targets and target_type is None:
            click.echo(prefix)
        for target in targets:
            if target_type is None or target.target_type == target_type:
                click.echo(prefix + _dmsetup_line(target))


def _targets_json(
    per_device: Sequence[tuple[str, list[Target]]], target_type: str | None, key: str
) -> list[dict[str, object]]:
    return [
        {
            "name": device,
            "targets": [
                {"start": t.start, "length": t.length, "type": t.target_type, key: t.params}
                for t in targets
                if target_type is None or t.target_type == target_type
            ],
        }
        for device, targets in per_device
    ]


@main.command()
@optional_name
@target_option
@inactive_option
@click.option("--showkeys", is_flag=True, help="Show crypt keys instead of zeros.")
@json_option
@pass_env
def table(
    env: Environment,
    name: str | None,
    target_type: str | None,
    inactive: bool,
    showkeys: bool,
    as_json: bool,
) -> None:
    """Show the table of NAME, or of every device, one target per line.

    \b
    Example:
        dmioctl table vg-thinpool
    """
    with env.control() as dm:
        per_device = [(n, dm.table(n, inactive=inactive)) for n in _names(dm, name)]
    if not showkeys:
        per_device = [(n, [_hide_key(t) for t in targets]) for n, targets in per_device]
    if as_json:
        _dump(_targets_json(per_device, target_type, "params"))
    else:
        _print_targets(per_device, target_type, prefixed=name is None)


@main.command()
@optional_name
@target_option
@inactive_option
@click.option("--noflush", is_flag=True, help="Do not commit thin metadata first.")
@json_option
@pass_env
def status(
    env: Environment,
    name: str | None,
    target_type: str | None,
    inactive: bool,
    noflush: bool,
    as_json: bool,
) -> None:
    """Show each target's status for NAME, or for every device.

    \b
    Example:
        dmioctl status --target thin-pool
    """
    with env.control() as dm:
        per_device = [
            (n, dm.status(n, inactive=inactive, noflush=noflush)) for n in _names(dm, name)
        ]
    if as_json:
        _dump(_targets_json(per_device, target_type, "status"))
    else:
        _print_targets(per_device, target_type, prefixed=name is None)


@main.command()
@optional_name
@json_option
@pass_env
def deps(env: Environment, name: str | None, as_json: bool) -> None:
    """Show the devices that the table of NAME (or of every device) uses, as (major, minor).

    \b
    Example:
        dmioctl deps vg-thin
    """
    with env.control() as dm:
        per_device = [(n, dm.deps(n)) for n in _names(dm, name)]
    if as_json:
        _dump(
            [
                {"name": n, "deps": [{"major": ma, "minor": mi} for ma, mi in numbers]}
                for n, numbers in per_device
            ]
        )
        return
    if not per_device:
        click.echo(NO_DEVICES)
    for device, numbers in per_device:
        prefix = f"{device}: " if name is None else ""
        listed = "".join(f" ({ma}, {mi})" for ma, mi in numbers)
        click.echo(f"{prefix}{len(numbers)} dependencies\t:{listed}")


# Commands that change devices


@main.command()
@click.argument("name")
@table_source
@click.option("-u", "--uuid", default="", help="The device's uuid.")
@readonly_option
@click.option("--notable", is_flag=True, help="Create the device without a table.")
@pass_env
def create(
    env: Environment,
    name: str,
    file: TextIO | None,
    table_text: str | None,
    uuid: str,
    read_only: bool,
    notable: bool,
) -> None:
    """Create device NAME with the table from --table, FILE or stdin, and activate it.

    The table is checked before the device is made; if the kernel refuses it,
    the new device is removed again.

    \b
    Example:
        dmioctl create data -u DATA-1 --table '0 204800 linear /dev/loop0 0'
        printf '0 2048 zero\\n' | dmioctl create scratch
    """
    if notable and (table_text is not None or file is not None):
        raise InvalidArgument("--notable takes no table")
    targets = [] if notable else _read_table(table_text, file)
    with env.control() as dm:
        dm.create(name, uuid=uuid, read_only=read_only)
        if not targets:
            return
        try:
            dm.load_table(name, targets, read_only=read_only)
            dm.resume(name)
        except DMError:
            log.debug("table refused: removing %s again", name)
            with contextlib.suppress(DMError):
                dm.remove(name)
            raise


@main.command(name="load")
@click.argument("name")
@table_source
@readonly_option
@pass_env
def load(
    env: Environment, name: str, file: TextIO | None, table_text: str | None, read_only: bool
) -> None:
    """Load a table into the inactive slot of NAME; `resume` makes it live.

    \b
    Example:
        dmioctl load data --table '0 409600 linear /dev/loop0 0' && dmioctl resume data
    """
    targets = _read_table(table_text, file)
    with env.control() as dm:
        dm.load_table(name, targets, read_only=read_only)


main.add_command(load, name="reload")


@main.command()
@click.argument("name")
@click.option("--noflush", is_flag=True, help="Keep queued I/O instead of flushing it.")
@click.option("--nolockfs", is_flag=True, help="Do not freeze the filesystem on the device.")
@pass_env
def suspend(env: Environment, name: str, noflush: bool, nolockfs: bool) -> None:
    """Suspend NAME: finish the I/O in flight and hold new I/O until resume.

    \b
    Example:
        dmioctl suspend --nolockfs data
    """
    with env.control() as dm:
        dm.suspend(name, noflush=noflush, skip_lockfs=nolockfs)


@main.command()
@click.argument("name")
@pass_env
def resume(env: Environment, name: str) -> None:
    """Resume NAME: make a loaded inactive table live and let I/O through.

    \b
    Example:
        dmioctl resume data
    """
    with env.control() as dm:
        dm.resume(name)


def _replace_with_error(dm: DeviceMapper, name: str) -> None:
    """Make every sector of NAME fail, so that its users let go (remove --force)."""
    size = sum(t.length for t in dm.table(name))
    if size:
        dm.load_table(name, [Target(0, size, "error")])
        dm.resume(name)


@main.command()
@click.argument("name")
@click.option("-f", "--force", is_flag=True, help="First replace the table with error targets.")
@click.option("--deferred", is_flag=True, help="If the device is open, remove it on last close.")
@click.option("--retry", is_flag=True, help="Retry a busy device for about five seconds.")
@pass_env
def remove(env: Environment, name: str, force: bool, deferred: bool, retry: bool) -> None:
    """Remove device NAME and its tables.

    \b
    Example:
        dmioctl remove --retry data
    """
    with env.control() as dm:
        if force:
            _replace_with_error(dm, name)
        dm.remove(
            name,
            deferred=deferred,
            retries=REMOVE_RETRIES - 1 if retry else 0,
            retry_delay=REMOVE_RETRY_DELAY,
        )


@main.command("remove_all")
@click.option("-f", "--force", is_flag=True, help="First replace every table with error targets.")
@click.option("--deferred", is_flag=True, help="Remove open devices on last close.")
@pass_env
def remove_all(env: Environment, force: bool, deferred: bool) -> None:
    """Remove every device that is not open (for tests and debugging).

    \b
    Example:
        dmioctl remove_all
    """
    with env.control() as dm:
        if force:
            for device in dm.list_devices():
                _replace_with_error(dm, device.name)
        dm.remove_all(deferred=deferred)


@main.command()
@click.argument("name")
@click.argument("new")
@click.option("--setuuid", is_flag=True, help="NEW is a uuid for a device that has none.")
@pass_env
def rename(env: Environment, name: str, new: str, setuuid: bool) -> None:
    """Rename device NAME to NEW, or with --setuuid give it uuid NEW.

    \b
    Example:
        dmioctl rename data data-old
        dmioctl rename data --setuuid DATA-1
    """
    with env.control() as dm:
        if setuuid:
            dm.rename(name, new_uuid=new)
        else:
            dm.rename(name, new_name=new)


@main.command()
@click.argument("name")
@pass_env
def clear(env: Environment, name: str) -> None:
    """Drop the table in the inactive slot of NAME.

    \b
    Example:
        dmioctl clear data
    """
    with env.control() as dm:
        dm.clear_table(name)


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("name")
@click.argument("sector", type=int)
@click.argument("message", nargs=-1, required=True)
@pass_env
def message(env: Environment, name: str, sector: int, message: tuple[str, ...]) -> None:
    """Send MESSAGE to the target of NAME that covers SECTOR; print its reply, if any.

    \b
    Example:
        dmioctl message pool 0 create_thin 1
    """
    with env.control() as dm:
        reply = dm.target_message(name, " ".join(message), sector=sector)
    if reply:
        click.echo(reply, nl=not reply.endswith("\n"))


@main.command()
@click.argument("name")
@click.argument("event_nr", type=click.IntRange(min=0), default=0)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Give up (status 1) when no event comes in time.",
)
@pass_env
def wait(env: Environment, name: str, event_nr: int, timeout: float | None) -> None:
    """Wait until the event counter of NAME differs from EVENT_NR (default 0).

    Take the current number from `dmioctl info` to wait for the next event.

    \b
    Example:
        dmioctl wait pool "$(dmioctl info --json pool | jq '.[0].event_nr')"
    """
    with env.control() as dm:
        if timeout is None:
            dm.wait(name, event_nr=event_nr)
            return
        deadline = time.monotonic() + timeout
        while True:
            dm.arm_poll()
            if dm.info(name).event_nr != event_nr:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not dm.poll(remaining):
                raise DMError(f"no event on {name!r} within {timeout:g} s")


@main.command()
@click.argument("name", required=False)
@pass_env
def mknodes(env: Environment, name: str | None) -> None:
    """Make /dev/mapper nodes match the devices: of NAME, or of all (removing stale ones).

    \b
    Example:
        dmioctl mknodes
    """
    with env.control() as dm:
        if name:
            info = dm.info(name)
            nodes.created(info.name, info.major, info.minor)
            return
        devices = dm.list_devices()
    for device in devices:
        nodes.created(device.name, device.major, device.minor)
    if not nodes.udev_running():
        _remove_stale_nodes({d.name for d in devices})


def _remove_stale_nodes(names: set[str]) -> None:
    try:
        entries = os.listdir(nodes.MAPPER_DIR)
    except FileNotFoundError:
        return
    for entry in entries:
        if entry == "control" or entry in names:
            continue
        mode = os.lstat(os.path.join(nodes.MAPPER_DIR, entry)).st_mode
        if stat.S_ISBLK(mode) or stat.S_ISLNK(mode):
            nodes.removed(entry)
