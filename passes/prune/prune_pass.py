"""`prune`: structured pruning of whole channel groups, by an importance criterion and a ratio.

Each prunable group from the channel-group analysis loses its least important
units (channels, attention heads, conv groups) together across every tensor
they live in, so the pruned graph is dense, smaller and runs on the same
inputs. `scope="local"` takes `ratio` of every group; `scope="global"` ranks
units of all groups against each other (scores normalised by each group's
mean) and keeps at least `min_keep` of every group. `round_to` (by default 16,
less for narrow groups) keeps channel counts multiples of 16: oneDNN blocks CPU activations by 16
channels, and other counts are padded and converted on a slower path (measured:
MobileNetV2 pruned 30 % at exact counts ran no faster than dense at batch 1; see
docs/benchmarks.md).

After removal a safety net (passes/prune/safety.py) runs the pruned graph on
the example inputs and checks it against the masked original; groups the
channel analysis got wrong are found by bisection and left unpruned, named in
the report, so an analysis gap costs compression instead of a broken model.
"""

from __future__ import annotations

import fnmatch
import inspect
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from graphopt.analysis.channels import ChannelGroup, ChannelGroups
from graphopt.analysis.cost import CostAnalysis, estimate_cost
from graphopt.analysis.removal import remove_channels
from graphopt.errors import GraphoptError
from graphopt.ir.graph import Graph
from graphopt.passmanager import AnalysisManager, Pass, PassResult, RunContext, option, register_pass

from graphopt import __version__

from .criteria import CriterionContext, checked_scores, get_criterion
from .recipe import PruneRecipe, PruneStep, anchor_of, structure_hash
from .reconstruct import ReconstructionReport, reconstruct
from .safety import Plan, SafetyNet, SafetyReport, removal_failure, removed_where_possible


@dataclass
class GroupDecision:
    group: int
    kind: str
    kept: int
    total: int
    width: int
    params: list[str] = field(default_factory=list)


@dataclass
class PruneReport:
    """What `prune` removed: per group kept/total, params/MACs before and after, and what reconstruction did."""

    decisions: list[GroupDecision]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    seconds: float
    ratio: float = 0.0  # the ratio applied (found by search when a target was given)
    target: str = ""  # "macs 50%" when a budget chose the ratio
    reconstruction: ReconstructionReport | None = None
    safety: SafetyReport | None = None  # what the safety net checked and left unpruned (None: option off)

    def summary(self) -> str:
        """The totals, what reconstruction did, what the safety net checked (and every group it left out)."""
        how = f"ratio {self.ratio:.3f}" + (f" (searched for {self.target})" if self.target else "")
        lines = [f"prune ({how}): {len(self.decisions)} groups pruned, params {self.params_before:,} -> "
                 f"{self.params_after:,} ({self.params_after / max(self.params_before, 1):.1%}), MACs "
                 f"{self.macs_before:,} -> {self.macs_after:,} ({self.macs_after / max(self.macs_before, 1):.1%}), "
                 f"{self.seconds:.2f} s"]
        if self.reconstruction is not None:
            lines.append(f"  {self.reconstruction}")
        if self.safety is not None:
            lines.append(f"  {self.safety}")
        return "\n".join(lines)

    def __str__(self) -> str:
        lines = [self.summary()]
        for d in self.decisions:
            first = d.params[0] if d.params else "-"
            lines.append(f"  group {d.group}: kept {d.kept}/{d.total} {d.kind} (width {d.width}) e.g. {first}")
        return "\n".join(lines)


AUTO_ROUND_TO = 16  # oneDNN's channel block on AVX-512 CPUs


