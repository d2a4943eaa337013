"""The ``dmioctl`` command: dmsetup's verbs, options and output over the dmioctl library.

Each command is a few lines: read the arguments, call :class:`DeviceMapper`,
print.  Human output is what ``dmsetup`` prints for the same command, so that a
script can switch from one to the other; where dmsetup says "Library version"
this prints dmioctl's.  Errors of the library (:class:`~dmioctl.errors.DMError`)
are caught in one place, :class:`DMGroup`, and become one line on stderr,
``dmioctl: <message>``, and exit status 1; usage errors are click's (status 2).
Tables are parsed and checked before the kernel is asked anything, and a
``create`` whose table the kernel refuses removes the device it made.

Names are mangled as dmsetup mangles them (:mod:`dmioctl.names`; ``--manglename``,
default auto or $DM_DEFAULT_NAME_MANGLING_MODE): a name on the command line
(NAME, create's name, rename's NEW) reaches the kernel mangled, ``a b`` as
``a\\x20b``, and every name printed is unmangled again; so do uuids (``-u``,
``--setuuid``), though ``--json`` gives the kernel's uuid only.  The library below
stays byte-exact; only this command mangles.

With ``--json`` the read commands print one JSON document instead.  The schema
is stable; fields may be added, never renamed or removed.  Every ``name`` is
the kernel's, byte for byte (``a\\x20b``), which auto mode takes back as it is;
next to it, ``display_name`` is the name as the human output prints it
(``a b``; the same in mode none):

``version``
    ``{"library": "0.1.0", "driver": [4, 47, 0]}``
``targets``
    ``[{"name": "linear", "version": [1, 4, 0]}, ...]`` in the kernel's order.
``ls``
    ``[{"name", "display_name", "major", "minor", "uuid", "event_nr"}, ...]`` sorted
    by (kernel) name;
    ``uuid`` and ``event_nr`` are ``null`` where the kernel does not report them.
    With ``--tree``, the devices no other device uses, each
    ``{"name", "display_name", "major", "minor", "children": [...]}`` where the
    children are the devices it uses; a device that is not a device-mapper device
    has both names ``null`` and no children.
``info``
    ``[{"name", "display_name", "uuid", "major", "minor", "open_count", "event_nr",
    "target_count", "suspended", "read_only", "live_table", "inactive_table",
    "deferred_remove", "read_ahead"}, ...]``; ``uuid`` is ``""`` when unset,
    ``read_ahead`` is in sectors or ``null`` when the device has no queue yet.
``table``
    ``[{"name", "display_name", "targets": [{"start", "length", "type", "params"},
    ...]}, ...]``
``status``
    ``[{"name", "display_name", "targets": [{"start", "length", "type", "status"},
    ...]}, ...]``
``deps``
    ``[{"name", "display_name", "deps": [{"major", "minor", "name", "display_name",
    "kernel_name"}, ...]}, ...]``; a dependency's ``name`` is the device-mapper
    name (``display_name`` what ``-o devname`` prints), else the kernel's;
    ``kernel_name`` is what ``-o blkdevname`` prints (``dm-3``, ``loop0``); each is
    ``null`` where sysfs does not know the device.

Commands given a NAME (or ``-u UUID``) still print a list, of one device.  Sectors
are 512 bytes.

A command about one device takes it as NAME or, as dmsetup's ``-u``, by uuid:
``dmioctl info -u UUID``.  Given ``-u``, the arguments after NAME move up one
(``dmioctl rename -u UUID NEW``).  ``create -u UUID`` is the uuid of the new device.

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
import locale
import logging
import os
import stat
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TextIO, TypeVar

import click

from dmioctl import nodes
from dmioctl.control import (
    DeviceInfo,
    DeviceMapper,
    ListedDevice,
    validate_name,
    validate_uuid,
)
from dmioctl.errors import DMError, InvalidArgument
from dmioctl.names import MANGLING_ENV, Mangling, default_mangling, mangle, unmangle
from dmioctl.table import Target, parse_table, validate
from dmioctl.targets import BUILDERS, from_target
from dmioctl.uapi.dm import kernel_bytes

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


@dataclass(frozen=True)
class BlockNames:
    """What sysfs calls a block device: its kernel name, and its name if it is a dm device."""

    kernel: str | None
    dm: str | None

    def shown(self, naming: str) -> str | None:
        """The name ``-o naming`` prints (devname, blkdevname); None for devno or unknown.

        devname falls back to the kernel name for a device that is not a
        device-mapper device, as libdevmapper's dm_device_get_name does.
        """
        if naming == "devname":
            return self.dm or self.kernel
        if naming == "blkdevname":
            return self.kernel
        return None


def sysfs_block_names(major: int, minor: int) -> BlockNames:
    """The names of block device major:minor, from /sys/dev/block as dmsetup reads them.

    The kernel name is where the /sys/dev/block/MAJ:MIN link points (``dm-3``,
    ``loop0``, ``sda1``); a device-mapper device also has its name in ``dm/name``.
    """
    path = f"/sys/dev/block/{major}:{minor}"
    try:
        kernel: str | None = os.path.basename(os.readlink(path))
    except OSError:
        kernel = None
    try:
        with open(f"{path}/dm/name", encoding="utf-8", errors="surrogateescape") as f:
            dm: str | None = f.read().removesuffix("\n")
    except OSError:
        dm = None
    return BlockNames(kernel, dm)


def terminal_columns() -> int | None:
    """The width of the terminal on stdout; None when stdout is not a terminal."""
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns
    except (OSError, ValueError):
        return None


def utf8_locale() -> bool:
    """Whether the locale's character set is UTF-8 (dmsetup's test for drawing the tree)."""
    return locale.nl_langinfo(locale.CODESET) == "UTF-8"


@dataclass
class Environment:
    """What the commands run against; tests replace the parts that reach the system."""

    open_control: Callable[[], DeviceMapper] = DeviceMapper
    read_ahead: Callable[[int, int], int | None] = sysfs_read_ahead
    block_names: Callable[[int, int], BlockNames] = sysfs_block_names
    terminal_columns: Callable[[], int | None] = terminal_columns
    utf8: Callable[[], bool] = utf8_locale
    #: --manglename: how names on the command line reach the kernel and come back
    mangling: Mangling = Mangling.AUTO

    def kernel_name(self, name: str, what: str = "name") -> str:
        """A name from the command line as the kernel is to get it (mangled, see names).

        The name as given is checked first, so that '/' is refused rather than
        mangled (as libdevmapper refuses it), then the mangled name, whose length
        may have grown past the kernel's limit.
        """
        validate_name(name)
        kernel = mangle(name, self.mangling, what)
        validate_name(kernel)
        return kernel

    def kernel_uuid(self, uuid: str, what: str = "uuid") -> str:
        """A uuid from the command line as the kernel is to get it: mangled as names are."""
        validate_uuid(uuid)
        kernel = mangle(uuid, self.mangling, what)
        validate_uuid(kernel)
        return kernel

    def shown(self, name: str) -> str:
        """A kernel name or uuid as the human output prints it (unmangled, see names)."""
        return unmangle(name, self.mangling)

    def shown_info(self, info: DeviceInfo) -> DeviceInfo:
        """``info`` with its name and uuid as the human output prints them."""
        return replace(info, name=self.shown(info.name), uuid=self.shown(info.uuid))

    def shown_block_names(self, names: BlockNames) -> BlockNames:
        """A block device's names as printed: its dm name (sysfs has the kernel's) shown."""
        return BlockNames(names.kernel, None if names.dm is None else self.shown(names.dm))

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


# Naming a device


@dataclass(frozen=True)
class DeviceRef:
    """A device as the command line names it: by name, or (-u) by uuid; exactly one is set.

    Pass both fields on, ``dm.info(device.name, uuid=device.uuid)``: the library
    takes whichever is not empty.  The name is the kernel's, already mangled.
    """

    name: str = ""
    uuid: str = ""

    def __str__(self) -> str:
        return repr(self.name) if self.name else f"uuid {self.uuid!r}"


#: ctx.meta key: the device of this command is named by -u, so NAME is not parsed.
_BY_UUID = "dmioctl.by_uuid"


class DeviceCommand(click.Command):
    """A command about one device, which it takes as dmsetup takes ``<device>``: NAME or -u UUID.

    The command gets a NAME argument (before its own) and the -u/--uuid option,
    and its callback one ``device`` parameter instead: a :class:`DeviceRef`, or
    None when ``every_device`` is set and neither was given (the command then
    works on every device).  Given -u, the positional arguments move up, as in
    dmsetup: ``rename -u UUID NEW``, ``load -u UUID FILE``.  A positional left
    over then means that NAME was given as well, which is an error.
    """

    def __init__(self, *args: Any, every_device: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.every_device = every_device
        name = click.Argument(
            ["name"], required=False, metavar="[NAME]" if every_device else "NAME"
        )
        uuid = click.Option(
            ["-u", "--uuid"], metavar="UUID", help="Name the device by its uuid instead of NAME."
        )
        self.params[:0] = [name, uuid]

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        params = super().get_params(ctx)
        if ctx.meta.get(_BY_UUID):
            return [p for p in params if p.name != "name"]
        return params

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # A first pass of the option parser alone, without NAME: was -u given, and
        # did positionals remain once the other arguments took theirs?
        ctx.meta[_BY_UUID] = True
        try:
            opts, extra, _ = self.make_parser(ctx).parse_args(args=list(args))
        except click.UsageError:
            opts, extra = {}, []  # the real parse reports it
        ctx.meta[_BY_UUID] = opts.get("uuid") is not None
        if ctx.meta[_BY_UUID] and extra:
            raise InvalidArgument("name the device by NAME or by -u UUID, not both")
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        name, uuid = ctx.params.pop("name", None), ctx.params.pop("uuid")
        env = ctx.find_object(Environment)
        ctx.params["device"] = self._device(name, uuid, env or Environment())
        return super().invoke(ctx)

    def _device(self, name: str | None, uuid: str | None, env: Environment) -> DeviceRef | None:
        if uuid is not None:
            return DeviceRef(uuid=env.kernel_uuid(uuid))
        if name is not None:
            return DeviceRef(name=env.kernel_name(name))
        if self.every_device:
            return None
        raise InvalidArgument("no device given: name it by NAME or by -u UUID")


# Shared options


def json_option(f: _F) -> _F:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print JSON (schema: see the program's --help)."
    )(f)


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


#: The words of ``deps -o`` and ``ls -o`` (without --tree), in dmsetup's order.
NAMINGS = ("devno", "blkdevname", "devname")


def option_words(text: str, words: Sequence[str], what: str) -> list[str]:
    """The comma-separated -o words of ``text``, abbreviations expanded as dmsetup does.

    dmsetup reads a word as the first in its list that the word begins: ``inv``
    is inverted, ``a`` is active.  Empty words are skipped.
    """
    chosen = []
    for given in filter(None, text.split(",")):
        word = next((w for w in words if w.startswith(given)), None)
        if word is None:
            raise click.BadParameter(f"unknown {what} {given!r}; known: {', '.join(words)}")
        chosen.append(word)
    return chosen


def _last_naming(options: str) -> str:
    """How -o devno|devname|blkdevname shows devices: its last word, devno when none."""
    return [NAMINGS[0], *option_words(options, NAMINGS, "option")][-1]


def _naming(ctx: click.Context, param: click.Parameter, value: str) -> str:
    return _last_naming(value)


def naming_option(f: _F) -> _F:
    return click.option(
        "-o",
        "--options",
        "naming",
        default="",
        callback=_naming,
        metavar="devno|devname|blkdevname",
        help="Show devices by number (default), by name, or by kernel name (dm-3, loop0).",
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
    for target in targets:
        # A target type with a builder here is held to it, so that a wrong field is
        # named before the kernel refuses it with EINVAL; other types go verbatim.
        if target.target_type in BUILDERS:
            from_target(target)
    return targets


def _dump(data: object) -> None:
    click.echo(json.dumps(data, indent=2))


def _by_name(devices: Sequence[ListedDevice]) -> list[ListedDevice]:
    """Devices in dmsetup's order: by name, bytewise."""
    return sorted(devices, key=lambda d: kernel_bytes(d.name))


