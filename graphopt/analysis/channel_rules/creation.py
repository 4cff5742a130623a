"""Channel rule of creation ops (full, arange): they have no input channels to carry."""

from __future__ import annotations

from graphopt.analysis.channels import Builder
from graphopt.analysis.rule_columns import register_channel_rule
from graphopt.ir.graph import Node


@register_channel_rule("full", "arange")
def _creation(b: Builder, node: Node) -> None:
    """No inputs: a created tensor's channels are whatever its readers couple them to."""
