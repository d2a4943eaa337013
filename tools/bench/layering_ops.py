#!/usr/bin/env python3
"""Cost of creating a container in the layer graph, in three comparisons.

Needs a kernel with device-mapper and overlayfs, root, and a scratch directory on
a real file system (not tmpfs); ``tools/bench/run`` starts it inside the project's
VM with the scratch disk as ``TMPDIR``.  Everything lives in one directory under
``TMPDIR``: the graph's root (pool files, store, container mounts) and the
overlayfs directories.

A *create* is :meth:`layering.graph.Graph.create_container`: a thin snapshot of the
image, its device activated, its file system mounted.  Each create is followed by
its teardown (:meth:`~layering.graph.Graph.remove`) outside the timed region, so
every sample starts from the same state.  Three comparisons:

- **create**: a create against an overlayfs mount of the same image content
  (lowerdir: the image's tarball applied to a plain directory of the scratch file
  system; fresh upper, work and mount directories per mount, made inside the timed
  region as a create makes its mount directory; mounted by mount(2) from this
  process, as the graph mounts).  Teardown: unmount, delete the directories.
  A third side, the **floor**, does only the kernel work of a create, through
  dmioctl with nothing of the graph around it: a pool status read, the
  create_snap and set_transaction_id messages, create + load + resume of the thin
  device, mkdir and mount(2).  ``dmsnap / floor`` is what the graph adds (journal,
  store, checks); ``floor / overlayfs`` is what a device-mapper design costs
  against an overlay mount on this kernel, whatever the code above it.
- **depth**: a create from an image on a chain of 50 image layers (each a tarball of
  one small file) against one from the first layer of that chain.
- **active**: a create while 500 other containers are active and mounted against
  one while 10 are.  The count cannot alternate cheaply, so this one is phased, not
  interleaved: samples at 10, then the ramp to 500, then samples at 500.  The ramp
  stops when its time budget runs out; the count reached is then reported (with
  the ratio named after it), never passed off as 500.  Spawning ``true`` is timed
  interleaved with each phase's creates, as a yardstick of how much the machine's
  speed moved between the phases.  The creates of the ramp are timed too and
  reported by band of active count.

Under emulation absolute times mean little: the sides of a comparison run
interleaved in rounds (A B, B A, ...) after warm-up runs, and what matters is the
ratio of medians measured in the same run.

With ``--profile N`` (on by default), N more creates run under cProfile and the
time of one create is split into its parts: the mount process, the ioctls (pool
status, snapshot and transaction-id messages, activation), SQLite (journal and
store), and the rest.  Profiling inflates the Python parts against the process
and kernel parts; read the split as proportions.

Example::

    python3 tools/vm.py --disk 16G -- tools/vm-scratch \\
        .venv/bin/python tools/bench/layering_ops.py --json
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import ctypes
import functools
import io
import json
import os
import platform
import pstats
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# The statistics and the round-robin order of the dm_ops benchmark next to this file
# (importing it also puts this checkout's dmioctl first on sys.path).
from dm_ops import WARMUP_SHARE, Summary, interleave, percentile, ratio, scaled, summarize

from dmioctl import DeviceMapper
from dmioctl.control import CONTROL_PATH
from dmioctl.nodes import node_path
from dmioctl.table import SECTOR_SIZE
from dmioctl.targets import thin_pool
from dmioctl.targets.thin import MAX_DEV_ID, Thin
from layering import layers
from layering.graph import Graph
from layering.pool import GiB, KiB, MiB, PoolConfig
from layering.store import Layer, LayerKind

#: The pool: sparse files on the scratch disk, far larger than the benchmark fills.
POOL = PoolConfig(data_bytes=8 * GiB, metadata_bytes=256 * MiB)
#: The base thin device: small, so that mkfs (inode tables written in full) stays quick.
BASE_BYTES = 256 * MiB

#: The image of the create comparison: directories of files of mixed sizes.
IMAGE_DIRS = 24
IMAGE_FILES_PER_DIR = 16

CHAIN_DEPTH = 50
ACTIVE_FEW = 10
ACTIVE_MANY = 500
#: Seconds the ramp from ACTIVE_FEW to ACTIVE_MANY active containers may take.
SETUP_BUDGET_S = 120.0
#: Width of the bands of active count in which the ramp's creates are reported.
RAMP_BAND = 50

#: Timed creates per side.  Under TCG a create costs about a second and its removal
#: as much again; an overlay mount and its teardown about half a second.
DEFAULT_COUNTS: Mapping[str, Mapping[str, int]] = {
    "create": {"dmsnap": 12, "floor": 12, "overlay": 12},
    "depth": {"deep": 10, "shallow": 10},
    "active": {"few": 8, "many": 8},
}
DEFAULT_PROFILE_RUNS = 6

#: Ratio of medians -> (what it compares, its goal; None where it only explains another).
GOALS: Mapping[str, tuple[str, float | None]] = {
    "dmsnap/overlay": ("create", 2.0),
    "dmsnap/floor": ("create", None),
    "floor/overlay": ("create", None),
    "deep/shallow": ("depth", 1.2),
    "many/few": ("active", 1.5),
}

#: A create returns the undo that tears down what it made.
Undo = Callable[[], None]
Create = Callable[[], Undo]


class BenchError(Exception):
    """A step of the benchmark's own set-up or teardown failed."""


