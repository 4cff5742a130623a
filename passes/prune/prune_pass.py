"""`prune`: structured pruning of whole channel groups, by an importance criterion and a ratio.

Each prunable group from the channel-group analysis loses its least important
units (channels, attention heads, conv groups) together across every tensor
they live in, so the pruned graph is dense, smaller and runs on the same
inputs. `scope="local"` takes `ratio` of every group; `scope="global"` ranks
units of all groups against each other (scores normalised by each group's
mean) and keeps at least `min_keep` of every group. `round_to` keeps channel
counts multiples of 8 or 16 so kernels stay fast.
"""

from __future__ import annotations

import fnmatch
import inspect
import math
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from graphopt.analysis.channels import ChannelGroup
from graphopt.analysis.removal import remove_channels
from graphopt.ir.graph import Graph
from graphopt.passmanager import AnalysisManager, Pass, PassResult, option, register_pass

from graphopt import __version__

from .criteria import CriterionContext, get_criterion
from .recipe import PruneRecipe, anchor_of, structure_hash


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
    """What `prune` removed: per group kept/total, and params/MACs before and after."""

    decisions: list[GroupDecision]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    seconds: float

    def __str__(self) -> str:
        lines = [f"prune: params {self.params_before:,} -> {self.params_after:,} "
                 f"({self.params_after / max(self.params_before, 1):.1%}), MACs {self.macs_before:,} -> "
                 f"{self.macs_after:,} ({self.macs_after / max(self.macs_before, 1):.1%}), {self.seconds:.2f} s"]
        for d in self.decisions:
            first = d.params[0] if d.params else "-"
            lines.append(f"  group {d.group}: kept {d.kept}/{d.total} {d.kind} (width {d.width}) e.g. {first}")
        return "\n".join(lines)


@register_pass("prune")
class Prune(Pass):
    """Remove the least important channels of every prunable channel group."""

    verify_tolerance = "shape"  # pruning changes outputs by design; shapes must stay
    requires = ("channel-groups",)

    ratio: float = option(0.5, "fraction of each group's units to remove (local), or of all units (global)")
    criterion: str = option("l2", "importance: l1, l2, bn_scale, taylor (needs example inputs), or a registered one")
    scope: Literal["local", "global"] = option("local", "rank units within each group or across groups")
    round_to: int = option(1, "keep channel counts (in positions) multiples of this")
    min_keep: float = option(0.1, "global scope: fraction of each group always kept")
    ignore: list[str] = option([], "node or weight names (glob patterns) whose groups stay whole")

    def run(self, graph: Graph, analyses: AnalysisManager) -> PassResult:
        if not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"prune: ratio must be in [0, 1), got {self.ratio}")
        start = time.perf_counter()
        cost_before = analyses.get("cost", graph)
        structure = structure_hash(graph)
        groups = [g for g in analyses.get("channel-groups", graph) if g.prunable and not self._ignored(g)]
        recipe = PruneRecipe(structure, graphopt_version=__version__)
        criterion = get_criterion(self.criterion)
        context = CriterionContext(graph, analyses.example_inputs)
        takes_context = len(inspect.signature(criterion).parameters) > 1
        scores = {g.id: _unit_scores(g, criterion(g, context) if takes_context else criterion(g)) for g in groups}
        keep = self._local(groups) if self.scope == "local" else self._global(groups, scores)

        decisions = []
        for group in groups:
            n_keep = self._rounded(group, keep[group.id])
            if n_keep >= group.num_units:
                continue
            drop = _droppable(group, np.argsort(scores[group.id], kind="stable"), group.num_units - n_keep)
            if not drop:
                continue
            n_keep = group.num_units - len(drop)
            channels = np.concatenate([group.units[u] for u in drop])
            recipe.groups.append({"anchor": anchor_of(group), "removed": sorted(int(c) for c in channels)})
            remove_channels(graph, group, channels)
            params = sorted({s.value.name for s in group.spaces if s.value.kind == "param"})
            decisions.append(GroupDecision(group.id, group.kind, n_keep * group.unit_size, group.num_channels,
                                           group.width, params))
        if not decisions:
            return PassResult(graph, modified=False)
        from graphopt.analysis.cost import estimate_cost

        cost_after = estimate_cost(graph, bindings=analyses.bindings(graph))
        report = PruneReport(decisions, cost_before.total_params, cost_after.total_params,
                             cost_before.total_macs, cost_after.total_macs, time.perf_counter() - start)
        graph.meta.setdefault("prune_reports", []).append(report)
        graph.meta.setdefault("prune_recipes", []).append(recipe)
        return PassResult(graph, modified=True)

    # ------------------------------------------------------------ decisions
    def _ignored(self, group: ChannelGroup) -> bool:
        names = {s.value.name for s in group.spaces}
        names |= {s.value.producer.name for s in group.spaces if s.value.producer is not None}
        return any(fnmatch.fnmatch(n, pattern) for pattern in self.ignore for n in names)

    def _local(self, groups: list[ChannelGroup]) -> dict[int, int]:
        return {g.id: max(1, g.num_units - int(math.floor(self.ratio * g.num_units))) for g in groups}

    def _global(self, groups: list[ChannelGroup], scores: dict[int, np.ndarray]) -> dict[int, int]:
        """Rank every unit by its score over its group's mean; drop the lowest `ratio` of all positions."""
        entries = []
        for g in groups:
            s = scores[g.id]
            normalised = s / (s.mean() or 1.0)
            entries += [(normalised[u], g.id) for u in range(g.num_units)]
        entries.sort(key=lambda e: e[0])
        total = sum(g.num_units for g in groups)
        budget = int(math.floor(self.ratio * total))
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
        """Raise the kept unit count until kept positions are a multiple of round_to (when possible)."""
        if self.round_to <= 1:
            return n_keep
        per_unit = group.unit_size * group.width
        for candidate in range(max(1, n_keep), group.num_units + 1):
            if (candidate * per_unit) % self.round_to == 0:
                return candidate
        return group.num_units  # no smaller count fits: keep the group whole


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


def _unit_scores(group: ChannelGroup, channel_scores: np.ndarray) -> np.ndarray:
    return np.bincount(group.unit_of, weights=channel_scores, minlength=group.num_units)
