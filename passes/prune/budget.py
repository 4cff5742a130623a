"""MACs/params of a pruned graph without pruning it: the cost model the prune pass's budget solver searches with.

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

from types import SimpleNamespace
from typing import Sequence

import numpy as np

from graphopt.analysis.channels import ChannelGroup
from graphopt.analysis.rule_columns import mac_rule_for
from graphopt.ir import dims as D
from graphopt.ir.graph import Graph, Value


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
        self.items: list = []
        if metric == "macs":
            for node in graph.nodes:
                rule = mac_rule_for(node.op)
                if rule is not None:
                    self.items.append((node, rule))
        else:
            counted: set[int] = set()
            for node in graph.nodes:
                for value in node.inputs:
                    if value is not None and value.kind == "param" and id(value) not in counted:
                        counted.add(id(value))
                        self.items.append((value, None))
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
