"""The predicted latency of a pruned graph without pruning it: `BudgetModel` with seconds for costs.

A dense node the lookup table models (passes/prune/latency_table.py) costs the table's time at its
shrunk (input, output) widths. Every other node (norms, activations, pooling, additions) shares the
rest of the measured whole-graph time in proportion to the elements it writes, so it shrinks with the
channels it carries: rest = measured dense time - the table's sum at full width (the back-end's
fusions and the calls' own overhead land there too). Like `BudgetModel`, costs are kept per node and
a group's change re-evaluates only the nodes it touches.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from graphopt.analysis.channels import ChannelGroup
from graphopt.ir.graph import Graph

from .budget import BudgetModel
from .latency_table import LatencyTable, Signature, signature_of


def latency_signatures(graph: Graph, groups: Sequence[ChannelGroup], env: dict[str, int]) -> dict[str, Signature]:
    """The table's signature of every dense node it models, by node name, with the widths groups can change."""
    touched = {space.value.name for g in groups for space in g.spaces}
    found = {}
    for node in graph.nodes:
        if node.op in ("conv", "linear") and len(node.inputs) > 1 and node.inputs[1] is not None:
            sig = signature_of(node, env, vary_in=node.inputs[0].name in touched,
                               vary_out=node.inputs[1].name in touched)
            if sig is not None:
                found[node.name] = sig
    return found


class LatencyModel(BudgetModel):
    """Predicted seconds of `graph` with some channels of `groups` removed (see the module docstring).

    `measured` is the dense graph's measured time on the back-end the table was measured on; `state`,
    `total`, `delta`, `apply` and `set_all` are `BudgetModel`'s.
    """

    def __init__(self, graph: Graph, groups: Sequence[ChannelGroup], bindings: dict[str, int],
                 table: LatencyTable, signatures: dict[str, Signature], measured: float):
        self.table, self.signatures, self.rest_per_element = table, signatures, 0.0
        super().__init__(graph, groups, bindings, "latency")  # the rest is at 0 s until it is calibrated below
        elements = sum(self._numel(self._shape(n.outputs[0], {})) for n, sig in self.items if sig is None)
        self.measured, self.table_sum = measured, self.before
        self.rest = measured - self.table_sum  # negative when the isolated nodes sum to more than the graph
        self.rest_per_element = max(self.rest, 0.0) / max(elements, 1)
        self.costs = [self._cost(i, self.state) for i in range(len(self.items))]
        self.before = self.total = sum(self.costs)

    def _items(self, graph: Graph, metric: str) -> list:
        """Every node that writes something: with its table signature, or None (it shares the rest)."""
        return [(node, self.signatures.get(node.name)) for node in graph.nodes if node.outputs]

    def _cost(self, i: int, state: dict[int, np.ndarray]) -> float:  # type: ignore[override]
        node, sig = self.items[i]
        if sig is None:
            return self.rest_per_element * self._numel(self._shape(node.outputs[0], state))
        x_shape, w_shape = self._shape(node.inputs[0], state), self._shape(node.inputs[1], state)
        c_in = x_shape[1] if sig.op == "conv" else x_shape[-1]
        return self.table.at(sig, int(c_in), int(w_shape[0]))

    def split(self) -> tuple[float, float]:
        """(seconds in the table's dense nodes, seconds in the rest) at the current state."""
        dense = sum(c for c, (_, sig) in zip(self.costs, self.items) if sig is not None)
        return dense, self.total - dense
