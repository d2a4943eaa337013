"""The ``dmsnap`` command: copy-on-write image layers on a device-mapper thin-pool.

Each command is a few lines over :class:`layering.graph.Graph`: read the
arguments, open the store of the root directory, call one method, print.  The
root is ``--root``, else ``$DMSNAP_ROOT``, else ``/var/lib/dmsnap``.  Errors of the
library (:class:`~dmioctl.errors.DMError`, which :class:`~layering.errors.LayeringError`
derives from) and of the operating system are caught in one place,
:class:`SnapGroup`, and become one line on stderr, ``dmsnap: <message>``, and exit
status 1.  A value click refuses (a bad size, an unknown file system, a source that
does not exist) is one line too, naming the option, with status 2; other usage
errors are click's (status 2).  ``fsck`` exits 1 while findings remain.

Sizes on the command line are bytes, or a whole number with a binary unit:
``512K``, ``512M``, ``10G``, ``1T`` (also ``MiB``, ``GiB`` ...; powers of 1024).

Commands that make or return layers print the new layer's id (``import``,
``create``, ``commit``), its mount point (``mount``) or the removed ids (``rm``),
one per line, so that ``ID=$(dmsnap import layer.tar)`` works.

With ``--json`` a command prints one JSON document instead.  The schema is
stable; fields may be added, never renamed or removed.  A *layer* is::

    {"id": "0123456789ab", "kind": "base" | "image" | "container",
     "name": "fedora" | null, "parent": "<layer id>" | null, "thin_id": 3,
     "size_bytes": 67108864, "created": "2025-01-31T12:00:00Z",
     "mount": "/var/lib/dmsnap/containers/0123456789ab" | null,
     "state": "ready" | "creating" | "removing"}

``created`` is UTC to the second; ``mount`` is a container's mount point, as the
store records it (``umount`` keeps it, for ``mount`` to use again), and null for
images and the base.

``status``
    ``{"root", "pool", "data": {"used_bytes", "total_bytes", "used_percent"},
    "metadata": {"used_bytes", "total_bytes", "used_percent"}, "transaction_id",
    "layers": {"base", "images", "containers"}}``; ``pool`` is the
    pool's device-mapper name, ``used_percent`` a number rounded to 0.01, the
    layer counts integers.
``images``
    ``[layer, ...]``: the base and the images, oldest first.
``containers``
    ``[layer, ...]``: the containers, oldest first.
``tree``
    ``[layer + {"children": [...]}, ...]``: the layers without a parent (the
    base), each with the layers built on it, nested, oldest first.
``fsck``
    ``{"findings": [{"kind", "subject", "detail", "repaired"}, ...], "remaining"}``:
    ``kind`` is a word such as ``orphan-thin``, ``missing-thin``, ``stray-device``,
    ``not-mounted``, ``transaction-id`` or ``skipped`` (a check that could not
    run); ``repaired`` is a boolean; ``remaining`` counts the mismatches not
    repaired (``skipped`` aside).
``import``, ``create``, ``commit``, ``mount``
    the layer made or mounted.
``rm``
    ``[layer, ...]``: the layers removed, children before their parents.
``du``
    ``[{"id", "name", "mapped_bytes", "exclusive_bytes"}, ...]``: per layer, the
    pool space its thin device maps, and the part no other layer shares.

Example::

    $ export DMSNAP_ROOT=/tmp/snaps
    $ dmsnap init --data-size 10G --base-size 1G
    $ IMAGE=$(dmsnap import --name rootfs rootfs.tar.gz)
    $ dmsnap create rootfs --name web --mount /srv/web
    $ dmsnap commit web --name rootfs-web
    $ dmsnap tree
    $ dmsnap destroy --yes
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import click

from dmioctl.cli import DMGroup, Environment, _dump, fail, json_option, set_verbose
from dmioctl.control import DeviceMapper
from layering import fs, layers
from layering.errors import InvalidInput, LayeringError
from layering.graph import DEFAULT_BASE_BYTES, SKIPPED, Finding, Graph
from layering.pool import DEFAULT_ROOT, ROOT_ENV, KiB, PoolConfig, Usage
from layering.store import Layer, LayerKind, check_name

if TYPE_CHECKING:
    from click._termui_impl import ProgressBar

log = logging.getLogger(__name__)

_F = TypeVar("_F", bound=Callable[..., Any])

PROG = "dmsnap"


# Sizes


_UNITS = {"": 1, "K": KiB, "M": KiB**2, "G": KiB**3, "T": KiB**4, "P": KiB**5}
_SIZE_RE = re.compile(r"(\d+)\s*(?:([KMGTP])(?:iB)?|B)?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from ``4096``, ``512K``, ``10G``, ``100GiB`` (units are powers of 1024).

    Raises:
        ValueError: not such a size, or zero.
    """
    match = _SIZE_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(
            f"{text!r} is not a size: give bytes or a whole number with K, M, G, T or P "
            "(powers of 1024), as in 512M, 10G or 100GiB"
        )
    size = int(match[1]) * _UNITS[(match[2] or "").upper()]
    if size == 0:
        raise ValueError(f"{text!r}: a size must be more than zero")
    return size