def _devices(dm: DeviceMapper, device: DeviceRef | None) -> list[DeviceRef]:
    """The device named, or (None) every device in dmsetup's order."""
    if device is not None:
        return [device]
    return [DeviceRef(d.name) for d in _by_name(dm.list_devices())]


def _name_of(dm: DeviceMapper, device: DeviceRef) -> str:
    """The name of a device, which costs a DM_DEV_STATUS if it was named by uuid."""
    return device.name or dm.info(uuid=device.uuid).name


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
@click.option(
    "--manglename",
    type=click.Choice([m.value for m in Mangling], case_sensitive=False),
    metavar="none|hex|auto",
    help=(
        "How names go to the kernel and come back, as dmsetup's: auto (default, or"
        f" ${MANGLING_ENV}) and hex write characters udev refuses as \\xNN, none"
        " leaves names alone."
    ),
)
@click.version_option(package_name="dmioctl", message="%(prog)s %(version)s")
@click.pass_context
def main(ctx: click.Context, verbose: bool, manglename: str | None) -> None:
    """Drive Linux device-mapper: dmsetup's commands, through dmioctl's ioctls.

    Human output matches dmsetup's; read commands take --json.

    \b
    Example:
        dmioctl create scratch --table '0 2048 zero'
        dmioctl ls --tree
        dmioctl --manglename none ls
    """
    if ctx.obj is None:
        ctx.obj = Environment()
    env = ctx.find_object(Environment)
    if env is not None:
        env.mangling = (
            Mangling(manglename.lower()) if manglename else default_mangling(dict(os.environ))
        )
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
    "options",
    default="",
    metavar="OPTIONS",
    help=(
        "devno (default), devname or blkdevname: show each device's number, name or"
        " kernel name.  With --tree, comma-separated: ascii, utf, vt100; compact,"
        " inverted, notrunc; blkdevname, [no]device, active, open, rw, uuid."
    ),
)
@json_option
@pass_env
def ls_command(
    env: Environment, target_type: str | None, tree: bool, options: str, as_json: bool
) -> None:
    """List the devices: name and major:minor.

    With --target, only devices with a target of that type (printed as dmsetup
    does then, "(major, minor)"); with --tree, each device with the devices it
    uses beneath it, or with -o inverted the devices that use it.  Tree lines
    longer than the terminal (80 columns off a terminal) end in "..." unless
    -o notrunc.

    \b
    Example:
        dmioctl ls --target thin-pool
        dmioctl ls --tree -o ascii,inverted,open
    """
    style = _tree_style(options, utf8=env.utf8()) if tree else None
    naming = "devno" if tree else _last_naming(options)
    graph = None
    with env.control() as dm:
        devices = listed = _by_name(dm.list_devices())
        if target_type is not None:
            devices = [d for d in devices if _has_target(dm, d.name, target_type)]
        elif style is not None:
            graph = _DependencyGraph.build(
                dm,
                devices,
                with_info=bool(style.attributes),
                shown=env.shown,
                shown_info=env.shown_info,
            )
    if as_json:
        if graph is not None and style is not None:
            _dump([graph.node_json(root, style.inverted) for root in graph.roots(style.inverted)])
        else:
            _dump([_listed_json(env, d) for d in devices])
    elif not listed:
        click.echo(NO_DEVICES)
    elif target_type is not None:
        for d in devices:
            click.echo(f"{env.shown(d.name)}\t({d.major}, {d.minor})")
    elif graph is not None and style is not None:
        width = _tree_width(env, style)
        for line in _TreeDrawing(graph, style, env.block_names, width).draw():
            click.echo(line)
    else:
        for d in devices:
            shown = env.shown_block_names(env.block_names(d.major, d.minor)).shown(naming)
            click.echo(f"{env.shown(d.name)}\t({shown or f'{d.major}:{d.minor}'})")


