"""Latency budgets for `prune{target_latency=...}`: measure, allocate channels by time, check on the back-end.

1. Measure: the lookup table of the graph's dense nodes (latency_table.py, cached) and the dense
   graph's own time on the back-end give the cost model (latency_model.py).
2. Allocate (HALP's greedy knapsack): from full width, repeatedly take one step (the group's fast
   multiple) off the group that loses the least importance per predicted second saved, until the
   prediction meets the goal. The importance a step loses is -log of the share of the group's
   criterion scores it leaves (a group keeping 90 % of its importance loses 0.105): scale-free across
   groups and criteria, and steep near the bottom, so that no group is emptied for a little time (a
   layer's share of the signal multiplies through the layers after it, hence the log; with the
   scores over the group's mean instead, as `scope="global"` ranks units, ResNet-50 with random
   weights lost whole residual streams down to 16 channels).
3. Check (done by the pass, which owns removal): the pruned graph is measured against the dense one,
   timed in alternation; off the target by more than LATENCY_TOLERANCE, the goal is re-aimed by
   target / measured and allocated again, a bounded number of times.

Back-ends are looked up by name (`graphopt.timing.GRAPH_RUNNERS`, filled when a back-end is
imported); `register_measurer` replaces real timing by a function of the graph (tests, simulators).
backend="tvm" measures its table on ONNX Runtime: building one TVM kernel per grid point takes
seconds each (hundreds of builds per model); its whole-graph times, the dense one and the closed
loop's, are TVM's (default schedules).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from graphopt.analysis.channels import ChannelGroup
from graphopt.errors import GraphoptError
from graphopt.ir.graph import Graph
from graphopt.timing import GRAPH_RUNNERS, Timing, graph_runner, interleaved_timings

from .latency_model import LatencyModel, latency_signatures
from .latency_table import LatencyCache, LatencyTable, Measurer, backend_measurer, build_table

LATENCY_TOLERANCE = 0.10  # the measured latency lands within this of the target (relative)
LATENCY_ATTEMPTS = 4  # allocations (and measurements of the pruned graph) at most
KNOWN_BACKENDS = ("onnx", "torch", "tvm")
CHECK_RUNS = 20  # alternating runs of the dense and pruned graphs per check

# name -> (threads -> Measurer): graphs timed by a function instead of a back-end (deterministic tests)
MEASURERS: dict[str, Callable[[int], Measurer]] = {}


def register_measurer(name: str, factory: Callable[[int], Measurer]) -> None:
    """Time graphs of latency back-end `name` with `factory(threads)(graph, inputs) -> Timing` (no runner)."""
    MEASURERS[name] = factory


def known_backends() -> list[str]:
    return sorted({*KNOWN_BACKENDS, *GRAPH_RUNNERS.keys(), *MEASURERS})


@dataclass
class LatencyReport:
    """Asked, predicted and measured latency of a latency-budgeted prune, and how it was measured."""

    backend: str
    threads: int
    batch: int
    asked: float  # the fraction of the dense latency asked to keep
    dense_seconds: float  # measured, in the final check
    pruned_seconds: float  # measured, in the final check
    predicted: float  # the cost model's fraction for the final widths
    noise: float  # the largest spread (IQR / median) of the final check's two timings
    table_noise: float  # the largest spread of the table's points
    attempts: int
    table_points: int
    table_measured: int  # points timed in this run (the rest came from the cache)
    table_seconds: float
    cache: str
    history: list[tuple[float, float]] = field(default_factory=list)  # (predicted, measured) per attempt
    why: list[str] = field(default_factory=list)

    @property
    def measured(self) -> float:
        return self.pruned_seconds / self.dense_seconds

    def summary(self) -> str:
        lines = [f"latency on {self.backend} (batch {self.batch}, {self.threads} thread(s)): asked "
                 f"{self.asked:.0%}, predicted {self.predicted:.1%}, measured {self.measured:.1%} "
                 f"({self.dense_seconds * 1e3:.2f} -> {self.pruned_seconds * 1e3:.2f} ms, noise "
                 f"{self.noise:.1%}) after {self.attempts} allocation(s); table: {self.table_points} points, "
                 f"{self.table_measured} measured in {self.table_seconds:.1f} s, point noise up to "
                 f"{self.table_noise:.1%}, cache {self.cache}"]
        lines += [f"    latency: {w}" for w in self.why]
        return "\n".join(lines)


def batch_inputs(graph: Graph, inputs: Sequence[Any], batch: int) -> tuple:
    """`inputs` at `batch` along axis 0 of the inputs whose axis 0 is symbolic (repeated or cut), with the
    symbols' bindings."""
    out, env = [], {}
    for value, x in zip(graph.inputs, inputs):
        if isinstance(x, torch.Tensor) and value.rank and not isinstance(value.shape[0], int) \
                and not getattr(value.shape[0], "is_Integer", False):
            reps = -(-batch // x.shape[0])
            x = x.repeat(reps, *([1] * (x.dim() - 1)))[:batch]
            for sym in value.shape[0].free_symbols:
                env[str(sym)] = batch
        out.append(x)
    return tuple(out), env


class LatencyBudget:
    """The measured cost model of one graph on one back-end, the allocation, and the pruned graph's check."""

    def __init__(self, graph: Graph, groups: Sequence[ChannelGroup], bindings: dict[str, int],
                 example_inputs: Sequence[Any] | None, *, backend: str, threads: int, batch: int,
                 cache_dir: str | None, max_measurements: int, progress: bool = True) -> None:
        if example_inputs is None:
            raise GraphoptError("prune: target_latency measures the graph on its back-end: give example inputs "
                                "(to PassManager.run or optimize)")
        self.backend, self.threads, self.batch = backend, threads, batch
        self.inputs, batch_env = batch_inputs(graph, example_inputs, batch)
        self.env = {**bindings, **batch_env}
        self.measure = self._measurer()
        table_backend = "onnx" if backend == "tvm" and backend not in MEASURERS else backend
        table_measure = self.measure if table_backend == backend else _measurer_for(table_backend, threads)
        self.cache = None if cache_dir == "" else LatencyCache(cache_dir, table_backend, threads)
        self.signatures = latency_signatures(graph, groups, self.env)
        self.table: LatencyTable = build_table(list(self.signatures.values()), table_measure, self.cache,
                                               max_measurements=max_measurements, progress=progress)
        self.dense = self.time(graph)
        self.model = LatencyModel(graph, groups, self.env, self.table, self.signatures, self.dense.median)

    def _measurer(self) -> Measurer:
        return _measurer_for(self.backend, self.threads)

    def time(self, graph: Graph) -> Timing:
        """`graph`'s time on the back-end: CHECK_RUNS runs (its whole-graph time calibrates the cost model)."""
        if self.backend in MEASURERS:
            return self.measure(graph, self.inputs)
        return interleaved_timings([graph_runner(self.backend)(graph, self.inputs, self.threads)], CHECK_RUNS, 3)[0]

    def check(self, dense: Graph, pruned: Graph) -> tuple[Timing, Timing]:
        """The dense and pruned graphs' timings, measured in alternation (a function of the graph: one each)."""
        if self.backend in MEASURERS:
            return self.measure(dense, self.inputs), self.measure(pruned, self.inputs)
        runner = graph_runner(self.backend)
        calls = [runner(dense, self.inputs, self.threads), runner(pruned, self.inputs, self.threads)]
        first, second = interleaved_timings(calls, CHECK_RUNS, warmup=3)
        return first, second

    def allocate(self, groups: Sequence[ChannelGroup], scores: dict[int, np.ndarray], fraction: float, *,
                 floor: dict[int, int], next_down: Callable[[ChannelGroup, int], int | None],
                 mask: Callable[[ChannelGroup, int], np.ndarray]) -> dict[int, int]:
        """Units to keep per group so that the predicted latency is at most `fraction` of the dense model's.

        Greedy knapsack: each step removes the next fast multiple of the group with the least normalised
        importance lost per predicted second saved. Stops at the goal, or when every group is at its floor
        (then the caller sees the prediction above the goal).
        """
        model = self.model
        goal = fraction * model.before
        keeps = {g.id: g.num_units for g in groups}
        model.set_all({g.id: mask(g, g.num_units) for g in groups})
        # lost[g][k]: -log of the importance share left when the k least important units are gone
        lost = {}
        for g in groups:
            s = np.sort(np.maximum(scores[g.id], 0.0))
            total = s.sum()
            if total <= 0:
                s, total = np.ones_like(s), float(s.size)
            left = np.clip(1.0 - np.concatenate([[0.0], np.cumsum(s)]) / total, 1e-12, 1.0)
            lost[g.id] = -np.log(left)
        by_id = {g.id: g for g in groups}
        neighbours: dict[int, set[int]] = {g.id: set() for g in groups}
        owners: dict[int, list[int]] = {}
        for g in groups:
            for i in model.by_group.get(g.id, ()):
                owners.setdefault(i, []).append(g.id)
        for ids in owners.values():
            for gid in ids:
                neighbours[gid].update(ids)

        def candidate(g: ChannelGroup) -> tuple | None:
            n = next_down(g, keeps[g.id])
            if n is None or n < floor[g.id]:
                return None
            saved = -model.delta(g.id, mask(g, n))
            cost = lost[g.id][g.num_units - n] - lost[g.id][g.num_units - keeps[g.id]]
            return (saved <= 0, cost / saved if saved > 0 else -saved, n)

        options = {g.id: candidate(g) for g in groups}
        while model.total > goal:
            ready = [(c, gid) for gid, c in options.items() if c is not None]
            if not ready:
                break
            (_, _, n), gid = min(ready)
            model.apply(gid, mask(by_id[gid], n))
            keeps[gid] = n
            for other in neighbours[gid] | {gid}:
                options[other] = candidate(by_id[other])
        return keeps


def _measurer_for(backend: str, threads: int) -> Measurer:
    if backend in MEASURERS:
        return MEASURERS[backend](threads)
    return backend_measurer(backend, threads)