def format_size(size: int) -> str:
    """Bytes in the largest binary unit that keeps a number of at least 1: ``1.5 GiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    if unit == "B" or value == int(value):
        return f"{int(value)} {unit}"
    return f"{value:.1f} {unit}"


def _as_typed(size: int) -> str:
    """A size as it is typed: the largest unit that divides it (``64KiB``, ``10GiB``, ``513``)."""
    for unit, factor in reversed(_UNITS.items()):
        if factor > 1 and size % factor == 0:
            return f"{size // factor}{unit}iB"
    return str(size)


class SizeType(click.ParamType[int]):
    """A size option: bytes, or a number with a binary unit."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


SIZE = SizeType()


# What the commands run against


def _init_graph(
    root: Path, dm: DeviceMapper, config: PoolConfig, base_bytes: int, fstype: str
) -> Graph:
    return Graph.init(root, dm, config, base_bytes=base_bytes, fstype=fstype)


@dataclass
class SnapEnvironment(Environment):
    """The control file and the graph; tests replace them with fakes."""

    init_graph: Callable[[Path, DeviceMapper, PoolConfig, int, str], Graph] = _init_graph
    open_graph: Callable[[Path, DeviceMapper], Graph] = Graph.open


@dataclass
class Session:
    """One invocation: the environment and the root directory it works on."""

    env: SnapEnvironment
    root: Path

    @contextlib.contextmanager
    def graph(self) -> Iterator[Graph]:
        """The graph of the root, opened (pool up, crashed operation reconciled) and closed."""
        with self.env.control() as dm:
            graph = self.env.open_graph(self.root, dm)
            with contextlib.closing(graph):
                yield graph


pass_session = click.make_pass_decorator(Session)


class SnapGroup(DMGroup):
    """dmioctl's error boundary, which also turns OSError and bad values into one line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename is not None else ""
            fail(ctx, f"{exc.strerror or exc}{where}", 1)
        except click.BadParameter as exc:
            if isinstance(exc, click.MissingParameter):
                raise  # click's message with the usage line says more
            fail(ctx, exc.format_message(), exc.exit_code)


# Shared options


def size_option(*names: str, help: str, default: int | None = None) -> Callable[[_F], _F]:
    """A size option; a default is written as it would be typed (``100GiB``)."""

    def decorate(f: _F) -> _F:
        typed = _as_typed(default) if default is not None else None
        return click.option(
            *names, type=SIZE, default=typed, show_default=typed is not None, help=help
        )(f)

    return decorate


def _checked_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--name checked before the store is opened or the pool brought up."""
    if value is not None:
        check_name(value)
    return value


def name_option(what: str) -> Callable[[_F], _F]:
    def decorate(f: _F) -> _F:
        return click.option(
            "--name", metavar="NAME", callback=_checked_name, help=f"A name for the new {what}."
        )(f)

    return decorate


# JSON and human forms of layers


def _utc(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created))


def _local(created: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))


def layer_json(layer: Layer) -> dict[str, object]:
    return {
        "id": layer.id,
        "kind": layer.kind.value,
        "name": layer.name,
        "parent": layer.parent,
        "thin_id": layer.thin_id,
        "size_bytes": layer.size_bytes,
        "created": _utc(layer.created),
        "mount": str(layer.mount) if layer.mount is not None else None,
        "state": layer.state.value,
    }


def _label(layer: Layer) -> str:
    return layer.name or layer.id


