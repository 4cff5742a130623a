"""Channel rule of broadcasting elementwise ops (unary, binary, where, cast): aligned axes correspond."""

from __future__ import annotations

from graphopt.analysis.channels import Builder
from graphopt.analysis.rule_columns import register_channel_rule
from graphopt.ir.graph import Node, Value
from graphopt.ir.ops import ELEMENTWISE_BINARY, ELEMENTWISE_UNARY

# ops mapping 0 to a non-zero constant: masked channels stop being zero behind them
_NONZERO_AT_ZERO = {"sigmoid": 0.5, "hardsigmoid": 0.5, "exp": 1.0, "cos": 1.0, "softplus": 0.69, "rsqrt": None,
                    "reciprocal": None, "log": None, "logical_not": 1.0,
                    "bitwise_not": -1, "acos": 1.57}


def _elementwise(b: Builder, node: Node) -> None:
    """Broadcasting elementwise op: aligned axes correspond; size-1 axes broadcast (soft)."""
    out = node.outputs[0]
    operands = [v for v in node.inputs if v is not None]
    for v in operands:
        _from_operand(b, v, out)
        _to_operand(b, v, out)
    for v in operands:
        if v.is_weight:
            for s in b.spaces_of(v):
                if not s.role:
                    s.role = "producer"
    if node.op in _NONZERO_AT_ZERO:
        for s in b.spaces_of(out):
            if not _feeds_gate_only(node, out):
                b.gates.append((s, f"{node.op} maps masked (zero) channels to a non-zero value at %{node.name}", node))


def _from_operand(b: Builder, v: Value, out: Value) -> None:
    """Carry the operand's spaces onto the output, where the sizes agree."""
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


def _to_operand(b: Builder, v: Value, out: Value) -> None:
    """Carry the output's spaces back onto the operand: hard where aligned, soft where it broadcasts."""
    offset = out.rank - v.rank
    for s in b.spaces_of(out):
        mapping = {a: (a - offset if a - offset >= 0 else None) for a in s.axes}
        broadcast = [a for a, d in mapping.items() if d is None or v.shape[d] != out.shape[a]]
        if not broadcast:
            b.couple(s, v, mapping)
        else:
            proj = {a: (None if a in broadcast else d) for a, d in mapping.items()}
            if any(d is not None for d in proj.values()):
                b.couple(s, v, proj, soft=True, role="producer" if v.is_weight else "")


def _feeds_gate_only(node: Node, out: Value) -> bool:
    """A sigmoid-style output used only as a multiplicative gate keeps masked channels at zero."""
    users = out.users
    return bool(users) and all(u.op == "mul" for u in users)


register_channel_rule(*sorted(ELEMENTWISE_UNARY | ELEMENTWISE_BINARY | {"where", "cast"}))(_elementwise)
