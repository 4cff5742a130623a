"""In-place ops that need no functionalisation: rewritten as their functional twins before import.

torch.export keeps `relu_`, `add_`, `hardtanh_` in the program it returns. Functionalising it
(`ExportedProgram.run_decompositions`) re-traces the whole program: three quarters of ResNet-50's
trace time (4.3 of 5.8 s). Most in-place ops in real models write a fresh activation that nothing
else names (`nn.ReLU(inplace=True)` after a batch norm, `out += identity`): such an op equals its
functional form, with every later reader of the tensor reading the result instead. That rewrite
is a renaming in the fx graph, and costs nothing.

It is exact only when the written tensor has no other name: not an input, parameter or buffer
(a write to those must reach the caller), not a view, and no view is ever taken of it (a view
would see the write). `rewrite_local_inplace` checks every mutation of the program first and
rewrites either all of them or none; `trace` functionalises the program as before when it says no.
"""

from __future__ import annotations

import torch
import torch.fx


def _schema(node: torch.fx.Node):
    return getattr(node.target, "_schema", None) if node.op == "call_function" else None


def _is_view(node: torch.fx.Node) -> bool:
    """The node's result may share memory with an input (views, and `to`/`reshape`, which can)."""
    schema = _schema(node)
    return schema is not None and any(r.alias_info is not None for r in schema.returns)


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


def _local_writes(graph: torch.fx.Graph) -> dict[torch.fx.Node, torch._ops.OpOverload] | None:
    """Each mutating node and its functional twin, or None if any write is not provably local."""
    twins: dict[torch.fx.Node, torch._ops.OpOverload] = {}
    names: set[torch.fx.Node] = set()  # every node that names a written tensor
    for node in graph.nodes:
        schema = _schema(node)
        if schema is None or not schema.is_mutable:
            continue
        written = [i for i, a in enumerate(schema.arguments) if a.alias_info is not None and a.alias_info.is_write]
        twin = functional_twin(node.target)
        target = node.args[0] if node.args else None
        if written != [0] or twin is None or not isinstance(target, torch.fx.Node):
            return None
        if target not in names and (target.op != "call_function" or _is_view(target) or _schema(target) is None):
            return None  # an input, parameter, buffer, view or opaque result: the write must be kept
        twins[node] = twin
        names |= {target, node}
    readers = (node for node in graph.nodes if node not in twins)  # a write returns its target: not a view
    if any(_is_view(node) and names.intersection(node.all_input_nodes) for node in readers):
        return None  # a view of a written tensor would see the write
    return twins


def rewrite_local_inplace(graph: torch.fx.Graph) -> bool:
    """Rewrite every in-place op as its functional twin if all writes are local; True if it did.

    After `y = relu_(x)`, readers of `x` that come later read `y`; readers before it keep `x`.
    """
    twins = _local_writes(graph)
    if twins is None:
        return False
    position = {node: i for i, node in enumerate(graph.nodes)}
    for node, twin in twins.items():
        written = node.args[0]
        later = position[node]
        written.replace_all_uses_with(node, delete_user_cb=lambda user: position[user] > later)
        node.target = twin
    return True
