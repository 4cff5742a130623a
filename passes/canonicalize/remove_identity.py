"""`remove-identity`: drop ops that return their input unchanged (at inference)."""

from __future__ import annotations

from graphopt.ir.graph import Graph, Node
from graphopt.passmanager import AnalysisManager, Pass, PassResult, register_pass

from ._rewrite import bypass, normalized_dims, same_shape


def is_noop(node: Node) -> bool:
    """True when the node's (first) output equals its first input, element for element."""
    op, attrs = node.op, node.attrs
    if not node.inputs or node.inputs[0] is None:
        return False
    x = node.inputs[0]
    if op in ("identity", "dropout"):  # dropout is the identity in inference graphs
        return True
    if op in ("reshape", "expand"):
        return same_shape(x, node.outputs[0])
    if op == "permute":
        return normalized_dims(attrs["dims"], x.rank) == list(range(x.rank))
    if op == "cast":
        return attrs["dtype"] == x.dtype
    if op == "slice":
        return attrs.get("step", 1) == 1 and attrs["start"] == 0 and same_shape(x, node.outputs[0])
    if op == "concat":
        return len(node.inputs) == 1
    if op == "split":
        return len(node.outputs) == 1 and same_shape(x, node.outputs[0])
    if op == "pad":
        return all(p == 0 for p in attrs["pad"])
    return False


@register_pass("remove-identity")
class RemoveIdentity(Pass):
    """Remove identity and inference-time dropout, and reshape/permute/expand/cast/slice/pad that change nothing.

    Why: front-ends keep such ops to mirror the source model; left in, they
    hide patterns (conv -> dropout -> batch_norm) from the passes that follow.
    """

    def run(self, graph: Graph, analyses: AnalysisManager) -> PassResult:
        removed = 0
        for node in list(graph.nodes):
            if is_noop(node) and node.outputs[0].dtype == node.inputs[0].dtype:
                bypass(graph, node, node.inputs[0])
                removed += 1
        return PassResult(graph, modified=removed > 0)
