"""Which units become redundant: a share of every group (local), or the least salient across groups (global).

Local is `prune{ratio=...}`'s rule: every group loses the same share, so no layer
is hollowed out and the result is predictable. Global ranks units of all groups
against each other (each score is already relative to its group's mean, as the
prune pass's global scope does), so a layer with many weak units gives more of
them; `min_keep` of every group always stays. Either way a tensor keeps at least
one of its units, which removal needs (`droppable_units`, the prune pass's rule in passes/prune/widths.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from graphopt.errors import GraphoptError
from graphopt.passes.prune.widths import droppable_units

from .units import UnitGroup

Scope = Literal["local", "global"]


@dataclass(frozen=True)
class Targets:
    """How many units end redundant: `limits` per group (local: its count; global: its most), `total` in all."""

    scope: Scope
    limits: list[int]
    total: int

    @classmethod
    def of(cls, groups: list[UnitGroup], sparsity: float, scope: Scope = "local", min_keep: float = 0.1) -> Targets:
        sizes = [g.num_units for g in groups]
        if scope == "local":
            limits = [min(math.floor(sparsity * n), n - 1) for n in sizes]
            return cls(scope, limits, sum(limits))
        if scope != "global":
            raise GraphoptError(f"scope must be 'local' (a share of every group) or 'global' (ranked across "
                                f"groups), got {scope!r}")
        if not 0.0 <= min_keep < 1.0:
            raise GraphoptError(f"min_keep is the fraction of every group kept, in [0, 1); got {min_keep}")
        limits = [n - max(1, math.ceil(min_keep * n)) for n in sizes]
        return cls(scope, limits, min(math.floor(sparsity * sum(sizes)), sum(limits)))

    def wanted(self, redundant: list[np.ndarray], scores: list[np.ndarray], fraction: float) -> list[int]:
        """Each group's redundant count once `fraction` of the target is reached (never fewer than now)."""
        have = [int(r.sum()) for r in redundant]
        if self.scope == "local":
            return [max(h, min(math.floor(fraction * t + 1e-9), t)) for h, t in zip(have, self.limits)]
        need = math.floor(fraction * self.total + 1e-9) - sum(have)
        candidates = sorted((float(s[u]), i, int(u)) for i, (r, s) in enumerate(zip(redundant, scores))
                            for u in np.flatnonzero(~r))
        wants = list(have)
        for _, i, _ in candidates:
            if need <= 0:
                break
            if wants[i] < self.limits[i]:
                wants[i] += 1
                need -= 1
        return wants


def grow(groups: list[UnitGroup], redundant: list[np.ndarray], scores: list[np.ndarray], targets: Targets,
         fraction: float) -> list[list[int]]:
    """The units that join each group's redundant set at `fraction` of the target: the least salient first."""
    new = []
    for group, chosen, score, want in zip(groups, redundant, scores, targets.wanted(redundant, scores, fraction)):
        if want <= int(chosen.sum()):
            new.append([])
            continue
        order = np.concatenate([np.flatnonzero(chosen),
                                np.flatnonzero(~chosen)[np.argsort(score[~chosen], kind="stable")]])
        new.append([u for u in droppable_units(group.group, order, want) if not chosen[u]])
    return new
