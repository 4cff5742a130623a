"""Dropping a residual block: the merge's readers read the skip value, then the dead branch goes.

Only nodes the drop made dead are erased (a worklist from the merge upwards),
so dead code the graph had before is left to `eliminate-dead-code`, and the
parameters removed are exactly the block's own (weights nothing else reads).
"""

from __future__ import annotations

from graphopt.analysis.residual_blocks import ResidualBlock
from graphopt.errors import GraphoptError
from graphopt.ir.graph import Graph, Node, Value


def drop_block(graph: Graph, block: ResidualBlock, replaced: dict[str, Value] | None = None) -> None:
    """Replace `block`'s merge by its skip value in `graph` (in place) and erase what became dead.

    Blocks found on the graph before earlier drops may name as skip the output
    of a merge already dropped (consecutive blocks); `replaced` maps each
    dropped merge's output name to the value that took its place, and is updated.
    """
    replaced = {} if replaced is None else replaced
    try:
        merge = graph.node(block.merge)
    except KeyError:
        raise GraphoptError(f"cannot drop block {block.name!r}: its merge %{block.merge} is gone "
                            "(was an enclosing block dropped?)") from None
    name, skip = block.skip, None
    while name in replaced:  # follow chains: blocks dropped out of graph order replace each other's merges
        skip = replaced[name]
        name = skip.name
    if skip is None:
        try:
            skip = graph.value(block.skip)
        except KeyError:
            raise GraphoptError(f"cannot drop block {block.name!r}: its skip value %{block.skip} is gone") from None
    replaced[merge.output.name] = skip
    merge.output.replace_all_uses_with(skip)
    erase_dead_from(graph, [merge])


def erase_dead_from(graph: Graph, nodes: list[Node]) -> None:
    """Erase `nodes` and, transitively, their producers once nothing reads them; then their unread weights."""
    work = list(nodes)
    while work:
        node = work.pop()
        inputs = [v for v in node.inputs if v is not None]
        if not graph.erase_if_dead(node):
            continue
        for value in inputs:
            if value.producer is not None:
                work.append(value.producer)
            elif value.is_weight:
                graph.remove_weight_if_unused(value)
