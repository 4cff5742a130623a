"""Latency measurement shared by the CLI, the benchmarks and latency-aware pruning.

Medians of repeated calls after warm-up, timed in alternation when several things are compared,
with the spread of the repeated runs kept (`Timing`), so a figure can say how noisy it was. The
back-ends fill `GRAPH_RUNNERS` with how they make a graph runnable (an ONNX Runtime session, a torch
module, a TVM build): a pass that needs a graph's latency on a back-end looks the back-end up here by
name, at run time, and never imports it (imports flow one way, tests/test_layering.py).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from graphopt.registry import Registry


@dataclass(frozen=True)
class Timing:
    """The median of repeated runs (seconds) and their spread: the interquartile range over the median."""

    median: float
    spread: float
    runs: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Timing:
        ordered = sorted(samples)
        median = statistics.median(ordered)
        if len(ordered) >= 4:
            q1, _, q3 = statistics.quantiles(ordered, n=4)
        else:
            q1, q3 = ordered[0], ordered[-1]
        return cls(median, (q3 - q1) / median if median > 0 else 0.0, len(ordered))


def median_seconds(fn: Callable[..., Any], *args: Any, repeat: int = 5, warmup: int = 1) -> float:
    """Median wall time of `fn(*args)` over `repeat` calls, after `warmup` calls that are not timed."""
    return interleaved_timings([lambda: fn(*args)], repeat, warmup)[0].median


def interleaved_samples(calls: Sequence[Callable[[], Any]], runs: int = 20, warmup: int = 2) -> list[list[float]]:
    """Wall times (seconds) of each of `calls` over `runs` rounds, one call of each in turn per round.

    Comparing models side by side this way puts a shared machine's load on all of them alike,
    so their ratios hold where single timings would not (round i of every call ran under the same load).
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
    return times


def interleaved_timings(calls: Sequence[Callable[[], Any]], runs: int = 20, warmup: int = 2) -> list[Timing]:
    """The `Timing` of each of `calls`, timed in one loop, one call of each in turn (`interleaved_samples`)."""
    return [Timing.of(t) for t in interleaved_samples(calls, runs, warmup)]


def interleaved_medians(calls: Sequence[Callable[[], Any]], runs: int = 20, warmup: int = 2) -> list[float]:
    """Median wall time (seconds) of each of `calls`, timed as `interleaved_timings` does."""
    return [t.median for t in interleaved_timings(calls, runs, warmup)]


# A graph runner: (graph, inputs, threads) -> a callable without arguments that runs the graph once on
# those inputs (compiled, session opened: what is left is the run to time).
GraphRunner = Callable[[Any, tuple, int], Callable[[], Any]]

GRAPH_RUNNERS: Registry[GraphRunner] = Registry(
    "latency back-end", hint="the back-ends register theirs when imported: import graphopt.backends.onnx, "
                             "graphopt.backends.torch or graphopt.backends.tvm first (optimize does)")


def register_graph_runner(name: str, runner: GraphRunner, *, replace: bool = False) -> GraphRunner:
    """Make back-end `name` measurable: `runner(graph, inputs, threads)` returns a call that runs it once."""
    return GRAPH_RUNNERS.register(name, runner, replace=replace)


def graph_runner(name: str) -> GraphRunner:
    """The runner of back-end `name`, or a GraphoptError naming the known ones and how to register one."""
    return GRAPH_RUNNERS.lookup(name)
