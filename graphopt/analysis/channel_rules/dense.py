"""Channel rules of the dense ops with weights: conv, conv_transpose, linear, embedding."""

from __future__ import annotations

import numpy as np

from graphopt.analysis.channel_rules.links import link
from graphopt.analysis.channels import Builder
from graphopt.analysis.rule_columns import register_channel_rule
from graphopt.ir.graph import Node


@register_channel_rule("conv", "conv_transpose")
def _conv(b: Builder, node: Node) -> None:
    x, w, bias = node.inputs[0], node.inputs[1], node.inputs[2] if len(node.inputs) > 2 else None
    out = node.output
    groups = node.attrs.get("groups", 1)
    transposed = node.op == "conv_transpose"
    out_axis, in_axis = (1, 0) if transposed else (0, 1)
    if groups == 1:
        link(b, w, out_axis, out, 1, "producer")
        link(b, w, in_axis, x, 1, "consumer")
    else:
        _grouped_conv(b, node, groups, transposed)
    if bias is not None:
        link(b, bias, 0, out, 1, "producer")
    b.identity(x, out, [0], [0])
    _spatial_barrier(b, node, x, out)


def _spatial_barrier(b: Builder, node: Node, *values) -> None:
    """Spatial positions are not channels: a space on them alone (MLP-Mixer's and gMLP's token axis, a
    Linear over the flattened pixels) cannot be removed through a conv, whose kernel slides over them.

    A space over the channel axis and the spatial axes together (flatten -> linear) is a finer view of
    the channel space and stays: its atoms join the channel space's through their overlap.
    """
    for value in values:
        for s in b.spaces_of(value):
            if 1 not in s.axes and any(a >= 2 for a in s.axes):
                b.barriers.setdefault(id(s), f"{node.op} %{node.name} slides over these positions: spatial "
                                             "positions (tokens) are not channels")


def _grouped_conv(b: Builder, node: Node, groups: int, transposed: bool) -> None:
    """A conv group's input and output channels are one unit."""
    x, w, out = node.inputs[0], node.inputs[1], node.output
    cin, cout = x.shape[1], out.shape[1]
    sx, so = b.space(x, (1,)), b.space(out, (1,))
    if sx is not None and so is not None and b.once("groups", id(sx), id(so)):
        per_in, per_out = cin // groups, cout // groups
        for g in range(groups):
            b.union_all(np.concatenate([sx.atoms[g * per_in:(g + 1) * per_in],
                                        so.atoms[g * per_out:(g + 1) * per_out]]))
    if transposed:
        sw = b.space(w, (0,), "producer")  # [C_in, C_out/groups, k...]: axis 0 follows the input groups
        if sw is not None and sx is not None:
            b.union(sw.atoms, sx.atoms)
    else:
        link(b, w, 0, out, 1, "producer")


@register_channel_rule("linear")
def _linear(b: Builder, node: Node) -> None:
    x, w = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    out = node.output
    link(b, w, 1, x, -1, "consumer")
    link(b, w, 0, out, -1, "producer")
    link(b, bias, 0, out, -1, "producer")
    lead = list(range(x.rank - 1))
    b.identity(x, out, lead, lead)


@register_channel_rule("embedding")
def _embedding(b: Builder, node: Node) -> None:
    idx, w = node.inputs
    out = node.output
    link(b, w, 1, out, -1, "producer")  # rows are vocabulary entries, picked by data: never channels
