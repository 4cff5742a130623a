"""Canonicalisation passes: exact rewrites that put a traced graph into a simpler, standard form.

Every pass here is exact (outputs equal within fp32 rounding), keeps the
`meta` (source locations) of the nodes it keeps, and is registered by name.
Each is a set of rewrite rules (its module's `RULES`) applied to a fixed point
by `graphopt.passmanager.rewrite.graph_rewrite`, which also erases what a rule
bypassed; `eliminate-dead-code` is that driver's dead-code sweep alone.
`canonicalize` runs them all, repeating until none changes the graph.
"""

from graphopt.passmanager import register_pipeline

from .dead_code import EliminateDeadCode
from .fold_batchnorm import FoldBatchNorm
from .fold_constants import FoldConstants
from .merge_reshapes import MergeReshapes
from .remove_identity import RemoveIdentity

CANONICALIZE = "remove-identity,merge-reshapes,fold-constants,fold-batchnorm,eliminate-dead-code"
# Everything but BatchNorm folding: the graph stays trainable the way the model was (a pruned
# model fine-tunes far better with its norms, which re-normalise what pruning shifted), and
# `canonicalize` folds them once pruning and fine-tuning are done.
SIMPLIFY = "remove-identity,merge-reshapes,fold-constants,eliminate-dead-code"

register_pipeline(
    "canonicalize",
    CANONICALIZE,
    fixed_point=True,
    max_iterations=4,
    doc="run every canonicalisation pass, repeated until none changes the graph",
)

register_pipeline(
    "simplify",
    SIMPLIFY,
    fixed_point=True,
    max_iterations=4,
    doc="canonicalize without BatchNorm folding: keeps the graph trainable (used before pruning)",
)

__all__ = ["EliminateDeadCode", "FoldBatchNorm", "FoldConstants", "MergeReshapes", "RemoveIdentity", "CANONICALIZE", "SIMPLIFY"]
