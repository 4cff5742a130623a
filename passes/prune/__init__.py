"""Structured pruning (`prune` pass) and its importance criteria."""

from .criteria import CRITERIA, get_criterion, register_criterion
from .prune_pass import GroupDecision, Prune, PruneReport

__all__ = ["Prune", "PruneReport", "GroupDecision", "CRITERIA", "get_criterion", "register_criterion"]
