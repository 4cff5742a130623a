"""The core's execution interface: run a graph with each op's reference torch kernel, no back-end needed.

Passes and the pass manager need to execute graphs (the Verify instrument
compares outputs before and after a pass, constant folding evaluates nodes,
calibration-driven pruning reads activations and gradients), and the core must
not import a back-end to do so. Kernels come from the op table's
"torch_kernel" column, the same functions `graphopt.backends.torch.to_module`
calls, so the numbers are the torch back-end's.

`GraphInterpreter` runs a graph node by node on several batches at once, with
a hook between nodes. Calibration-driven passes need what flows into a given
node (activation statistics for pruning criteria, least-squares reconstruction
of a layer from its inputs) and sometimes need to change a node's weights
before the layer runs (reconstruction refits each layer on the inputs the
already-refitted layers above it produce). Running all calibration batches in
lockstep lets a hook see every batch of a node's inputs at once; values are
freed after their last use, so memory is bounded by the widest cut of the
graph, not its depth.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Mapping, Sequence

import sympy
import torch
from torch.utils import _pytree as pytree

from graphopt.errors import GraphoptError
from graphopt.ir import dims as D
from graphopt.ir import op_table
from graphopt.ir.graph import Graph, Node, Value
from graphopt.ir.ops import CREATION, TORCH_KERNEL, TRAINING_AWARE, has_trait

__all__ = ["GraphInterpreter", "run_graph", "run_graph_float64", "trainable_weights", "structured_outputs",
           "torch_kernel", "output_spec", "mismatch", "relative_error"]


def torch_kernel(node: Node) -> Callable[..., Any]:
    """The torch kernel of `node`'s op, or a `GraphoptError` naming the op and the node."""
    fn = op_table.get_op_attr(node.op, TORCH_KERNEL)
    if fn is None:
        raise GraphoptError(f"no torch kernel for op '{node.op}' ({node.where()}); add one with "
                            f"graphopt.backends.torch.register_kernel({node.op!r}, fn) or "
                            f"graphopt.ir.op_table.register_op_attr({node.op!r}, {TORCH_KERNEL!r}, fn)")
    return fn


class GraphInterpreter:
    """Evaluates `graph` on a list of input batches, one node at a time (inference semantics).

    Iterate `nodes()` to step through the graph: each yielded node has not run yet,
    so `inputs(node)` are its arguments and its weights may still be replaced;
    after the loop, `outputs()` are the graph outputs per batch. Driving two
    graphs in lockstep (a graph and its transformed copy) is `execute(node)` on
    each, in graph order.

    `weights` replaces weight tensors by name (float64 copies, tensors that
    require grad); with `grad=True` the kernels run under autograd, so
    gradients of a loss on the outputs reach those tensors. `keep_values=True`
    keeps every intermediate value for `value()` after the run (for debugging
    tools that compare them; it costs the memory of all of them at once).
    """

    def __init__(self, graph: Graph, batches: Sequence[Sequence[torch.Tensor]], *,
                 weights: Mapping[str, torch.Tensor] | None = None, grad: bool = False,
                 keep_values: bool = False) -> None:
        if not batches:
            raise GraphoptError("GraphInterpreter needs at least one batch of inputs")
        self.graph = graph
        self.batches = [tuple(b) for b in batches]
        for batch in self.batches:
            if len(batch) != len(graph.inputs):
                raise GraphoptError(f"graph '{graph.name}' takes {len(graph.inputs)} inputs, a batch has {len(batch)}")
        unknown = sorted(set(weights or ()) - set(graph.weights))
        if unknown:
            raise GraphoptError(f"graph '{graph.name}' has no weight {unknown[0]!r} to replace")
        self._weights = dict(weights or {})
        self._grad = grad
        symbols = graph.symbols()
        self._bindings = [{s: int(b[i].shape[a]) for s, (i, a) in symbols.items()} for b in self.batches]
        self._env: dict[int, list[Any]] = {id(v): [b[i] for b in self.batches] for i, v in enumerate(graph.inputs)}
        self._last_use = {} if keep_values else _last_uses(graph)

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
            return [self._weights.get(value.name, value.data)] * len(self.batches)
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
        fn = torch_kernel(node)
        training_aware, creation = has_trait(node.op, TRAINING_AWARE), has_trait(node.op, CREATION)
        args = self.inputs(node)
        results = []
        for b, env in enumerate(self._bindings):
            kwargs = {k: _resolve(v, env) for k, v in node.attrs.items()}
            if training_aware:
                kwargs["training"] = False
            if creation and self.batches[b]:
                kwargs["device"] = self.batches[b][0].device
            with contextlib.nullcontext() if self._grad else torch.no_grad():
                results.append(fn(*(a[b] for a in args), **kwargs))
        if len(node.outputs) == 1:
            self._env[id(node.outputs[0])] = results
        else:
            for i, out in enumerate(node.outputs):
                self._env[id(out)] = [r[i] for r in results]


