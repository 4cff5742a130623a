"""Structured pruning (`prune` pass) and its importance criteria."""

from .criteria import CRITERIA, get_criterion, register_criterion
from .datafree import RecoveryReport, recover_data_free
from .latency import LatencyReport, register_measurer
from .prune_pass import BUDGET_OPTIONS, GroupDecision, Prune, PruneReport
from .recipe import PruneRecipe, PruneStep, RecipeError, apply_recipe, structure_hash
from .reconstruct import ReconstructionReport, reconstruct

__all__ = ["Prune", "PruneReport", "BUDGET_OPTIONS", "GroupDecision", "PruneRecipe", "PruneStep",
           "ReconstructionReport", "reconstruct", "RecoveryReport", "recover_data_free", "LatencyReport",
           "register_measurer", "apply_recipe", "structure_hash", "RecipeError", "CRITERIA", "get_criterion",
           "register_criterion"]
