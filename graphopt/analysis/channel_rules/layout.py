"""Channel rules of layout ops: permute, expand, and the offset family (concat, split, slice)."""

from __future__ import annotations

from graphopt.analysis.channels import Builder, Space
from graphopt.analysis.rule_columns import register_channel_rule
from graphopt.ir.graph import Node, Value


@register_channel_rule("permute")
def _permute(b: Builder, node: Node) -> None:
    x, out = node.inputs[0], node.output
    dims = node.attrs["dims"]
    b.identity(x, out, list(dims), list(range(len(dims))))


@register_channel_rule("expand")
def _expand(b: Builder, node: Node) -> None:
    x, out = node.inputs[0], node.output
    offset = out.rank - x.rank
    same = [a for a in range(x.rank) if x.shape[a] == out.shape[a + offset]]
    b.identity(x, out, same, [a + offset for a in same])
    for s in b.spaces_of(out):  # copies along expanded axes are the same channel
        expanded = [a for a in s.axes if a < offset or x.shape[a - offset] != out.shape[a]]
        if expanded and len(expanded) < len(s.axes):
            b.couple(s, x, {a: (None if a in expanded else a - offset) for a in s.axes})


@register_channel_rule("concat")
def _concat(b: Builder, node: Node) -> None:
    out = node.output
    axis = node.attrs["axis"] % out.rank
    others = [a for a in range(out.rank) if a != axis]
    start = 0
    for x in node.inputs:
        b.identity(x, out, others, others)
        size = x.shape[axis]
        if isinstance(size, int) and isinstance(start, int):
            _offset_link(b, x, out, axis, start)
        start = start + size


@register_channel_rule("split")
def _split(b: Builder, node: Node) -> None:
    x = node.inputs[0]
    axis = node.attrs["axis"] % x.rank
    others = [a for a in range(x.rank) if a != axis]
    start = 0
    for out, size in zip(node.outputs, node.attrs["sizes"]):
        b.identity(x, out, others, others)
        if isinstance(size, int) and isinstance(start, int):
            _offset_link(b, out, x, axis, start)
        start = start + size


@register_channel_rule("slice")
def _slice(b: Builder, node: Node) -> None:
    x, out = node.inputs[0], node.output
    axis = node.attrs["axis"] % x.rank
    others = [a for a in range(x.rank) if a != axis]
    b.identity(x, out, others, others)
    start, step = node.attrs["start"], node.attrs.get("step", 1)
    if isinstance(start, int) and step == 1 and isinstance(x.shape[axis], int):
        _offset_link(b, out, x, axis, start)
    else:
        for s in b.spaces_of(out) + b.spaces_of(x):
            if axis in s.axes:
                b.barriers.setdefault(id(s), f"slice %{node.name} has a dynamic or strided range on the channels")


def _offset_link(b: Builder, part: Value, whole: Value, axis: int, start: int) -> None:
    """part[..., i, ...] is whole[..., start + i, ...] along `axis`, for spaces on either side."""
    for s in b.spaces_of(whole):
        if axis in s.axes:
            _offset_couple(b, s, part, axis, start, from_whole=True)
    for s in b.spaces_of(part):
        if axis in s.axes:
            _offset_couple(b, s, whole, axis, start, from_whole=False)


def _offset_couple(b: Builder, s: Space, other: Value, axis: int, start: int, *, from_whole: bool) -> None:
    i = s.axes.index(axis)
    index = [slice(None)] * len(s.axes)
    if from_whole and (id(other), s.axes) not in b.spaces:  # a new part: reuse the whole's atoms
        index[i] = slice(start, start + other.shape[axis])
        b.space(other, s.axes, ids=s.grid()[tuple(index)])
        return
    d = b.space(other, s.axes)
    if d is None or not b.once("offset", id(s), id(d), axis, start):
        return
    whole, part = (s, d) if from_whole else (d, s)
    index[i] = slice(start, start + part.sizes[i])
    b.union(whole.grid()[tuple(index)], part.grid())
