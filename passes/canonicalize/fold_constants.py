"""`fold-constants`: evaluate nodes that read only weights and replace them by the resulting tensor."""

from __future__ import annotations

from typing import Any, Sequence

import sympy
import torch

from graphopt.ir import dims as D
from graphopt.ir.graph import Node, Value
from graphopt.ir.op_table import get_op_attr
from graphopt.ir.ops import TORCH_KERNEL, TRAINING_AWARE, has_trait
from graphopt.ir.ops.quant import NO_FOLD
from graphopt.passmanager import option, register_pass
from graphopt.passmanager.rewrite import Outcome, RewritePass, Rule, rule


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


def why_not_foldable(node: Node, max_elements: int) -> str | None:
    """Why `node` cannot be replaced by its value, or None when it can."""
    if get_op_attr(node.op, TORCH_KERNEL) is None:
        return f"op '{node.op}' has no torch kernel to evaluate it"
    if has_trait(node.op, NO_FOLD):
        return f"op '{node.op}' is a stored form (a dequantized int8 weight): folding would undo it"
    if any(v is not None and not v.is_weight for v in node.inputs):
        return "an input is computed, not a stored tensor"
    if any(v is not None and v.data is not None and v.data.device.type == "meta" for v in node.inputs):
        return "an input has no data (meta tensor)"
    if not all(D.shape_is_static(out.shape) for out in node.outputs) or D.free_symbols(node.attrs):
        return "its shape or attributes depend on the input sizes"
    if sum(D.prod(out.shape) for out in node.outputs) > max_elements:
        return f"its result is larger than max_elements={max_elements}"
    return None


def _evaluate(node: Node) -> list[torch.Tensor] | str:
    """The node's output tensors from its torch kernel, or why they could not be computed."""
    kwargs = {k: _concrete(v) for k, v in node.attrs.items()}
    if has_trait(node.op, TRAINING_AWARE):
        kwargs["training"] = False
    try:
        with torch.no_grad():
            result = get_op_attr(node.op, TORCH_KERNEL)(*(None if v is None else v.data for v in node.inputs),
                                                        **kwargs)
    except Exception as exc:  # noqa: BLE001 - an op the kernel cannot evaluate here stays in the graph
        return f"its torch kernel failed here: {exc}"
    tensors = list(result) if isinstance(result, (tuple, list)) else [result]
    if len(tensors) != len(node.outputs) or any(
        tuple(t.shape) != out.shape or t.dtype != out.dtype for t, out in zip(tensors, node.outputs)
    ):
        return "its kernel disagrees with its shape rule (left for the verifier to report)"
    return tensors


def fold_constant_rule(max_elements: int) -> Rule:
    """The rule replacing a node that reads only weights (at most `max_elements` results) by its value."""

    def fold_constant(node: Node) -> Outcome:
        reason = why_not_foldable(node, max_elements)
        tensors = reason or _evaluate(node)
        if isinstance(tensors, str):
            return tensors
        graph, kind = node.graph, _result_kind(node)
        values: list[Value] = []
        for out, tensor in zip(node.outputs, tensors):
            value = graph.add_weight(f"{out.name}_folded", tensor.contiguous(), kind=kind)
            if node.source is not None:
                value.meta["source"] = node.source
            value.meta["folded_from"] = node.op
            values.append(value)
        return values  # the driver redirects the readers, erases the node and the weights only it read

    return rule("fold-constant")(fold_constant)


@register_pass("fold-constants")
class FoldConstants(RewritePass):
    """Replace every node whose inputs are all weights (or that has none, e.g. arange) by its value.

    Skipped: outputs with symbolic shapes (they depend on the input sizes),
    attributes with symbols, results larger than `max_elements` (folding an
    expand or a big table would trade a cheap op for a lot of memory), and
    ops without a torch kernel. The folded tensor becomes a param if computed
    from a param (so it stays trainable and counted), else a buffer or a const.
    """

    max_elements: int = option(1 << 20, "largest result (in elements, all outputs together) to fold")

    def rules(self) -> Sequence[Rule]:
        return (fold_constant_rule(self.max_elements),)