def _has_target(dm: DeviceMapper, name: str, target_type: str) -> bool:
    return any(t.target_type == target_type for t in dm.status(name))


def _listed_json(env: Environment, device: ListedDevice) -> dict[str, object]:
    return {
        "name": device.name,
        "display_name": env.shown(device.name),
        "major": device.major,
        "minor": device.minor,
        "uuid": device.uuid,
        "event_nr": device.event_nr,
    }


@dataclass(frozen=True)
class _TreeSymbols:
    """Drawing characters of ``ls --tree``: two wide before a node; three wide in compact mode."""

    branch: str
    last: str
    vertical: str
    #: compact mode, before a node drawn on its parent's line: an only (or last) child
    single: str
    #: and a first child of several
    first: str


def _vt100(chars: str) -> str:
    """VT100 line-drawing characters, in the escapes that switch the set on and off."""
    return f"\033(0\017{chars}\033(B"


_TREE_SYMBOLS = {
    "ascii": _TreeSymbols("|-", "`-", "| ", "---", "-+-"),
    "utf": _TreeSymbols(
        "\u251c\u2500", "\u2514\u2500", "\u2502 ", "\u2500\u2500\u2500", "\u2500\u252c\u2500"
    ),
    "vt100": _TreeSymbols(
        _vt100("tq"), _vt100("mq"), _vt100("x") + " ", _vt100("qqq"), _vt100("qwq")
    ),
}

