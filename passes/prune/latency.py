"""Latency budgets for `prune{target_latency=...}`: measure, allocate channels by time, check on the back-end.

1. Measure: the lookup table of the graph's dense nodes (latency_table.py, cached) and the dense
   graph's own time on the back-end give the cost model (latency_model.py).
2. Allocate (HALP's greedy knapsack): from full width, repeatedly take one step (the group's fast
   multiple) off the group that loses the least importance per predicted second saved, until the
   prediction meets the goal. The importance a step loses is -log of the share of the group's
   criterion scores it leaves (a group keeping 90 % of its importance loses 0.105), once for every
   dense node that reads or writes the group: scale-free across groups and criteria, steep near the
   bottom so that no group is emptied for a little time, and a residual stream, which every block of
   its stage reads and writes, costs what it costs all of them (a layer's share of the signal
   multiplies through the layers after it, hence the log). Measured on the zoo's ResNet-50 at 50 %
   latency (bench_prune_latency.py, output error against a MACs budget of the same latency, 0.74-0.77):
   with the scores over the group's mean instead, as `scope="global"` ranks units, the streams went
   down to 16 channels; counted once per group, the streams lost 35-70 % while the blocks' inner
   groups kept nearly all (0.91); once per reading node 0.69, per reading or writing node 0.65.
3. Check (done by the pass, which owns removal): the pruned graph is measured against the dense one,
   timed in alternation; off the target by more than LATENCY_TOLERANCE, the goal is re-aimed (by
   target / measured, then by the secant through the last two aims and measurements) and allocated
   again, at most LATENCY_ATTEMPTS times.

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
from graphopt.timing import GRAPH_RUNNERS, Timing, graph_runner, interleaved_samples, interleaved_timings

from .latency_model import LatencyModel, latency_signatures
from .latency_table import LatencyCache, LatencyTable, Measurer, backend_measurer, build_table
from .safety import removed_where_possible
from .widths import RemovalMasks, Widths

LATENCY_TOLERANCE = 0.10  # the measured latency lands within this of the target (relative)
LATENCY_ATTEMPTS = 4  # allocations (and measurements of the pruned graph) at most
KNOWN_BACKENDS = ("onnx", "torch", "tvm")
CHECK_RUNS = 20  # alternating runs of the dense and pruned graphs per check
CHECK_ROUNDS = 3  # more runs while the ratio is noisy: at most this many times CHECK_RUNS

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
    measured: float  # pruned / dense, the median of the final check's rounds
    noise: float  # the spread (interquartile range over median) of those rounds' ratios
    table_noise: float  # the largest spread of the table's points
    attempts: int
    table_points: int
    table_measured: int  # points timed in this run (the rest came from the cache)
    table_seconds: float
    cache: str
    history: list[tuple[float, float]] = field(default_factory=list)  # (predicted, measured) per attempt
    why: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"latency on {self.backend} (batch {self.batch}, {self.threads} thread(s)): asked "
                 f"{self.asked:.0%}, predicted {self.predicted:.1%}, measured {self.measured:.1%} "
                 f"({self.dense_seconds * 1e3:.2f} -> {self.pruned_seconds * 1e3:.2f} ms, noise "
                 f"{self.noise:.1%}) after {self.attempts} allocation(s); table: {self.table_points} points, "
                 f"{self.table_measured} measured in {self.table_seconds:.1f} s, point noise up to "
                 f"{self.table_noise:.1%}, cache {self.cache}"]
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

    def check(self, dense: Graph, pruned: Graph) -> tuple[Timing, Timing, Timing]:
        """The dense and pruned graphs' timings and the pruned / dense ratio, timed in alternation.

        The ratio is the median of the rounds' own ratios (the two runs of a round share the machine's
        load); while its spread is over half the tolerance, CHECK_RUNS more rounds are added (at most
        CHECK_ROUNDS in all). A measurer that is a function of the graph times each once.
        """
        if self.backend in MEASURERS:
            d, p = self.measure(dense, self.inputs), self.measure(pruned, self.inputs)
            return d, p, Timing(p.median / d.median, 0.0, 1)
        runner = graph_runner(self.backend)
        calls = [runner(dense, self.inputs, self.threads), runner(pruned, self.inputs, self.threads)]
        times: list[list[float]] = [[], []]
        for round_index in range(CHECK_ROUNDS):
            more = interleaved_samples(calls, CHECK_RUNS, warmup=3 if round_index == 0 else 0)
            times = [times[0] + more[0], times[1] + more[1]]
            ratio = Timing.of([p / d for d, p in zip(*times)])
            if ratio.spread <= LATENCY_TOLERANCE / 2:
                break
        return Timing.of(times[0]), Timing.of(times[1]), ratio

    def layers(self) -> dict[int, int]:
        """Per group, the dense nodes that read or write its channels: where its loss is felt."""
        count: dict[int, int] = {}
        for node, sig in self.model.items:
            if sig is not None:
                names = (node.inputs[0].name, node.outputs[0].name)
                for gid in {gid for name in names for gid, *_ in self.model.on_value.get(name, ())}:
                    count[gid] = count.get(gid, 0) + 1
        return count

    def allocate(self, groups: Sequence[ChannelGroup], scores: dict[int, np.ndarray], fraction: float, *,
                 floor: dict[int, int], next_down: Callable[[ChannelGroup, int], int | None],
                 mask: Callable[[ChannelGroup, int], np.ndarray]) -> dict[int, int]:
        """Units to keep per group so that the predicted latency is at most `fraction` of the dense model's.

        Greedy knapsack: each step removes the next fast multiple of the group with the least importance
        lost (-log of the criterion share it leaves, times the layers that read or write the group) per
        predicted second saved.
        Stops at the goal, or when every group is at its floor (then the caller sees the prediction above
        the goal).
        """
        model = self.model
        goal = fraction * model.before
        keeps = {g.id: g.num_units for g in groups}
        model.set_all({g.id: mask(g, g.num_units) for g in groups})
        # lost[g][k]: -log of the importance share left when the k least important units are gone, once per
        # dense node reading or writing the group (a residual stream passes through every block of its stage)
        layers = self.layers()
        lost = {}
        for g in groups:
            s = np.sort(np.maximum(scores[g.id], 0.0))
            total = s.sum()
            if total <= 0:
                s, total = np.ones_like(s), float(s.size)
            left = np.clip(1.0 - np.concatenate([[0.0], np.cumsum(s)]) / total, 1e-12, 1.0)
            lost[g.id] = -np.log(left) * max(layers.get(g.id, 1), 1)
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


def _reaimed(aims: list[float], measured: list[float], fraction: float) -> float:
    """The next goal for the cost model: through the last two (aim, measured) pairs to `fraction` (secant), or
    scaled by fraction / measured after one pair or when the pairs do not rise together; within (0, 1]."""
    aim = aims[-1] * fraction / measured[-1]
    if len(aims) >= 2 and aims[-1] != aims[-2]:
        slope = (measured[-1] - measured[-2]) / (aims[-1] - aims[-2])
        if slope > 0:
            aim = aims[-1] + (fraction - measured[-1]) / slope
    return min(1.0, max(aim, 0.01))


def _measurer_for(backend: str, threads: int) -> Measurer:
    if backend in MEASURERS:
        return MEASURERS[backend](threads)
    return backend_measurer(backend, threads)


@dataclass
class LatencySolution:
    """Units each group keeps, the uniform ratio equivalent (0: none), the measured fraction, why, and the report."""

    keeps: dict[int, int]
    ratio: float
    achieved: float
    why: list[str]
    report: LatencyReport


class LatencySolver:
    """Widths per group that keep `fraction` of the graph's measured latency on `backend`, within LATENCY_TOLERANCE.

    The prune pass's other budget solver (passes/prune/budget.py `BudgetSolver` for MACs and params), with
    the same `solve`; the widths stay on the pass's steps (`widths`, the `round_to` policy), and each group
    keeps at least `min_keep` of its units (rounded up to its step), as in global scope: a latency budget
    ranks steps across groups.
    """

    metric = "latency"

    def __init__(self, widths: Widths, fraction: float, *, backend: str, threads: int, batch: int,
                 cache_dir: str | None, max_measurements: int, example_inputs: Sequence[Any] | None) -> None:
        self.widths, self.fraction = widths, fraction
        self.backend, self.threads, self.batch = backend, threads, batch
        self.cache_dir, self.max_measurements, self.example_inputs = cache_dir, max_measurements, example_inputs

    @property
    def target(self) -> str:
        """The budget as the report states it: "latency 50% on onnx"."""
        return f"latency {self.fraction:.0%} on {self.backend}"

    def floor(self, group: ChannelGroup) -> int:
        """`min_keep` of the group's units, rounded up to its step (the whole group when no count fits)."""
        least = max(1, int(np.ceil(self.widths.min_keep * group.num_units)))
        per_unit, step = group.unit_size * group.width, self.widths.step(group)
        return next((c for c in range(least, group.num_units + 1) if (c * per_unit) % step == 0), group.num_units)

    def solve(self, graph: Graph, groups: list[ChannelGroup], scores: dict[int, np.ndarray],
              bindings: dict[str, int], blocked: list[ChannelGroup]) -> LatencySolution:
        """Allocate on the cost model, prune a copy, measure it against the dense graph; re-aim (`_reaimed`)
        until within LATENCY_TOLERANCE (at most LATENCY_ATTEMPTS allocations).

        Raises GraphoptError when the target is not met: every group at its floor is still slower, or the
        re-aimed allocations all missed (the message gives the nearest measured fraction).
        """
        budget = LatencyBudget(graph, groups, bindings, self.example_inputs, backend=self.backend,
                               threads=self.threads, batch=self.batch, cache_dir=self.cache_dir,
                               max_measurements=self.max_measurements)
        mask = RemovalMasks(self.widths, scores)
        fits: dict[int, list[int]] = {}

        def next_down(group: ChannelGroup, n_keep: int) -> int | None:
            if group.id not in fits:
                per_unit, step = group.unit_size * group.width, self.widths.step(group)
                fits[group.id] = [c for c in range(1, group.num_units) if (c * per_unit) % step == 0]
            below = [c for c in fits[group.id] if c < n_keep]
            return below[-1] if below else None

        floor = {g.id: self.floor(g) for g in groups}
        fraction, aim = self.fraction, self.fraction
        tried: list[tuple[float, dict[int, int], float, Timing, Timing, Timing]] = []
        unsound: set[int] = set()
        aims: list[float] = []
        for attempt in range(LATENCY_ATTEMPTS):
            keeps = budget.allocate(groups, scores, aim, floor=floor, next_down=next_down, mask=mask)
            predicted = budget.model.total / budget.model.before
            trial = removed_where_possible(graph, self.widths.plan(groups, scores, keeps), unsound)
            dense, pruned, ratio = budget.check(graph, trial)
            measured = ratio.median
            tried.append((measured, keeps, predicted, dense, pruned, ratio))
            at_floor = all(keeps[g.id] <= floor[g.id] for g in groups)
            if abs(measured / fraction - 1) <= LATENCY_TOLERANCE or (at_floor and measured > fraction):
                break
            aims.append(aim)
            aim = _reaimed(aims, [t[0] for t in tried], fraction)
        measured, keeps, predicted, dense, pruned, ratio = min(tried, key=lambda t: abs(t[0] / fraction - 1))
        noise = ratio.spread
        report = LatencyReport(self.backend, self.threads, self.batch, fraction, dense.median, pruned.median,
                               predicted, measured, noise, budget.table.spread, len(tried),
                               budget.table.measured + budget.table.cached, budget.table.measured, budget.table.seconds,
                               str(budget.cache.path) if budget.cache is not None else "none",
                               history=[(t[2], t[0]) for t in tried])
        report.why = self._why(budget, report, groups, keeps, floor)
        if abs(measured / fraction - 1) > LATENCY_TOLERANCE:
            at_floor = all(keeps[g.id] <= floor[g.id] for g in groups)
            reason = (f"with every prunable group at its floor (min_keep={self.widths.min_keep}, on its step) the "
                      f"measured latency is {measured:.1%} of the dense graph's" if at_floor and measured > fraction
                      else f"the nearest of {len(tried)} allocation(s) measured {measured:.1%} (predicted "
                           f"{predicted:.1%}; measurement noise {noise:.1%})")
            raise GraphoptError(f"prune: target_latency={fraction} on {self.backend} cannot be met within "
                                f"{LATENCY_TOLERANCE:.0%}: {reason}; ask for {measured:.2f}, or give target_macs"
                                + (f"; {len(blocked)} group(s) are not prunable" if blocked else ""))
        return LatencySolution(keeps, 0.0, measured, report.why, report)

    def _why(self, budget: LatencyBudget, report: LatencyReport, groups: list[ChannelGroup],
             keeps: dict[int, int], floor: dict[int, int]) -> list[str]:
        """Why predicted and measured differ, and what the widths were bound by."""
        model = budget.model
        notes = [f"the table times each of {len(budget.signatures)} dense nodes alone ({len(budget.table.grids)} "
                 f"distinct); the rest of the dense graph's {model.measured * 1e3:.2f} ms ("
                 f"{model.rest * 1e3:+.2f} ms, {model.rest / model.measured:+.0%}: other nodes, fusions, caches, "
                 f"call overhead) is scaled by the elements the other nodes write"]
        if report.attempts > 1:
            steps = ", ".join(f"{p:.1%} -> {m:.1%}" for p, m in report.history)
            notes.append(f"re-aimed on the measurements: predicted -> measured per allocation: {steps}")
        if report.noise > LATENCY_TOLERANCE / 2:
            notes.append(f"the check's timings spread by {report.noise:.0%} (interquartile range over median): "
                         "a loaded machine; measure again when it is idle")
        if self.backend == "tvm":
            notes.append("the table is measured on ONNX Runtime (a TVM build per grid point takes seconds); "
                         "the dense and pruned graphs are measured on TVM, default schedules")
        at_floor = [g.id for g in groups if keeps[g.id] <= floor[g.id] < g.num_units]
        if at_floor:
            notes.append(f"{len(at_floor)} group(s) at their floor: {', '.join(map(str, at_floor[:8]))}"
                         + (" ..." if len(at_floor) > 8 else ""))
        return notes
