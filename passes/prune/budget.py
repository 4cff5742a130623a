"""target_macs / target_params: the widths per group that land a budget within 5 %, and the cost model they are found with.

`BudgetSolver` picks how many units each group keeps; `BudgetModel` says what
MACs or params a choice costs without pruning anything.

Removing channels of a group only shrinks the axes the group's spaces lie on
(that is what keeps shapes consistent, graphopt/analysis/removal.py). So the
cost of a plan is the cost analysis's own per-node MAC rules
(graphopt/analysis/mac_rules.py) evaluated on the original nodes with those
axes shrunk, and the params are the param weights' numels with the same axes
shrunk: no clone, no removal, no shape inference per candidate. Costs are kept
per node, so changing one group's width re-evaluates only the nodes that group
touches (the solver's greedy steps try every group at every step).

The prune pass checks the model against `estimate_cost` of the really pruned
graph; tests/test_prune_budgets.py checks they agree on the zoo.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Sequence

import numpy as np

from graphopt.analysis.channels import ChannelGroup
from graphopt.analysis.cost import estimate_cost
from graphopt.errors import GraphoptError
from graphopt.analysis.rule_columns import mac_rule_for
from graphopt.ir import dims as D
from graphopt.ir.graph import Graph, Value

from .safety import removed_where_possible
from .widths import RemovalMasks, Widths

BUDGET_TOLERANCE = 0.05  # a target_macs/target_params budget lands within this of the target (relative)


class BudgetModel:
    """Total MACs or params of `graph` with some channels of `groups` removed, evaluated per node.

    `state` maps a group id to the boolean mask of its removed channels; `total`
    is the metric at that state, `delta(g, mask)` what it would change by if
    group g took `mask` instead, `apply(g, mask)` makes that change.
    """

    def __init__(self, graph: Graph, groups: Sequence[ChannelGroup], bindings: dict[str, int], metric: str):
        self.metric = metric
        self.env = dict(bindings)
        self.groups = {g.id: g for g in groups}
        # value name -> list of (group id, axes, sizes, labels): the axes each group shrinks on that value
        # (by name: a group found on a graph applies to its clones, as for removal)
        self.on_value: dict[int, list[tuple[int, tuple[int, ...], tuple[int, ...], np.ndarray]]] = {}
        seen: set[tuple] = set()
        for g in groups:
            for space, labels in zip(g.spaces, g.labels):
                rank = len(space.value.shape)
                axes = tuple(a % rank for a in space.axes) if rank else tuple(space.axes)
                key = (space.value.name, axes, g.id)
                if key in seen:
                    continue
                seen.add(key)
                self.on_value.setdefault(space.value.name, []).append((g.id, axes, tuple(space.sizes), labels))
        # the items whose cost is counted: dense nodes (MACs) or distinct param weights (params)
        self.items: list = self._items(graph, metric)
        self.by_group: dict[int, list[int]] = {g.id: [] for g in groups}
        for i, (item, _) in enumerate(self.items):
            touching = set()
            for value in self._values(item):
                for gid, *_ in self.on_value.get(value.name, ()):
                    touching.add(gid)
            for gid in touching:
                self.by_group[gid].append(i)
        self.state: dict[int, np.ndarray] = {}
        self.costs = [self._cost(i, self.state) for i in range(len(self.items))]
        self.before = sum(self.costs)
        self.total = self.before

    def _items(self, graph: Graph, metric: str) -> list:
        """The (item, rule) pairs whose cost is counted: dense nodes and their MAC rules (MACs), or
        distinct param weights (params); a subclass counts other costs (latency_model.py: seconds)."""
        items: list = []
        if metric == "macs":
            for node in graph.nodes:
                rule = mac_rule_for(node.op)
                if rule is not None:
                    items.append((node, rule))
        else:
            counted: set[int] = set()
            for node in graph.nodes:
                for value in node.inputs:
                    if value is not None and value.kind == "param" and id(value) not in counted:
                        counted.add(id(value))
                        items.append((value, None))
        return items

    # ------------------------------------------------------------ evaluation
    def _values(self, item) -> list[Value]:
        if isinstance(item, Value):
            return [item]
        return [v for v in (*item.inputs, *item.outputs) if v is not None]

    def _numel(self, shape: Sequence) -> int:
        total = 1
        for d in shape:
            if not isinstance(d, int):
                d = D.evaluate(d, {**{str(s): 1 for s in d.free_symbols}, **self.env})
            total *= int(d)
        return total

    def _shape(self, value: Value, state: dict[int, np.ndarray]) -> tuple:
        shape = list(value.shape)
        for gid, axes, sizes, labels in self.on_value.get(value.name, ()):
            removed = state.get(gid)
            if removed is None or not removed.any():
                continue
            keep = ~removed[labels].reshape(sizes)
            for i, axis in enumerate(axes):
                others = tuple(j for j in range(len(sizes)) if j != i)
                kept = int((keep.any(axis=others) if others else keep).sum())
                shape[axis] = shape[axis] - (sizes[i] - kept)
        return tuple(shape)

    def _cost(self, i: int, state: dict[int, np.ndarray]) -> int:
        item, rule = self.items[i]
        if rule is None:
            return self._numel(self._shape(item, state))

        def proxy(v):
            return None if v is None else SimpleNamespace(shape=self._shape(v, state), name=v.name, dtype=v.dtype)

        node = SimpleNamespace(op=item.op, attrs=item.attrs, name=item.name,
                               inputs=[proxy(v) for v in item.inputs], outputs=[proxy(v) for v in item.outputs])
        return int(rule(node, self._numel))

    def delta(self, gid: int, removed: np.ndarray) -> int:
        """How much `total` changes if group `gid` has `removed` channels removed instead of its current ones."""
        trial = {**self.state, gid: removed}
        return sum(self._cost(i, trial) - self.costs[i] for i in self.by_group.get(gid, ()))

    def apply(self, gid: int, removed: np.ndarray) -> None:
        self.state[gid] = removed
        for i in self.by_group.get(gid, ()):
            new = self._cost(i, self.state)
            self.total += new - self.costs[i]
            self.costs[i] = new

    def set_all(self, masks: dict[int, np.ndarray]) -> int:
        """Move to `masks` (every group given; a group left out keeps its current mask); the new total."""
        for gid, removed in masks.items():
            current = self.state.get(gid)
            if current is None or not np.array_equal(current, removed):
                self.apply(gid, removed)
        return self.total

    def untouched(self) -> int:
        """The metric in items no group touches: what no width choice can shrink (barriers, blocked groups)."""
        touched = {i for indices in self.by_group.values() for i in indices}
        return sum(self.costs[i] for i in range(len(self.items)) if i not in touched)


@dataclass
class BudgetSolution:
    """Units each group keeps, the ratio the search ended at, the metric's achieved fraction, and why it differs."""

    keeps: dict[int, int]
    ratio: float
    achieved: float
    why: list[str]


