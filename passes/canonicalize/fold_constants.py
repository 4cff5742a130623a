"""`fold-constants`: evaluate nodes that read only weights and replace them by the resulting tensor."""

from __future__ import annotations

from typing import Any

import sympy
import torch

from graphopt.ir import dims as D
from graphopt.ir.graph import Graph, Node
from graphopt.passmanager import AnalysisManager, Pass, PassResult, option, register_pass

from ._rewrite import drop_unused_weights


def _concrete(obj: Any) -> Any:
    """Attributes with sympy numbers as plain Python numbers, as the kernels expect."""
    if isinstance(obj, sympy.Basic):
        return int(obj) if obj.is_Integer else float(obj)
    if isinstance(obj, list):
        return [_concrete(o) for o in obj]
    if isinstance(obj, tuple):
        return tuple(_concrete(o) for o in obj)
    return obj


def _result_kind(node: Node) -> str:
    """param if computed from a parameter (it stays trainable and counted), else buffer, else const."""
    kinds = {v.kind for v in node.inputs if v is not None}
    return "param" if "param" in kinds else "buffer" if "buffer" in kinds else "const"


@register_pass("fold-constants")
class FoldConstants(Pass):
    """Replace every node whose inputs are all weights (or that has none, e.g. arange) by its value.

    Skipped: outputs with symbolic shapes (they depend on the input sizes),
    attributes with symbols, results larger than `max_elements` (folding an
    expand or a big table would trade a cheap op for a lot of memory), and
    ops without a torch kernel. The folded tensor becomes a param if computed
    from a param (so it stays trainable and counted), else a buffer or a const.
    """

    max_elements: int = option(1 << 20, "largest result (in elements, all outputs together) to fold")

    def foldable(self, node: Node) -> bool:
        from graphopt.backends.torch.kernels import KERNELS

        if node.op not in KERNELS:
            return False
        if any(v is not None and not v.is_weight for v in node.inputs):
            return False
        if any(v is not None and v.data is not None and v.data.device.type == "meta" for v in node.inputs):
            return False
        if not all(D.shape_is_static(out.shape) for out in node.outputs) or D.free_symbols(node.attrs):
            return False
        return sum(D.prod(out.shape) for out in node.outputs) <= self.max_elements

    def run(self, graph: Graph, analyses: AnalysisManager) -> PassResult:
        from graphopt.backends.torch.kernels import KERNELS, TRAINING_AWARE

        folded = 0
        for node in list(graph.nodes):
            if not self.foldable(node):
                continue
            kwargs = {k: _concrete(v) for k, v in node.attrs.items()}
            if node.op in TRAINING_AWARE:
                kwargs["training"] = False
            try:
                with torch.no_grad():
                    result = KERNELS[node.op](*(None if v is None else v.data for v in node.inputs), **kwargs)
            except Exception:  # noqa: BLE001 - an op the kernel cannot evaluate here stays in the graph
                continue
            tensors = list(result) if isinstance(result, (tuple, list)) else [result]
            if len(tensors) != len(node.outputs) or any(
                tuple(t.shape) != out.shape or t.dtype != out.dtype for t, out in zip(tensors, node.outputs)
            ):
                continue  # the kernel disagrees with the shape rule: leave it for the verifier to report
            kind = _result_kind(node)
            inputs = list(node.inputs)
            for out, tensor in zip(node.outputs, tensors):
                value = graph.add_weight(f"{out.name}_folded", tensor.contiguous(), kind=kind)
                if node.source is not None:
                    value.meta["source"] = node.source
                value.meta["folded_from"] = node.op
                out.replace_all_uses_with(value)
            graph.erase_node(node)
            drop_unused_weights(graph, inputs)
            folded += 1
        return PassResult(graph, modified=folded > 0)
