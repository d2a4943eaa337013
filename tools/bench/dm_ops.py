#!/usr/bin/env python3
"""Cost of device-mapper operations: dmioctl against libdevmapper and dmsetup.

Needs a kernel with device-mapper and root; ``tools/bench/run`` starts it inside
the project's VM.  Three sides do the same work on the same kernel:

- **dmioctl**: :class:`dmioctl.DeviceMapper`, in this process;
- **libdevmapper**: ``libdevmapper.so.1.02.1`` through ctypes, in this process
  (``dm_task_create`` / ``dm_task_set_name`` / ``dm_task_run`` / ``dm_task_destroy``);
- **dmsetup**: one ``dmsetup`` process per step.

Two operations are timed:

- **status**: one DM_TABLE_STATUS on an existing device with a zero target, the
  status lines read back into Python values;
- **cycle**: create, load a zero target of 2048 sectors, resume, status, remove.

Device nodes are managed on every side, as each does by default where no udevd
runs: dmioctl and libdevmapper make and unlink ``/dev/mapper/<name>`` themselves,
and so does dmsetup.  libdevmapper is loaded with ``DM_DISABLE_UDEV=1`` and udev
synchronisation off, and is given no udev cookies, so it never waits for udev.

Under emulation absolute times mean little: the sides run interleaved in rounds
(A B C, then B C A, ...) so that drift reaches all of them alike, and the result
that matters is the ratio between sides measured in the same run.

Example::

    python3 tools/vm.py -- .venv/bin/python tools/bench/dm_ops.py --json
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
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

# Import the dmioctl of this checkout, whatever the environment has installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dmioctl import DeviceMapper, DMError, NoSuchDevice, Target
from dmioctl.control import CONTROL_PATH

#: The soname Debian's libdevmapper1.02.1 package installs.
LIBDEVMAPPER = "libdevmapper.so.1.02.1"

#: ``enum`` of task types in libdevmapper.h, in header order (DM_DEVICE_CREATE = 0).
DM_DEVICE_CREATE = 0
DM_DEVICE_RELOAD = 1
DM_DEVICE_REMOVE = 2
DM_DEVICE_RESUME = 5
DM_DEVICE_STATUS = 10

#: The table every cycle loads: a zero target of 2048 sectors (1 MiB).
ZERO_TABLE = (0, 2048, "zero", "")

SIDES = ("dmioctl", "libdevmapper", "dmsetup")

#: Default timed runs per side.  Under TCG a status costs about 1 ms in-process, a
#: cycle about 50 ms in-process, and each dmsetup process about half a second; these
#: keep a whole run, warm-ups included, under a minute there.
DEFAULT_COUNTS: Mapping[str, Mapping[str, int]] = {
    "status": {"dmioctl": 1000, "libdevmapper": 1000, "dmsetup": 15},
    "cycle": {"dmioctl": 100, "libdevmapper": 100, "dmsetup": 8},
}
#: Untimed runs per side before timing starts, as a share of the timed runs (at least one).
WARMUP_SHARE = 0.05

#: A status line as every side reports it: start, length, target type, parameters.
StatusLine = tuple[int, int, str, str]


# Statistics and scheduling: pure helpers


@dataclass(frozen=True)
class Summary:
    """Median and 90th percentile of one side's timings, in microseconds."""

    n: int
    median_us: float
    p90_us: float


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, interpolating linearly between ranks."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile {q} is not within 0..1")
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(samples_ns: Sequence[int]) -> Summary:
    """Median and p90 of timings given in nanoseconds."""
    return Summary(
        n=len(samples_ns),
        median_us=percentile(samples_ns, 0.5) / 1000,
        p90_us=percentile(samples_ns, 0.9) / 1000,
    )


