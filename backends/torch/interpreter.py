"""Run a graph node by node on several batches at once, with a hook between nodes.

`to_module` is the fast way to run a graph; this is the way to look inside it.
Calibration-driven passes need what flows into a given node (activation
statistics for pruning criteria, least-squares reconstruction of a layer from
its inputs) and sometimes need to change a node's weights before the layer runs
(reconstruction refits each layer on the inputs the already-refitted layers
above it produce). Running all calibration batches in lockstep lets a hook see
every batch of a node's inputs at once; values are freed after their last use,
so memory is bounded by the widest cut of the graph, not its depth.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import sympy
import torch

from graphopt.errors import GraphoptError
from graphopt.ir import dims as D
from graphopt.ir.graph import Graph, Node, Value

from .kernels import CREATION_OPS, KERNELS, TRAINING_AWARE



class GraphInterpreter:
    """Evaluates `graph` on a list of input batches, one node at a time (inference semantics).

    Iterate `nodes()` to step through the graph: each yielded node has not run yet,
    so `inputs(node)` are its arguments and its weights may still be replaced;
    after the loop, `outputs()` are the graph outputs per batch. Driving two
    graphs in lockstep (a graph and its transformed copy) is `execute(node)` on
    each, in graph order.
    """

    def __init__(self, graph: Graph, batches: Sequence[Sequence[torch.Tensor]]) -> None:
        if not batches:
            raise GraphoptError("GraphInterpreter needs at least one batch of inputs")
        self.graph = graph
        self.batches = [tuple(b) for b in batches]
        for batch in self.batches:
            if len(batch) != len(graph.inputs):
                raise GraphoptError(f"graph '{graph.name}' takes {len(graph.inputs)} inputs, a batch has {len(batch)}")
        symbols = graph.symbols()
        self._bindings = [{s: int(b[i].shape[a]) for s, (i, a) in symbols.items()} for b in self.batches]
        self._env: dict[int, list[Any]] = {id(v): [b[i] for b in self.batches] for i, v in enumerate(graph.inputs)}
        self._last_use = _last_uses(graph)

    def nodes(self) -> Iterator[Node]:
        """Yield each node before running it; run it when the caller asks for the next one."""
        for node in self.graph.nodes:
            yield node
            self.execute(node)

    def execute(self, node: Node) -> None:
        """Run `node` (its inputs must be computed), then free the values nothing later reads."""
        self._run(node)
        for value in self._last_use.get(id(node), ()):
            self._env.pop(id(value), None)

    def run(self) -> list[list[torch.Tensor]]:
        """Run every node; the graph outputs, per batch."""
        for _ in self.nodes():
            pass
        return self.outputs()

    def value(self, value: Value) -> list[Any]:
        """`value` per batch: a weight's tensor, or what an already-run node produced."""
        if value.is_weight:
            return [value.data] * len(self.batches)
        try:
            return self._env[id(value)]
        except KeyError:
            raise GraphoptError(f"%{value.name} is not computed yet (or no longer needed)") from None

    def inputs(self, node: Node) -> list[list[Any]]:
        """The node's inputs, per input then per batch (None for an absent optional input)."""
        return [[None] * len(self.batches) if v is None else self.value(v) for v in node.inputs]

    def outputs(self) -> list[list[torch.Tensor]]:
        return [[self.value(v)[b] for v in self.graph.outputs] for b in range(len(self.batches))]

    def _run(self, node: Node) -> None:
        fn = KERNELS.get(node.op)
        if fn is None:
            raise GraphoptError(f"no torch kernel for op '{node.op}' ({node.where()}); add one with "
                                "graphopt.backends.torch.register_kernel")
        args = self.inputs(node)
        results = []
        for b, env in enumerate(self._bindings):
            kwargs = {k: _resolve(v, env) for k, v in node.attrs.items()}
            if node.op in TRAINING_AWARE:
                kwargs["training"] = False
            if node.op in CREATION_OPS and self.batches[b]:
                kwargs["device"] = self.batches[b][0].device
            with torch.no_grad():
                results.append(fn(*(a[b] for a in args), **kwargs))
        if len(node.outputs) == 1:
            self._env[id(node.outputs[0])] = results
        else:
            for i, out in enumerate(node.outputs):
                self._env[id(out)] = [r[i] for r in results]


def _resolve(obj: Any, env: dict[str, int]) -> Any:
    if isinstance(obj, sympy.Basic):
        return D.evaluate(obj, env)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_resolve(o, env) for o in obj)
    return obj


def _last_uses(graph: Graph) -> dict[int, list[Value]]:
    """id(node) -> the values no later node reads (graph outputs are kept to the end)."""
    last: dict[int, Node] = {}
    values: dict[int, Value] = {}
    for node in graph.nodes:
        for v in node.inputs:
            if v is not None and not v.is_weight:
                last[id(v)] = node
                values[id(v)] = v
    keep = {id(v) for v in graph.outputs}
    freed: dict[int, list[Value]] = {}
    for key, node in last.items():
        if key not in keep:
            freed.setdefault(id(node), []).append(values[key])
    return freed
