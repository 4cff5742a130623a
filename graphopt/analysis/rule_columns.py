"""The analysis layer's two columns of the op table: channel rules (or `BARRIER`) and MAC rules.

Both are columns of `graphopt.ir.op_table`, so they follow graphopt's one
duplicate policy: registering a second rule for an op raises `GraphoptError`
unless `replace=True`. This module imports nothing from the rest of the
analysis package: the code that runs the rules (`channels.py`, `cost.py`) reads
them here without importing the modules that define them (`channel_rules/`,
which needs `channel_space.Builder`, and `mac_rules.py`), so there is no import cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

from graphopt.ir import dims as D
from graphopt.ir.graph import Node
from graphopt.ir import op_table
from graphopt.ir.op_table import column

if TYPE_CHECKING:  # only for the Rule type: channel_space.py imports this module
    from graphopt.analysis.channel_space import Builder

CHANNEL_RULE = op_table.CHANNEL_RULE
MAC_RULE = op_table.MAC_RULE

CHANNEL_RULES = column(CHANNEL_RULE, "how channel positions correspond across the op (an op without one, "
                                     "or with BARRIER, stops channel groups)")
MAC_RULES = column(MAC_RULE, "multiply-accumulates the op performs (an op without one counts 0)")


class _Barrier:
    """The type of `BARRIER`: a channel rule saying "no channel crosses this op", on purpose."""

    def __repr__(self) -> str:
        return "BARRIER"


# Registered as an op's channel rule, it makes the op a barrier like an op with no rule
# at all; the coverage table tells the two apart ("barrier" vs "no rule yet").
BARRIER = _Barrier()

Rule = Callable[["Builder", Node], None]
MacRule = Callable[[Node, Callable[[Sequence[D.Dim]], int]], int]


def register_channel_rule(*ops: str, replace: bool = False) -> Callable[[Any], Any]:
    """Decorator registering `rule(builder, node)` as the channel rule of `ops`.

    `register_channel_rule("my_op")(BARRIER)` marks an op as a barrier on purpose.
    A second rule for an op raises `GraphoptError` unless `replace=True`.
    """
    return CHANNEL_RULES.decorator(*ops, replace=replace)


def rule_for(op: str) -> Rule | _Barrier | None:
    """The channel rule of `op`: a function, `BARRIER`, or None when it has none yet."""
    return CHANNEL_RULES.get(op)


def is_barrier(op: str) -> bool:
    """True when channels stop at `op`: it has no channel rule, or has `BARRIER` as its rule."""
    rule = CHANNEL_RULES.get(op)
    return rule is None or rule is BARRIER


def mac_rule(*ops: str, replace: bool = False) -> Callable[[MacRule], MacRule]:
    """Register how many MACs an op performs; `numel(shape)` evaluates a (symbolic) shape's size.

    A second rule for an op raises `GraphoptError` unless `replace=True`.
    """
    return MAC_RULES.decorator(*ops, replace=replace)


def mac_rule_for(op: str) -> MacRule | None:
    """The MAC rule of `op`, or None (the op counts 0 MACs)."""
    return MAC_RULES.get(op)
