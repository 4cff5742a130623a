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

from .budget import BudgetModel
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
    ratio: float = 0.0  # the ratio asked (a budget: the uniform ratio its search started from)
    target: str = ""  # "macs 50%" when a budget chose the widths
    reconstruction: ReconstructionReport | None = None
    safety: SafetyReport | None = None  # what the safety net checked and left unpruned (None: option off)
    achieved_ratio: float = 0.0  # fraction of the prunable groups' units removed
    target_metric: str = ""  # "macs" or "params" under a budget
    target_fraction: float | None = None  # the fraction asked to keep
    why: list[str] = field(default_factory=list)  # why asked and achieved differ (rounding, barriers, widths)

    @property
    def macs_fraction(self) -> float:
        return self.macs_after / max(self.macs_before, 1)

    @property
    def params_fraction(self) -> float:
        return self.params_after / max(self.params_before, 1)

    @property
    def achieved_fraction(self) -> float | None:
        """The budget's metric after / before (None without a budget)."""
        if not self.target_metric:
            return None
        return self.macs_fraction if self.target_metric == "macs" else self.params_fraction

    def summary(self) -> str:
        """Asked vs achieved, the totals, why they differ, what reconstruction and the safety net did."""
        if self.target:
            how = (f"searched for {self.target}: achieved {self.target_metric} {self.achieved_fraction:.1%}, "
                   f"ratio {self.achieved_ratio:.3f} of units removed")
        else:
            how = f"ratio {self.ratio:.3f} asked, {self.achieved_ratio:.3f} achieved"
        lines = [f"prune ({how}): {len(self.decisions)} groups pruned, params {self.params_before:,} -> "
                 f"{self.params_after:,} ({self.params_fraction:.1%}), MACs "
                 f"{self.macs_before:,} -> {self.macs_after:,} ({self.macs_fraction:.1%}), "
                 f"{self.seconds:.2f} s"]
        lines += [f"  why: {w}" for w in self.why]
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
BUDGET_TOLERANCE = 0.05  # a target_macs/target_params budget lands within this of the target (relative)


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

        ratio, target, why = self.ratio, "", []
        blocked = [g for g in found if not g.prunable or self._ignored(g)]
        if self.target_macs is not None or self.target_params is not None:
            keeps, ratio, target, why = self._solve_budget(graph, groups, scores, analyses, blocked)
        else:
            keeps = self._keeps(groups, scores, ratio)
            why = self._rounding_notes(groups, scores, ratio, keeps)
        plan = self._plan_keeps(groups, scores, keeps)
        if not plan:
            return PassResult(graph, modified=False)

        original = graph.clone() if self.reconstruct or self.safety else None
        graph, plan, safety = self._remove(graph, plan, original, analyses.context)
        if safety is not None and safety.excluded:
            left = ", ".join(str(e.group) for e in safety.excluded)
            if target:
                graph, plan, ratio, target, why = self._retarget(original, groups, scores, analyses, safety, blocked)
                why.append(f"the safety net left group(s) {left} whole; the other groups make up for them")
            else:
                why.append(f"the safety net left group(s) {left} whole")
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
        removed_units = sum(np.unique(group.unit_of[channels]).size for group, channels in plan)
        report = PruneReport(decisions, cost_before.total_params, cost_after.total_params,
                             cost_before.total_macs, cost_after.total_macs, time.perf_counter() - start,
                             ratio, target, reconstruction, safety,
                             achieved_ratio=removed_units / max(sum(g.num_units for g in groups), 1),
                             target_metric=self._budget()[0] if target else "",
                             target_fraction=self._budget()[1] if target else None, why=why)
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
                  analyses: AnalysisManager, safety: SafetyReport,
                  blocked: list[ChannelGroup]) -> tuple[Graph, Plan, float, str, list[str]]:
        """Solve the budget again without the groups the net left whole, so the target holds on the others.

        The first solve counted those groups' savings; one more solve and
        removal (checked by the net too) makes the other groups give them. Groups
        this second check excludes join the report; the cost is then reported as is.
        """
        excluded = {e.group for e in safety.excluded}
        rest = [g for g in groups if g.id not in excluded]
        keeps, ratio, target, why = self._solve_budget(original, rest, scores, analyses,
                                                       blocked + [g for g in groups if g.id in excluded])
        graph, plan, again = self._remove(original.clone(), self._plan_keeps(rest, scores, keeps), original,
                                          analyses.context)
        safety.checks += again.checks
        safety.seconds += again.seconds
        safety.excluded += again.excluded
        return graph, plan, ratio, target, why

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
    def _keeps(self, groups: list[ChannelGroup], scores: dict[int, np.ndarray], ratio: float,
               cap: int | None = None) -> dict[int, int]:
        """Units each group keeps at `ratio`, rounded to the group's step, at most `cap` (see `_rounded`)."""
        raw = self._local(groups, ratio) if self.scope == "local" else self._global(groups, scores, ratio)
        return {g.id: self._rounded(g, raw[g.id], cap) for g in groups}

    def _plan(self, groups: list[ChannelGroup], scores: dict[int, np.ndarray], ratio: float) -> Plan:
        """The channels to remove from each group at `ratio`, least important units first."""
        return self._plan_keeps(groups, scores, self._keeps(groups, scores, ratio))

    def _plan_keeps(self, groups: list[ChannelGroup], scores: dict[int, np.ndarray], keeps: dict[int, int]) -> Plan:
        """The channels to remove so that each group keeps `keeps[id]` units, least important units first."""
        plan = []
        for group in groups:
            channels = self._removed(group, scores[group.id], keeps[group.id])
            if channels.size:
                plan.append((group, channels))
        return plan

    @staticmethod
    def _removed(group: ChannelGroup, scores: np.ndarray, n_keep: int) -> np.ndarray:
        if n_keep >= group.num_units:
            return np.zeros(0, dtype=np.int64)
        drop = _droppable(group, np.argsort(scores, kind="stable"), group.num_units - n_keep)
        return np.concatenate([group.units[u] for u in drop]) if drop else np.zeros(0, dtype=np.int64)

    def _budget(self) -> tuple[str, float]:
        return ("macs", self.target_macs) if self.target_macs is not None else ("params", self.target_params)

    def _solve_budget(self, graph: Graph, groups: list[ChannelGroup], scores: dict[int, np.ndarray],
                      analyses: AnalysisManager,
                      blocked: list[ChannelGroup]) -> tuple[dict[int, int], float, str, list[str]]:
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
        metric, fraction = self._budget()
        bindings = analyses.context.bindings(graph)
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
            trial = removed_where_possible(graph, self._plan_keeps(groups, scores, current), unsound)
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
        return current, ratio, f"{metric} {fraction:.0%}", self._budget_notes(
            metric, fraction, real, model, groups, current, {g.id: self._floor(g) for g in groups})

    def _solve_widths(self, model: BudgetModel, groups: list[ChannelGroup], scores: dict[int, np.ndarray],
                      fraction: float, blocked: list[ChannelGroup]) -> tuple[dict[int, int], float]:
        """Steps 1-3 of `_solve_budget` on the cost model: units per group and the ratio bisected."""
        metric = model.metric
        goal = fraction * model.before
        lo_ok, hi_ok = goal * (1 - BUDGET_TOLERANCE), goal * (1 + BUDGET_TOLERANCE)
        masks: dict[tuple[int, int], np.ndarray] = {}

        def mask(group: ChannelGroup, n_keep: int) -> np.ndarray:
            found = masks.get((group.id, n_keep))
            if found is None:
                found = np.zeros(group.num_channels, dtype=bool)
                found[self._removed(group, scores[group.id], n_keep)] = True
                masks[(group.id, n_keep)] = found
            return found

        def cost(keeps: dict[int, int]) -> int:
            return model.set_all({g.id: mask(g, keeps[g.id]) for g in groups})

        if model.before == 0:
            raise GraphoptError(f"prune: target_{metric}={fraction}: the graph has no {metric} to reduce")
        floor = {g.id: self._floor(g) for g in groups}
        lowest = cost(floor)
        if lowest > hi_ok:
            raise GraphoptError(self._unreachable(metric, fraction, lowest / model.before,
                                                  model.untouched() / model.before, groups, blocked))
        cap = None  # every group's own step; when even the largest ratio is over, every step 8, 4, 2 or 1
        top = self._keeps(groups, scores, 0.99)
        for finer in (8, 4, 2, 1):
            if cost(top) <= goal:
                break
            cap, top = finer, self._keeps(groups, scores, 0.99, finer)
        if cost(top) > goal:
            under, over, ratio = floor, top, 0.99
        else:
            under, over, ratio, low = top, {g.id: g.num_units for g in groups}, 0.99, 0.0
            for _ in range(20):
                mid = (low + ratio) / 2
                keeps = self._keeps(groups, scores, mid, cap)
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
                        grown = self._grown(g, current[g.id], ceiling[g.id], min(self._step(g), level, cap or level))
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

    def _floor(self, group: ChannelGroup) -> int:
        """The fewest units a budget may leave a group: 1 (local scope), `min_keep` of it (global)."""
        if self.scope == "global":
            return max(1, math.ceil(self.min_keep * group.num_units))
        return 1

    def _grown(self, group: ChannelGroup, n_keep: int, ceiling: int, step: int) -> int | None:
        """The next unit count above `n_keep` on `step` (or `ceiling` itself), None at the ceiling."""
        per_unit = group.unit_size * group.width
        for count in range(n_keep + 1, ceiling + 1):
            if (count * per_unit) % step == 0 or count == ceiling:
                return count
        return None

    def _step_of(self, group: ChannelGroup, n_keep: int) -> int:
        """The largest step (the group's own, then 8, 4, 2, 1) that `n_keep` units sit on."""
        per_unit = group.unit_size * group.width
        if n_keep == group.num_units:
            return self._step(group)
        for step in (self._step(group), 8, 4, 2, 1):
            if step <= self._step(group) and (n_keep * per_unit) % step == 0:
                return step
        return 1

    def _unreachable(self, metric: str, fraction: float, lowest: float, untouched: float,
                     groups: list[ChannelGroup], blocked: list[ChannelGroup]) -> str:
        floor = "1 unit each" if self.scope == "local" else f"min_keep={self.min_keep} of each"
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

    def _budget_notes(self, metric: str, fraction: float, achieved: float, model: BudgetModel,
                      groups: list[ChannelGroup], keeps: dict[int, int], floor: dict[int, int]) -> list[str]:
        """Why the budget's result differs from what was asked: relaxed steps, minimum widths, barriers."""
        notes = []
        if abs(achieved / fraction - 1) > 1e-3:
            notes.append(f"{metric} {achieved:.1%} achieved for {fraction:.0%} asked: the nearest the unit widths "
                         f"allow (tolerance {BUDGET_TOLERANCE:.0%})")
        relaxed: dict[tuple[int, int], list[str]] = {}
        for g in groups:
            step = self._step_of(g, keeps[g.id])
            if step < self._step(g):
                relaxed.setdefault((self._step(g), step), []).append(f"{g.id} ({keeps[g.id]}/{g.num_units})")
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

    def _rounding_notes(self, groups: list[ChannelGroup], scores: dict[int, np.ndarray], ratio: float,
                        keeps: dict[int, int]) -> list[str]:
        """Groups whose kept count is not the ratio's (round_to, minimum one unit), summarised by width."""
        raw = self._local(groups, ratio) if self.scope == "local" else self._global(groups, scores, ratio)
        off: dict[tuple[int, int, int, int], int] = {}
        for g in groups:
            if keeps[g.id] != raw[g.id]:
                key = (self._step(g), g.num_units, keeps[g.id], raw[g.id])
                off[key] = off.get(key, 0) + 1
        notes = []
        for (step, total, kept, wanted), count in sorted(off.items(), key=lambda kv: -kv[1]):
            notes.append(f"round_to={step}: {count} group(s) of {total} units keep {kept}, not {wanted} "
                         f"(the nearest multiple, ties up; round_to=1 keeps exact counts)")
        return notes

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

    def _step(self, group: ChannelGroup) -> int:
        """The group's step in positions: round_to, or automatically 16 halved while the group is
        narrower than two steps (a 16-channel group rounds to 8), so narrow layers still shrink."""
        per_unit = group.unit_size * group.width
        step = AUTO_ROUND_TO if self.round_to is None else max(1, self.round_to)
        while self.round_to is None and step > 1 and group.num_units * per_unit < 2 * step:
            step //= 2
        return step

    def _rounded(self, group: ChannelGroup, n_keep: int, cap: int | None = None) -> int:
        """The unit count nearest `n_keep` (ties up) whose positions are a multiple of the group's step.

        Nearest rather than down or up: rounding up keeps whole groups that the ratio
        meant to shrink, rounding down removes more than asked; a tie keeps more
        (48 channels at ratio 0.5 keep 32 with step 16: the report says so).
        """
        per_unit = group.unit_size * group.width
        step = self._step(group) if cap is None else min(cap, self._step(group))
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
