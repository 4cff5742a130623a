"""Per-op channel rules: how channel positions correspond across each canonical op.

A rule is `fn(builder, node)`. It runs whenever a space appears on one of the
node's tensors and must couple, in both directions, every space it can see
(see graphopt/analysis/channels.py for the model). Register a rule for your own
op with `register_channel_rule("my_op")`; an op without one is a barrier.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from graphopt.analysis.channels import Builder, Space
from graphopt.ir.graph import Node, Value
from graphopt.ir.ops import ELEMENTWISE_BINARY, ELEMENTWISE_UNARY

Rule = Callable[[Builder, Node], None]
_RULES: dict[str, Rule] = {}


def register_channel_rule(*ops: str, replace: bool = False) -> Callable[[Rule], Rule]:
    def wrap(fn: Rule) -> Rule:
        for op in ops:
            if op in _RULES and not replace:
                raise ValueError(f"a channel rule for '{op}' exists; pass replace=True to override it")
            _RULES[op] = fn
        return fn

    return wrap


def rule_for(op: str) -> Rule | None:
    return _RULES.get(op)


# ops mapping 0 to a non-zero constant: masked channels stop being zero behind them
_NONZERO_AT_ZERO = {"sigmoid": 0.5, "hardsigmoid": 0.5, "exp": 1.0, "cos": 1.0, "softplus": 0.69, "rsqrt": None,
                    "reciprocal": None, "log": None, "logical_not": 1.0}


# ------------------------------------------------------------ elementwise
def _elementwise(b: Builder, node: Node) -> None:
    """Broadcasting elementwise op: aligned axes correspond; size-1 axes broadcast (soft)."""
    out = node.outputs[0]
    operands = [v for v in node.inputs if v is not None]
    for v in operands:
        offset = out.rank - v.rank
        to_out = {a: a + offset for a in range(v.rank)}
        broadcast = {a for a in range(offset) if out.shape[a] != 1}
        broadcast |= {a + offset for a in range(v.rank) if v.shape[a] == 1 and out.shape[a + offset] != 1}
        for s in b.spaces_of(v):
            if not all(v.shape[a] == out.shape[a + offset] for a in s.axes):
                continue
            image = {a + offset for a in s.axes}
            # a table broadcast across heads (rotary cos/sin) only softly follows a joint (heads, dims)
            # space of the output; coupling it hard would tie every head together
            if broadcast and any(set(t.axes) > image and set(t.axes) & broadcast for t in b.spaces_of(out)):
                continue
            b.couple(s, out, to_out)
        for s in b.spaces_of(out):
            mapping = {a: (a - offset if a - offset >= 0 else None) for a in s.axes}
            broadcast = [a for a, d in mapping.items() if d is None or v.shape[d] != out.shape[a]]
            if not broadcast:
                b.couple(s, v, mapping)
            else:
                proj = {a: (None if a in broadcast else d) for a, d in mapping.items()}
                if any(d is not None for d in proj.values()):
                    b.couple(s, v, proj, soft=True, role="producer" if v.is_weight else "")
    for v in operands:
        if v.is_weight:
            for s in b.spaces_of(v):
                if not s.role:
                    s.role = "producer"
    if node.op in _NONZERO_AT_ZERO:
        for s in b.spaces_of(out):
            if not _feeds_gate_only(node, out):
                b.gates.append((s, f"{node.op} maps masked (zero) channels to a non-zero value at %{node.name}", node))


def _feeds_gate_only(node: Node, out: Value) -> bool:
    """A sigmoid-style output used only as a multiplicative gate keeps masked channels at zero."""
    users = out.users
    return bool(users) and all(u.op == "mul" for u in users)


for _op in sorted(ELEMENTWISE_UNARY | ELEMENTWISE_BINARY | {"where", "cast"}):
    register_channel_rule(_op)(_elementwise)


# -------------------------------------------------------------- dense ops
def _role(b: Builder, value: Value | None, axis: int, role: str) -> Space | None:
    return b.space(value, (axis,), role) if value is not None else None


def _link(b: Builder, w: Value | None, w_axis: int, v: Value | None, v_axis: int, role: str) -> None:
    """Tie a weight axis to a tensor axis, giving the weight the tensor's atoms when it has some.

    Rules run in topological order, so the tensor side usually has its space already;
    reusing its atoms saves a union per weight.
    """
    if w is None or v is None:
        return
    if b.spaces.get((id(v), (v_axis % v.rank,))) is not None:
        _couple_axis(b, w, w_axis, v, v_axis)
        _role(b, w, w_axis, role)
    else:
        _role(b, w, w_axis, role)
        _couple_axis(b, w, w_axis, v, v_axis)


def _couple_axis(b: Builder, a: Value | None, axis_a: int, c: Value | None, axis_c: int) -> None:
    b.identity(a, c, [axis_a], [axis_c])


@register_channel_rule("conv", "conv_transpose")
def _conv(b: Builder, node: Node) -> None:
    x, w, bias = node.inputs[0], node.inputs[1], node.inputs[2] if len(node.inputs) > 2 else None
    out = node.output
    groups = node.attrs.get("groups", 1)
    transposed = node.op == "conv_transpose"
    out_axis, in_axis = (1, 0) if transposed else (0, 1)
    if groups == 1:
        _link(b, w, out_axis, out, 1, "producer")
        _link(b, w, in_axis, x, 1, "consumer")
    else:
        # grouped: a conv group's input and output channels are one unit
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
            _link(b, w, 0, out, 1, "producer")
    if bias is not None:
        _link(b, bias, 0, out, 1, "producer")


@register_channel_rule("linear")
def _linear(b: Builder, node: Node) -> None:
    x, w = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    out = node.output
    _link(b, w, 1, x, -1, "consumer")
    _link(b, w, 0, out, -1, "producer")
    _link(b, bias, 0, out, -1, "producer")
    lead = list(range(x.rank - 1))
    b.identity(x, out, lead, lead)


@register_channel_rule("embedding")
def _embedding(b: Builder, node: Node) -> None:
    idx, w = node.inputs
    out = node.output
    _link(b, w, 1, out, -1, "producer")  # rows are vocabulary entries, picked by data: never channels


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
                if i == j:
                    continue
                mapping = {a: mj.get(inv_i[a]) for a in s.axes}
                broadcast = [a for a, d in mapping.items() if d is not None and tj.shape[d] != ti.shape[a]]
                if broadcast:
                    proj = {a: (None if a in broadcast else d) for a, d in mapping.items()}
                    if tj.shape and any(tj.shape[d] == 1 for a, d in mapping.items() if a in broadcast):
                        if any(d is not None for d in proj.values()):
                            b.couple(s, tj, proj, soft=True)
                    continue
                b.couple(s, tj, mapping)


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
                _head_dim_space(b, t, [a for a in s.axes if a not in axes])


def _head_dim_space(b: Builder, t: Value, axes: list[int]) -> None:
    """The space of `t` over `axes`, remembered as head_dim: its group reports "head dims"."""
    space = b.space(t, axes)
    if space is not None:
        b.head_dims.add(id(space))


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
        _role(b, c, -1, "producer")
        _role(b, c, -2, "consumer")
    if a.is_weight:
        _role(b, a, -2, "producer")
        _role(b, a, -1, "consumer")


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
        _couple_axis(b, q, -1, k, -1)
        _couple_axis(b, v, -1, out, -1)
        b.identity(q, out, list(range(q.rank - 2)), list(range(q.rank - 2)))
    if mask is not None:
        for s in b.spaces_of(mask):
            b.barriers.setdefault(id(s), f"attention mask of %{node.name} carries channels")


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
        _head_dim_space(b, t, [t.rank - 1])
    _couple_axis(b, q, -1, k, -1)
    _couple_axis(b, v, -1, out, -1)
    for t in (k, out):
        _head_dim_space(b, t, [t.rank - 1])
    lead = list(range(q.rank - 3))
    b.identity(q, out, lead, lead)


# ------------------------------------------------------------------ norms
@register_channel_rule("batch_norm")
def _batch_norm(b: Builder, node: Node) -> None:
    x, w, bias, mean, var = node.inputs
    out = node.output
    for p, role in ((w, "producer"), (bias, "producer"), (mean, "stat"), (var, "stat")):
        if p is not None:
            _link(b, p, 0, out, 1, role)
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
            _link(b, p, 0, out, -1, "producer")
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
            _link(b, p, 0, out, 1, "producer")
    so = b.space(out, (1,))
    if so is not None and b.once("group_norm", id(so)):
        groups = node.attrs["num_groups"]
        per = so.size // groups
        for g in range(groups):  # statistics are per norm group: whole groups go together
            b.union_all(so.atoms[g * per:(g + 1) * per])


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
            if node.op in ("argmax", "argmin", "amax", "amin", "prod", "any", "all"):
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


@register_channel_rule("triu", "tril")
def _triangle(b: Builder, node: Node) -> None:
    x, out = node.inputs[0], node.output
    b.identity(x, out, list(range(x.rank)), list(range(x.rank)))
    for s in b.spaces_of(out):
        if set(s.axes) & {x.rank - 1, x.rank - 2}:
            b.barriers.setdefault(id(s), f"{node.op} %{node.name} depends on channel positions")


# --------------------------------------------------------- pooling/resize
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


# ----------------------------------------------------------------- layout
@register_channel_rule("permute")
def _permute(b: Builder, node: Node) -> None:
    x, out = node.inputs[0], node.output
    dims = node.attrs["dims"]
    b.identity(x, out, list(dims), list(range(len(dims))))


@register_channel_rule("reshape")
def _reshape(b: Builder, node: Node) -> None:
    """Axes regroup into blocks with equal element counts; within a block the flat index is kept."""
    x, out = node.inputs[0], node.output
    blocks = _reshape_blocks(list(x.shape), list(out.shape))
    if blocks is None:
        for v in (x, out):
            b.barrier(v, f"reshape %{node.name} mixes dynamic and channel axes")
        return
    for src, dst, side in ((x, out, 0), (out, x, 1)):
        for s in b.spaces_of(src):
            touched = [blk for blk in blocks if set(blk[side]) & set(s.axes)]
            if not touched:
                continue
            if any(not all(isinstance(src.shape[a], int) for a in blk[side]) for blk in touched):
                continue
            _couple_through_blocks(b, s, dst, touched, side)


def _reshape_blocks(src: list, dst: list) -> list[tuple[list[int], list[int]]] | None:
    """Pair runs of axes with equal products: [([0], [0]), ([1, 2], [1]), ...]."""
    blocks = []
    i = j = 0
    while i < len(src) or j < len(dst):
        bi, bj = [], []
        pi = pj = 1
        if i < len(src):
            bi.append(i)
            pi = src[i]
            i += 1
        if j < len(dst):
            bj.append(j)
            pj = dst[j]
            j += 1
        while not _dims_eq(pi, pj):
            if not (isinstance(pi, int) and isinstance(pj, int)):
                return _symbolic_blocks(src, dst)
            if pi < pj and i < len(src):
                bi.append(i)
                pi *= src[i]
                i += 1
            elif j < len(dst):
                bj.append(j)
                pj *= dst[j]
                j += 1
            else:
                return None
        # absorb trailing size-1 axes into this block
        while i < len(src) and src[i] == 1 and (j >= len(dst) or dst[j] != 1):
            bi.append(i)
            i += 1
        while j < len(dst) and dst[j] == 1 and (i >= len(src) or src[i] != 1):
            bj.append(j)
            j += 1
        blocks.append((bi, bj))
    return blocks


def _dims_eq(a, b) -> bool:
    from graphopt.ir import dims as D

    return D.dims_equal(a, b)


def _symbolic_blocks(src: list, dst: list) -> list[tuple[list[int], list[int]]] | None:
    """Blocks when symbolic dims are involved: match them one to one, static runs in between."""
    from graphopt.ir import dims as D

    sym_src = [i for i, d in enumerate(src) if not isinstance(d, int)]
    sym_dst = [j for j, d in enumerate(dst) if not isinstance(d, int)]
    if len(sym_src) != len(sym_dst) or any(not D.dims_equal(src[i], dst[j]) for i, j in zip(sym_src, sym_dst)):
        # e.g. (batch, seq, C) -> (batch*seq, C): the symbolic run is one block
        return _coarse_blocks(src, dst)
    blocks: list[tuple[list[int], list[int]]] = []
    pi = pj = 0
    for i, j in list(zip(sym_src, sym_dst)) + [(len(src), len(dst))]:
        sub = _reshape_blocks(src[pi:i], dst[pj:j]) if (i > pi or j > pj) else []
        if sub is None:
            return None
        blocks += [([a + pi for a in bi], [c + pj for c in bj]) for bi, bj in sub]
        if i < len(src):
            blocks.append(([i], [j]))
        pi, pj = i + 1, j + 1
    return blocks


def _coarse_blocks(src: list, dst: list) -> list[tuple[list[int], list[int]]] | None:
    """Fallback: peel equal static axes off the end; everything else is one block."""
    blocks = []
    i, j = len(src) - 1, len(dst) - 1
    while i >= 0 and j >= 0 and isinstance(src[i], int) and isinstance(dst[j], int) and src[i] == dst[j]:
        blocks.insert(0, ([i], [j]))
        i, j = i - 1, j - 1
    if i >= 0 or j >= 0:
        blocks.insert(0, (list(range(i + 1)), list(range(j + 1))))
    return blocks


def _couple_through_blocks(b: Builder, s: Space, dst: Value, touched, side: int) -> None:
    src = s.value
    src_axes = [a for blk in touched for a in blk[side]]
    if not all(isinstance(dst.shape[a], int) for blk in touched for a in blk[1 - side]):
        return
    dst_axes = [a for blk in touched for a in blk[1 - side] if dst.shape[a] > 1]
    # enumerate full coordinates of the touched src axes; the flat index within a block is kept
    sizes = [src.shape[a] for a in src_axes]
    coords = np.indices(sizes).reshape(len(sizes), -1)
    total = coords.shape[1]
    src_key = np.zeros(total, dtype=np.int64)  # the src atom of each coordinate (projected onto s.axes)
    for axis, size in zip(s.axes, s.sizes):
        src_key = src_key * size + coords[src_axes.index(axis)]
    dst_coord: dict[int, np.ndarray] = {}
    for blk in touched:
        flat = np.zeros(total, dtype=np.int64)
        for axis in blk[side]:
            flat = flat * src.shape[axis] + coords[src_axes.index(axis)]
        dst_sizes = [dst.shape[a] for a in blk[1 - side]]
        for axis, part in zip(blk[1 - side], np.unravel_index(flat, dst_sizes) if dst_sizes else []):
            dst_coord[axis] = part
    dst_sorted = sorted(dst_axes)
    dst_key = np.zeros(total, dtype=np.int64)
    for axis in dst_sorted:
        dst_key = dst_key * dst.shape[axis] + dst_coord[axis]
    bijective = set(s.axes) >= {a for a in src_axes if src.shape[a] > 1}
    if bijective and (id(dst), tuple(dst_sorted)) not in b.spaces:
        ids = np.empty(total, dtype=np.int64)
        ids[dst_key] = s.atoms[src_key]
        b.space(dst, dst_sorted, ids=ids)
        return
    d = b.space(dst, dst_sorted)
    if d is not None and b.once("reshape", id(s), id(d)):
        b.union(s.atoms[src_key], d.atoms[dst_key])


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


@register_channel_rule("full", "arange")
def _creation(b: Builder, node: Node) -> None:
    """No inputs: a created tensor's channels are whatever its readers couple them to."""
