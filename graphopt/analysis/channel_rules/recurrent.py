"""Channel rules of the recurrent ops (lstm, gru): barriers, on purpose.

An LSTM's or GRU's hidden channels feed back into themselves through w_hh at
every step and its gates (four, three) are stacked on one weight axis, so removing a hidden
unit means slicing a row block per gate of w_ih, w_hh and the biases, the matching
columns of w_hh and of the next layer's w_ih, and h0/c0: none of that is
expressed by the channel model yet, so channels stop at the op.
"""

from __future__ import annotations

from graphopt.analysis.rule_columns import BARRIER, register_channel_rule

register_channel_rule("lstm", "gru")(BARRIER)
