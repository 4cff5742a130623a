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
docs/benchmarks.md). Instead of a ratio, a budget chooses the widths: target_macs /
target_params (passes/prune/budget.py) or target_latency, the latency measured on a
back-end (passes/prune/latency.py).

After removal a safety net (passes/prune/safety.py) runs the pruned graph on
the example inputs and checks it against the masked original; groups the
channel analysis got wrong are found by bisection and left unpruned, named in
the report, so an analysis gap costs compression instead of a broken model.
"""

from __future__ import annotations

import fnmatch
import inspect
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
from graphopt.registry import close_names
from graphopt.passmanager import AnalysisManager, Pass, PassResult, RunContext, option, register_pass

from graphopt import __version__

from .budget import BudgetSolver
from .criteria import CriterionContext, checked_scores, get_criterion
from .datafree import RecoveryReport, recover_data_free
from .latency import LatencyReport, LatencySolver, known_backends
from .recipe import PruneRecipe, PruneStep, anchor_of, structure_hash
from .reconstruct import ReconstructionReport, reconstruct
from .safety import Plan, SafetyNet, SafetyReport, removal_failure
from .widths import Widths


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
    reconstruction: ReconstructionReport | RecoveryReport | None = None  # what reconstruct or recover did
    safety: SafetyReport | None = None  # what the safety net checked and left unpruned (None: option off)
    achieved_ratio: float = 0.0  # fraction of the prunable groups' units removed
    target_metric: str = ""  # "macs", "params" or "latency" under a budget
    target_fraction: float | None = None  # the fraction asked to keep
    why: list[str] = field(default_factory=list)  # why asked and achieved differ (rounding, barriers, widths)
    latency: LatencyReport | None = None  # target_latency: asked, predicted, measured latency and the noise

    @property
    def macs_fraction(self) -> float:
        return self.macs_after / max(self.macs_before, 1)

    @property
    def params_fraction(self) -> float:
        return self.params_after / max(self.params_before, 1)

    @property
    def achieved_fraction(self) -> float | None:
        """The budget's metric after / before (None without a budget; latency: as measured on its back-end)."""
        if not self.target_metric:
            return None
        if self.target_metric == "latency":
            return self.latency.measured if self.latency is not None else None
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
        if self.latency is not None:
            lines.append(f"  {self.latency.summary()}")
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




BUDGET_OPTIONS = ("target_macs", "target_params", "target_latency")  # instead of a ratio; at most one


