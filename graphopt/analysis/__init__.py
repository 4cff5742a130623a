"""Analyses over the graphopt IR: coupled channel groups (and their removal), costs; keyed by type (`Analysis`)."""

from graphopt.analysis.base import Analysis, bindings_from_inputs
from graphopt.analysis.channel_rules import BARRIER, register_channel_rule
from graphopt.analysis.cost import CostAnalysis, CostReport, estimate_cost
from graphopt.analysis.channels import (
    ChannelAnalysis, ChannelGroup, ChannelGroups, Space, analyse_with_stats, channel_groups,
)
from graphopt.analysis.removal import RemovalError, mask_channels, remove_channels
from graphopt.analysis.residual_blocks import BlockReport, ResidualBlock, ResidualBlocks, find_blocks
from graphopt.analysis.rule_columns import mac_rule

__all__ = [
    "channel_groups", "ChannelGroup", "ChannelAnalysis", "Space", "analyse_with_stats",
    "register_channel_rule", "BARRIER", "mac_rule", "remove_channels", "mask_channels", "RemovalError",
    "CostReport", "estimate_cost", "Analysis", "ChannelGroups", "CostAnalysis", "bindings_from_inputs",
    "ResidualBlocks", "ResidualBlock", "BlockReport", "find_blocks",
]
