"""`merge-reshapes`: compose reshape->reshape and permute->permute chains into one op (or none)."""

from __future__ import annotations

from typing import Sequence

from graphopt.ir.graph import Node
from graphopt.passmanager import register_pass
from graphopt.passmanager.rewrite import Outcome, RewritePass, Rule, rule

from ._rewrite import normalized_dims
from .remove_identity import noop_rule


@rule("merge-reshape-chain", "reshape")
def merge_reshape_chain(node: Node) -> Outcome:
    """reshape(reshape(x)) -> reshape(x): both read the elements in row-major order, so only the last shape counts."""
    inner = node.inputs[0].producer
    if inner is None or inner.op != "reshape":
        return "its input is not a reshape"
    node.set_input(0, inner.inputs[0])
    return node


@rule("merge-permute-chain", "permute")
def merge_permute_chain(node: Node) -> Outcome:
    """permute(permute(x)) -> one permute with the composed dims."""
    x = node.inputs[0]
    inner = x.producer
    if inner is None or inner.op != "permute":
        return "its input is not a permute"
    dims = normalized_dims(node.attrs["dims"], x.rank)
    inner_dims = normalized_dims(inner.attrs["dims"], inner.inputs[0].rank)
    # out[i] = inner_out[dims[i]] = source[inner_dims[dims[i]]]
    node.attrs["dims"] = [inner_dims[d] for d in dims]
    node.set_input(0, inner.inputs[0])
    return node


RULES: tuple[Rule, ...] = (merge_reshape_chain, merge_permute_chain,
                           noop_rule("drop-noop-layout", ("reshape", "permute")))


@register_pass("merge-reshapes")
class MergeReshapes(RewritePass):
    """Fold reshape(reshape(x)) into reshape(x) and permute(permute(x)) into one permute; drop identities.

    Why: traced code reshapes in steps (unsqueeze, then view, ...), and pattern
    passes look one producer up; one op per layout change keeps them simple.
    A reshape of a reshape depends only on the final shape (both read the
    elements in row-major order), so the merge is exact.
    """

    def rules(self) -> Sequence[Rule]:
        return RULES