def interleave(counts: Mapping[str, int]) -> list[str]:
    """An order that runs each side ``counts[side]`` times, spread evenly over rounds.

    The busiest side runs once per round; a side with fewer runs is spread
    evenly among the rounds.  Each round starts one side later than the round
    before (A B C, B C A, C A B...), so no side always follows the same one.
    """
    if any(n < 0 for n in counts.values()):
        raise ValueError(f"negative run count in {dict(counts)}")
    sides = list(counts)
    rounds = max(counts.values(), default=0)
    order: list[str] = []
    for r in range(rounds):
        for i in range(len(sides)):
            side = sides[(r + i) % len(sides)]
            n = counts[side]
            if (r + 1) * n // rounds > r * n // rounds:
                order.append(side)
    return order


def ratio(numerator: Summary, denominator: Summary) -> float:
    """How many times ``numerator``'s median is ``denominator``'s."""
    return numerator.median_us / denominator.median_us


def scaled(counts: Mapping[str, int], scale: float) -> dict[str, int]:
    """``counts`` multiplied by ``scale``, at least one run each."""
    return {side: max(1, round(n * scale)) for side, n in counts.items()}


# The three sides


class Side(Protocol):
    """One way of driving device-mapper."""

    def status(self, name: str) -> object:
        """DM_TABLE_STATUS on ``name``, the status lines read into Python values."""
        ...

    def status_lines(self, name: str) -> list[StatusLine]:
        """The same status, normalised so that the sides can be compared."""
        ...

    def cycle(self, name: str) -> None:
        """Create ``name``, load the zero table, resume, status, remove."""
        ...

    def close(self) -> None: ...


class DmioctlSide:
    """dmioctl in this process."""

    def __init__(self) -> None:
        self.dm = DeviceMapper(manage_nodes=True)
        self.table = [Target(*ZERO_TABLE)]

    def status(self, name: str) -> list[Target]:
        return self.dm.status(name)

    def status_lines(self, name: str) -> list[StatusLine]:
        return [(t.start, t.length, t.target_type, t.params) for t in self.dm.status(name)]

    def cycle(self, name: str) -> None:
        dm = self.dm
        dm.create(name)
        try:
            dm.load_table(name, self.table)
            dm.resume(name)
            dm.status(name)
        except BaseException:
            with contextlib.suppress(DMError):
                dm.remove(name)
            raise
        dm.remove(name)

    def close(self) -> None:
        self.dm.close()


class LibdmError(Exception):
    """A libdevmapper call failed."""


