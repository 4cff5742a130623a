"""Channel rule of scaled dot-product attention: whole heads by default, head_dim alone with heads=False."""

from __future__ import annotations

import numpy as np

from graphopt.analysis.channel_rules.links import couple_axis, head_dim_space
from graphopt.analysis.channels import Builder
from graphopt.analysis.rule_columns import register_channel_rule
from graphopt.ir.graph import Node, Value


@register_channel_rule("sdpa")
def _sdpa(b: Builder, node: Node) -> None:
    q, k, v = node.inputs[:3]
    mask = node.inputs[3] if len(node.inputs) > 3 else None
    out = node.output
    if q.rank >= 4 and isinstance(q.shape[-3], int) and isinstance(k.shape[-3], int):
        if not b.heads:
            _sdpa_head_dims(b, q, k, v, out)
        elif not _sdpa_whole_heads(b, q, k, v, out):
            return
    else:
        # single-head attention: q/k dims contract together, v dims become output dims
        couple_axis(b, q, -1, k, -1)
        couple_axis(b, v, -1, out, -1)
        b.identity(q, out, list(range(q.rank - 2)), list(range(q.rank - 2)))
    if mask is None:
        return
    per_head = _mask_heads(b, mask, q) if b.heads and q.rank >= 4 else None
    for s in b.spaces_of(mask):
        if s is not per_head:
            b.barriers.setdefault(id(s), f"attention mask of %{node.name} carries channels")


def _mask_heads(b: Builder, mask: Value, q: Value):
    """A per-head additive mask (Swin's and BEiT's relative position bias): its head h goes with query head h.

    Removing a head then slices the bias too (a weight, or the table it was gathered from);
    left out, the pruned heads meet a bias with the old head count.
    """
    axis = mask.rank - 3
    heads = q.shape[-3]
    if axis < 0 or not isinstance(mask.shape[axis], int) or mask.shape[axis] != heads or heads == 1:
        return None
    m, qs = b.space(mask, (axis,)), b.space(q, (q.rank - 3, q.rank - 1))
    if m is None or qs is None:
        return None
    if b.once("sdpa-mask", id(m), id(qs)):
        for h in range(heads):
            b.union_all(np.concatenate([m.grid()[h].ravel(), qs.grid()[h].ravel()]))
    return m


def _sdpa_whole_heads(b: Builder, q: Value, k: Value, v: Value, out: Value) -> bool:
    """A head is one unit: q/out heads of a kv group and that kv head, all their dims.

    False where nothing could be coupled (or it was already): the caller stops there.
    """
    hq, hkv = q.shape[-3], k.shape[-3]
    spaces = {name: b.space(t, (t.rank - 3, t.rank - 1)) for name, t in (("q", q), ("k", k), ("v", v), ("o", out))}
    if any(s is None for s in spaces.values()) or hq % hkv:
        return False
    if not b.once("sdpa", *(id(s) for s in spaces.values())):
        return False
    group = hq // hkv
    for j in range(hkv):
        atoms = [spaces["k"].grid()[j].ravel(), spaces["v"].grid()[j].ravel()]
        for h in range(j * group, (j + 1) * group):
            atoms += [spaces["q"].grid()[h].ravel(), spaces["o"].grid()[h].ravel()]
        b.union_all(np.concatenate(atoms))
    lead = list(range(q.rank - 3))
    b.identity(q, out, lead, lead)
    return True


def _sdpa_head_dims(b: Builder, q: Value, k: Value, v: Value, out: Value) -> None:
    """heads=False: head_dim alone carries channels, the heads axis is a batch axis.

    Position d of every query head contracts with position d of its (GQA-shared) key
    head, and position d of a value head becomes position d of its output heads, so
    q/k share one head_dim and v/out another. A head_dim space of a tensor overlaps
    its (heads, head_dim) space, which makes one channel of position d in all heads.
    """
    for t in (q, v):
        head_dim_space(b, t, [t.rank - 1])
    couple_axis(b, q, -1, k, -1)
    couple_axis(b, v, -1, out, -1)
    for t in (k, out):
        head_dim_space(b, t, [t.rank - 1])
    lead = list(range(q.rank - 3))
    b.identity(q, out, lead, lead)