# Content


def _add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    info.mtime = 1_700_000_000
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    info.mtime = 1_700_000_000
    tar.addfile(info)


def image_tarball() -> bytes:
    """A small image: IMAGE_DIRS directories of files from 256 B to 32 KiB, one symlink each."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        _add_dir(tar, "usr")
        for d in range(IMAGE_DIRS):
            directory = f"usr/d{d:02}"
            _add_dir(tar, directory)
            for f in range(IMAGE_FILES_PER_DIR):
                size = 256 << ((d + f) % 8)
                line = f"{directory}/f{f:02}\n".encode()
                _add_file(tar, f"{directory}/f{f:02}", (line * (size // len(line) + 1))[:size])
            link = tarfile.TarInfo(f"{directory}/latest")
            link.type = tarfile.SYMTYPE
            link.linkname = f"f{IMAGE_FILES_PER_DIR - 1:02}"
            tar.addfile(link)
    return out.getvalue()


def tiny_tarball(level: int) -> bytes:
    """The layer at ``level`` of the deep chain: one small file of its own."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        _add_dir(tar, "layers")
        _add_file(tar, f"layers/{level:03}", f"layer {level}\n".encode())
    return out.getvalue()


# The two ways of making a container's file system


def _run(argv: Sequence[str]) -> None:
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if done.returncode:
        detail = (done.stderr or done.stdout).strip() or f"exit status {done.returncode}"
        raise BenchError(f"{' '.join(argv)} failed: {detail}")


_libc = ctypes.CDLL(None, use_errno=True)


def mount_syscall(source: str, target: Path, fstype: str, options: str) -> None:
    """mount(2) from this process, without mount(8)."""
    if _libc.mount(source.encode(), str(target).encode(), fstype.encode(), 0, options.encode()):
        err = ctypes.get_errno()
        raise BenchError(f"mount(2) of {fstype} {source} on {target} failed: {os.strerror(err)}")


def umount_syscall(target: Path) -> None:
    """umount2(2) from this process, without umount(8)."""
    if _libc.umount2(str(target).encode(), 0):
        err = ctypes.get_errno()
        raise BenchError(f"umount2(2) of {target} failed: {os.strerror(err)}")


def _nothing() -> None:
    pass


def spawn() -> Undo:
    """Spawn ``true``: the yardstick of the machine's speed in the phased comparison."""
    _run(["true"])
    return _nothing


class ContainerSide:
    """Containers of one image in the graph; the undo removes the container and its mount dir."""

    def __init__(self, graph: Graph, image: str) -> None:
        self.graph = graph
        self.image = image

    def __call__(self) -> Undo:
        layer = self.graph.create_container(self.image)
        return functools.partial(self.remove, layer)

    def remove(self, layer: Layer) -> None:
        self.graph.remove(layer.id)
        if layer.mount is not None:
            with contextlib.suppress(FileNotFoundError):
                layer.mount.rmdir()