@register_pass("prune")
class Prune(Pass):
    """Remove the least important channels of every prunable channel group."""

    verify_tolerance = "shape"  # pruning changes outputs by design; shapes must stay
    requires = (CostAnalysis,)  # the groups are read in run(): which ones depends on `heads`

    ratio: float = option(0.5, "fraction of each group's units to remove (local), or of all units (global)")
    target_macs: float | None = option(None, "instead of ratio: keep this fraction of the MACs (ratio is searched)")
    target_params: float | None = option(None, "instead of ratio: keep this fraction of the parameters")
    target_latency: float | None = option(None, "instead of ratio: keep this fraction of the latency measured on "
                                                "latency_backend (channels go where they buy the most time)")
    latency_backend: str | None = option(None, "target_latency: measured on onnx, torch or tvm (default: onnx; "
                                               "optimize: its own backend)")
    latency_batch: int = option(1, "target_latency: the batch size the latency is measured at")
    latency_threads: int = option(1, "target_latency: the intra-op threads the latency is measured with")
    latency_cache: str | None = option(None, "target_latency: the lookup table's cache directory (default "
                                             "$GRAPHOPT_LATENCY_CACHE or ~/.cache/graphopt/latency; '': none)")
    latency_max_measurements: int = option(2000, "target_latency: the most table points measured in one run "
                                                 "(about 0.03 s each); needing more is an error")
    criterion: str = option("l2", "importance: l1, l2, bn_scale, taylor, activation, fluctuation, or a registered one")
    scope: Literal["local", "global"] = option("local", "rank units within each group or across groups")
    round_to: int | None = option(None, "kept channel counts (in positions) are the multiple of this nearest the "
                                        "ratio; default: 16, or 8, 4, 2 for groups too narrow for it; 1: exact")
    min_keep: float = option(0.1, "global scope and target_latency: fraction of each group always kept")
    ignore: list[str] = option([], "node or weight names (glob patterns) whose groups stay whole")
    heads: bool = option(True, "attention: remove whole heads (True) or the same head_dim positions of every head (False)")
    reconstruct: bool = option(False, "refit the layers reading pruned channels by least squares on calibration data")
    damp: float = option(0.01, "reconstruct, recover: ridge term, relative to the mean diagonal of X^T X (or of "
                               "the kept channels' modelled covariance)")
    recover: Literal["data-free"] | None = option(None, "data-free: fold each removed channel into the kept ones of "
                                                        "the layers reading it, from the weights alone (no data)")
    safety: bool = option(True, "check the pruned graph on the example inputs (it runs; exact groups equal masking) "
                                "and leave unpruned, found by bisection, the groups that fail")
    safety_max_checks: int = option(64, "the safety net's budget of checks (each runs the graph twice); "
                                         "needing more is an error")

    def validate(self) -> None:
        """Ranges and exclusive options, checked when the pass is built (before tracing, in `optimize`)."""
        if not 0.0 <= self.ratio < 1.0:
            raise self.invalid("ratio", f"the fraction of units to remove must be in [0, 1), got {self.ratio}")
        targets = [name for name in BUDGET_OPTIONS if getattr(self, name) is not None]
        for name in targets:
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise self.invalid(name, f"must be the fraction to keep, in (0, 1]; got {value}")
        if len(targets) >= 2:
            raise self.invalid(targets[1], f"give {targets[0]} or {targets[1]}, not both")
        if targets and "ratio" in self._given:
            raise self.invalid("ratio", f"give ratio or {targets[0]}, not both (the ratio is searched for the target)")
        self._validate_latency()
        try:
            get_criterion(self.criterion)
        except GraphoptError as exc:
            raise self.invalid("criterion", str(exc)) from None
        if self.round_to is not None and self.round_to < 1:
            raise self.invalid("round_to", f"must be at least 1 (1: exact counts), got {self.round_to}")
        if not 0.0 <= self.min_keep <= 1.0:
            raise self.invalid("min_keep", f"the fraction of each group kept must be in [0, 1], got {self.min_keep}")
        if self.recover is not None and self.reconstruct:
            raise self.invalid("recover", "give reconstruct=True (refit on calibration data) or recover, not both")
        if self.damp < 0.0:
            raise self.invalid("damp", f"the ridge term cannot be negative, got {self.damp}")
        if self.safety_max_checks < 1:
            raise self.invalid("safety_max_checks", f"must be at least 1, got {self.safety_max_checks}")

    def _validate_latency(self) -> None:
        backend = self.latency_backend
        if backend is not None and backend not in known_backends():
            raise self.invalid("latency_backend", f"unknown back-end {backend!r}{close_names(backend, known_backends())}"
                                                  f"; choose one of {', '.join(known_backends())}")
        for name in ("latency_batch", "latency_threads"):
            if getattr(self, name) < 1:
                raise self.invalid(name, f"must be at least 1, got {getattr(self, name)}")
        if self.latency_max_measurements < 0:
            raise self.invalid("latency_max_measurements", f"cannot be negative, got {self.latency_max_measurements}")

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

        widths = self._widths()
        budget = self._budget_solver(analyses.context)
        blocked = [g for g in found if not g.prunable or self._ignored(g)]
        bindings = analyses.context.bindings(graph)
        if budget is not None:
            solution = budget.solve(graph, groups, scores, bindings, blocked)
            keeps, ratio, why = solution.keeps, solution.ratio, solution.why
            latency = getattr(solution, "report", None)
        else:
            keeps, ratio, latency = widths.keeps(groups, scores, self.ratio), self.ratio, None
            why = widths.rounding_notes(groups, scores, ratio, keeps)
        plan = widths.plan(groups, scores, keeps)
        if not plan:
            return PassResult(graph, modified=False)

        original = graph.clone() if self.reconstruct or self.recover or self.safety else None
        graph, plan, safety = self._remove(graph, plan, original, analyses.context)
        if safety is not None and safety.excluded:
            left = ", ".join(str(e.group) for e in safety.excluded)
            if budget is not None:
                graph, plan, ratio, why, latency = self._retarget(budget, original, groups, scores, analyses,
                                                                  safety, blocked)
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
        elif self.recover == "data-free":
            reconstruction = recover_data_free(original, graph, plan, kept_outputs, damp=self.damp)

        cost_after = estimate_cost(graph, bindings=analyses.context.bindings(graph))
        removed_units = sum(np.unique(group.unit_of[channels]).size for group, channels in plan)
        report = PruneReport(decisions, cost_before.total_params, cost_after.total_params,
                             cost_before.total_macs, cost_after.total_macs, time.perf_counter() - start,
                             ratio, budget.target if budget else "", reconstruction, safety,
                             achieved_ratio=removed_units / max(sum(g.num_units for g in groups), 1),
                             target_metric=budget.metric if budget else "",
                             target_fraction=budget.fraction if budget else None, why=why, latency=latency)
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

    def _retarget(self, budget: BudgetSolver, original: Graph, groups: list[ChannelGroup],
                  scores: dict[int, np.ndarray], analyses: AnalysisManager, safety: SafetyReport,
                  blocked: list[ChannelGroup]) -> tuple[Graph, Plan, float, list[str], LatencyReport | None]:
        """Solve the budget again without the groups the net left whole, so the target holds on the others.

        The first solve counted those groups' savings; one more solve and
        removal (checked by the net too) makes the other groups give them. Groups
        this second check excludes join the report; the cost is then reported as is.
        """
        excluded = {e.group for e in safety.excluded}
        rest = [g for g in groups if g.id not in excluded]
        solution = budget.solve(original, rest, scores, analyses.context.bindings(original),
                                blocked + [g for g in groups if g.id in excluded])
        graph, plan, again = self._remove(original.clone(), self._widths().plan(rest, scores, solution.keeps),
                                          original, analyses.context)
        safety.checks += again.checks
        safety.seconds += again.seconds
        safety.excluded += again.excluded
        return graph, plan, solution.ratio, solution.why, getattr(solution, "report", None)

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

    # ------------------------------------------------------------ decisions
    def _widths(self) -> Widths:
        return Widths(self.round_to, self.scope, self.min_keep)

    def _budget_solver(self, context: RunContext) -> BudgetSolver | LatencySolver | None:
        """The solver of target_macs / target_params / target_latency, None under a plain ratio."""
        if self.target_latency is not None:
            return LatencySolver(self._widths(), self.target_latency, backend=self.latency_backend or "onnx",
                                 threads=self.latency_threads, batch=self.latency_batch, cache_dir=self.latency_cache,
                                 max_measurements=self.latency_max_measurements,
                                 example_inputs=context.example_inputs)
        if self.target_macs is not None:
            return BudgetSolver(self._widths(), "macs", self.target_macs)
        if self.target_params is not None:
            return BudgetSolver(self._widths(), "params", self.target_params)
        return None

    def _ignored(self, group: ChannelGroup) -> bool:
        names = {s.value.name for s in group.spaces}
        names |= {s.value.producer.name for s in group.spaces if s.value.producer is not None}
        return any(fnmatch.fnmatch(n, pattern) for pattern in self.ignore for n in names)


def _kept_weight_positions(group: ChannelGroup, channels: np.ndarray) -> dict[tuple[str, int], np.ndarray]:
    """Kept positions of each single-axis producer weight, by (weight, axis): which outputs of a layer survive."""
    return {(s.value.name, s.axes[0]): np.flatnonzero(~np.isin(labels, channels))
            for s, labels in group.producers() if len(s.axes) == 1}


def _unit_scores(group: ChannelGroup, channel_scores: np.ndarray) -> np.ndarray:
    return np.bincount(group.unit_of, weights=channel_scores, minlength=group.num_units)
