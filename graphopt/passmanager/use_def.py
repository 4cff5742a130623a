"""The `use-def` analysis: node positions, value readers and liveness, from one sweep over the graph.

Values already know their producer and uses; what this adds is the
whole-graph view passes otherwise recompute: where a node sits in the
topological order (to compare "before"/"after") and which nodes feed a graph
output at all (dead-code questions).
"""

from __future__ import annotations

from graphopt.ir.graph import Graph, Node, Value
from graphopt.passmanager.analysis import register_analysis


class UseDef:
    """Topological positions, readers per value and the set of live nodes of one graph."""

    def __init__(self, graph: Graph) -> None:
        self.position: dict[Node, int] = {node: i for i, node in enumerate(graph.nodes)}
        self.readers: dict[Value, list[Node]] = {}
        for node in graph.nodes:
            for value in node.inputs:
                if value is not None:
                    bucket = self.readers.setdefault(value, [])
                    if not bucket or bucket[-1] is not node:
                        bucket.append(node)
        self.live: set[Node] = set()
        frontier = [v.producer for v in graph.outputs if v.producer is not None]
        while frontier:
            node = frontier.pop()
            if node in self.live:
                continue
            self.live.add(node)
            frontier.extend(v.producer for v in node.inputs if v is not None and v.producer is not None)
        self._order = list(graph.nodes)

    def is_live(self, node: Node) -> bool:
        return node in self.live

    def dead_nodes(self) -> list[Node]:
        """Nodes no graph output depends on, in topological order."""
        return [n for n in self._order if n not in self.live]

    def before(self, a: Node, b: Node) -> bool:
        return self.position[a] < self.position[b]


register_analysis("use-def", UseDef)