def format_table(headings: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Columns aligned on their widest cell, two blanks apart, no trailing blanks."""
    widths = [max(len(cell) for cell in column) for column in zip(headings, *rows, strict=True)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [headings, *rows]
    ]


def _layer_rows(graph: Graph, shown: Sequence[Layer], with_mount: bool) -> list[list[str]]:
    labels = {layer.id: _label(layer) for layer in graph.layers()}
    rows = []
    for layer in shown:
        row = [
            layer.id,
            layer.name or "-",
            labels.get(layer.parent, layer.parent) if layer.parent else "-",
            format_size(layer.size_bytes),
            _local(layer.created),
        ]
        if with_mount:
            row.append(str(layer.mount) if layer.mount is not None else "-")
        rows.append(row)
    return rows


def _print_layers(graph: Graph, shown: Sequence[Layer], as_json: bool, with_mount: bool) -> None:
    if as_json:
        _dump([layer_json(layer) for layer in shown])
        return
    headings = ["ID", "NAME", "PARENT", "SIZE", "CREATED"] + (["MOUNT"] if with_mount else [])
    for line in format_table(headings, _layer_rows(graph, shown, with_mount)):
        click.echo(line)


def _print_layer(layer: Layer, as_json: bool, human: str) -> None:
    if as_json:
        _dump(layer_json(layer))
    else:
        click.echo(human)


@dataclass
class TreeNode:
    """A layer and the layers built on it."""

    layer: Layer
    children: list[TreeNode] = field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        return {**layer_json(self.layer), "children": [c.as_json() for c in self.children]}

    def describe(self) -> str:
        """``apache (image, 0a1b2c3d4e5f)``; a container also says its mount point."""
        details = [self.layer.kind.value]
        if self.layer.name:
            details.append(self.layer.id)
        if self.layer.mount is not None:
            details.append(str(self.layer.mount))
        return f"{_label(self.layer)} ({', '.join(details)})"


def nest(flat: Sequence[tuple[int, Layer]]) -> list[TreeNode]:
    """Roots of the tree from :meth:`Graph.tree`'s depth-first (depth, layer) list."""
    roots: list[TreeNode] = []
    path: list[TreeNode] = []
    for depth, layer in flat:
        node = TreeNode(layer)
        del path[depth:]
        (path[-1].children if path else roots).append(node)
        path.append(node)
    return roots


def tree_lines(nodes: Sequence[TreeNode], indent: str = "", top: bool = True) -> Iterator[str]:
    """The tree drawn with box characters, children below and right of their parent."""
    for index, node in enumerate(nodes):
        last = index == len(nodes) - 1
        if top:
            yield node.describe()
            below = ""
        else:
            yield indent + ("\u2514\u2500 " if last else "\u251c\u2500 ") + node.describe()
            below = indent + ("   " if last else "\u2502  ")
        yield from tree_lines(node.children, below, top=False)


# The group


@click.group(cls=SnapGroup, name=PROG)
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    envvar=ROOT_ENV,
    default=DEFAULT_ROOT,
    show_default=True,
    help=f"Directory of the store and the pool's files (or ${ROOT_ENV}).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log each change (and ioctl) on stderr.")
@click.version_option(package_name="dmioctl", message="%(prog)s %(version)s")
@click.pass_context
def main(ctx: click.Context, root: Path, verbose: bool) -> None:
    """Docker-style image layers as thin snapshots on a device-mapper thin-pool.

    Images are read-only layers, each a snapshot of its parent with a layer
    tarball applied; containers are writable snapshots of an image, mounted at
    a path.  Read commands take --json.

    \b
    Example:
        dmsnap --root /tmp/snaps init --data-size 10G
        dmsnap --root /tmp/snaps import rootfs.tar --name rootfs
    """
    env = ctx.obj if isinstance(ctx.obj, SnapEnvironment) else SnapEnvironment()
    ctx.obj = Session(env, root.absolute())
    set_verbose(PROG, verbose, ("dmioctl", "layering"))


# Setting up and taking down

_DEFAULTS = PoolConfig()


