"""Where ONNX Runtime and the torch kernels part ways on a graph: the first node whose outputs differ.

When a lowered graph's outputs differ from the torch back-end's, the output
difference says nothing about its cause. `first_difference(graph, inputs)`
runs the graph once in the interpreter (every intermediate kept) and once in
ONNX Runtime with every lowered tensor exposed as an output (graph
optimisations off, so each tensor is the lowering's own), then walks the IR
in order and names the first node whose output differs, with its source line.

One cause gets its own diagnosis because it is a property of the model, not a
lowering bug: a `topk` over exactly equal scores. torch does not define the
order of ties; ONNX Runtime puts the lower index first. Models that select
k entries out of rows where fewer than k are unmasked (a sparse-attention
indexer on a short sequence) then depend on that order, and no lowering can
reproduce torch's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import onnx
import torch

from graphopt.ir.graph import Graph, Node
from graphopt.ir.interpreter import GraphInterpreter, mismatch
from graphopt.backends.onnx.export import lower

__all__ = ["Difference", "first_difference"]


@dataclass
class Difference:
    """The first IR node whose output ONNX Runtime computes differently from the torch kernel."""

    node: Node
    output: int  # which of the node's outputs
    detail: str  # what differs, e.g. "max abs diff 0.3 (max |value| 2.1)"
    tie_order: bool = False  # a top-k that ranks equal scores in another order: the model depends on ties

    def __str__(self) -> str:
        return f"{self.node.where()}, output {self.output}: {self.detail}"


def first_difference(graph: Graph, inputs: Sequence[Any], *, rtol: float = 1e-4, atol: float = 1e-4,
                     **lower_options: Any) -> Difference | None:
    """The first node (in graph order) whose output differs between ONNX Runtime and torch, or None.

    A float output differs when some element is off by more than
    `atol * max(1, max|torch value|) + rtol * |torch value|` (`mismatch`); integer and boolean outputs
    must be equal.
    Outputs the lowering does not keep under their IR name (fused or folded
    away) are not compared; the walk goes on to the next node.
    `lower_options` are those of `lower` (opset, fused_attention, ...).
    """
    import onnxruntime as ort

    lowered = lower(graph, **lower_options)
    model = lowered.inline()
    produced = {name for node in model.graph.node for name in node.output if name}
    exposed = {ir: name for ir, name in lowered.value_names.items() if name in produced}
    del model.graph.output[:]
    for name in sorted(set(exposed.values())):
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feeds = {i.name: torch.as_tensor(x).detach().cpu().numpy() for i, x in zip(session.get_inputs(), inputs)}
    names = [o.name for o in session.get_outputs()]
    ort_values = dict(zip(names, session.run(names, feeds)))

    interpreter = GraphInterpreter(graph, [tuple(inputs)], keep_values=True)
    interpreter.run()
    for node in graph.nodes:
        for index, value in enumerate(node.outputs):
            if value.name not in exposed:
                continue
            ours = interpreter.value(value)[0]
            if not isinstance(ours, torch.Tensor):
                continue
            theirs = torch.from_numpy(np.asarray(ort_values[exposed[value.name]]))
            detail = _differs(ours, theirs, rtol, atol)
            if detail:
                if node.op == "topk" and index == 1:
                    ties = _tie_rows(interpreter.value(node.inputs[0])[0], node, ours, theirs)
                    if ties:
                        return Difference(node, index, ties, tie_order=True)
                return Difference(node, index, detail)
    return None


def _differs(ours: torch.Tensor, theirs: torch.Tensor, rtol: float, atol: float) -> str:
    found = mismatch(theirs, ours, rtol=rtol, atol=atol, min_scale=1.0)
    return f"ONNX Runtime: {found}" if found else ""


def _tie_rows(scores: torch.Tensor, node: Node, ours: torch.Tensor, theirs: torch.Tensor) -> str:
    """A diagnosis if every row where the indices differ selects equal scores on both sides, else ""."""
    axis = int(node.attrs.get("axis", -1)) % scores.dim()
    scores = scores.movedim(axis, -1).reshape(-1, scores.shape[axis])
    ours = ours.movedim(axis, -1).reshape(-1, ours.shape[axis])
    theirs = theirs.to(torch.int64).movedim(axis, -1).reshape(-1, theirs.shape[axis])
    rows = (ours != theirs).any(-1).nonzero().flatten()
    for row in rows.tolist():
        if not torch.equal(scores[row].gather(0, ours[row]), scores[row].gather(0, theirs[row])):
            return ""
    return (f"top-k over equal scores: in {len(rows)} of {len(ours)} rows torch and ONNX Runtime pick different "
            f"indices among exactly equal values (torch leaves the order of ties undefined, ONNX Runtime takes "
            f"the lower index first), so the model's result depends on how ties are broken; typical when k "
            f"exceeds the number of unmasked entries in a row")
