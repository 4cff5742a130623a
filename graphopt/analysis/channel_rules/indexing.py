"""Channel rules of ops that pick or mask positions: select, index_select, gather, scatter, triu, tril."""

from __future__ import annotations

from graphopt.analysis.channels import Builder
from graphopt.analysis.rule_columns import BARRIER, register_channel_rule
from graphopt.ir.graph import Node


@register_channel_rule("select")
def _select(b: Builder, node: Node) -> None:
    x, out = node.inputs[0], node.output
    axis = node.attrs["axis"] % x.rank
    rest = [a for a in range(x.rank) if a != axis]
    b.identity(x, out, rest, list(range(len(rest))))
    for s in b.spaces_of(x):
        if axis in s.axes:
            b.barriers.setdefault(id(s), f"select %{node.name} picks one channel by position")


@register_channel_rule("index_select")
def _index_select(b: Builder, node: Node) -> None:
    x, idx = node.inputs
    out = node.output
    axis = node.attrs["axis"] % x.rank
    rest = [a for a in range(x.rank) if a != axis]
    b.identity(x, out, rest, rest)
    for s in b.spaces_of(x) + b.spaces_of(out):
        if axis in s.axes:
            b.barriers.setdefault(id(s), f"index_select %{node.name} gathers channels by position")


@register_channel_rule("triu", "tril")
def _triangle(b: Builder, node: Node) -> None:
    x, out = node.inputs[0], node.output
    b.identity(x, out, list(range(x.rank)), list(range(x.rank)))
    for s in b.spaces_of(out):
        if set(s.axes) & {x.rank - 1, x.rank - 2}:
            b.barriers.setdefault(id(s), f"{node.op} %{node.name} depends on channel positions")


@register_channel_rule("gather")
def _gather(b: Builder, node: Node) -> None:
    """out[..., i, ...] = x[..., indices[..., i, ...], ...]: out and indices correspond position by position.

    x corresponds to them on the other axes where the sizes agree; never along the
    gathered axis, where positions are picked by the index values.
    """
    x, idx = node.inputs
    out = node.output
    axis = node.attrs["axis"] % x.rank
    every = list(range(out.rank))
    b.identity(idx, out, every, every)
    same = [a for a in every if a != axis and x.shape[a] == out.shape[a]]
    b.identity(x, out, same, same)
    for s in b.spaces_of(x):
        if not set(s.axes) <= set(same):
            b.barriers.setdefault(id(s), f"gather %{node.name} picks channels by position")
    for s in b.spaces_of(out):  # a prefix of x's axis: removing a channel would shift the rest
        if set(s.axes) - set(same) - {axis}:
            b.barriers.setdefault(id(s), f"gather %{node.name} reads a prefix of the channels")


# Where scatter writes depends on the index values (MoE group routing writes a mask at the top-k
# positions), so no channel of x, indices or src corresponds to a fixed channel of the output.
register_channel_rule("scatter")(BARRIER)
