"""Depth pruning: the `drop-layers` pass, its scores, recovery and recipes."""

from .drop_pass import DropLayers
from .recipe import DropRecipe, apply_drop_recipe
from .recover import RecoveryReport, recover
from .removal import drop_block
from .report import BlockRow, DropReport
from .scores import (METRICS, Baseline, block_scores, kl_divergence, logits_output, measured_scores, resolve_metric,
                     similarity_scores)

__all__ = ["DropLayers", "DropReport", "BlockRow", "DropRecipe", "apply_drop_recipe", "RecoveryReport", "recover",
           "drop_block", "METRICS", "Baseline", "block_scores", "kl_divergence", "logits_output",
           "measured_scores", "resolve_metric", "similarity_scores"]
