"""Small editing helpers shared by the canonicalisation passes."""

from __future__ import annotations

from graphopt.ir import dims as D
from graphopt.ir.graph import Graph, Node, Value


def is_read(value: Value) -> bool:
    """True if a node or a graph output reads `value`."""
    if value.uses():
        return True
    return value.graph is not None and any(out is value for out in value.graph.outputs)


def bypass(graph: Graph, node: Node, replacement: Value) -> None:
    """Make the readers of `node`'s single output read `replacement`, then erase `node`."""
    node.output.replace_all_uses_with(replacement)
    graph.erase_node(node)


def erase_if_dead(graph: Graph, node: Node | None) -> bool:
    """Erase `node` if nothing reads its outputs any more (a rewrite just bypassed it)."""
    if node is None or node.graph is not graph or any(is_read(out) for out in node.outputs):
        return False
    graph.erase_node(node)
    return True


def drop_unused_weights(graph: Graph, values) -> int:
    """Remove those of `values` that are weights nobody reads any more."""
    dropped = 0
    for value in values:
        if value is not None and value.is_weight and value.name in graph.weights and not is_read(value):
            graph.remove_weight(value)
            dropped += 1
    return dropped


def normalized_dims(dims, rank: int) -> list[int]:
    return [d % max(rank, 1) for d in dims]


def same_shape(a: Value, b: Value) -> bool:
    return D.shapes_equal(a.shape, b.shape)
