"""Channel rules of patch ops (im2col, col2im): barriers, on purpose.

im2col interleaves each input channel with the kernel positions on one axis
(column c * kh * kw + i * kw + j) and col2im undoes it while summing
overlapping windows; a channel space would need that factorisation, and the
models that use them (MobileViT-style unfold/fold) reshape the columns further,
so they stop channel groups until a rule that follows the factorisation exists.
"""

from __future__ import annotations

from graphopt.analysis.rule_columns import BARRIER, register_channel_rule

register_channel_rule("im2col", "col2im")(BARRIER)
