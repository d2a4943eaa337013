"""The pure helpers of the benchmarks in tools/bench: statistics, scheduling, output."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "tools" / "bench"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


dm_ops = load("dm_ops")
header = load("header")


def test_percentile_interpolates_between_ranks() -> None:
    assert dm_ops.percentile([4, 1, 3, 2], 0.5) == 2.5
    assert dm_ops.percentile([10, 20, 30, 40, 50, 60, 70, 80, 90, 100], 0.9) == 91.0
    assert dm_ops.percentile([7], 0.9) == 7


@pytest.mark.parametrize(("values", "q"), [([], 0.5), ([1.0], 1.5)])
def test_percentile_rejects_bad_input(values: list[float], q: float) -> None:
    with pytest.raises(ValueError):
        dm_ops.percentile(values, q)


def test_summarize_reports_microseconds() -> None:
    summary = dm_ops.summarize([1000, 2000, 3000])
    assert summary == dm_ops.Summary(n=3, median_us=2.0, p90_us=2.8)


def test_interleave_equal_counts_rotates_the_first_side() -> None:
    order = dm_ops.interleave({"a": 3, "b": 3, "c": 3})
    assert "".join(order) == "abcbcacab"


def test_interleave_spreads_a_rarer_side_evenly() -> None:
    order = dm_ops.interleave({"a": 12, "b": 12, "c": 3})
    assert Counter(order) == {"a": 12, "b": 12, "c": 3}
    positions = [i for i, side in enumerate(order) if side == "c"]
    gaps = [later - earlier for earlier, later in itertools.pairwise(positions)]
    assert min(gaps) >= 6


def test_interleave_of_nothing_is_empty() -> None:
    assert dm_ops.interleave({}) == []
    with pytest.raises(ValueError):
        dm_ops.interleave({"a": -1})


def test_ratio_and_scaled() -> None:
    fast = dm_ops.Summary(n=1, median_us=2.0, p90_us=3.0)
    slow = dm_ops.Summary(n=1, median_us=5.0, p90_us=9.0)
    assert dm_ops.ratio(slow, fast) == 2.5
    assert dm_ops.scaled({"a": 1000, "b": 15}, 0.01) == {"a": 10, "b": 1}


def test_render_shows_every_side_and_both_ratios() -> None:
    side = {"n": 3, "median_us": 1500.0, "p90_us": 2500.0}
    operation = {
        **{name: side for name in dm_ops.SIDES},
        "ratios": {"dmioctl/libdevmapper": 1.25, "dmsetup/dmioctl": 40.0},
    }
    text = dm_ops.render(
        {
            "kernel": "6.1.0",
            "dm_interface": "4.47.0",
            "libdevmapper": "1.02.185",
            "nodes": "managed",
            "dmsetup_cycle": "5 processes",
            "status": operation,
            "cycle": operation,
            "elapsed_s": 12.0,
        }
    )
    assert "status     libdevmapper        3    1500.0 us    2500.0 us" in text
    assert "cycle      dmsetup             3       1.5 ms       2.5 ms" in text
    assert "dmioctl/libdevmapper    1.25x    1.25x" in text
    assert "dmsetup/dmioctl        40.00x   40.00x" in text


def test_header_benchmark_runs_and_reports_the_goal() -> None:
    result = header.measure(header.BATCH)
    assert result["encode_decode"]["iterations"] == header.BATCH
    assert result["encode_decode"]["median_us"] > 0
    assert "goal" in header.render(result)