class LibdmSide:
    """libdevmapper through ctypes, in this process, without udev."""

    def __init__(self, soname: str = LIBDEVMAPPER) -> None:
        # Read by the library when it decides whether udev is in charge of nodes.
        os.environ["DM_DISABLE_UDEV"] = "1"
        try:
            lib = ctypes.CDLL(soname)
        except OSError as exc:
            raise LibdmError(f"cannot load {soname}: {exc} (install libdevmapper1.02.1)") from exc
        vp, u64p, charpp = ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64), ctypes.c_void_p
        signatures: dict[str, tuple[Any, list[Any]]] = {
            "dm_task_create": (vp, [ctypes.c_int]),
            "dm_task_destroy": (None, [vp]),
            "dm_task_set_name": (ctypes.c_int, [vp, ctypes.c_char_p]),
            "dm_task_add_target": (
                ctypes.c_int,
                [vp, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_char_p, ctypes.c_char_p],
            ),
            "dm_task_run": (ctypes.c_int, [vp]),
            "dm_task_get_errno": (ctypes.c_int, [vp]),
            "dm_get_next_target": (vp, [vp, vp, u64p, u64p, charpp, charpp]),
            "dm_task_update_nodes": (None, []),
            "dm_udev_set_sync_support": (None, [ctypes.c_int]),
            "dm_udev_get_sync_support": (ctypes.c_int, []),
            "dm_get_library_version": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_size_t]),
            "dm_lib_release": (None, []),
        }
        for symbol, (restype, argtypes) in signatures.items():
            function = getattr(lib, symbol)
            function.restype = restype
            function.argtypes = argtypes
        lib.dm_udev_set_sync_support(0)
        if lib.dm_udev_get_sync_support():
            raise LibdmError("libdevmapper kept udev synchronisation on")
        self.lib = lib
        # Out-parameters of dm_get_next_target, reused by every status call.
        self._start = ctypes.c_uint64()
        self._length = ctypes.c_uint64()
        self._type = ctypes.c_char_p()
        self._params = ctypes.c_char_p()

    def version(self) -> str:
        buffer = ctypes.create_string_buffer(64)
        self.lib.dm_get_library_version(buffer, len(buffer))
        return buffer.value.decode()

    def _task(self, task_type: int, name: str) -> int:
        dmt: int | None = self.lib.dm_task_create(task_type)
        if not dmt:
            raise LibdmError(f"dm_task_create({task_type}) failed")
        if not self.lib.dm_task_set_name(dmt, name.encode()):
            self.lib.dm_task_destroy(dmt)
            raise LibdmError(f"dm_task_set_name({name!r}) failed")
        return dmt

    def _run(self, dmt: int, what: str, name: str) -> None:
        if not self.lib.dm_task_run(dmt):
            err = self.lib.dm_task_get_errno(dmt)
            raise LibdmError(f"libdevmapper {what} {name!r} failed: {os.strerror(err)}")

    def _simple(self, task_type: int, what: str, name: str) -> None:
        """A task that only names the device: create, resume, remove; then the nodes."""
        dmt = self._task(task_type, name)
        try:
            self._run(dmt, what, name)
        finally:
            self.lib.dm_task_destroy(dmt)
        # Without a cookie the library queues node changes until asked to apply them.
        self.lib.dm_task_update_nodes()

    def status(self, name: str) -> list[StatusLine]:
        lib = self.lib
        dmt = self._task(DM_DEVICE_STATUS, name)
        try:
            self._run(dmt, "status", name)
            start, length, ttype, params = self._start, self._length, self._type, self._params
            refs = (ctypes.byref(start), ctypes.byref(length))
            out = (ctypes.byref(ttype), ctypes.byref(params))
            lines: list[StatusLine] = []
            following: int | None = None
            while True:
                following = lib.dm_get_next_target(dmt, following, *refs, *out)
                if ttype.value is None:
                    break
                lines.append(
                    (
                        start.value,
                        length.value,
                        ttype.value.decode(),
                        (params.value or b"").decode(),
                    )
                )
                if not following:
                    break
            return lines
        finally:
            lib.dm_task_destroy(dmt)

    def status_lines(self, name: str) -> list[StatusLine]:
        return self.status(name)

    def load(self, name: str) -> None:
        dmt = self._task(DM_DEVICE_RELOAD, name)
        try:
            start, length, target_type, params = ZERO_TABLE
            if not self.lib.dm_task_add_target(
                dmt, start, length, target_type.encode(), params.encode()
            ):
                raise LibdmError(f"dm_task_add_target on {name!r} failed")
            self._run(dmt, "reload", name)
        finally:
            self.lib.dm_task_destroy(dmt)

    def cycle(self, name: str) -> None:
        self._simple(DM_DEVICE_CREATE, "create", name)
        try:
            self.load(name)
            self._simple(DM_DEVICE_RESUME, "resume", name)
            self.status(name)
        except BaseException:
            with contextlib.suppress(LibdmError):
                self._simple(DM_DEVICE_REMOVE, "remove", name)
            raise
        self._simple(DM_DEVICE_REMOVE, "remove", name)

    def close(self) -> None:
        self.lib.dm_lib_release()


