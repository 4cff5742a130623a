"""In-place ops that need no functionalisation: rewritten as their functional twins before import.

torch.export keeps `relu_`, `add_`, `hardtanh_` in the program it returns. Functionalising it
(`ExportedProgram.run_decompositions`) re-traces the whole program: three quarters of ResNet-50's
trace time (4.3 of 5.8 s). Most in-place ops in real models write a fresh activation that nothing
else names (`nn.ReLU(inplace=True)` after a batch norm, `out += identity`): such an op equals its
functional form, with every later reader of the tensor reading the result instead. That rewrite
is a renaming in the fx graph, and costs nothing.

Writes into part of a fresh tensor through slices and selects (`attn[..., i, :i] = row`,
`out[:, i] = y`: the chunked loops of linear-attention and state-space models, where the
re-trace is most of the trace time: 20 of 36 s on Kimi-Linear) are rewritten the way
functionalisation would: the functional op computes the written part, and `slice_scatter` /
`select_scatter` put it back into a new version of the tensor, which every later reader reads.

It is exact only when the written tensor has no other name: not an input, parameter or buffer
(a write to those must reach the caller), not a view, and no view of it is read across a write
(a view would see the write; one read before the next write reads the same values either way).
`rewrite_local_inplace` checks every mutation of the program first and rewrites either all of
them or none; `trace` functionalises the program as before when it says no.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx

aten = torch.ops.aten
# A view that a write may go through, and the op that puts a written view back into its base.
_SCATTER = {aten.slice.Tensor: aten.slice_scatter.default, aten.select.int: aten.select_scatter.default}


def _schema(node: torch.fx.Node):
    return getattr(node.target, "_schema", None) if node.op == "call_function" else None


def _is_view(node: torch.fx.Node) -> bool:
    """The node's result may share memory with an input (views, and `to`/`reshape`, which can)."""
    schema = _schema(node)
    return schema is not None and any(r.alias_info is not None for r in schema.returns)


def _fresh(node: torch.fx.Node) -> bool:
    """The node's result is a new tensor: an ATen op's non-aliasing result, or one of several (`topk(...)[0]`)."""
    if node.op == "call_function" and node.target is operator.getitem and isinstance(node.args[0], torch.fx.Node):
        node = node.args[0]
    return _schema(node) is not None and not _is_view(node)


def functional_twin(target: object) -> torch._ops.OpOverload | None:
    """`aten.relu_.default` -> `aten.relu.default`: the same op without the write, if it exists."""
    schema = getattr(target, "_schema", None)
    if schema is None or "::" not in schema.name:
        return None
    namespace, name = schema.name.split("::")
    if not name.endswith("_") or name.endswith("__"):
        return None
    packet = getattr(getattr(torch.ops, namespace), name[:-1], None)
    twin = getattr(packet, getattr(target, "_overloadname", "default"), None)
    if twin is None or twin._schema.is_mutable:
        return None
    return twin


@dataclass
class _Write:
    """One in-place op: its functional twin, and the slices/selects (base first) it writes through."""

    twin: torch._ops.OpOverload
    chain: list[torch.fx.Node] = field(default_factory=list)


def _dtype(node: object) -> torch.dtype | None:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return val.dtype if isinstance(val, torch.Tensor) else None


def _through_views(node: torch.fx.Node, target: torch.fx.Node, twin) -> list[torch.fx.Node] | None:
    """The slices/selects from the written tensor's base to `target` (base's user first), or None."""
    chain = []
    while target.op == "call_function" and target.target in _SCATTER and isinstance(target.args[0], torch.fx.Node):
        chain.append(target)
        target = target.args[0]
    chain.reverse()
    if node.users:
        return None  # the write's result is the view itself: a later reader would alias the base
    if any(len(view.users) != 1 for view in chain):
        return None  # a view that is also read: it would see the write
    if twin is not aten.copy.default:  # `view.add_(y)` keeps the view's dtype; `add(view, y)` may promote
        want = _dtype(chain[-1])
        if want is None or not want.is_floating_point:
            return None
        others = [a for a in (*node.args[1:], *node.kwargs.values()) if isinstance(a, torch.fx.Node)]
        if any(_dtype(a) != want for a in others):
            return None
    return chain