@register_pass("prune")
class Prune(Pass):
    """Remove the least important channels of every prunable channel group."""

    verify_tolerance = "shape"  # pruning changes outputs by design; shapes must stay
    requires = (CostAnalysis,)  # the groups are read in run(): which ones depends on `heads`

    ratio: float = option(0.5, "fraction of each group's units to remove (local), or of all units (global)")
    target_macs: float | None = option(None, "instead of ratio: keep this fraction of the MACs (ratio is searched)")
    target_params: float | None = option(None, "instead of ratio: keep this fraction of the parameters")
    criterion: str = option("l2", "importance: l1, l2, bn_scale, taylor, activation, fluctuation, or a registered one")
    scope: Literal["local", "global"] = option("local", "rank units within each group or across groups")
    round_to: int | None = option(None, "kept channel counts (in positions) are the multiple of this nearest the "
                                        "ratio; default: 16, or 8, 4, 2 for groups too narrow for it; 1: exact")
    min_keep: float = option(0.1, "global scope: fraction of each group always kept")
    ignore: list[str] = option([], "node or weight names (glob patterns) whose groups stay whole")
    heads: bool = option(True, "attention: remove whole heads (True) or the same head_dim positions of every head (False)")
    reconstruct: bool = option(False, "refit the layers reading pruned channels by least squares on calibration data")
    damp: float = option(0.01, "reconstruct: ridge term, relative to the mean diagonal of X^T X")
    safety: bool = option(True, "check the pruned graph on the example inputs (it runs; exact groups equal masking) "
                                "and leave unpruned, found by bisection, the groups that fail")
    safety_max_checks: int = option(64, "the safety net's budget of checks (each runs the graph twice); "
                                         "needing more is an error")

    def validate(self) -> None:
        """Ranges and exclusive options, checked when the pass is built (before tracing, in `optimize`)."""
        if not 0.0 <= self.ratio < 1.0:
            raise self.invalid("ratio", f"the fraction of units to remove must be in [0, 1), got {self.ratio}")
        targets = [name for name in ("target_macs", "target_params") if getattr(self, name) is not None]
        for name in targets:
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise self.invalid(name, f"must be the fraction to keep, in (0, 1]; got {value}")
        if len(targets) == 2:
            raise self.invalid("target_params", "give target_macs or target_params, not both")
        if targets and "ratio" in self._given:
            raise self.invalid("ratio", f"give ratio or {targets[0]}, not both (the ratio is searched for the target)")
        try:
            get_criterion(self.criterion)
        except GraphoptError as exc:
            raise self.invalid("criterion", str(exc)) from None
        if self.round_to is not None and self.round_to < 1:
            raise self.invalid("round_to", f"must be at least 1 (1: exact counts), got {self.round_to}")
        if not 0.0 <= self.min_keep <= 1.0:
            raise self.invalid("min_keep", f"the fraction of each group kept must be in [0, 1], got {self.min_keep}")
        if self.damp < 0.0:
            raise self.invalid("damp", f"the ridge term cannot be negative, got {self.damp}")
        if self.safety_max_checks < 1:
            raise self.invalid("safety_max_checks", f"must be at least 1, got {self.safety_max_checks}")

    def run(self, graph: Graph, analyses: AnalysisManager) -> PassResult:
        start = time.perf_counter()
        cost_before = analyses.get(CostAnalysis, graph)
        structure = structure_hash(graph)
        found = analyses.get(ChannelGroups(heads=self.heads), graph)
        groups = [g for g in found if g.prunable and not self._ignored(g)]
        criterion = get_criterion(self.criterion)
        context = CriterionContext(graph, analyses.context)
        takes_context = len(inspect.signature(criterion).parameters) > 1
        scores = {g.id: _unit_scores(g, checked_scores(self.criterion, g, criterion(g, context) if takes_context
                                                       else criterion(g))) for g in groups}

        ratio, target = self.ratio, ""
        if self.target_macs is not None or self.target_params is not None:
            ratio, target = self._search_ratio(graph, groups, scores, analyses, cost_before)
        plan = self._plan(groups, scores, ratio)
        if not plan:
            return PassResult(graph, modified=False)

        original = graph.clone() if self.reconstruct or self.safety else None
        graph, plan, safety = self._remove(graph, plan, original, analyses.context)
        if target and safety is not None and safety.excluded:
            graph, plan, ratio, target = self._retarget(original, groups, scores, analyses, cost_before, safety)
        step = PruneStep(structure, heads=self.heads)
        decisions, kept_outputs = [], {}
        for group, channels in plan:
            step.groups.append({"anchor": anchor_of(group), "removed": sorted(int(c) for c in channels)})
            kept_outputs.update(_kept_weight_positions(group, channels))
            params = sorted({s.value.name for s in group.spaces if s.value.kind == "param"})
            n_keep = group.num_channels - len(channels)
            decisions.append(GroupDecision(group.id, group.kind, n_keep, group.num_channels, group.width, params))
        reconstruction = None
        if self.reconstruct:
            reconstruction = reconstruct(original, graph, analyses.context.calibration_batches(), kept_outputs,
                                         damp=self.damp)

        cost_after = estimate_cost(graph, bindings=analyses.context.bindings(graph))
        report = PruneReport(decisions, cost_before.total_params, cost_after.total_params,
                             cost_before.total_macs, cost_after.total_macs, time.perf_counter() - start,
                             ratio, target, reconstruction, safety)
        # The recipe says how this graph was made, so it stays with the graph through later runs (a new
        # list: the meta of a cloned graph shares the old one with the caller's graph).
        graph.meta["prune_recipes"] = [*graph.meta.get("prune_recipes", []), PruneRecipe([step], __version__)]
        return PassResult(graph, modified=True, stats=report)

    def _remove(self, graph: Graph, plan: Plan, original: Graph | None,
                context: RunContext) -> tuple[Graph, Plan, SafetyReport | None]:
        """Remove `plan` from `graph` in place; with the safety net, check the result and leave out what fails.

        Returns the pruned graph (a copy of `original` when groups had to be left
        out), the part of the plan it has removed, and the net's report.
        """
        net, skipped = self._safety_net(original, context)
        failure = None
        for group, channels in plan:
            try:
                remove_channels(graph, group, channels)
            except Exception as exc:  # noqa: BLE001 - with the net, a removal that raises is a failed check
                if net is None:
                    raise
                failure = removal_failure(exc)
                break
        if net is None:
            return graph, plan, SafetyReport(skipped=skipped) if self.safety else None
        graph, plan = net.accept(graph, plan, failure)
        return graph, plan, net.report

    def _retarget(self, original: Graph, groups: list[ChannelGroup], scores: dict[int, np.ndarray],
                  analyses: AnalysisManager, cost_before, safety: SafetyReport) -> tuple[Graph, Plan, float, str]:
        """Search the ratio again without the groups the net left whole, so the target holds on the others.

        The first search counted those groups' savings; one more search and
        removal (checked by the net too) makes the other groups give them. Groups
        this second check excludes join the report; the cost is then reported as is.
        """
        excluded = {e.group for e in safety.excluded}
        rest = [g for g in groups if g.id not in excluded]
        ratio, target = self._search_ratio(original, rest, scores, analyses, cost_before)
        graph, plan, again = self._remove(original.clone(), self._plan(rest, scores, ratio), original, analyses.context)
        safety.checks += again.checks
        safety.seconds += again.seconds
        safety.excluded += again.excluded
        return graph, plan, ratio, target

    def _safety_net(self, original: Graph | None, context: RunContext) -> tuple[SafetyNet | None, str]:
        """The net over `original` and "", or None and why it is skipped (then a warning says so too)."""
        if not self.safety or original is None:
            return None, ""
        why = self._why_no_net(context, original)
        if why:
            warnings.warn(f"prune: safety net skipped ({why}); the pruned graph is not checked", stacklevel=2)
            return None, why
        return SafetyNet(original, context.example_inputs, max_checks=self.safety_max_checks), ""

    @staticmethod
    def _why_no_net(context: RunContext, graph: Graph) -> str:
        if context.example_inputs is None:
            return "no example inputs: give them to PassManager.run or optimize"
        if any(v.data is not None and v.data.device.type == "meta" for v in graph.weights.values()):
            return "the weights are on the meta device"
        return ""

    # ------------------------------------------------------------ planning
    def _plan(self, groups: list[ChannelGroup], scores: dict[int, np.ndarray], ratio: float) -> Plan:
        """The channels to remove from each group at `ratio`, least important units first."""
        keep = self._local(groups, ratio) if self.scope == "local" else self._global(groups, scores, ratio)
        plan = []
        for group in groups:
            n_keep = self._rounded(group, keep[group.id])
            if n_keep >= group.num_units:
                continue
            drop = _droppable(group, np.argsort(scores[group.id], kind="stable"), group.num_units - n_keep)
            if drop:
                plan.append((group, np.concatenate([group.units[u] for u in drop])))
        return plan

    def _search_ratio(self, graph: Graph, groups: list[ChannelGroup], scores: dict[int, np.ndarray],
                      analyses: AnalysisManager, cost_before) -> tuple[float, str]:
        """The smallest ratio whose pruned graph meets the MACs/params target, by bisection on trial copies.

        Cost is monotone in the ratio up to round_to steps, so bisection converges;
        each trial prunes a clone (tensors are shared, never written).
        """
        metric, fraction = ("macs", self.target_macs) if self.target_macs is not None else ("params", self.target_params)
        before = cost_before.total_macs if metric == "macs" else cost_before.total_params
        bindings = analyses.context.bindings(graph)
        unsound: set[int] = set()  # groups whose removal raises: with the safety net they stay whole

        def cost_at(ratio: float) -> int:
            plan = self._plan(groups, scores, ratio)
            if self.safety:
                trial = removed_where_possible(graph, plan, unsound)
            else:
                trial = graph.clone()
                for group, channels in plan:
                    remove_channels(trial, group, channels)
            after = estimate_cost(trial, bindings=bindings)
            return after.total_macs if metric == "macs" else after.total_params

        low, high = 0.0, 0.99
        if cost_at(high) > fraction * before:
            return high, f"{metric} {fraction:.0%} (not reachable: the prunable groups cannot shrink that far)"
        for _ in range(12):
            mid = (low + high) / 2
            if cost_at(mid) <= fraction * before:
                high = mid
            else:
                low = mid
        return high, f"{metric} {fraction:.0%}"

    # ------------------------------------------------------------ decisions
    def _ignored(self, group: ChannelGroup) -> bool:
        names = {s.value.name for s in group.spaces}
        names |= {s.value.producer.name for s in group.spaces if s.value.producer is not None}
        return any(fnmatch.fnmatch(n, pattern) for pattern in self.ignore for n in names)

    def _local(self, groups: list[ChannelGroup], ratio: float) -> dict[int, int]:
        return {g.id: max(1, g.num_units - int(math.floor(ratio * g.num_units))) for g in groups}

    def _global(self, groups: list[ChannelGroup], scores: dict[int, np.ndarray], ratio: float) -> dict[int, int]:
        """Rank every unit by its score over its group's mean; drop the lowest `ratio` of all positions."""
        entries = []
        for g in groups:
            s = scores[g.id]
            normalised = s / (s.mean() or 1.0)
            entries += [(normalised[u], g.id) for u in range(g.num_units)]
        entries.sort(key=lambda e: e[0])
        total = sum(g.num_units for g in groups)
        budget = int(math.floor(ratio * total))
        keep = {g.id: g.num_units for g in groups}
        floor = {g.id: max(1, math.ceil(self.min_keep * g.num_units)) for g in groups}
        for _, gid in entries:
            if budget <= 0:
                break
            if keep[gid] > floor[gid]:
                keep[gid] -= 1
                budget -= 1
        return keep

    def _rounded(self, group: ChannelGroup, n_keep: int) -> int:
        """The unit count nearest `n_keep` (ties up) whose positions are a multiple of the group's step.

        The step is round_to; automatic (None) is 16, halved for a group narrower than two
        steps (a 16-channel group rounds to 8), so narrow layers still shrink. Nearest
        rather than up: rounding up keeps whole groups that the ratio meant to shrink.
        """
        per_unit = group.unit_size * group.width
        step = AUTO_ROUND_TO if self.round_to is None else max(1, self.round_to)
        while self.round_to is None and step > 1 and group.num_units * per_unit < 2 * step:
            step //= 2
        fits = [c for c in range(1, group.num_units + 1) if (c * per_unit) % step == 0]
        if not fits:
            return group.num_units  # no count fits: keep the group whole
        return min(fits, key=lambda c: (abs(c - n_keep), -c))