#: What -o active, rw, open and uuid add to a device in the tree, in dmsetup's order.
_TREE_ATTRIBUTES: dict[str, Callable[[DeviceInfo], str]] = {
    "active": lambda i: "SUSPENDED" if i.suspended else "ACTIVE",
    "rw": lambda i: "RO" if i.read_only else "RW",
    "open": lambda i: str(i.open_count),
    "uuid": lambda i: i.uuid,
}

#: The words of ``ls --tree -o``, in the order dmsetup matches an abbreviation against them.
TREE_WORDS = (
    "device",
    "blkdevname",
    "nodevice",
    "active",
    "open",
    "uuid",
    "rw",
    "utf",
    "vt100",
    "ascii",
    "inverted",
    "compact",
    "notrunc",
)


@dataclass(frozen=True)
class _TreeStyle:
    """How ``ls --tree`` draws, from its -o words; dmsetup's defaults otherwise."""

    charset: str
    #: " (major:minor)" after a device
    device: bool = True
    #: " <dm-3>" after a device
    blkdevname: bool = False
    #: " [ACTIVE, RW, 0, uuid]" after a device-mapper device: keys of _TREE_ATTRIBUTES
    attributes: tuple[str, ...] = ()
    #: a device's first child on the device's own line
    compact: bool = False
    #: each device above the devices that use it, instead of below
    inverted: bool = False
    #: lines cut at the terminal's width
    truncate: bool = True

    @property
    def symbols(self) -> _TreeSymbols:
        return _TREE_SYMBOLS[self.charset]


