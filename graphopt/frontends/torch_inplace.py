"""In-place ops that need no functionalisation: rewritten as their functional twins before import.

torch.export keeps `relu_`, `add_`, `hardtanh_` in the program it returns. Functionalising it
(`ExportedProgram.run_decompositions`) re-traces the whole program: three quarters of ResNet-50's
trace time (4.3 of 5.8 s). Most in-place ops in real models write a fresh activation that nothing
else names (`nn.ReLU(inplace=True)` after a batch norm, `out += identity`): such an op equals its
functional form, with every later reader of the tensor reading the result instead. That rewrite
is a renaming in the fx graph, and costs nothing.

Writes into part of a fresh tensor through slices and selects (`attn[..., i, :i] = row`,
`out[:, i] = y`: the chunked loops of linear-attention models, where the re-trace was most of
the trace time: 20 of 26 s on Kimi-Linear) are rewritten the way functionalisation would: the
functional op computes the written part, `slice_scatter` / `select_scatter` put it back into a
new version of the tensor, which every later reader reads, and a slice or select of the tensor
read after a write is taken again from the new version (`thw = freq[0]; thw[..., 1::3] = ...;
cat(thw, ...)`, Qwen3.5's rotary recomposition).

It is exact only when the written tensor has no other name: not an input, parameter or buffer
(a write to those must reach the caller), not a view, and no other view of it (`view`,
`transpose`, `reshape`, `expand`, which are not taken again) is read across a write.
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
class _Writes:
    """The in-place ops of a program and the tensors they write, found before anything is rewritten."""

    twins: dict[torch.fx.Node, torch._ops.OpOverload] = field(default_factory=dict)
    root: dict[torch.fx.Node, torch.fx.Node] = field(default_factory=dict)  # alias of a written tensor -> its base


def _dtype(node: object) -> torch.dtype | None:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return val.dtype if isinstance(val, torch.Tensor) else None


def _alias_parent(node: torch.fx.Node, twins: dict) -> torch.fx.Node | None:
    """The tensor `node` is a slice/select of, or that an in-place op (which returns its target) wrote."""
    if node.op != "call_function" or not node.args or not isinstance(node.args[0], torch.fx.Node):
        return None
    return node.args[0] if node.target in _SCATTER or node in twins else None


def _local_writes(graph: torch.fx.Graph) -> _Writes | None:
    """Every mutating node, its functional twin and the tensors it writes, or None if a write is not provably local."""
    found = _Writes()
    for node in graph.nodes:
        schema = _schema(node)
        if schema is None or not schema.is_mutable:
            continue
        written = [i for i, a in enumerate(schema.arguments) if a.alias_info is not None and a.alias_info.is_write]
        twin = functional_twin(node.target)
        if written != [0] or twin is None or not isinstance(node.args[0], torch.fx.Node):
            return None
        found.twins[node] = twin
    for node, twin in found.twins.items():
        target, views = node.args[0], []
        while (parent := _alias_parent(target, found.twins)) is not None:
            views.append(target)
            target = parent
        if not _fresh(target):
            return None  # an input, parameter, buffer, view or opaque result: the write must be kept
        if any(v.target in _SCATTER for v in views) and twin is not aten.copy.default and not _keeps_dtype(node):
            return None
        found.root[target] = target
    # every slice/select of a written tensor (and in-place op on one) is an alias we can replay on a new version
    for node in graph.nodes:
        parent = _alias_parent(node, found.twins)
        if parent is not None and parent in found.root:
            found.root[node] = found.root[parent]
    return found if _no_opaque_view_sees_a_write(graph, found) else None


def _keeps_dtype(node: torch.fx.Node) -> bool:
    """`view.add_(y)` keeps the view's dtype, `add(view, y)` may promote: the same only for equal float dtypes."""
    want = _dtype(node.args[0])
    others = [a for a in (*node.args[1:], *node.kwargs.values()) if isinstance(a, torch.fx.Node)]
    return want is not None and want.is_floating_point and all(_dtype(a) == want for a in others)


def _no_opaque_view_sees_a_write(graph: torch.fx.Graph, found: _Writes) -> bool:
    """Other views of a written tensor (`view`, `transpose`, `reshape`) cannot be replayed: every reader
    of one (through further views too) must come no later than the next write to its tensor."""
    position = {node: i for i, node in enumerate(graph.nodes)}
    written_at: dict[torch.fx.Node, list[int]] = {}
    for node in found.twins:
        written_at.setdefault(found.root[node.args[0]], []).append(position[node])
    for node in graph.nodes:
        if node in found.root or not _is_view(node):
            continue
        bases = {found.root[x] for x in node.all_input_nodes if x in found.root}
        if not bases:
            continue
        limit = min((at for b in bases for at in written_at[b] if at > position[node]), default=len(position))
        pending, seen = [node], {node}
        while pending:
            for user in pending.pop().users:
                if user in seen:
                    continue
                seen.add(user)
                if user in found.twins and user.args[0] in seen:
                    return False  # a write through this view: it must reach the base
                if position[user] > limit:
                    return False
                if _is_view(user) or user.target is operator.getitem:  # `split` returns its views in a list
                    pending.append(user)
    return True


