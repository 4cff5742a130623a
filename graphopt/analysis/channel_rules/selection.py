"""Channel rules of data-dependent selection (topk, sort): barriers, on purpose.

Which positions topk and sort return depends on the values, so a channel
removed upstream shifts every index they output, and masking (a zeroed
channel still competes for a place) does not equal removal. MoE routing puts
topk on the expert axis, which no plan should shrink anyway.
"""

from __future__ import annotations

from graphopt.analysis.rule_columns import BARRIER, register_channel_rule

register_channel_rule("topk", "sort")(BARRIER)
