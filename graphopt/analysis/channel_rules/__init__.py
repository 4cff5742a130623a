"""Per-op channel rules: how channel positions correspond across each canonical op, by op family.

A rule is `fn(builder, node)`. It runs whenever a space appears on one of the
node's tensors and must couple, in both directions, every space it can see
(see graphopt/analysis/channels.py for the model). Rules are the "channel_rule"
column of the op table (`graphopt.ir.op_table`). Register a rule for your own op
with `register_channel_rule("my_op")`; an op without one is a barrier, and
`register_channel_rule("my_op")(BARRIER)` says it is one on purpose.
"""

from graphopt.analysis.channel_rules import (  # noqa: F401 - each module registers its family's rules
    attention,
    contraction,
    creation,
    dense,
    elementwise,
    indexing,
    layout,
    norms,
    patches,
    pooling,
    quant,
    recurrent,
    reductions,
    reshape,
    selection,
)
from graphopt.analysis.rule_columns import BARRIER, Rule, is_barrier, register_channel_rule, rule_for

__all__ = ["BARRIER", "Rule", "is_barrier", "register_channel_rule", "rule_for"]