def _scatter(graph: torch.fx.Graph, view: torch.fx.Node, base, src: torch.fx.Node) -> torch.fx.Node:
    """`base` with `src` written where `view` (a slice or select of `base`) is."""
    if view.target is aten.slice.Tensor:
        args = (base, src, *view.args[1:])
        kwargs = dict(view.kwargs)
    else:
        args = (base, src, view.args[1] if len(view.args) > 1 else view.kwargs["dim"],
                view.args[2] if len(view.args) > 2 else view.kwargs["index"])
        kwargs = {}
    return graph.call_function(_SCATTER[view.target], args, kwargs)


class _Versions:
    """The current value of every alias of the written tensors while the program is rewritten in order."""

    def __init__(self, graph: torch.fx.Graph, found: _Writes) -> None:
        self.graph, self.found = graph, found
        self.version = {base: 0 for base in set(found.root.values())}
        self.base_value = {base: base for base in self.version}
        self.alias_value: dict[torch.fx.Node, tuple[torch.fx.Node, int]] = {}
        # the alias structure as exported, before inputs are pointed at current values
        self.parent = {alias: alias.args[0] for alias in found.root if alias is not found.root[alias]}

    def value(self, alias: torch.fx.Node, before: torch.fx.Node) -> torch.fx.Node:
        """The current value of `alias`: a slice/select replayed on its base's latest version if it is stale."""
        base = self.found.root[alias]
        if alias is base:
            return self.base_value[base]
        node, version = self.alias_value.get(alias, (None, -1))
        if version == self.version[base]:
            return node
        parent = self.value(self.parent[alias], before)
        if alias in self.found.twins:  # an in-place op returns its (current) target
            node = parent
        else:
            with self.graph.inserting_before(before):
                node = self.graph.call_function(alias.target, (parent, *alias.args[1:]), dict(alias.kwargs))
            node.meta.update(alias.meta)
        self.alias_value[alias] = (node, self.version[base])
        return node

    def read(self, node: torch.fx.Node) -> None:
        """Point the node's inputs at the current values of the aliases it reads."""
        aliases = [x for x in node.all_input_nodes if x in self.found.root]
        if aliases:
            current = {x: self.value(x, node) for x in aliases}
            node.args = torch.fx.map_arg(node.args, lambda x: current.get(x, x))
            node.kwargs = torch.fx.map_arg(node.kwargs, lambda x: current.get(x, x))
        if node in self.found.root and node is not self.found.root[node] and node not in self.found.twins:
            self.alias_value[node] = (node, self.version[self.found.root[node]])

    def write(self, node: torch.fx.Node) -> None:
        """`node` (an in-place op, now its functional twin, inputs current) makes its base's next version."""
        base = self.found.root[node]
        node.target = self.found.twins[node]
        value, anchor = node, node
        meta = {k: v for k, v in node.meta.items() if k != "val"}
        alias = self.parent[node]  # the target, as exported
        while alias is not base:  # put the written slice back into each tensor it is a view of
            parent = self.parent[alias]
            if alias.target in _SCATTER:
                outer = self.value(parent, anchor.next)
                with self.graph.inserting_after(anchor):
                    value = _scatter(self.graph, alias, outer, value)
                value.meta.update(meta)
                value.meta["val"] = outer.meta.get("val")
                anchor = value
            alias = parent
        self.version[base] += 1
        self.base_value[base] = value  # the write's own result (it returns its target) is taken again when read


def rewrite_local_inplace(graph: torch.fx.Graph) -> bool:
    """Rewrite every in-place op as its functional twin if all writes are local; True if it did.

    After `y = relu_(x)`, readers of `x` that come later read `y`; readers before it keep `x`.
    After `x[..., i] = v` (a `copy_` into a select of `x`), later readers of `x` read
    `select_scatter(x, v, -1, i)`, and a slice or select of `x` read later is taken again from it.
    """
    found = _local_writes(graph)
    if found is None:
        return False
    versions = _Versions(graph, found)
    for node in list(graph.nodes):  # in program order: each reads the versions the writes before it made
        versions.read(node)
        if node in found.twins:
            versions.write(node)
    return True
