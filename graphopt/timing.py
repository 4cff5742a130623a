"""Latency measurement shared by the CLI and the benchmarks: median of repeated calls after warm-up."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Sequence


def median_seconds(fn: Callable[..., Any], *args: Any, repeat: int = 5, warmup: int = 1) -> float:
    """Median wall time of `fn(*args)` over `repeat` calls, after `warmup` calls that are not timed."""
    for _ in range(warmup):
        fn(*args)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_medians(calls: Sequence[Callable[[], Any]], runs: int = 20, warmup: int = 2) -> list[float]:
    """Median wall time (seconds) of each of `calls`, timed in one loop, one call of each in turn.

    Comparing models side by side this way puts a shared machine's load on all of them alike,
    so their ratios hold where single timings would not.
    """
    for _ in range(warmup):
        for call in calls:
            call()
    times: list[list[float]] = [[] for _ in calls]
    for _ in range(runs):
        for index, call in enumerate(calls):
            start = time.perf_counter()
            call()
            times[index].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]