@main.command()
@size_option("--data-size", default=_DEFAULTS.data_bytes, help="Size of the sparse data file.")
@size_option(
    "--metadata-size", default=_DEFAULTS.metadata_bytes, help="Size of the sparse metadata file."
)
@size_option(
    "--block-size", default=_DEFAULTS.block_bytes, help="Pool block size (a multiple of 64K)."
)
@size_option(
    "--base-size", default=DEFAULT_BASE_BYTES, help="Size of the base device and new layers."
)
@click.option(
    "--fs",
    "fstype",
    type=click.Choice(fs.FILESYSTEMS),
    default="ext4",
    show_default=True,
    help="File system of the base device.",
)
@click.option("--data-device", metavar="DEVICE", help="Block device for data instead of a file.")
@click.option(
    "--metadata-device", metavar="DEVICE", help="Block device for metadata instead of a file."
)
@pass_session
def init(
    session: Session,
    data_size: int,
    metadata_size: int,
    block_size: int,
    base_size: int,
    fstype: str,
    data_device: str | None,
    metadata_device: str | None,
) -> None:
    """Make a store in the root: the pool, and the base device with an empty file system.

    The pool lives on sparse files under ROOT/pool unless both --data-device and
    --metadata-device are given (the metadata device must be blank).

    \b
    Example:
        dmsnap init --data-size 20G --metadata-size 256M --base-size 4G --fs xfs
    """
    config = PoolConfig(data_size, metadata_size, block_size, data_device, metadata_device)
    with session.env.control() as dm:
        session.env.init_graph(session.root, dm, config, base_size, fstype).close()


@main.command()
@click.option("--yes", is_flag=True, help="Confirm: every layer and the pool are deleted.")
@pass_session
def destroy(session: Session, yes: bool) -> None:
    """Unmount every container, remove the pool and delete the store and its files.

    \b
    Example:
        dmsnap destroy --yes
    """
    if not yes:
        raise InvalidInput(
            f"destroy deletes every layer under {session.root}; give --yes to confirm"
        )
    with session.graph() as graph:
        graph.destroy()


@main.command()
@size_option("--data-size", help="New size of the data file (it only grows).")
@size_option("--metadata-size", help="New size of the metadata file (it only grows).")
@pass_session
def grow(session: Session, data_size: int | None, metadata_size: int | None) -> None:
    """Grow the pool's data and/or metadata file, and the pool with it, online.

    \b
    Example:
        dmsnap grow --data-size 200G
    """
    if data_size is None and metadata_size is None:
        raise InvalidInput("give --data-size, --metadata-size or both")
    with session.graph() as graph:
        graph.grow(data_bytes=data_size, metadata_bytes=metadata_size)


# Reading


def _percent(used: int, total: int) -> float:
    return round(100 * used / total, 2) if total else 0.0


def status_json(root: Path, pool: str, usage: Usage, counts: dict[str, int]) -> dict[str, object]:
    return {
        "root": str(root),
        "pool": pool,
        "data": {
            "used_bytes": usage.data_used,
            "total_bytes": usage.data_total,
            "used_percent": _percent(usage.data_used, usage.data_total),
        },
        "metadata": {
            "used_bytes": usage.metadata_used,
            "total_bytes": usage.metadata_total,
            "used_percent": _percent(usage.metadata_used, usage.metadata_total),
        },
        "transaction_id": usage.transaction_id,
        "layers": counts,
    }


def _space(used: int, total: int) -> str:
    return f"{format_size(used)} of {format_size(total)} used ({_percent(used, total):.1f}%)"


@main.command()
@json_option
@pass_session
def status(session: Session, as_json: bool) -> None:
    """Show the pool's space (data and metadata), its transaction id and the layer counts.

    \b
    Example:
        dmsnap status --json | jq .data.used_percent
    """
    with session.graph() as graph:
        usage = graph.usage()
        every = graph.layers()
        pool = graph.pool.name
    counts = {
        "base": sum(layer.kind is LayerKind.BASE for layer in every),
        "images": sum(layer.kind is LayerKind.IMAGE for layer in every),
        "containers": sum(layer.kind is LayerKind.CONTAINER for layer in every),
    }
    if as_json:
        _dump(status_json(session.root, pool, usage, counts))
        return
    for heading, value in (
        ("Root", str(session.root)),
        ("Pool", pool),
        ("Data", _space(usage.data_used, usage.data_total)),
        ("Metadata", _space(usage.metadata_used, usage.metadata_total)),
        ("Transaction id", str(usage.transaction_id)),
        (
            "Layers",
            f"{counts['base']} base, {counts['images']} images, {counts['containers']} containers",
        ),
    ):
        click.echo(f"{heading + ':':<16}{value}")


