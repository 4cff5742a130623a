"""Channel rules of ops that combine positions along axes: reductions, softmax, cumsum."""

from __future__ import annotations

from graphopt.analysis.channels import Builder
from graphopt.analysis.rule_columns import register_channel_rule
from graphopt.ir.graph import Node

# reductions for which a removed channel and a zeroed one give different results, and no
# rescaling fixes it (unlike mean): channels reduced by them are not prunable
_POSITIONAL = ("argmax", "argmin", "amax", "amin", "prod", "any", "all")


def _reduction_over(b: Builder, node: Node, reduced: set[int], keepdim: bool) -> None:
    x, out = node.inputs[0], node.output
    kept = [a for a in range(x.rank) if a not in reduced]
    if keepdim:
        b.identity(x, out, kept, kept)
    else:
        b.identity(x, out, kept, list(range(len(kept))))
    for s in b.spaces_of(x):
        if set(s.axes) & reduced:
            b.mark_inexact(s, f"{node.op} %{node.name} reduces over the channels")
            if node.op in _POSITIONAL:
                b.barriers.setdefault(id(s), f"{node.op} %{node.name} reduces over the channels")


@register_channel_rule("mean", "sum", "amax", "amin", "prod", "var", "argmax", "argmin", "any", "all")
def _reduce(b: Builder, node: Node) -> None:
    x = node.inputs[0]
    axes = node.attrs.get("axes")
    reduced = set(range(x.rank)) if axes is None else {a % x.rank for a in axes}
    _reduction_over(b, node, reduced, node.attrs.get("keepdim", False))


@register_channel_rule("softmax", "log_softmax", "cumsum")
def _softmax(b: Builder, node: Node) -> None:
    x, out = node.inputs[0], node.output
    b.identity(x, out, list(range(x.rank)), list(range(x.rank)))
    axis = node.attrs["axis"] % x.rank
    for s in b.spaces_of(out):
        if axis in s.axes:
            b.mark_inexact(s, f"{node.op} %{node.name} runs along the channels")
            if node.op == "cumsum":
                b.barriers.setdefault(id(s), f"cumsum %{node.name} runs along the channels")
