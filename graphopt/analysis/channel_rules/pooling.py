"""Channel rules of spatial ops: pooling, resize and pad keep channels and change spatial axes."""

from __future__ import annotations

from graphopt.analysis.channels import Builder
from graphopt.analysis.rule_columns import register_channel_rule
from graphopt.ir.graph import Node


@register_channel_rule("max_pool", "avg_pool", "adaptive_avg_pool", "adaptive_max_pool", "resize")
def _pool(b: Builder, node: Node) -> None:
    x, out = node.inputs[0], node.output
    n = len(node.attrs.get("kernel") or node.attrs.get("output_size") or []) or (x.rank - 2)
    lead = list(range(x.rank - n))
    spatial = set(range(x.rank - n, x.rank))
    b.identity(x, out, lead, lead)
    for src, dst in ((out, x), (x, out)):  # joint spaces reaching spatial axes keep only their channel part
        for s in b.spaces_of(src):
            if set(s.axes) & spatial and set(s.axes) - spatial:
                b.couple(s, dst, {a: (None if a in spatial else a) for a in s.axes})


@register_channel_rule("pad")
def _pad(b: Builder, node: Node) -> None:
    x, out = node.inputs[0], node.output
    pad = node.attrs["pad"]
    padded = {x.rank - 1 - i for i in range(len(pad) // 2) if pad[2 * i] or pad[2 * i + 1]}
    same = [a for a in range(x.rank) if a not in padded]
    b.identity(x, out, same, same)
    for s in b.spaces_of(x) + b.spaces_of(out):
        if set(s.axes) & padded:
            b.barriers.setdefault(id(s), f"pad %{node.name} pads along the channels")