def _local_writes(graph: torch.fx.Graph) -> dict[torch.fx.Node, _Write] | None:
    """Each mutating node and how to rewrite it, or None if any write is not provably local."""
    writes: dict[torch.fx.Node, _Write] = {}
    root: dict[torch.fx.Node, torch.fx.Node] = {}  # every node that names a written tensor -> its first name
    position = {node: i for i, node in enumerate(graph.nodes)}
    written_at: dict[torch.fx.Node, list[int]] = {}  # root -> positions of the writes to it
    for node in graph.nodes:
        schema = _schema(node)
        if schema is None or not schema.is_mutable:
            continue
        written = [i for i, a in enumerate(schema.arguments) if a.alias_info is not None and a.alias_info.is_write]
        twin = functional_twin(node.target)
        target = node.args[0] if node.args else None
        if written != [0] or twin is None or not isinstance(target, torch.fx.Node):
            return None
        chain: list[torch.fx.Node] = []
        if target not in root and target.op == "call_function" and target.target in _SCATTER:
            chain = _through_views(node, target, twin)
            if chain is None:
                return None
            target = chain[0].args[0]
        if target not in root and not _fresh(target):
            return None  # an input, parameter, buffer, view or opaque result: the write must be kept
        first = root.setdefault(target, target)
        if not chain:
            root[node] = first  # `relu_(x)` returns x
        elif any(position[chain[0]] < at for at in written_at.get(first, [])):
            return None  # the view was taken before an earlier write to the same tensor
        written_at.setdefault(first, []).append(position[node])
        writes[node] = _Write(twin, chain)
    through = {view for write in writes.values() for view in write.chain}
    for node in graph.nodes:
        if node in writes or node in through or not _is_view(node):
            continue
        bases = [root[x] for x in node.all_input_nodes if x in root]
        if bases and not _read_before_next_write(node, position, [written_at[b] for b in bases], writes):
            return None
    return writes


def _read_before_next_write(view: torch.fx.Node, position: dict, writes_to: list[list[int]], writes) -> bool:
    """Every reader of `view` (through further views too) comes no later than the next write to its base."""
    start = position[view]
    following = [at for ats in writes_to for at in ats if at > start]
    limit = min(following, default=len(position))
    pending, seen = [view], {view}
    while pending:
        for user in pending.pop().users:
            if user in seen:
                continue
            seen.add(user)
            if user in writes and user.args[0] is not None and user.args[0] in seen:
                return False  # a write through this view: it must reach the base
            if position[user] > limit:
                return False
            if _is_view(user):
                pending.append(user)
    return True


def _scatter(graph: torch.fx.Graph, view: torch.fx.Node, base, src: torch.fx.Node, meta: dict) -> torch.fx.Node:
    """`base` with `src` written where `view` (a slice or select of `base`) is."""
    if view.target is aten.slice.Tensor:
        args = (base, src, *view.args[1:])
        kwargs = dict(view.kwargs)
    else:
        args = (base, src, view.args[1] if len(view.args) > 1 else view.kwargs["dim"],
                view.args[2] if len(view.args) > 2 else view.kwargs["index"])
        kwargs = {}
    node = graph.call_function(_SCATTER[view.target], args, kwargs)
    node.meta.update(meta)
    return node


def rewrite_local_inplace(graph: torch.fx.Graph) -> bool:
    """Rewrite every in-place op as its functional twin if all writes are local; True if it did.

    After `y = relu_(x)`, readers of `x` that come later read `y`; readers before it keep `x`.
    After `x[..., i] = v` (a `copy_` into a select of `x`), later readers of `x` read
    `select_scatter(x, v, -1, i)`.
    """
    writes = _local_writes(graph)
    if writes is None:
        return False
    position = {node: i for i, node in enumerate(graph.nodes)}
    for node, write in writes.items():  # in program order: each reads the version the ones before made
        later = position[node]
        node.target = write.twin
        if not write.chain:
            written = node.args[0]
            written.replace_all_uses_with(node, delete_user_cb=lambda user: position.get(user, -1) > later)
            continue
        written = write.chain[0].args[0]  # the base's current version (renamed by earlier writes)
        meta = {k: v for k, v in node.meta.items() if k != "val"}
        value, anchor = node, node
        for depth in range(len(write.chain) - 1, -1, -1):
            view = write.chain[depth]
            outer = write.chain[depth - 1] if depth else written
            with graph.inserting_after(anchor):
                value = _scatter(graph, view, outer, value, meta)
            value.meta["val"] = outer.meta.get("val")
            anchor = value
        written.replace_all_uses_with(value, delete_user_cb=lambda user: position.get(user, -1) > later)
    return True
