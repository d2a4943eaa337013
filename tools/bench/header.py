#!/usr/bin/env python3
"""Cost of encoding and decoding one ``struct dm_ioctl`` header, as dmioctl does per call.

Every ioctl that :func:`dmioctl.ioctl.issue` makes encodes the device name and
uuid, packs the header into the buffer (``_HEADER.pack_into``) and unpacks the
kernel's header into a :class:`~dmioctl.ioctl.Reply`.  A Reply decodes its fields
when they are read; this reads every one, so it times the whole decode, with no
kernel involved, and runs on any host.  The zeroed buffer each call allocates is
timed on its own line, for scale.

Iterations are timed in batches (the clock's own cost would otherwise dominate a
few microseconds); the median and p90 are over the batches' per-iteration means.

Example::

    .venv/bin/python tools/bench/header.py --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# Import the dmioctl of this checkout, whatever the environment has installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from dmioctl.ioctl import _HEADER, _REQUEST_VERSION, DATA_START, INITIAL_BUFFER_SIZE, Reply
from dmioctl.uapi.dm import DMFlag

#: The per-call budget for encode + decode.
GOAL_US = 5.0

DEFAULT_ITERATIONS = 200_000
BATCH = 1000


def header_round_trip(buffer: bytearray, name: str, uuid: str) -> Callable[[], object]:
    """One call's header work: encode the name and uuid, pack, unpack the reply."""
    pack_into = _HEADER.pack_into
    size = len(buffer)
    flags = DMFlag.DM_NOFLUSH_FLAG

    def once() -> object:
        pack_into(
            buffer,
            0,
            *_REQUEST_VERSION,
            size,
            DATA_START,
            0,
            0,
            flags,
            0,
            0,
            name.encode(),
            uuid.encode(),
        )
        reply = Reply(_HEADER.unpack_from(buffer), buffer)
        return (
            reply.version,
            reply.data_size,
            reply.data_start,
            reply.target_count,
            reply.open_count,
            reply.flags,
            reply.event_nr,
            reply.dev,
            reply.name,
            reply.uuid,
        )

    return once


def buffer_allocation() -> object:
    """The zeroed buffer :func:`dmioctl.ioctl.issue` allocates for most commands."""
    return bytearray(INITIAL_BUFFER_SIZE)


def per_iteration_us(operation: Callable[[], object], iterations: int) -> list[float]:
    """Mean microseconds per call of each batch of :data:`BATCH` calls."""
    clock = time.perf_counter_ns
    batches = max(1, iterations // BATCH)
    means: list[float] = []
    for _ in range(batches):
        started = clock()
        for _ in range(BATCH):
            operation()
        means.append((clock() - started) / BATCH / 1000)
    return means


def summary(means: Sequence[float]) -> dict[str, float | int]:
    deciles = statistics.quantiles(means, n=10, method="inclusive") if len(means) > 1 else means
    return {
        "iterations": len(means) * BATCH,
        "median_us": statistics.median(means),
        "p90_us": deciles[-1],
    }


def measure(iterations: int) -> dict[str, Any]:
    buffer = bytearray(INITIAL_BUFFER_SIZE)
    round_trip = header_round_trip(buffer, "dmbench-header-device", "")
    # Warm up, so that the first batch pays for no lazy initialisation.
    per_iteration_us(round_trip, BATCH * 5)
    header = summary(per_iteration_us(round_trip, iterations))
    allocation = summary(per_iteration_us(buffer_allocation, iterations // 4))
    return {
        "python": sys.version.split()[0],
        "encode_decode": header,
        "buffer_allocation": allocation,
        "goal_us": GOAL_US,
        "within_goal": header["median_us"] <= GOAL_US,
    }


def render(result: dict[str, Any]) -> str:
    header = result["encode_decode"]
    allocation = result["buffer_allocation"]
    verdict = "within" if result["within_goal"] else "OVER"
    return "\n".join(
        [
            f"dm_ioctl header, Python {result['python']}, on this host",
            f"  encode+decode    median {header['median_us']:.2f} us, "
            f"p90 {header['p90_us']:.2f} us over {header['iterations']} calls "
            f"({verdict} the {result['goal_us']:g} us goal)",
            f"  {INITIAL_BUFFER_SIZE} B buffer    median {allocation['median_us']:.2f} us, "
            f"p90 {allocation['p90_us']:.2f} us (allocated per call, for scale)",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Time dmioctl's per-call dm_ioctl header encode+decode (no kernel needed).",
        epilog="example: .venv/bin/python tools/bench/header.py --iterations 50000",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--iterations",
        type=int,
        default=DEFAULT_ITERATIONS,
        help=f"encode+decode calls to time (default {DEFAULT_ITERATIONS})",
    )
    args = parser.parse_args(argv)
    if args.iterations < BATCH:
        parser.error(f"--iterations must be at least {BATCH}")
    result = measure(args.iterations)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
