"""`remove-identity`: drop ops that return their input unchanged (at inference)."""

from __future__ import annotations

from typing import Sequence

from graphopt.ir.graph import Node
from graphopt.passmanager import register_pass
from graphopt.passmanager.rewrite import Outcome, RewritePass, Rule, rule

from ._rewrite import normalized_dims, same_shape

NOOP_OPS = ("identity", "dropout", "reshape", "expand", "permute", "cast", "slice", "concat", "split", "pad")


def is_noop(node: Node) -> bool:
    """True when the node's (first) output equals its first input, element for element."""
    op, attrs = node.op, node.attrs
    if not node.inputs or node.inputs[0] is None:
        return False
    x = node.inputs[0]
    if op in ("identity", "dropout"):  # dropout is the identity in inference graphs
        return True
    if op in ("reshape", "expand"):
        return same_shape(x, node.outputs[0])
    if op == "permute":
        return normalized_dims(attrs["dims"], x.rank) == list(range(x.rank))
    if op == "cast":
        return attrs["dtype"] == x.dtype
    if op == "slice":
        return attrs.get("step", 1) == 1 and attrs["start"] == 0 and same_shape(x, node.outputs[0])
    if op == "concat":
        return len(node.inputs) == 1
    if op == "split":
        return len(node.outputs) == 1 and same_shape(x, node.outputs[0])
    if op == "pad":
        return all(p == 0 for p in attrs["pad"])
    return False


def noop_rule(name: str, ops: Sequence[str]) -> Rule:
    """A rule on `ops` that makes the readers of a no-op node read its input instead."""

    def bypass_noop(node: Node) -> Outcome:
        if not is_noop(node):
            return f"this {node.op} changes its input"
        if node.outputs[0].dtype != node.inputs[0].dtype:
            return "its output type differs from its input's"
        return node.inputs[0]

    return rule(name, *ops)(bypass_noop)


REMOVE_NOOP = noop_rule("remove-noop", NOOP_OPS)


@rule("drop-empty-concat-operands", "concat")
def drop_empty_concat_operands(node: Node) -> Outcome:
    """concat(x, empty) -> x: an operand of size 0 along the axis adds nothing.

    Partial rotary embeddings whose rotary dim is the whole head (Phi-3) concatenate `x[..., d:]`,
    an empty slice; left in, it is a tensor whose channels no rule can follow.
    """
    axis = node.attrs["axis"] % node.outputs[0].rank
    kept = [x for x in node.inputs if x is None or x.shape[axis] != 0]
    if len(kept) == len(node.inputs) or not kept:
        return "no operand is empty along the axis"
    if len(kept) == 1 and kept[0].dtype == node.outputs[0].dtype:
        return kept[0]
    node.set_inputs(kept)
    return node


RULES: tuple[Rule, ...] = (REMOVE_NOOP, drop_empty_concat_operands)


@register_pass("remove-identity")
class RemoveIdentity(RewritePass):
    """Remove identity and inference-time dropout, and reshape/permute/expand/cast/slice/pad that change nothing.

    Why: front-ends keep such ops to mirror the source model; left in, they
    hide patterns (conv -> dropout -> batch_norm) from the passes that follow.
    """

    def rules(self) -> Sequence[Rule]:
        return RULES
