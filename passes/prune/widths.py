"""How many units each channel group keeps, and which: the prune pass's width policy.

A ratio (local: of every group; global: of all units, ranked across groups)
gives raw counts; `round_to` moves each to the nearest count on the group's
step (16 positions by default, oneDNN's channel block); the least important
units go first, never emptying a tensor. The ratio path and the budget solver
(passes/prune/budget.py) both use this one policy, so a budget's widths sit on
the same steps a ratio's do unless the report says a step was relaxed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from graphopt.analysis.channels import ChannelGroup

from .safety import Plan

AUTO_ROUND_TO = 16  # oneDNN's channel block on AVX-512 CPUs


@dataclass(frozen=True)
class Widths:
    """The prune pass's `round_to`, `scope` and `min_keep`, as the rules that turn ratios into unit counts."""

    round_to: int | None = None
    scope: Literal["local", "global"] = "local"
    min_keep: float = 0.1

    def raw(self, groups: list[ChannelGroup], scores: dict[int, np.ndarray], ratio: float) -> dict[int, int]:
        """Units each group keeps at `ratio` before rounding to steps."""
        return self.by_group(groups, ratio) if self.scope == "local" else self.across_groups(groups, scores, ratio)

    def keeps(self, groups: list[ChannelGroup], scores: dict[int, np.ndarray], ratio: float,
              cap: int | None = None) -> dict[int, int]:
        """Units each group keeps at `ratio`, rounded to the group's step, at most `cap` (see `rounded`)."""
        raw = self.raw(groups, scores, ratio)
        return {g.id: self.rounded(g, raw[g.id], cap) for g in groups}

    def plan(self, groups: list[ChannelGroup], scores: dict[int, np.ndarray], keeps: dict[int, int]) -> Plan:
        """The channels to remove so that each group keeps `keeps[id]` units, least important units first."""
        plan = []
        for group in groups:
            channels = self.removed(group, scores[group.id], keeps[group.id])
            if channels.size:
                plan.append((group, channels))
        return plan

    @staticmethod
    def removed(group: ChannelGroup, scores: np.ndarray, n_keep: int) -> np.ndarray:
        if n_keep >= group.num_units:
            return np.zeros(0, dtype=np.int64)
        drop = droppable_units(group, np.argsort(scores, kind="stable"), group.num_units - n_keep)
        return np.concatenate([group.units[u] for u in drop]) if drop else np.zeros(0, dtype=np.int64)


    def by_group(self, groups: list[ChannelGroup], ratio: float) -> dict[int, int]:
        return {g.id: max(1, g.num_units - int(math.floor(ratio * g.num_units))) for g in groups}

    def across_groups(self, groups: list[ChannelGroup], scores: dict[int, np.ndarray], ratio: float) -> dict[int, int]:
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

    def step(self, group: ChannelGroup) -> int:
        """The group's step in positions: round_to, or automatically 16 halved while the group is
        narrower than two steps (a 16-channel group rounds to 8), so narrow layers still shrink."""
        per_unit = group.unit_size * group.width
        step = AUTO_ROUND_TO if self.round_to is None else max(1, self.round_to)
        while self.round_to is None and step > 1 and group.num_units * per_unit < 2 * step:
            step //= 2
        return step

    def rounded(self, group: ChannelGroup, n_keep: int, cap: int | None = None) -> int:
        """The unit count nearest `n_keep` (ties up) whose positions are a multiple of the group's step.

        Nearest rather than down or up: rounding up keeps whole groups that the ratio
        meant to shrink, rounding down removes more than asked; a tie keeps more
        (48 channels at ratio 0.5 keep 32 with step 16: the report says so).
        """
        per_unit = group.unit_size * group.width
        step = self.step(group) if cap is None else min(cap, self.step(group))
        fits = [c for c in range(1, group.num_units + 1) if (c * per_unit) % step == 0]
        if not fits:
            return group.num_units  # no count fits: keep the group whole
        return min(fits, key=lambda c: (abs(c - n_keep), -c))



    def floor(self, group: ChannelGroup) -> int:
        """The fewest units a budget may leave a group: 1 (local scope), `min_keep` of it (global)."""
        if self.scope == "global":
            return max(1, math.ceil(self.min_keep * group.num_units))
        return 1

    def grown(self, group: ChannelGroup, n_keep: int, ceiling: int, step: int) -> int | None:
        """The next unit count above `n_keep` on `step` (or `ceiling` itself), None at the ceiling."""
        per_unit = group.unit_size * group.width
        for count in range(n_keep + 1, ceiling + 1):
            if (count * per_unit) % step == 0 or count == ceiling:
                return count
        return None

    def step_of(self, group: ChannelGroup, n_keep: int) -> int:
        """The largest step (the group's own, then 8, 4, 2, 1) that `n_keep` units sit on."""
        per_unit = group.unit_size * group.width
        if n_keep == group.num_units:
            return self.step(group)
        for step in (self.step(group), 8, 4, 2, 1):
            if step <= self.step(group) and (n_keep * per_unit) % step == 0:
                return step
        return 1


    def rounding_notes(self, groups: list[ChannelGroup], scores: dict[int, np.ndarray], ratio: float,
                        keeps: dict[int, int]) -> list[str]:
        """Groups whose kept count is not the ratio's (round_to, minimum one unit), summarised by width."""
        raw = self.raw(groups, scores, ratio)
        off: dict[tuple[int, int, int, int], int] = {}
        for g in groups:
            if keeps[g.id] != raw[g.id]:
                key = (self.step(g), g.num_units, keeps[g.id], raw[g.id])
                off[key] = off.get(key, 0) + 1
        notes = []
        for (step, total, kept, wanted), count in sorted(off.items(), key=lambda kv: -kv[1]):
            notes.append(f"round_to={step}: {count} group(s) of {total} units keep {kept}, not {wanted} "
                         f"(the nearest multiple, ties up; round_to=1 keeps exact counts)")
        return notes


def droppable_units(group: ChannelGroup, order: np.ndarray, count: int) -> list[int]:
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


class RemovalMasks:
    """The boolean mask of the channels a group loses when it keeps `n_keep` units, memoised: the budget
    solvers price many unit counts of every group, each through a mask."""

    def __init__(self, widths: Widths, scores: dict[int, np.ndarray]):
        self.widths, self.scores = widths, scores
        self._found: dict[tuple[int, int], np.ndarray] = {}

    def __call__(self, group: ChannelGroup, n_keep: int) -> np.ndarray:
        found = self._found.get((group.id, n_keep))
        if found is None:
            found = np.zeros(group.num_channels, dtype=bool)
            found[self.widths.removed(group, self.scores[group.id], n_keep)] = True
            self._found[(group.id, n_keep)] = found
        return found
