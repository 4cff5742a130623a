"""Structured pruning (`prune` pass) and its importance criteria."""

from .criteria import CRITERIA, get_criterion, register_criterion
from .prune_pass import GroupDecision, Prune, PruneReport
from .recipe import PruneRecipe, apply_recipe, structure_hash

__all__ = ["Prune", "PruneReport", "GroupDecision", "PruneRecipe", "apply_recipe", "structure_hash", "CRITERIA", "get_criterion", "register_criterion"]