def _tree_style(options: str, *, utf8: bool) -> _TreeStyle:
    """The style of ``-o options``: the last of conflicting words counts, as in dmsetup.

    Without a character set word, UTF-8 drawing in a UTF-8 locale, else ASCII.
    """
    words = option_words(options, TREE_WORDS, "tree option")

    def last(choices: Sequence[str], default: str) -> str:
        return next((w for w in reversed(words) if w in choices), default)

    attributes = tuple(a for a in _TREE_ATTRIBUTES if a in words)
    return _TreeStyle(
        charset=last(list(_TREE_SYMBOLS), "utf" if utf8 else "ascii"),
        device=last(("device", "nodevice"), "device") == "device",
        blkdevname="blkdevname" in words,
        attributes=attributes,
        # dmsetup draws compactly only devices without attributes.
        compact="compact" in words and not attributes,
        inverted="inverted" in words,
        truncate="notrunc" not in words,
    )


def _tree_width(env: Environment, style: _TreeStyle) -> int | None:
    """Where dmsetup cuts tree lines: 3 short of the terminal's width, else 80; None: nowhere.

    With vt100 drawing it does not ask the terminal.
    """
    if not style.truncate:
        return None
    columns = env.terminal_columns() if style.charset != "vt100" else None
    return columns - 3 if columns is not None and columns > 3 else 80


def _truncated(line: str, width: int) -> str:
    """``line`` cut to ``width`` columns as dmsetup cuts it: its first width - 1, then "...".

    A line of exactly ``width`` stays whole, unless its last character is not ASCII.
    """
    if len(line) < width or (len(line) == width and line[-1].isascii()):
        return line
    return line[: width - 1] + "..."


_Number = tuple[int, int]


@dataclass
class _DependencyGraph:
    """The devices of ``ls --tree``, which uses which, in the order dmsetup draws them.

    As in libdevmapper's dependency tree, the devices are added in name order,
    each with the devices it uses, depth first.  ``tops`` are then the devices
    no other uses, in name order; ``bottoms`` those that use none, in the order
    the walk met them; and each device's ``users`` in the order the walk met them.
    A device that is not a device-mapper device has no name and uses nothing.
    """

    #: the kernel's names, and the names drawn (unmangled)
    names: dict[_Number, str]
    shown: dict[_Number, str]
    infos: dict[_Number, DeviceInfo]
    uses: dict[_Number, list[_Number]]
    users: dict[_Number, list[_Number]] = field(default_factory=dict)
    tops: list[_Number] = field(default_factory=list)
    bottoms: list[_Number] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        dm: DeviceMapper,
        devices: Sequence[ListedDevice],
        *,
        with_info: bool,
        shown: Callable[[str], str],
        shown_info: Callable[[DeviceInfo], DeviceInfo],
    ) -> _DependencyGraph:
        """The graph of ``devices``, with their DeviceInfo if ``with_info`` (for attributes).

        ``shown`` and ``shown_info`` turn a kernel name and info into those drawn.
        """
        numbered = {(d.major, d.minor): d.name for d in devices}
        graph = cls(
            names=numbered,
            shown={n: shown(name) for n, name in numbered.items()},
            infos={n: shown_info(dm.info(name)) for n, name in numbered.items()}
            if with_info
            else {},
            uses={n: dm.deps(name) for n, name in numbered.items()},
        )
        for number in numbered:
            graph._add(number, user=None)
        return graph

    def _add(self, number: _Number, user: _Number | None) -> None:
        """Add a device met from ``user`` (None: from the list), then, if new, what it uses."""
        new = number not in self.users
        users = self.users.setdefault(number, [])
        if user is None and not users:
            self.tops.append(number)
        elif user is not None:
            users.append(user)
            if number in self.tops:
                self.tops.remove(number)
        if not new:
            return
        below = self.uses.get(number, [])
        if not below:
            self.bottoms.append(number)
        for dep in below:
            self._add(dep, number)

    def roots(self, inverted: bool) -> list[_Number]:
        return self.bottoms if inverted else self.tops

    def children(self, number: _Number, inverted: bool) -> list[_Number]:
        return self.users.get(number, []) if inverted else self.uses.get(number, [])

    def node_json(self, number: _Number, inverted: bool) -> dict[str, object]:
        return {
            "name": self.names.get(number),
            "display_name": self.shown.get(number),
            "major": number[0],
            "minor": number[1],
            "children": [self.node_json(c, inverted) for c in self.children(number, inverted)],
        }


