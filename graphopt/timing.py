"""Latency measurement shared by the CLI and the benchmarks: median of repeated calls after warm-up."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable


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