def run_graph(graph: Graph, inputs: Sequence[Any], *, weights: Mapping[str, torch.Tensor] | None = None,
              grad: bool = False) -> list[torch.Tensor]:
    """The graph's outputs on one batch of `inputs`, flattened (what `to_module(graph)(*inputs)` returns)."""
    outputs = GraphInterpreter(graph, [tuple(inputs)], weights=weights, grad=grad).run()[0]
    return [out for out in outputs if isinstance(out, torch.Tensor)]


def run_graph_float64(graph: Graph, inputs: Sequence[Any]) -> list[torch.Tensor]:
    """The graph's outputs with every floating weight and input in float64 (the 'true' values)."""
    weights = {name: v.data.double() for name, v in graph.weights.items()
               if v.data is not None and v.data.is_floating_point()}
    inputs = [x.double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in inputs]
    outputs = run_graph(graph, inputs, weights=weights)
    return [out.double() if out.is_floating_point() else out for out in outputs]


def mismatch(actual: Any, expected: Any, *, rtol: float, atol: float, min_scale: float = 0.0) -> str | None:
    """How `actual` misses `expected`, or None when it is within tolerance: the one output comparison.

    Floats: each element within `atol * scale + rtol * |expected|`, where scale is the largest finite
    |expected| (at least `min_scale`), so the absolute term follows the output's magnitude; NaN and inf
    must sit at the same places. Integers and booleans must be equal; other values compare with `==`.
    The safety net of pruning, the batch-1 trace check and ONNX Runtime's first_difference all use it.
    """
    if not isinstance(actual, torch.Tensor) or not isinstance(expected, torch.Tensor):
        return None if type(actual) is type(expected) and bool(actual == expected) else f"{actual!r} instead of {expected!r}"
    if tuple(actual.shape) != tuple(expected.shape):
        return f"shape {tuple(actual.shape)} instead of {tuple(expected.shape)}"
    if not (expected.is_floating_point() or expected.is_complex()):
        wrong = int((actual != expected.to(actual.dtype) if actual.dtype != expected.dtype else actual != expected).sum())
        return f"{wrong} of {actual.numel()} elements differ" if wrong else None
    actual = actual.to(expected.dtype)
    # whole-tensor ops only: a language model's logits are millions of elements
    magnitude = torch.where(torch.isfinite(expected), expected.abs(), torch.zeros((), dtype=expected.abs().dtype))
    scale = max(min_scale, float(magnitude.max()) if expected.numel() else 0.0)
    if torch.allclose(actual, expected, rtol=rtol, atol=atol * scale, equal_nan=True):
        return None
    finite = torch.isfinite(actual)
    if not torch.equal(finite, torch.isfinite(expected)) or not expected.is_complex() and not (
            torch.equal(torch.isnan(actual), torch.isnan(expected))
            and torch.equal((actual > 0)[~finite], (expected > 0)[~finite])):
        return "NaN or inf at other places"
    error = float(torch.where(finite, (actual - expected).abs(), torch.zeros_like(magnitude)).max())
    return f"max error {error:.3g} at output scale {scale:.3g}"


def relative_error(reference: Sequence[Sequence[torch.Tensor]], outputs: Sequence[Sequence[torch.Tensor]]) -> float:
    """||outputs - reference|| / ||reference|| over every floating output of every batch (in float64).

    How far a transformed graph's outputs moved: quantization's sensitivity and error bound and layer
    dropping's "loss" score both read it.
    """
    num = den = 0.0
    for ref_batch, out_batch in zip(reference, outputs):
        for ref, out in zip(ref_batch, out_batch):
            if ref.is_floating_point():
                num += float((out.double() - ref.double()).pow(2).sum())
                den += float(ref.double().pow(2).sum())
    return (num / den) ** 0.5 if den > 0 else num ** 0.5


def trainable_weights(graph: Graph) -> dict[str, torch.Tensor]:
    """The graph's floating-point params as fresh leaf tensors that require grad, for `run_graph(weights=...)`.

    They share memory with the graph's tensors; gradients land on them, never on the graph.
    """
    return {name: v.data.detach().requires_grad_(True) for name, v in graph.params().items()
            if v.data is not None and v.data.is_floating_point()}


def output_spec(graph: Graph, num_outputs: int) -> pytree.TreeSpec | None:
    """The traced model's output structure, when it describes the graph's `num_outputs` flat outputs."""
    spec = graph.meta.get("out_spec")
    if spec is not None and spec.num_leaves == num_outputs and not (spec.is_leaf() and num_outputs == 1):
        return spec
    return None


def structured_outputs(graph: Graph, outputs: Sequence[torch.Tensor]) -> Any:
    """Flat graph outputs rebuilt into the traced model's output structure (tuple, dict, dataclass), as the
    module from `to_module` returns them: what a user's `loss(output, target)` expects."""
    spec = output_spec(graph, len(outputs))
    if spec is not None:
        return pytree.tree_unflatten(list(outputs), spec)
    return outputs[0] if len(outputs) == 1 else tuple(outputs)


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
    outputs = {id(v) for v in graph.outputs}  # one set, not a scan of the outputs per value
    freed: dict[int, list[Value]] = {}
    for key, node in last.items():
        if key not in outputs:
            freed.setdefault(id(node), []).append(values[key])
    return freed