class _TreeDrawing:
    """The lines of ``ls --tree``, laid out as dmsetup lays them out.

    A node is its label after a prefix that holds, for each level above it, the
    width of what the node drawn at that level put on its line (compact mode
    only; else nothing), a blank and a two-wide symbol: a branch at the node's
    own level, a vertical line where the level's node has siblings still to
    come.  In compact mode a node's first child continues the node's line after
    a three-wide joint; the other children start lines of their own.
    """

    def __init__(
        self,
        graph: _DependencyGraph,
        style: _TreeStyle,
        block_names: Callable[[int, int], BlockNames],
        width: int | None,
    ) -> None:
        self.graph = graph
        self.style = style
        self.block_names = block_names
        self.width = width
        self.lines: list[str] = []
        self.line = ""
        # Per level, about the node drawn there last: whether siblings follow it,
        # and how wide it was (compact mode).  A level keeps them until the next
        # node there is drawn, as dmsetup's do.
        self.more: dict[int, bool] = {}
        self.widths: dict[int, int] = {}

    def draw(self) -> list[str]:
        self._walk(self.graph.roots(self.style.inverted), 0)
        if self.line:
            self._end_line()
        return self.lines

    def _walk(self, numbers: Sequence[_Number], level: int) -> None:
        for index, number in enumerate(numbers):
            children = self.graph.children(number, self.style.inverted)
            self._node(number, level, index < len(numbers) - 1, bool(children))
            self._walk(children, level + 1)

    def _node(self, number: _Number, level: int, more: bool, has_children: bool) -> None:
        label = self._label(number)
        if label is None:
            return
        self.more[level] = more
        continued = self.style.compact and self.line != ""
        if not continued:
            self.line += self._prefix(level)
        start = len(self.line)
        if continued:
            self.line += self.style.symbols.first if more else self.style.symbols.single
        self.line += label
        self.widths[level] = len(self.line) - start if self.style.compact else 0
        if not (self.style.compact and has_children):
            self._end_line()

    def _prefix(self, level: int) -> str:
        symbols = self.style.symbols
        prefix = ""
        for above in range(level):
            if above == level - 1:
                symbol = symbols.branch if self.more.get(level) else symbols.last
            else:
                symbol = symbols.vertical if self.more.get(above + 1) else "  "
            prefix += " " * (self.widths.get(above, 0) + 1) + symbol
        return prefix

    def _label(self, number: _Number) -> str | None:
        """A node's text; None for a device with no dm name when -o nodevice leaves it blank."""
        style = self.style
        name = self.graph.shown.get(number, "")
        if not name and not style.device and not style.blkdevname:
            return None
        label = name
        kernel = self.block_names(*number).kernel if style.blkdevname else None
        if kernel:
            label += f" <{kernel}>"
        if style.device:
            label += f" ({number[0]}:{number[1]})"
        info = self.graph.infos.get(number)
        if style.attributes and info is not None:
            label += " [" + ", ".join(_TREE_ATTRIBUTES[a](info) for a in style.attributes) + "]"
        return label

    def _end_line(self) -> None:
        line = self.line if self.width is None else _truncated(self.line, self.width)
        self.lines.append(line)
        self.line = ""


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


