"""`eliminate-dead-code`: remove nodes no graph output depends on, and weights nobody reads."""

from __future__ import annotations

from graphopt.ir.graph import Graph
from graphopt.passmanager import AnalysisManager, Pass, PassResult, register_pass


@register_pass("eliminate-dead-code")
class EliminateDeadCode(Pass):
    """Erase nodes whose outputs reach no graph output, then weights no node reads.

    Graph inputs stay even when unused: they are the lowered module's signature.
    """

    def run(self, graph: Graph, analyses: AnalysisManager) -> PassResult:
        outputs = {id(v) for v in graph.outputs}
        removed = 0
        for node in reversed(list(graph.nodes)):  # readers first, so whole dead chains go in one sweep
            if any(out.uses() or id(out) in outputs for out in node.outputs):
                continue
            graph.erase_node(node)
            removed += 1
        removed += graph.remove_unused_weights()
        return PassResult(graph, modified=removed > 0)