class FloorSide:
    """The kernel work of a container create and nothing more (see the module docstring).

    Its snapshots take thin ids from the top of the range, far from the graph's.  The
    undo unmounts, removes the device, deletes the thin id and puts the pool's
    transaction id back, so the graph finds the pool as its store has it.
    """

    def __init__(self, graph: Graph, image: Layer, top: Path) -> None:
        self.dm = graph.pool.dm
        self.pool = graph.pool.name
        pool = self.dm.info(self.pool)
        self.pool_device = f"{pool.major}:{pool.minor}"
        self.sectors = image.size_bytes // SECTOR_SIZE
        self.origin = image.thin_id
        self.top = top
        self.serial = 0

    def __call__(self) -> Undo:
        self.serial += 1
        thin_id = MAX_DEV_ID - self.serial
        name = f"{self.pool}-floor-{self.serial}"
        status = thin_pool.parse_status(self.dm.status(self.pool, noflush=True)[0].params)
        assert isinstance(status, thin_pool.ThinPoolStatus)
        old = status.transaction_id
        thin_pool.create_snap(self.dm, self.pool, thin_id, self.origin)
        thin_pool.set_transaction_id(self.dm, self.pool, old, old + 1)
        self.dm.create(name)
        self.dm.load_table(name, [Thin(self.pool_device, thin_id).target(0, self.sectors)])
        self.dm.resume(name)
        where = self.top / name
        where.mkdir(parents=True)
        mount_syscall(node_path(name), where, "ext4", "discard")
        return functools.partial(self.remove, name, thin_id, where, old)

    def remove(self, name: str, thin_id: int, where: Path, transaction_id: int) -> None:
        umount_syscall(where)
        where.rmdir()
        self.dm.remove(name, retries=5)
        thin_pool.delete(self.dm, self.pool, thin_id)
        thin_pool.set_transaction_id(self.dm, self.pool, transaction_id + 1, transaction_id)


class OverlaySide:
    """overlayfs mounts of one lower directory, each with fresh upper and work directories."""

    def __init__(self, lower: Path, top: Path) -> None:
        for path in (lower, top):
            # overlayfs splits its options at commas and lowerdir at colons.
            if any(c in str(path) for c in ",:\\"):
                raise BenchError(f"{path} holds a character overlayfs options cannot carry")
        self.lower = lower
        self.top = top
        self.serial = 0
        self.mounted: set[Path] = set()

    def __call__(self) -> Undo:
        where, options = self._fresh()
        mount_syscall("overlay", where / "merged", "overlay", options)
        self.mounted.add(where)
        return functools.partial(self.remove, where)

    def _fresh(self) -> tuple[Path, str]:
        """New upper, work and mount directories; the mount options that name them."""
        self.serial += 1
        where = self.top / f"ov-{self.serial}"
        upper, work, merged = where / "upper", where / "work", where / "merged"
        for directory in (upper, work, merged):
            directory.mkdir(parents=True)
        return where, f"lowerdir={self.lower},upperdir={upper},workdir={work}"

    def syscall_mount_ns(self) -> int:
        """Nanoseconds of one overlay mount by mount(2) from this process (for the profile)."""
        where, options = self._fresh()
        started = time.perf_counter_ns()
        mount_syscall("overlay", where / "merged", "overlay", options)
        elapsed = time.perf_counter_ns() - started
        self.mounted.add(where)
        self.remove(where)
        return elapsed

    def remove(self, where: Path) -> None:
        umount_syscall(where / "merged")
        self.mounted.discard(where)
        shutil.rmtree(where)

    def close(self) -> None:
        """Tear down any mount an interrupted run left."""
        for where in sorted(self.mounted):
            self.remove(where)


# Timing


def timed_creates(order: Sequence[str], creates: Mapping[str, Create]) -> dict[str, list[int]]:
    """Run ``creates[side]`` for each side in ``order``, each undone untimed; ns by side."""
    samples: dict[str, list[int]] = {side: [] for side in creates}
    clock = time.perf_counter_ns
    for side in order:
        started = clock()
        undo = creates[side]()
        samples[side].append(clock() - started)
        undo()
    return samples