def info_json(info: DeviceInfo, read_ahead: int | None, display_name: str) -> dict[str, object]:
    return {
        "name": info.name,
        "display_name": display_name,
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


@main.command(cls=DeviceCommand, every_device=True)
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
    device: DeviceRef | None,
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
        dmioctl info -u LVM-3fcb1e
    """
    with env.control() as dm:
        infos = [dm.info(d.name, uuid=d.uuid) for d in _devices(dm, device)]
    read_ahead = {(i.major, i.minor): env.read_ahead(i.major, i.minor) for i in infos}
    if as_json:
        _dump([info_json(i, read_ahead[i.major, i.minor], env.shown(i.name)) for i in infos])
        return
    if not infos:
        click.echo(NO_DEVICES)
        return
    infos = [env.shown_info(i) for i in infos]
    if columns:
        lines = format_columns(infos, fields, headings=not noheadings, separator=separator)
    else:
        lines = [line for i in infos for line in format_info(i, read_ahead[i.major, i.minor])]
    for line in lines:
        click.echo(line)


def _print_targets(
    env: Environment,
    per_device: Sequence[tuple[str, list[Target]]],
    target_type: str | None,
    prefixed: bool,
) -> None:
    """Lines of ``dmsetup table`` / ``status``: "name: " first when listing every device."""
    if not per_device and prefixed:
        click.echo(NO_DEVICES)
    for device, targets in per_device:
        prefix = f"{env.shown(device)}: " if prefixed else ""
        if not targets and target_type is None:
            click.echo(prefix)
        for target in targets:
            if target_type is None or target.target_type == target_type:
                click.echo(prefix + _dmsetup_line(target))


def _targets_json(
    env: Environment,
    per_device: Sequence[tuple[str, list[Target]]],
    target_type: str | None,
    key: str,
) -> list[dict[str, object]]:
    return [
        {
            "name": device,
            "display_name": env.shown(device),
            "targets": [
                {"start": t.start, "length": t.length, "type": t.target_type, key: t.params}
                for t in targets
                if target_type is None or t.target_type == target_type
            ],
        }
        for device, targets in per_device
    ]


@main.command(cls=DeviceCommand, every_device=True)
@target_option
@inactive_option
@click.option("--showkeys", is_flag=True, help="Show crypt keys instead of zeros.")
@json_option
@pass_env
def table(
    env: Environment,
    device: DeviceRef | None,
    target_type: str | None,
    inactive: bool,
    showkeys: bool,
    as_json: bool,
) -> None:
    """Show the table of NAME, or of every device, one target per line.

    \b
    Example:
        dmioctl table vg-thinpool
        dmioctl table -u LVM-3fcb1e --showkeys
    """
    with env.control() as dm:
        per_device = [
            (_name_of(dm, d), dm.table(d.name, uuid=d.uuid, inactive=inactive))
            for d in _devices(dm, device)
        ]
    if not showkeys:
        per_device = [(n, [_hide_key(t) for t in targets]) for n, targets in per_device]
    if as_json:
        _dump(_targets_json(env, per_device, target_type, "params"))
    else:
        _print_targets(env, per_device, target_type, prefixed=device is None)


@main.command(cls=DeviceCommand, every_device=True)
@target_option
@inactive_option
@click.option("--noflush", is_flag=True, help="Do not commit thin metadata first.")
@json_option
@pass_env
def status(
    env: Environment,
    device: DeviceRef | None,
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
            (_name_of(dm, d), dm.status(d.name, uuid=d.uuid, inactive=inactive, noflush=noflush))
            for d in _devices(dm, device)
        ]
    if as_json:
        _dump(_targets_json(env, per_device, target_type, "status"))
    else:
        _print_targets(env, per_device, target_type, prefixed=device is None)


@main.command(cls=DeviceCommand, every_device=True)
@naming_option
@json_option
@pass_env
def deps(env: Environment, device: DeviceRef | None, naming: str, as_json: bool) -> None:
    """Show the devices that the table of NAME (or of every device) uses.

    Each as (major, minor), or with -o devname by name (a device-mapper
    device's own, another's kernel name), with -o blkdevname by kernel name.

    \b
    Example:
        dmioctl deps -o devname vg-thin
    """
    with env.control() as dm:
        per_device = [
            (_name_of(dm, d), dm.deps(d.name, uuid=d.uuid)) for d in _devices(dm, device)
        ]
    if as_json:
        _dump(
            [
                {
                    "name": n,
                    "display_name": env.shown(n),
                    "deps": [_dep_json(env, *d) for d in used],
                }
                for n, used in per_device
            ]
        )
        return
    if not per_device:
        click.echo(NO_DEVICES)
    for name, used in per_device:
        prefix = f"{env.shown(name)}: " if device is None else ""
        listed = "".join(" " + _dep_label(env, naming, *dep) for dep in used)
        click.echo(f"{prefix}{len(used)} dependencies\t:{listed}")


def _dep_label(env: Environment, naming: str, major: int, minor: int) -> str:
    """A dependency as ``deps -o naming`` prints it; by number where sysfs has no name."""
    shown = env.shown_block_names(env.block_names(major, minor)).shown(naming)
    return f"({shown})" if shown else f"({major}, {minor})"


def _dep_json(env: Environment, major: int, minor: int) -> dict[str, object]:
    names = env.block_names(major, minor)
    return {
        "major": major,
        "minor": minor,
        "name": names.shown("devname"),
        "display_name": env.shown_block_names(names).shown("devname"),
        "kernel_name": names.kernel,
    }


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
    name = env.kernel_name(name)
    uuid = env.kernel_uuid(uuid) if uuid else ""
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


@main.command(name="load", cls=DeviceCommand)
@table_source
@readonly_option
@pass_env
def load(
    env: Environment,
    device: DeviceRef,
    file: TextIO | None,
    table_text: str | None,
    read_only: bool,
) -> None:
    """Load a table into the inactive slot of NAME; `resume` makes it live.

    \b
    Example:
        dmioctl load data --table '0 409600 linear /dev/loop0 0' && dmioctl resume data
        dmioctl load -u DATA-1 table.txt
    """
    targets = _read_table(table_text, file)
    with env.control() as dm:
        dm.load_table(device.name, targets, uuid=device.uuid, read_only=read_only)


main.add_command(load, name="reload")


@main.command(cls=DeviceCommand)
@click.option("--noflush", is_flag=True, help="Keep queued I/O instead of flushing it.")
@click.option("--nolockfs", is_flag=True, help="Do not freeze the filesystem on the device.")
@pass_env
def suspend(env: Environment, device: DeviceRef, noflush: bool, nolockfs: bool) -> None:
    """Suspend NAME: finish the I/O in flight and hold new I/O until resume.

    \b
    Example:
        dmioctl suspend --nolockfs data
    """
    with env.control() as dm:
        dm.suspend(device.name, uuid=device.uuid, noflush=noflush, skip_lockfs=nolockfs)


@main.command(cls=DeviceCommand)
@pass_env
def resume(env: Environment, device: DeviceRef) -> None:
    """Resume NAME: make a loaded inactive table live and let I/O through.

    \b
    Example:
        dmioctl resume data
        dmioctl resume -u DATA-1
    """
    with env.control() as dm:
        dm.resume(device.name, uuid=device.uuid)


def _replace_with_error(dm: DeviceMapper, device: DeviceRef) -> None:
    """Make every sector of the device fail, so that its users let go (remove --force)."""
    size = sum(t.length for t in dm.table(device.name, uuid=device.uuid))
    if size:
        dm.load_table(device.name, [Target(0, size, "error")], uuid=device.uuid)
        dm.resume(device.name, uuid=device.uuid)


@main.command(cls=DeviceCommand)
@click.option("-f", "--force", is_flag=True, help="First replace the table with error targets.")
@click.option("--deferred", is_flag=True, help="If the device is open, remove it on last close.")
@click.option("--retry", is_flag=True, help="Retry a busy device for about five seconds.")
@pass_env
def remove(env: Environment, device: DeviceRef, force: bool, deferred: bool, retry: bool) -> None:
    """Remove device NAME and its tables.

    \b
    Example:
        dmioctl remove --retry data
        dmioctl remove -u DATA-1
    """
    with env.control() as dm:
        if force:
            _replace_with_error(dm, device)
        dm.remove(
            device.name,
            uuid=device.uuid,
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
                _replace_with_error(dm, DeviceRef(device.name))
        dm.remove_all(deferred=deferred)


@main.command(cls=DeviceCommand)
@click.argument("new")
@click.option("--setuuid", is_flag=True, help="NEW is a uuid for a device that has none.")
@pass_env
def rename(env: Environment, device: DeviceRef, new: str, setuuid: bool) -> None:
    """Rename device NAME to NEW, or with --setuuid give it uuid NEW.

    \b
    Example:
        dmioctl rename data data-old
        dmioctl rename data --setuuid DATA-1
        dmioctl rename -u DATA-1 data-new
    """
    new = env.kernel_uuid(new, "new uuid") if setuuid else env.kernel_name(new, "new name")
    with env.control() as dm:
        if setuuid:
            dm.rename(device.name, uuid=device.uuid, new_uuid=new)
        else:
            dm.rename(device.name, uuid=device.uuid, new_name=new)


@main.command(cls=DeviceCommand)
@pass_env
def clear(env: Environment, device: DeviceRef) -> None:
    """Drop the table in the inactive slot of NAME.

    \b
    Example:
        dmioctl clear data
    """
    with env.control() as dm:
        dm.clear_table(device.name, uuid=device.uuid)


@main.command(
    cls=DeviceCommand,
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.argument("sector", type=int)
@click.argument("message", nargs=-1, required=True)
@pass_env
def message(env: Environment, device: DeviceRef, sector: int, message: tuple[str, ...]) -> None:
    """Send MESSAGE to the target of NAME that covers SECTOR; print its reply, if any.

    Options, -u among them, go before NAME: the rest is the message.

    \b
    Example:
        dmioctl message pool 0 create_thin 1
        dmioctl message -u POOL-1 0 delete 1
    """
    with env.control() as dm:
        reply = dm.target_message(device.name, " ".join(message), uuid=device.uuid, sector=sector)
    if reply:
        click.echo(reply, nl=not reply.endswith("\n"))


@main.command(cls=DeviceCommand)
@click.argument("event_nr", type=click.IntRange(min=0), default=0)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Give up (status 1) when no event comes in time.",
)
@pass_env
def wait(env: Environment, device: DeviceRef, event_nr: int, timeout: float | None) -> None:
    """Wait until the event counter of NAME differs from EVENT_NR (default 0).

    Take the current number from `dmioctl info` to wait for the next event.

    \b
    Example:
        dmioctl wait pool "$(dmioctl info --json pool | jq '.[0].event_nr')"
    """
    with env.control() as dm:
        if timeout is None:
            dm.wait(device.name, uuid=device.uuid, event_nr=event_nr)
            return
        deadline = time.monotonic() + timeout
        while True:
            dm.arm_poll()
            if dm.info(device.name, uuid=device.uuid).event_nr != event_nr:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not dm.poll(remaining):
                raise DMError(f"no event on {device} within {timeout:g} s")


@main.command(cls=DeviceCommand, every_device=True)
@pass_env
def mknodes(env: Environment, device: DeviceRef | None) -> None:
    """Make /dev/mapper nodes match the devices: of NAME, or of all (removing stale ones).

    \b
    Example:
        dmioctl mknodes
        dmioctl mknodes -u DATA-1
    """
    with env.control() as dm:
        if device is not None:
            info = dm.info(device.name, uuid=device.uuid)
            nodes.created(info.name, info.major, info.minor)
            return
        devices = dm.list_devices()
    for listed in devices:
        nodes.created(listed.name, listed.major, listed.minor)
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
