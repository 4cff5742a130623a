"""`merge-reshapes`: compose reshape->reshape and permute->permute chains into one op (or none)."""

from __future__ import annotations

from graphopt.ir.graph import Graph, Node
from graphopt.passmanager import AnalysisManager, Pass, PassResult, register_pass

from ._rewrite import bypass, erase_if_dead, normalized_dims, same_shape


@register_pass("merge-reshapes")
class MergeReshapes(Pass):
    """Fold reshape(reshape(x)) into reshape(x) and permute(permute(x)) into one permute; drop identities.

    Why: traced code reshapes in steps (unsqueeze, then view, ...), and pattern
    passes look one producer up; one op per layout change keeps them simple.
    A reshape of a reshape depends only on the final shape (both read the
    elements in row-major order), so the merge is exact.
    """

    def run(self, graph: Graph, analyses: AnalysisManager) -> PassResult:
        changed = 0
        for node in list(graph.nodes):
            if node.graph is not graph:  # erased earlier in this sweep
                continue
            if node.op == "reshape":
                changed += self._reshape(graph, node)
            elif node.op == "permute":
                changed += self._permute(graph, node)
        return PassResult(graph, modified=changed > 0)

    @staticmethod
    def _reshape(graph: Graph, node: Node) -> int:
        changed = 0
        inner = node.inputs[0].producer
        if inner is not None and inner.op == "reshape":
            node.set_input(0, inner.inputs[0])
            erase_if_dead(graph, inner)
            changed = 1
        if same_shape(node.inputs[0], node.output):
            bypass(graph, node, node.inputs[0])
            changed = 1
        return changed

    @staticmethod
    def _permute(graph: Graph, node: Node) -> int:
        changed = 0
        x = node.inputs[0]
        dims = normalized_dims(node.attrs["dims"], x.rank)
        inner = x.producer
        if inner is not None and inner.op == "permute":
            inner_dims = normalized_dims(inner.attrs["dims"], inner.inputs[0].rank)
            # out[i] = inner_out[dims[i]] = source[inner_dims[dims[i]]]
            node.attrs["dims"] = dims = [inner_dims[d] for d in dims]
            node.set_input(0, inner.inputs[0])
            erase_if_dead(graph, inner)
            changed = 1
        if dims == list(range(len(dims))):
            bypass(graph, node, node.inputs[0])
            changed = 1
        return changed