def bench(
    label: str, counts: Mapping[str, int], creates: Mapping[str, Create]
) -> dict[str, Summary]:
    """Warm every side up, then time them interleaved; a summary per side."""
    warmup = {side: max(1, round(n * WARMUP_SHARE)) for side, n in counts.items()}
    started = time.monotonic()
    timed_creates(interleave(warmup), creates)
    samples = timed_creates(interleave(counts), creates)
    elapsed = time.monotonic() - started
    runs = ", ".join(f"{side} {n}" for side, n in counts.items())
    note(f"{label}: {runs} timed runs in {elapsed:.1f} s")
    return {side: summarize(samples[side]) for side in creates}


def note(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


# The three comparisons


def build_chain(graph: Graph, depth: int) -> tuple[list[Layer], list[int]]:
    """``depth`` images, each on the one before, from the base; their import times in ns."""
    chain: list[Layer] = []
    times: list[int] = []
    parent = "base"
    for level in range(1, depth + 1):
        started = time.perf_counter_ns()
        layer = graph.import_layer(
            io.BytesIO(tiny_tarball(level)), parent=parent, name=f"chain-{level:03}"
        )
        times.append(time.perf_counter_ns() - started)
        chain.append(layer)
        parent = layer.id
    return chain, times


@dataclass
class Ramp:
    """Containers kept active for the active comparison, and the time each create took."""

    graph: Graph
    image: str
    held: list[Layer]
    # (containers active before the create, nanoseconds)
    creates: list[tuple[int, int]]

    def fill(self, target: int, deadline: float | None = None) -> None:
        """Create containers until ``target`` are held or the deadline (monotonic) passes."""
        while len(self.held) < target:
            if deadline is not None and time.monotonic() >= deadline:
                return
            started = time.perf_counter_ns()
            layer = self.graph.create_container(self.image)
            self.creates.append((len(self.held), time.perf_counter_ns() - started))
            self.held.append(layer)

    def bands(self, width: int) -> list[dict[str, Any]]:
        """Median and p90 of the ramp's creates per band of ``width`` active containers."""
        grouped: dict[int, list[int]] = {}
        for active, ns in self.creates:
            grouped.setdefault(active // width, []).append(ns)
        return [
            {
                "active_from": band * width,
                "active_to": band * width + width - 1,
                **asdict(summarize(samples)),
            }
            for band, samples in sorted(grouped.items())
        ]


def active_comparison(
    graph: Graph, image: str, counts: Mapping[str, int], few: int, many: int, budget_s: float
) -> dict[str, Any]:
    """Creates with ``few`` active; the ramp, within ``budget_s``; creates at the count reached."""
    ramp = Ramp(graph, image, [], [])
    side = ContainerSide(graph, image)
    ramp.fill(few)
    few_runs = {"few": counts["few"], "reference": counts["few"]}
    summaries = bench(f"create with {few} active", few_runs, {"few": side, "reference": spawn})
    reference_few = summaries.pop("reference")

    started = time.monotonic()
    ramp.fill(many, deadline=started + budget_s)
    ramp_s = time.monotonic() - started
    reached = len(ramp.held)
    if reached < many:
        note(f"ramp: {reached} of {many} containers active when the {budget_s:g} s budget ran out")
    else:
        note(f"ramp: {reached} containers active after {ramp_s:.1f} s")
    many_runs = {"many": counts["many"], "reference": counts["many"]}
    summaries |= bench(
        f"create with {reached} active", many_runs, {"many": side, "reference": spawn}
    )
    reference_many = summaries.pop("reference")
    return {
        "few": {"active": few, **asdict(summaries["few"])},
        "many": {"active": reached, **asdict(summaries["many"])},
        "reference": {
            "what": "spawning 'true', interleaved with the creates of each phase",
            "few": asdict(reference_few),
            "many": asdict(reference_many),
            "drift": ratio(reference_many, reference_few),
        },
        "target": many,
        "reached": reached,
        "complete": reached >= many,
        "ramp_s": ramp_s,
        "ramp_budget_s": budget_s,
        "ramp_bands": ramp.bands(RAMP_BAND),
    }


# Profile of the create path

#: Parts of one create: (label, file suffix, function).  Indented labels are inside the
#: one above them; the three without indent below "create_container" do not overlap.
PROFILE_PARTS: Sequence[tuple[str, str, str]] = (
    ("create_container", "layering/graph.py", "create_container"),
    ("  mount(2) of the container", "layering/fs.py", "mount"),
    ("  activate_thin (info, create, load, resume)", "layering/pool.py", "activate_thin"),
    ("  create_snap message", "dmioctl/targets/thin_pool.py", "create_snap"),
    ("  set_transaction_id message", "dmioctl/targets/thin_pool.py", "set_transaction_id"),
    ("  pool status (free-space gate, id check)", "layering/pool.py", "status"),
    ("  journal begin", "layering/store.py", "begin"),
    ("  journal steps", "layering/store.py", "step"),
    ("  journal finish", "layering/store.py", "finish"),
    ("  store reads (get)", "layering/store.py", "get"),
    ("  next_thin_id", "layering/store.py", "next_thin_id"),
    ("every subprocess", "subprocess.py", "run"),
    ("every dm ioctl", "dmioctl/ioctl.py", "issue"),
)


def _matching(stats: dict[Any, Any], suffix: str, function: str) -> tuple[int, float]:
    """Calls and cumulative seconds of the functions ``function`` in files ending ``suffix``."""
    calls, seconds = 0, 0.0
    for (filename, _line, name), (_cc, nc, _tt, ct, _callers) in stats.items():
        if name == function and filename.endswith(suffix):
            calls += nc
            seconds += ct
    return calls, seconds


@dataclass(frozen=True)
class ProfilePart:
    """Where some of a create's time goes, averaged over the profiled creates."""

    part: str
    calls_per_create: float
    ms_per_create: float


#: The parts that do not overlap; what they leave of create_container is Python's own work.
DISJOINT_PARTS = ("every subprocess", "every dm ioctl", "every SQLite call")


@dataclass(frozen=True)
class Profile:
    """The split of one create, and what its mount would cost without mount(8)."""

    runs: int
    parts: list[ProfilePart]
    #: Medians, in ms: mount(2) of the container's ext4 and of an overlay from this
    #: process, and a process that does nothing (``true``) spawned as fs.mount spawns.
    ext4_syscall_mount_ms: float
    overlay_syscall_mount_ms: float
    spawn_true_ms: float


def profile_creates(
    graph: Graph, image: str, overlay: OverlaySide, runs: int
) -> tuple[Profile, str]:
    """cProfile of ``runs`` creates: the split of one, and the top functions as text.

    After each profiled create, unprofiled: the container's file system is unmounted
    and mounted again with mount(2) (timed), an overlay is mounted with mount(2)
    (timed), ``true`` is spawned (timed), and the container is removed.
    """
    profiler = cProfile.Profile()
    ext4_ns: list[int] = []
    overlay_ns: list[int] = []
    spawn_ns: list[int] = []
    for _ in range(runs):
        profiler.enable()
        layer = graph.create_container(image)
        profiler.disable()

        assert layer.mount is not None
        device = f"/dev/mapper/{graph.pool.thin_name(layer.thin_id)}"
        umount_syscall(layer.mount)
        started = time.perf_counter_ns()
        mount_syscall(device, layer.mount, "ext4", "discard")
        ext4_ns.append(time.perf_counter_ns() - started)
        overlay_ns.append(overlay.syscall_mount_ns())
        started = time.perf_counter_ns()
        _run(["true"])
        spawn_ns.append(time.perf_counter_ns() - started)
        ContainerSide(graph, image).remove(layer)

    raw: dict[Any, Any] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    parts = []
    for label, suffix, function in PROFILE_PARTS:
        calls, seconds = _matching(raw, suffix, function)
        parts.append(ProfilePart(label, calls / runs, seconds / runs * 1e3))
    sqlite_calls, sqlite_s = 0, 0.0
    for (_filename, _line, name), (_cc, nc, tt, _ct, _callers) in raw.items():
        if "sqlite3." in name:
            sqlite_calls += nc
            sqlite_s += tt
    parts.append(ProfilePart("every SQLite call", sqlite_calls / runs, sqlite_s / runs * 1e3))
    accounted = sum(part.ms_per_create for part in parts if part.part in DISJOINT_PARTS)
    parts.append(ProfilePart("the rest (Python)", 0.0, parts[0].ms_per_create - accounted))

    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(30)
    stats.sort_stats("tottime").print_stats(20)
    profile = Profile(
        runs, parts, _median_ms(ext4_ns), _median_ms(overlay_ns), _median_ms(spawn_ns)
    )
    return profile, out.getvalue()


def _median_ms(samples_ns: Sequence[int]) -> float:
    return percentile(samples_ns, 0.5) / 1e6


# Set-up, run, report


def fs_type(path: Path) -> str:
    """The type of the file system holding ``path``, from /proc/self/mounts."""
    resolved = str(path.resolve())
    best, kind = "", "unknown"
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            point = fields[1].replace("\\040", " ")
            inside = resolved == point or resolved.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, kind = point, fields[2]
    return kind


def run(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """Set up the graph and the overlay lower directory, run the comparisons, clean up."""
    started = time.monotonic()
    top = Path(tempfile.mkdtemp(prefix="layering-bench-"))
    graph: Graph | None = None
    overlay: OverlaySide | None = None
    setup: dict[str, float] = {}
    try:
        clock = time.monotonic()
        graph = Graph.init(top / "root", DeviceMapper(), POOL, base_bytes=BASE_BYTES)
        setup["init_s"] = time.monotonic() - clock

        clock = time.monotonic()
        content = image_tarball()
        image = graph.import_layer(io.BytesIO(content), name="image")
        lower = top / "lower"
        lower.mkdir()
        applied = layers.apply(io.BytesIO(content), lower)
        overlay = OverlaySide(lower, top / "overlay")
        setup["image_s"] = time.monotonic() - clock
        note(f"set-up: graph and image in {time.monotonic() - started:.1f} s")

        counts = {name: scaled(sides, args.scale) for name, sides in DEFAULT_COUNTS.items()}
        create = bench(
            "create: dmsnap against the kernel floor and overlay",
            counts["create"],
            {
                "dmsnap": ContainerSide(graph, image.id),
                "floor": FloorSide(graph, image, top / "floor"),
                "overlay": overlay,
            },
        )

        profile: dict[str, Any] | None = None
        listing = ""
        if args.profile:
            measured, listing = profile_creates(graph, image.id, overlay, args.profile)
            profile = asdict(measured)

        clock = time.monotonic()
        chain, import_ns = build_chain(graph, args.depth)
        setup["chain_s"] = time.monotonic() - clock
        note(f"chain: {args.depth} layers imported in {setup['chain_s']:.1f} s")
        depth = bench(
            f"depth: {args.depth} against 1",
            counts["depth"],
            {
                "deep": ContainerSide(graph, chain[-1].id),
                "shallow": ContainerSide(graph, chain[0].id),
            },
        )

        active = active_comparison(
            graph, image.id, counts["active"], ACTIVE_FEW, args.active, args.setup_budget
        )

        shown = min(5, len(import_ns))
        result: dict[str, Any] = {
            "kernel": platform.release(),
            "scratch": f"{top.parent} ({fs_type(top)})",
            "pool": {
                "data_bytes": POOL.data_bytes,
                "metadata_bytes": POOL.metadata_bytes,
                "block_bytes": POOL.block_bytes,
                "base_bytes": BASE_BYTES,
                "fstype": "ext4",
            },
            "image": {
                "files": applied.files,
                "directories": applied.directories,
                "links": applied.links,
                "bytes": applied.bytes,
            },
            "create": {side: asdict(summary) for side, summary in create.items()},
            "depth": {
                "deep": {"depth": args.depth, **asdict(depth["deep"])},
                "shallow": {"depth": 1, **asdict(depth["shallow"])},
                "import_first_ms": [ns / 1e6 for ns in import_ns[:shown]],
                "import_last_ms": [ns / 1e6 for ns in import_ns[-shown:]],
            },
            "active": active,
            "ratios": {},
            "setup": setup,
            "profile": profile,
        }
        result["ratios"] = ratios_of(result)
        return result, listing
    finally:
        clock = time.monotonic()
        try:
            if overlay is not None:
                overlay.close()
            if graph is not None:
                unmount_containers(graph)
                graph.destroy()
        finally:
            shutil.rmtree(top, ignore_errors=True)
        note(f"teardown: graph destroyed in {time.monotonic() - clock:.1f} s")
        note(f"{time.monotonic() - started:.1f} s in all")


def unmount_containers(graph: Graph) -> None:
    """Unmount every container with umount2(2) before ``destroy``, which then skips them.

    destroy unmounts with one umount(8) process per container; under TCG, with a few
    hundred mounts, that is about half a second each.  Only untimed teardown is
    shortened: the devices, the pool and the store still go through destroy.
    """
    for layer in graph.layers(LayerKind.CONTAINER):
        if layer.mount is not None and os.path.ismount(layer.mount):
            umount_syscall(layer.mount)


def ratios_of(result: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each ratio of medians with its goal and whether it is met."""
    out: dict[str, dict[str, Any]] = {}
    for key, (comparison, goal) in GOALS.items():
        numerator, denominator = key.split("/")
        sides = result[comparison]
        value = ratio(
            Summary(**_summary_fields(sides[numerator])),
            Summary(**_summary_fields(sides[denominator])),
        )
        out[key] = {"value": value, "goal": goal, "met": None if goal is None else value <= goal}
    return out


def _summary_fields(side: Mapping[str, Any]) -> dict[str, Any]:
    return {field: side[field] for field in ("n", "median_us", "p90_us")}


def _ms(us: float) -> str:
    return f"{us / 1000:>9.1f} ms"


def render(result: Mapping[str, Any]) -> str:
    """The human table of a result."""
    pool, image, active = result["pool"], result["image"], result["active"]
    depth = result["depth"]
    lines = [
        f"layering: container create (snapshot + activate + mount), kernel {result['kernel']}",
        f"pool: {pool['data_bytes'] // GiB} GiB data, {pool['metadata_bytes'] // MiB} MiB "
        f"metadata, {pool['block_bytes'] // KiB} KiB blocks; base {pool['fstype']} "
        f"{pool['base_bytes'] // MiB} MiB; scratch {result['scratch']}",
        f"image: {image['files']} files, {image['directories']} directories, "
        f"{image['links']} links, {image['bytes'] // KiB} KiB; overlay lowerdir holds the same",
        "absolute times under emulation mean little: compare the ratios",
        "",
        f"{'comparison':<11} {'side':<28} {'runs':>5} {'median':>12} {'p90':>12}",
    ]
    rows = [
        ("create", "dmsnap container", result["create"]["dmsnap"]),
        ("create", "kernel floor (same ioctls)", result["create"]["floor"]),
        ("create", "overlayfs mount", result["create"]["overlay"]),
        ("depth", f"image at depth {depth['deep']['depth']}", depth["deep"]),
        ("depth", f"image at depth {depth['shallow']['depth']}", depth["shallow"]),
        ("active", f"{active['many']['active']} containers active", active["many"]),
        ("active", f"{active['few']['active']} containers active", active["few"]),
    ]
    for comparison, side, s in rows:
        lines.append(
            f"{comparison:<11} {side:<28} {s['n']:>5} {_ms(s['median_us'])} {_ms(s['p90_us'])}"
        )

    lines += ["", f"{'ratio of medians':<28} {'measured':>9} {'goal':>8}"]
    names = {
        "dmsnap/overlay": "dmsnap / overlayfs",
        "dmsnap/floor": "dmsnap / kernel floor",
        "floor/overlay": "kernel floor / overlayfs",
        "deep/shallow": f"depth {depth['deep']['depth']} / depth 1",
        "many/few": f"{active['many']['active']} active / {active['few']['active']} active",
    }
    for key, r in result["ratios"].items():
        if r["goal"] is None:
            lines.append(f"{names[key]:<28} {r['value']:>8.2f}x {'-':>8}")
            continue
        verdict = "met" if r["met"] else "MISSED"
        lines.append(f"{names[key]:<28} {r['value']:>8.2f}x {r['goal']:>7.2f}x  {verdict}")
    if not active["complete"]:
        lines.append(
            f"NOTE: only {active['reached']} of the {active['target']} containers the goal "
            f"names were active: the ramp's {active['ramp_budget_s']:g} s budget ran out "
            "(the ratio above is for that count, not for 500)"
        )

    reference = active["reference"]
    lines.append(
        f"drift between the active phases: spawning 'true' took "
        f"{reference['few']['median_us'] / 1000:.1f} ms with {active['few']['active']} active, "
        f"{reference['many']['median_us'] / 1000:.1f} ms with {active['many']['active']} "
        f"({reference['drift']:.2f}x)"
    )

    lines += [
        "",
        f"ramp to {active['reached']} active ({active['ramp_s']:.1f} s), creates by band:",
    ]
    for band in active["ramp_bands"]:
        lines.append(
            f"  {band['active_from']:>4}-{band['active_to']:<4} active  {band['n']:>4} creates "
            f"{_ms(band['median_us'])} median {_ms(band['p90_us'])} p90"
        )
    first = ", ".join(f"{ms:.0f}" for ms in depth["import_first_ms"])
    last = ", ".join(f"{ms:.0f}" for ms in depth["import_last_ms"])
    lines.append(f"chain imports (ms): first {first}; last {last}")
    setup = result["setup"]
    lines.append(
        f"set-up: init {setup['init_s']:.1f} s, image {setup['image_s']:.1f} s, "
        f"chain {setup['chain_s']:.1f} s"
    )

    profile = result["profile"]
    if profile:
        lines += [
            "",
            f"one create, split by cProfile over {profile['runs']} creates "
            "(cumulative; indented parts are inside create_container):",
        ]
        for part in profile["parts"]:
            calls = f"{part['calls_per_create']:>5.1f} calls" if part["calls_per_create"] else ""
            lines.append(f"  {part['part']:<46} {part['ms_per_create']:>9.1f} ms  {calls}")
        lines.append(
            f"mount(2) from the process instead of mount(8) (medians): ext4 "
            f"{profile['ext4_syscall_mount_ms']:.1f} ms, overlay "
            f"{profile['overlay_syscall_mount_ms']:.1f} ms; spawning 'true' costs "
            f"{profile['spawn_true_ms']:.1f} ms"
        )
    lines.append(f"({result['elapsed_s']:.1f} s in all)")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Time container creates in the layer graph: against overlayfs mounts of "
        "the same content, on a deep chain against a shallow one, and with many containers "
        "active against few; report medians, p90s and ratios against their goals.",
        epilog="example: python3 tools/vm.py --disk 16G -- tools/vm-scratch "
        ".venv/bin/python tools/bench/layering_ops.py",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply every timed run count by this (default 1)",
    )
    parser.add_argument(
        "--depth",
        type=int,
        default=CHAIN_DEPTH,
        help=f"layers in the deep chain (default {CHAIN_DEPTH})",
    )
    parser.add_argument(
        "--active",
        type=int,
        default=ACTIVE_MANY,
        metavar="N",
        help=f"containers active for the 'many' side (default {ACTIVE_MANY})",
    )
    parser.add_argument(
        "--setup-budget",
        type=float,
        default=SETUP_BUDGET_S,
        metavar="SECONDS",
        help="stop the ramp to --active containers after this long and report the count "
        f"reached (default {SETUP_BUDGET_S:g})",
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=DEFAULT_PROFILE_RUNS,
        metavar="N",
        help="profile N more creates with cProfile: their split in the result, the top "
        f"functions on stderr (default {DEFAULT_PROFILE_RUNS}; 0: none)",
    )
    args = parser.parse_args(argv)
    if args.scale <= 0 or args.setup_budget <= 0:
        parser.error("--scale and --setup-budget must be positive")
    if args.depth < 2 or args.active <= ACTIVE_FEW or args.profile < 0:
        parser.error(f"--depth must be at least 2, --active above {ACTIVE_FEW}, --profile >= 0")
    if not os.path.exists(CONTROL_PATH) or os.geteuid() != 0:
        print(
            f"layering_ops: needs root and {CONTROL_PATH}; run it in the VM: tools/bench/run",
            file=sys.stderr,
        )
        return 2
    scratch = Path(tempfile.gettempdir())
    if fs_type(scratch) == "tmpfs":
        print(
            f"layering_ops: {scratch} is tmpfs; point TMPDIR at a disk file system "
            "(tools/vm-scratch does so in the VM)",
            file=sys.stderr,
        )
        return 2

    started = time.monotonic()
    result, listing = run(args)
    result["elapsed_s"] = time.monotonic() - started
    if listing:
        print(listing, file=sys.stderr)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
