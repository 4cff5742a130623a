"""Train once, prune exactly: structured sparsity during training, then removal that changes no output.

    groups = unit_groups(model, example_inputs)            # prunable, mask-exact units as parameter slices
    optimizer = GroupSparseOptimizer(torch.optim.AdamW(model.parameters()), groups,
                                     target_sparsity=0.5, total_steps=epochs * len(loader))
    ... train as usual ...
    pruned = prune_zero_groups(model, example_inputs)     # an OptimizedModel with its prune recipe

At the api level of the layering: it traces (frontends), reads the channel
groups (analysis), writes prune recipes (passes) and calls `optimize` (api).
docs/train_once.md explains the method and its schedule.
"""

from .optimizer import GroupSparseOptimizer
from .schedule import Schedule
from .units import UnitGroup, UnitGroups, UnitSlice, unit_groups
from .zero_prune import prune_zero_groups, zero_recipe, zero_units

__all__ = ["GroupSparseOptimizer", "Schedule", "UnitGroup", "UnitGroups", "UnitSlice", "unit_groups",
           "prune_zero_groups", "zero_recipe", "zero_units"]