class BudgetSolver:
    """Widths per group that keep `fraction` of the graph's `metric` ("macs" or "params"), within BUDGET_TOLERANCE.

    The widths follow the pass's policy (`Widths`: steps, scope, floors) and leave
    a group's step only where no width on it fits, which the notes then say.
    """

    def __init__(self, widths: Widths, metric: str, fraction: float):
        self.widths, self.metric, self.fraction = widths, metric, fraction

    @property
    def target(self) -> str:
        """The budget as the report states it: "macs 50%"."""
        return f"{self.metric} {self.fraction:.0%}"

    def solve(self, graph: Graph, groups: list[ChannelGroup], scores: dict[int, np.ndarray],
              bindings: dict[str, int], blocked: list[ChannelGroup]) -> BudgetSolution:
        """Units to keep per group so that the MACs/params land within BUDGET_TOLERANCE of the target.

        1. Bisect the ratio (local or global scope, every group on its step): the
           smallest ratio meeting the target, and the one just below it that does not.
        2. Where the steps make that overshoot (48 channels in steps of 16 keep 16
           or 32: 11 % or 44 % of a conv's MACs, never 25 %), grow groups from the
           first assignment towards the second on finer steps (8, then 4, 2, 1),
           each time the growth that adds the most cost and still fits the target,
           so that few groups leave their step.
        3. Still short: the nearest single growth above the target within tolerance.
        Costs come from `BudgetModel` (the MAC rules on shrunk shapes), not trial prunes.
        Raises GraphoptError when no widths can meet the target, saying why.
        """
        metric, fraction = self.metric, self.fraction
        model = BudgetModel(graph, groups, bindings, metric)
        scale, unsound, found, doomed = 1.0, set(), [], {}
        for attempt in range(6):
            active = [g for g in groups if g.id not in unsound]  # groups whose removal raised stay whole
            if len(active) < len(model.groups):
                model = BudgetModel(graph, active, bindings, metric)
            try:
                current, ratio = self._solve_widths(model, active, scores, fraction * scale, blocked)
                # groups whose removal raised stay in the plan, so the safety net names them in the report;
                # their removal fails, so the trial below (and the pruned graph) keep them whole
                current.update({gid: doomed[gid] for gid in unsound})
            except GraphoptError:
                if attempt == 0:
                    raise
                break
            # The model is the MAC rules on shrunk shapes; a removal that rewrites more (a conv's groups,
            # window reshapes) can differ: measure the real graph and aim the model again where it does,
            # until the budget holds from below (or within the tolerance above, when no aim gets below).
            known = len(unsound)
            trial = removed_where_possible(graph, self.widths.plan(groups, scores, current), unsound)
            if len(unsound) > known:
                doomed.update({gid: current[gid] for gid in unsound if gid not in doomed})
                continue  # solve again without the groups that cannot be removed
            cost = estimate_cost(trial, bindings=bindings)
            real = (cost.total_macs if metric == "macs" else cost.total_params) / model.before
            if abs(real / fraction - 1) <= BUDGET_TOLERANCE:
                found.append((real > fraction, abs(real - fraction), current, ratio, real))
                if real <= fraction:
                    break
            if real == 0:
                break
            scale *= fraction / real
        if not found:
            raise GraphoptError(
                f"prune: target_{metric}={fraction} cannot be met within {BUDGET_TOLERANCE:.0%}: the nearest "
                f"widths found give {real:.1%}; ask for {real:.2f}, or give a ratio")
        _, _, current, ratio, real = min(found, key=lambda f: (f[0], f[1]))
        return BudgetSolution(current, ratio, real, self._notes(
            metric, fraction, real, model, groups, current, {g.id: self.widths.floor(g) for g in groups}))

    def _solve_widths(self, model: BudgetModel, groups: list[ChannelGroup], scores: dict[int, np.ndarray],
                      fraction: float, blocked: list[ChannelGroup]) -> tuple[dict[int, int], float]:
        """Steps 1-3 of `solve` on the cost model: units per group and the ratio bisected."""
        metric = model.metric
        goal = fraction * model.before
        lo_ok, hi_ok = goal * (1 - BUDGET_TOLERANCE), goal * (1 + BUDGET_TOLERANCE)
        mask = RemovalMasks(self.widths, scores)

        def cost(keeps: dict[int, int]) -> int:
            return model.set_all({g.id: mask(g, keeps[g.id]) for g in groups})

        if model.before == 0:
            raise GraphoptError(f"prune: target_{metric}={fraction}: the graph has no {metric} to reduce")
        floor = {g.id: self.widths.floor(g) for g in groups}
        lowest = cost(floor)
        if lowest > hi_ok:
            raise GraphoptError(self._unreachable(metric, fraction, lowest / model.before,
                                                  model.untouched() / model.before, groups, blocked))
        cap = None  # every group's own step; when even the largest ratio is over, every step 8, 4, 2 or 1
        top = self.widths.keeps(groups, scores, 0.99)
        for finer in (8, 4, 2, 1):
            if cost(top) <= goal:
                break
            cap, top = finer, self.widths.keeps(groups, scores, 0.99, finer)
        if cost(top) > goal:
            under, over, ratio = floor, top, 0.99
        else:
            under, over, ratio, low = top, {g.id: g.num_units for g in groups}, 0.99, 0.0
            for _ in range(20):
                mid = (low + ratio) / 2
                keeps = self.widths.keeps(groups, scores, mid, cap)
                if cost(keeps) <= goal:
                    ratio, under = mid, keeps
                else:
                    low, over = mid, keeps
        current = dict(under)
        cost(current)
        if model.total < lo_ok:
            ceiling = {gid: max(over[gid], current[gid]) for gid in current}
            for level in (8, 4, 2, 1):
                while True:
                    best = None
                    for g in groups:
                        grown = self.widths.grown(g, current[g.id], ceiling[g.id], min(self.widths.step(g), level, cap or level))
                        if grown is None:
                            continue
                        change = model.delta(g.id, mask(g, grown))
                        if model.total + change <= goal and (best is None or change > best[0]):
                            best = (change, g, grown)
                    if best is None:
                        break
                    _, g, grown = best
                    model.apply(g.id, mask(g, grown))
                    current[g.id] = grown
                if model.total >= lo_ok:
                    break
        if model.total < lo_ok:  # the nearest growth by one unit above the target, within tolerance
            best = None
            for g in groups:
                if current[g.id] < g.num_units:
                    after = model.total + model.delta(g.id, mask(g, current[g.id] + 1))
                    if lo_ok <= after <= hi_ok and (best is None or abs(after - goal) < abs(best[0] - goal)):
                        best = (after, g)
            if best is not None:
                model.apply(best[1].id, mask(best[1], current[best[1].id] + 1))
                current[best[1].id] += 1
        achieved = model.total / model.before
        if model.total < lo_ok:
            raise GraphoptError(
                f"prune: target_{metric}={fraction:.3g} cannot be met within {BUDGET_TOLERANCE:.0%}: the nearest "
                f"widths give {achieved:.1%} (one unit of any group changes the {metric} by more than the "
                f"tolerance); ask for {achieved:.2f}, or give a ratio")
        return current, ratio

    def _unreachable(self, metric: str, fraction: float, lowest: float, untouched: float,
                     groups: list[ChannelGroup], blocked: list[ChannelGroup]) -> str:
        floor = "1 unit each" if self.widths.scope == "local" else f"min_keep={self.widths.min_keep} of each"
        why = [f"with all {len(groups)} prunable groups at their minimum width ({floor}) the {metric} are "
               f"{lowest:.1%} of the original"]
        if untouched > 0:
            why.append(f"{untouched:.1%} are in layers no prunable group reaches")
        if blocked:
            reasons = next((g.reasons[0] for g in blocked if g.reasons), "ignored")
            why.append(f"{len(blocked)} groups are not prunable (barriers, graph inputs/outputs, ignore=), "
                       f"e.g. {reasons}")
        return (f"prune: target_{metric}={fraction} cannot be reached within {BUDGET_TOLERANCE:.0%}: "
                + "; ".join(why))

    def _notes(self, metric: str, fraction: float, achieved: float, model: BudgetModel,
                      groups: list[ChannelGroup], keeps: dict[int, int], floor: dict[int, int]) -> list[str]:
        """Why the budget's result differs from what was asked: relaxed steps, minimum widths, barriers."""
        notes = []
        if abs(achieved / fraction - 1) > 1e-3:
            notes.append(f"{metric} {achieved:.1%} achieved for {fraction:.0%} asked: the nearest the unit widths "
                         f"allow (tolerance {BUDGET_TOLERANCE:.0%})")
        relaxed: dict[tuple[int, int], list[str]] = {}
        for g in groups:
            step = self.widths.step_of(g, keeps[g.id])
            if step < self.widths.step(g):
                relaxed.setdefault((self.widths.step(g), step), []).append(f"{g.id} ({keeps[g.id]}/{g.num_units})")
        for (own, step), which in sorted(relaxed.items()):
            notes.append(f"round_to relaxed from {own} to {step} for group(s) {', '.join(which)}: "
                         f"no multiple of {own} fits the budget")
        at_floor = [g.id for g in groups if keeps[g.id] <= floor[g.id] < g.num_units]
        if at_floor:
            notes.append(f"{len(at_floor)} group(s) at their minimum width: {', '.join(map(str, at_floor[:8]))}"
                         + (" ..." if len(at_floor) > 8 else ""))
        untouched = model.untouched() / model.before
        if untouched >= 0.01:
            notes.append(f"{untouched:.1%} of the {metric} are in layers no prunable group reaches "
                         "(barriers, graph inputs/outputs, ignore=)")
        return notes
