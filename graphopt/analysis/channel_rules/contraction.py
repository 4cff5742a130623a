"""Channel rules of index contractions (matmul, einsum): axes with the same einsum letter correspond.

With `heads=False`, batch letters (attention heads) carry no channels of their
own: a (heads, head_dim) space is split into its head_dim part, so one channel
is position d of every head.
"""

from __future__ import annotations

from graphopt.analysis.channel_rules.links import head_dim_space, role_space
from graphopt.analysis.channels import Builder, Space
from graphopt.analysis.rule_columns import register_channel_rule
from graphopt.ir.graph import Node, Value


def _axes_by_letter(equation: str, operands: list[Value], out: Value) -> list[dict[str, int]]:
    lhs, _, rhs = equation.replace(" ", "").partition("->")
    terms = lhs.split(",") + [rhs]
    maps = []
    for term, value in zip(terms, operands + [out]):
        if "..." in term:
            pre, post = term.split("...")
            n_ell = value.rank - len(pre) - len(post)
            letters = list(pre) + [f"_{i}" for i in range(n_ell)] + list(post)
        else:
            letters = list(term)
        maps.append({ch: i for i, ch in enumerate(letters)})
    return maps


def _by_letters(b: Builder, tensors: list[Value], letter_maps: list[dict[str, int]],
                heads: list[set[int]] | None = None) -> None:
    """Axes with the same letter correspond (size-1 broadcasts are soft links).

    `heads` (heads=False): per tensor, batch axes that act as attention heads. A space
    mixing them with other axes is not carried across: projecting its contracted
    head_dim onto the output's heads would tie every head_dim together again. Its
    head_dim part is carried instead (see `_split_off_heads`).
    """
    for i, (ti, mi) in enumerate(zip(tensors, letter_maps)):
        inv_i = {ax: ch for ch, ax in mi.items()}
        for s in b.spaces_of(ti):
            if heads is not None and _mixes(s, heads[i]):
                continue
            for j, (tj, mj) in enumerate(zip(tensors, letter_maps)):
                if i != j:
                    _carry_by_letters(b, s, ti, inv_i, tj, mj)


def _carry_by_letters(b: Builder, s: Space, ti: Value, inv_i: dict[int, str], tj: Value, mj: dict[str, int]) -> None:
    """Carry space `s` of `ti` onto `tj` through the letters they share."""
    mapping = {a: mj.get(inv_i[a]) for a in s.axes}
    broadcast = [a for a, d in mapping.items() if d is not None and tj.shape[d] != ti.shape[a]]
    if not broadcast:
        b.couple(s, tj, mapping)
        return
    proj = {a: (None if a in broadcast else d) for a, d in mapping.items()}
    if tj.shape and any(tj.shape[d] == 1 for a, d in mapping.items() if a in broadcast):
        if any(d is not None for d in proj.values()):
            b.couple(s, tj, proj, soft=True)


def _by_letters_within_heads(b: Builder, tensors: list[Value], letter_maps: list[dict[str, int]],
                             batch: set[str]) -> None:
    """heads=False: batch letters (attention heads) carry no channels of their own; see `_split_off_heads`."""
    heads = [{a for ch, a in m.items() if ch in batch and isinstance(t.shape[a], int) and t.shape[a] > 1}
             for t, m in zip(tensors, letter_maps)]
    _split_off_heads(b, tensors, heads)
    _by_letters(b, tensors, letter_maps, heads=heads)


def _mixes(s: Space, heads: set[int]) -> bool:
    return bool(set(s.axes) & heads) and bool(set(s.axes) - heads)


def _split_off_heads(b: Builder, tensors: list[Value], heads: list[set[int]]) -> None:
    """heads=False: give every (heads, head_dim) space its head_dim part as a space of its own.

    The two overlap, so position d is one channel in every head: heads stay whole and
    keep equal head_dims, which a reshape back to (..., heads * head_dim) needs.
    """
    for t, axes in zip(tensors, heads):
        for s in b.spaces_of(t):
            if _mixes(s, axes):
                head_dim_space(b, t, [a for a in s.axes if a not in axes])


@register_channel_rule("matmul")
def _matmul(b: Builder, node: Node) -> None:
    a, c = node.inputs
    out = node.output
    if a.rank < 2 or c.rank < 2:
        return
    batch = max(a.rank, c.rank) - 2
    letters = [f"b{i}" for i in range(batch)]
    ma = {ch: i for i, ch in enumerate(letters[batch - (a.rank - 2):] + ["n", "k"])}
    mc = {ch: i for i, ch in enumerate(letters[batch - (c.rank - 2):] + ["k", "m"])}
    mo = {ch: i for i, ch in enumerate(letters + ["n", "m"])}
    if b.heads:
        _by_letters(b, [a, c, out], [ma, mc, mo])
    else:
        _by_letters_within_heads(b, [a, c, out], [ma, mc, mo], set(letters))
    if c.is_weight:
        role_space(b, c, -1, "producer")
        role_space(b, c, -2, "consumer")
    if a.is_weight:
        role_space(b, a, -2, "producer")
        role_space(b, a, -1, "consumer")


@register_channel_rule("einsum")
def _einsum(b: Builder, node: Node) -> None:
    operands = [v for v in node.inputs]
    maps = _axes_by_letter(node.attrs["equation"], operands, node.output)
    if b.heads:
        _by_letters(b, operands + [node.output], maps)
    else:  # letters every operand and the output keep are batch axes: heads
        batch = set.intersection(*(set(m) for m in maps))
        _by_letters_within_heads(b, operands + [node.output], maps, batch)
    for v in operands:
        for s in b.spaces_of(v):
            if v.is_weight and not s.role:
                s.role = "producer"
