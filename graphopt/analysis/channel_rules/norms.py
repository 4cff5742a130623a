"""Channel rules of normalisations: batch_norm, layer_norm, rms_norm, group_norm."""

from __future__ import annotations

from graphopt.analysis.channel_rules.links import link
from graphopt.analysis.channels import Builder
from graphopt.analysis.rule_columns import register_channel_rule
from graphopt.ir.graph import Node, Value


@register_channel_rule("batch_norm")
def _batch_norm(b: Builder, node: Node) -> None:
    x, w, bias, mean, var = node.inputs
    out = node.output
    for p, role in ((w, "producer"), (bias, "producer"), (mean, "stat"), (var, "stat")):
        if p is not None:
            link(b, p, 0, out, 1, role)
    b.identity(x, out, list(range(x.rank)), list(range(x.rank)))
    if w is None or bias is None:
        for s in b.spaces_of(out):
            b.mark_inexact(s, f"batch_norm %{node.name} has no affine parameters to zero")


def _norm_last(b: Builder, node: Node, params: list[Value | None]) -> None:
    x, out = node.inputs[0], node.output
    k = len(node.attrs["normalized_shape"])
    b.identity(x, out, list(range(x.rank)), list(range(x.rank)))
    normalized = set(range(x.rank - k, x.rank))
    for p in params:
        if p is not None and k == 1:
            link(b, p, 0, out, -1, "producer")
    for s in b.spaces_of(out):
        if set(s.axes) & normalized:
            if k != 1:
                b.barriers.setdefault(id(s), f"{node.op} %{node.name} normalises over several axes")
            b.mark_inexact(s, f"{node.op} %{node.name} normalises over the channels")


@register_channel_rule("layer_norm")
def _layer_norm(b: Builder, node: Node) -> None:
    _norm_last(b, node, list(node.inputs[1:3]))


@register_channel_rule("rms_norm")
def _rms_norm(b: Builder, node: Node) -> None:
    _norm_last(b, node, list(node.inputs[1:2]))


@register_channel_rule("group_norm")
def _group_norm(b: Builder, node: Node) -> None:
    x, w, bias = node.inputs
    out = node.output
    b.identity(x, out, list(range(x.rank)), list(range(x.rank)))
    for p in (w, bias):
        if p is not None:
            link(b, p, 0, out, 1, "producer")
    so = b.space(out, (1,))
    if so is not None and b.once("group_norm", id(so)):
        groups = node.attrs["num_groups"]
        per = so.size // groups
        for g in range(groups):  # statistics are per norm group: whole groups go together
            b.union_all(so.atoms[g * per:(g + 1) * per])
