"""Channel rules of data-dependent selection (topk, sort, histc) and grouped experts (grouped_mm): barriers.

Which positions topk and sort return depends on the values, so a channel
removed upstream shifts every index they output, and masking (a zeroed
channel still competes for a place) does not equal removal. MoE routing puts
topk on the expert axis, which no plan should shrink anyway. histc counts tokens per expert
and grouped_mm runs each expert on the rows routed to it: which rows meet which weight depends on
the data, so neither the rows nor the experts' channels correspond across them.
"""

from __future__ import annotations

from graphopt.analysis.rule_columns import BARRIER, register_channel_rule

register_channel_rule("topk", "sort", "histc", "grouped_mm")(BARRIER)