def _droppable(group: ChannelGroup, order: np.ndarray, count: int) -> list[int]:
    """Up to `count` units, least important first, never emptying a tensor of the group.

    A group can span several producers (DenseNet's concatenated features): each
    layer keeps at least one of its own units, or its weight would have no rows.
    """
    remaining = {}
    units_in = []
    for labels in group.labels:
        present = np.unique(group.unit_of[labels])
        units_in.append(set(present.tolist()))
        remaining[len(units_in) - 1] = present.size
    drop = []
    for unit in order.tolist():
        if len(drop) == count:
            break
        holders = [i for i, units in enumerate(units_in) if unit in units]
        if all(remaining[i] > 1 for i in holders):
            drop.append(unit)
            for i in holders:
                remaining[i] -= 1
    return drop


def _kept_weight_positions(group: ChannelGroup, channels: np.ndarray) -> dict[tuple[str, int], np.ndarray]:
    """Kept positions of each single-axis producer weight, by (weight, axis): which outputs of a layer survive."""
    return {(s.value.name, s.axes[0]): np.flatnonzero(~np.isin(labels, channels))
            for s, labels in group.producers() if len(s.axes) == 1}


def _unit_scores(group: ChannelGroup, channel_scores: np.ndarray) -> np.ndarray:
    return np.bincount(group.unit_of, weights=channel_scores, minlength=group.num_units)