@main.command()
@json_option
@pass_session
def images(session: Session, as_json: bool) -> None:
    """List the base and the images, oldest first.

    \b
    Example:
        dmsnap images
    """
    with session.graph() as graph:
        shown = [layer for layer in graph.layers() if layer.kind is not LayerKind.CONTAINER]
        _print_layers(graph, shown, as_json, with_mount=False)


@main.command()
@json_option
@pass_session
def containers(session: Session, as_json: bool) -> None:
    """List the containers, oldest first, with their mount points.

    \b
    Example:
        dmsnap containers --json | jq -r '.[].mount'
    """
    with session.graph() as graph:
        _print_layers(graph, graph.layers(LayerKind.CONTAINER), as_json, with_mount=True)


@main.command()
@json_option
@pass_session
def tree(session: Session, as_json: bool) -> None:
    """Draw the layers, each below the layer it was built on.

    \b
    Example:
        dmsnap tree
    """
    with session.graph() as graph:
        roots = nest(graph.tree())
    if as_json:
        _dump([root.as_json() for root in roots])
        return
    for line in tree_lines(roots):
        click.echo(line)


# Images and containers


class _ProgressBar:
    """``progress(done, total)`` for the library: a bar on stderr from the first call."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.done = 0
        self._stack = contextlib.ExitStack()
        self._bar: ProgressBar[int] | None = None

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            bar = click.progressbar(length=total, label=self.label, file=sys.stderr)
            self._bar = self._stack.enter_context(bar)
        self._bar.update(done - self.done)
        self.done = done

    def close(self) -> None:
        self._stack.close()


@contextlib.contextmanager
def _source(source: str) -> Iterator[Path | IO[bytes]]:
    """The tarball to import: a path, stdin for ``-``, or a directory exported to a temp file."""
    if source == "-":
        yield sys.stdin.buffer
        return
    path = Path(source)
    if not path.is_dir():
        yield path
        return
    with tempfile.TemporaryFile(prefix="dmsnap-") as spool:
        layers.export(path, spool)
        spool.seek(0)
        yield spool


@main.command("import")
@click.argument("source", type=click.Path(exists=True, allow_dash=True))
@click.option("--parent", default="base", show_default=True, help="Image to build on.")
@name_option("image")
@size_option("--size", help="Size of the new image (default: the parent's).")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Draw a progress bar on stderr (default: when stderr is a terminal).",
)
@json_option
@pass_session
def import_command(
    session: Session,
    source: str,
    parent: str,
    name: str | None,
    size: int | None,
    progress: bool | None,
    as_json: bool,
) -> None:
    """Make an image from SOURCE: a layer tarball, `-` for stdin, or a directory.

    The image is a snapshot of --parent with the tarball applied, whiteouts
    included; a directory is taken as a layer holding all of its files.  Prints
    the new image's id.

    \b
    Example:
        dmsnap import --name fedora fedora-rootfs.tar.xz
        dmsnap import --parent fedora --name app ./app-files
        curl -s https://example.org/layer.tar.gz | dmsnap import --parent app -
    """
    if progress is None:
        progress = sys.stderr.isatty()
    bar = _ProgressBar(f"Importing {source}") if progress else None
    try:
        with _source(source) as tarball, session.graph() as graph:
            layer = graph.import_layer(
                tarball, parent=parent, name=name, size_bytes=size, progress=bar
            )
    finally:
        if bar is not None:
            bar.close()
    _print_layer(layer, as_json, layer.id)


@main.command()
@click.argument("image")
@name_option("container")
@click.option(
    "--mount",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to mount it (default: ROOT/containers/ID).",
)
@size_option("--size", help="Size of the container (default: the image's).")
@json_option
@pass_session
def create(
    session: Session,
    image: str,
    name: str | None,
    mount: Path | None,
    size: int | None,
    as_json: bool,
) -> None:
    """Make a container from IMAGE (id or name): a writable snapshot, mounted.

    Prints the new container's id.

    \b
    Example:
        dmsnap create fedora --name web --mount /srv/web --size 20G
    """
    with session.graph() as graph:
        layer = graph.create_container(image, name=name, mount=mount, size_bytes=size)
    _print_layer(layer, as_json, layer.id)


@main.command()
@click.argument("container")
@json_option
@pass_session
def mount(session: Session, container: str, as_json: bool) -> None:
    """Activate and mount CONTAINER again (after umount or a reboot); print where.

    \b
    Example:
        dmsnap mount web
    """
    with session.graph() as graph:
        layer = graph.mount(container)
    _print_layer(layer, as_json, str(layer.mount))


@main.command()
@click.argument("container")
@pass_session
def umount(session: Session, container: str) -> None:
    """Unmount CONTAINER and deactivate its device; its content stays.

    \b
    Example:
        dmsnap umount web
    """
    with session.graph() as graph:
        graph.umount(container)


@main.command()
@pass_session
def down(session: Session) -> None:
    """Unmount every container and stop the pool and its devices; nothing is deleted.

    The next dmsnap command brings the pool back; 'dmsnap mount' each container.

    \b
    Example:
        dmsnap down
    """
    with session.graph() as graph:
        graph.deactivate()


@main.command()
@json_option
@pass_session
def du(session: Session, as_json: bool) -> None:
    """Pool space of each layer: what it maps, and what no other layer shares.

    Needs thin_ls (thin-provisioning-tools).

    \b
    Example:
        dmsnap du --json | jq '.[] | select(.exclusive_bytes > 0)'
    """
    with session.graph() as graph:
        space = graph.space()
    if space is None:
        raise LayeringError("dmsnap du needs thin_ls from thin-provisioning-tools")
    if as_json:
        _dump(
            [
                {
                    "id": entry.layer.id,
                    "name": entry.layer.name,
                    "mapped_bytes": entry.mapped_bytes,
                    "exclusive_bytes": entry.exclusive_bytes,
                }
                for entry in space
            ]
        )
        return
    rows = [
        (
            entry.layer.id,
            entry.layer.name or "-",
            format_size(entry.mapped_bytes),
            format_size(entry.exclusive_bytes),
        )
        for entry in space
    ]
    for line in format_table(("ID", "NAME", "MAPPED", "EXCLUSIVE"), rows):
        click.echo(line)


@main.command()
@click.argument("container")
@name_option("image")
@json_option
@pass_session
def commit(session: Session, container: str, name: str | None, as_json: bool) -> None:
    """Make an image of CONTAINER's current content; the container stays.

    Prints the new image's id.

    \b
    Example:
        dmsnap commit web --name fedora-web
    """
    with session.graph() as graph:
        layer = graph.commit(container, name=name)
    _print_layer(layer, as_json, layer.id)


@main.command()
@click.argument("ref")
@click.option("-r", "--recursive", is_flag=True, help="Also remove every layer built on REF.")
@json_option
@pass_session
def rm(session: Session, ref: str, recursive: bool, as_json: bool) -> None:
    """Remove the image or container REF (id or name); print the ids removed.

    An image with children is refused unless --recursive.  A busy container's
    device is removed when its last user closes it, and the error says who
    holds it.

    \b
    Example:
        dmsnap rm -r fedora
    """
    with session.graph() as graph:
        removed = graph.remove(ref, recursive=recursive)
    if as_json:
        _dump([layer_json(layer) for layer in removed])
        return
    for layer in removed:
        click.echo(layer.id)


# Checking


def finding_json(finding: Finding) -> dict[str, object]:
    return {
        "kind": finding.kind,
        "subject": finding.subject,
        "detail": finding.detail,
        "repaired": finding.repaired,
    }


@main.command()
@click.option("--repair", is_flag=True, help="Repair what can be repaired.")
@json_option
@pass_session
def fsck(session: Session, repair: bool, as_json: bool) -> None:
    """Compare the store with the pool and the kernel; report (or --repair) each mismatch.

    One line per finding: its kind, what it is about, the detail, and
    "(repaired)" when --repair mended it.  Exits with status 1 while a mismatch
    remains unrepaired; a check that could not run (kind "skipped", as when
    thin_dump is not installed) is reported but is not a mismatch.

    \b
    Example:
        dmsnap fsck --repair
    """
    with session.graph() as graph:
        findings = graph.fsck(repair=repair)
    remaining = sum(not f.repaired and f.kind != SKIPPED for f in findings)
    if as_json:
        _dump({"findings": [finding_json(f) for f in findings], "remaining": remaining})
    else:
        for f in findings:
            click.echo(
                f"{f.kind}: {f.subject}: {f.detail}" + (" (repaired)" if f.repaired else "")
            )
        if not findings:
            click.echo("no findings")
    if remaining:
        click.get_current_context().exit(1)