class DmsetupSide:
    """One ``dmsetup`` process per step, with ``DM_DISABLE_UDEV=1``."""

    def __init__(self) -> None:
        path = shutil.which("dmsetup")
        if path is None:
            raise FileNotFoundError("dmsetup is not on PATH (install the dmsetup package)")
        self.path = path
        self.env = {**os.environ, "DM_DISABLE_UDEV": "1"}
        start, length, target_type, params = ZERO_TABLE
        self.table = f"{start} {length} {target_type} {params}".rstrip()

    def _run(self, *args: str) -> str:
        result = subprocess.run(
            [self.path, *args], env=self.env, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"dmsetup {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def status(self, name: str) -> list[StatusLine]:
        lines: list[StatusLine] = []
        for line in self._run("status", name).splitlines():
            start, length, target_type, *params = line.split(" ", 3)
            lines.append((int(start), int(length), target_type, params[0] if params else ""))
        return lines

    def status_lines(self, name: str) -> list[StatusLine]:
        return self.status(name)

    def cycle(self, name: str) -> None:
        self._run("create", name, "--notable")
        try:
            self._run("load", name, "--table", self.table)
            self._run("resume", name)
            self.status(name)
        except BaseException:
            with contextlib.suppress(RuntimeError):
                self._run("remove", name)
            raise
        self._run("remove", name)

    def close(self) -> None:
        pass


# Timing


def timed_runs(
    order: Sequence[str], operations: Mapping[str, Callable[[], object]]
) -> dict[str, list[int]]:
    """Run ``operations[side]`` for each side in ``order``; nanoseconds per run, by side."""
    samples: dict[str, list[int]] = {side: [] for side in operations}
    clock = time.perf_counter_ns
    for side in order:
        operation = operations[side]
        started = clock()
        operation()
        samples[side].append(clock() - started)
    return samples


def bench(
    label: str,
    counts: Mapping[str, int],
    operations: Mapping[str, Callable[[], object]],
) -> dict[str, Summary]:
    """Warm every side up, then time them interleaved; a summary per side."""
    warmup = {side: max(1, round(n * WARMUP_SHARE)) for side, n in counts.items()}
    started = time.monotonic()
    timed_runs(interleave(warmup), operations)
    samples = timed_runs(interleave(counts), operations)
    elapsed = time.monotonic() - started
    runs = ", ".join(f"{side} {n}" for side, n in counts.items())
    print(f"bench: {label}: {runs} timed runs in {elapsed:.1f} s", file=sys.stderr, flush=True)
    return {side: summarize(samples[side]) for side in operations}


def with_ratios(summaries: Mapping[str, Summary]) -> dict[str, Any]:
    """The JSON form of one operation: each side, and the two ratios of medians."""
    return {
        **{side: asdict(summary) for side, summary in summaries.items()},
        "ratios": {
            "dmioctl/libdevmapper": ratio(summaries["dmioctl"], summaries["libdevmapper"]),
            "dmsetup/dmioctl": ratio(summaries["dmsetup"], summaries["dmioctl"]),
        },
    }


def render(result: Mapping[str, Any]) -> str:
    """The human table of a result."""
    lines = [
        f"device-mapper operations, kernel {result['kernel']}, "
        f"dm interface {result['dm_interface']}, libdevmapper {result['libdevmapper']}",
        f"nodes: {result['nodes']}",
        f"dmsetup cycle: {result['dmsetup_cycle']}",
        "absolute times under emulation mean little: compare the ratios",
        "",
        f"{'operation':<10} {'side':<14} {'runs':>6} {'median':>12} {'p90':>12}",
    ]
    for op, unit, divisor in (("status", "us", 1.0), ("cycle", "ms", 1000.0)):
        for side in SIDES:
            s = result[op][side]
            lines.append(
                f"{op:<10} {side:<14} {s['n']:>6} "
                f"{s['median_us'] / divisor:>9.1f} {unit} {s['p90_us'] / divisor:>9.1f} {unit}"
            )
    lines.append("")
    lines.append("ratios of medians     status    cycle")
    for key in ("dmioctl/libdevmapper", "dmsetup/dmioctl"):
        lines.append(
            f"{key:<21} {result['status']['ratios'][key]:>6.2f}x  "
            f"{result['cycle']['ratios'][key]:>6.2f}x"
        )
    lines.append(f"({result['elapsed_s']:.1f} s in all)")
    return "\n".join(lines)


def profile_status(dm: DmioctlSide, name: str, runs: int) -> str:
    """cProfile of ``runs`` dmioctl status calls: the top functions by own time."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(runs):
        dm.status(name)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(25)
    return out.getvalue()


def sweep(prefix: str) -> list[str]:
    """Remove every device whose name starts with ``prefix``; the names removed."""
    removed: list[str] = []
    with DeviceMapper(manage_nodes=True) as dm:
        for device in dm.list_devices():
            if device.name.startswith(prefix):
                with contextlib.suppress(NoSuchDevice):
                    dm.remove(device.name, retries=5)
                removed.append(device.name)
    return removed


def check_same_status(sides: Mapping[str, Side], name: str) -> None:
    """Make sure every side reads the same status from ``name`` before timing it."""
    seen = {side_name: side.status_lines(name) for side_name, side in sides.items()}
    if len({tuple(lines) for lines in seen.values()}) != 1:
        raise RuntimeError(f"the sides disagree on the status of {name!r}: {seen}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Set up the sides and the status device, time both operations, clean up."""
    prefix = f"dmbench-{os.getpid()}-{secrets.token_hex(3)}-"
    status_device = f"{prefix}status"
    sides: dict[str, Side] = {}
    started = time.monotonic()
    try:
        dmioctl_side = sides["dmioctl"] = DmioctlSide()
        libdm_side = sides["libdevmapper"] = LibdmSide()
        sides["dmsetup"] = DmsetupSide()
        dm = dmioctl_side.dm
        dm.create(status_device)
        dm.load_table(status_device, [Target(*ZERO_TABLE)])
        dm.resume(status_device)
        check_same_status(sides, status_device)

        status = bench(
            "status",
            scaled(DEFAULT_COUNTS["status"], args.scale),
            {
                side_name: functools.partial(side.status, status_device)
                for side_name, side in sides.items()
            },
        )

        serial = {side_name: 0 for side_name in sides}

        def cycle_of(side_name: str) -> Callable[[], None]:
            side = sides[side_name]

            def one_cycle() -> None:
                serial[side_name] += 1
                side.cycle(f"{prefix}{side_name}-{serial[side_name]}")

            return one_cycle

        cycle = bench(
            "cycle",
            scaled(DEFAULT_COUNTS["cycle"], args.scale),
            {side_name: cycle_of(side_name) for side_name in sides},
        )

        profile = profile_status(dmioctl_side, status_device, args.profile) if args.profile else ""
        return {
            "kernel": platform.release(),
            "dm_interface": ".".join(map(str, dm.version())),
            "libdevmapper": libdm_side.version(),
            "nodes": "managed on every side (no udev): dmioctl and libdevmapper mknod/unlink "
            "/dev/mapper/<name> in-process, dmsetup does the same",
            "dmsetup_cycle": "5 processes: create --notable, load --table, resume, status, remove",
            "status": with_ratios(status),
            "cycle": with_ratios(cycle),
            "elapsed_s": time.monotonic() - started,
            "profile": profile,
        }
    finally:
        for side in sides.values():
            side.close()
        leftovers = sweep(prefix)
        leftovers = [name for name in leftovers if name != status_device]
        if leftovers:
            print(f"bench: removed leftover devices: {leftovers}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Time device-mapper status and create..remove cycles: dmioctl, "
        "libdevmapper via ctypes and dmsetup, interleaved; report medians, p90s and ratios.",
        epilog="example: python3 tools/vm.py -- .venv/bin/python tools/bench/dm_ops.py",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply every run count by this (default 1: about a minute under TCG)",
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="also profile N dmioctl status calls with cProfile (printed on stderr)",
    )
    args = parser.parse_args(argv)
    if args.scale <= 0:
        parser.error("--scale must be positive")
    if not os.path.exists(CONTROL_PATH) or os.geteuid() != 0:
        print(
            f"dm_ops: needs root and {CONTROL_PATH}; run it in the VM: tools/bench/run",
            file=sys.stderr,
        )
        return 2

    result = run(args)
    profile = result.pop("profile")
    if profile:
        print(profile, file=sys.stderr)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
